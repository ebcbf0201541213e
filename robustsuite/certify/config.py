"""The ``train`` section of certified training: ``method: crown-ibp`` (CROWN-IBP) or ``method: ibp``.

:class:`CertifiedTrainConfig` holds the eps ramp (:class:`ScheduleConfig`), the CROWN-IBP mixing
weights and the model-selection radius; :class:`~robustsuite.certify.trainer.CertifiedTrainer`
registers both methods with it. ``method: budgets`` extends it (:mod:`robustsuite.budgets.config`).
"""
from __future__ import annotations

from typing import Literal, Optional

from pydantic import Field, model_validator

from ..settings import LinfRadius, Strict
from ..training.config import TrainBase

__all__ = ["ScheduleConfig", "CertifiedTrainConfig"]


class ScheduleConfig(Strict):
    """The eps ramp, in epochs (converted to batch steps by the trainer)."""

    kind: Literal["smoothed", "linear"] = "smoothed"
    start_epoch: int = Field(1, ge=0, description="epochs of natural training (eps = 0) first")
    ramp_epochs: int = Field(20, ge=0)
    mid: float = Field(0.25, gt=0.0, lt=1.0)


class CertifiedTrainConfig(TrainBase):
    """CROWN-IBP certified training (``method: crown-ibp``), or IBP only (``method: ibp``)."""

    method: Literal["crown-ibp", "ibp"] = "crown-ibp"
    eps: LinfRadius = Field(..., description="training radius reached after the ramp, in (0, 1]")
    eps_test: Optional[LinfRadius] = Field(None, description="radius for model selection, in (0, 1]; default eps")
    schedule: ScheduleConfig = Field(default_factory=ScheduleConfig)
    beta_final: float = Field(0.0, ge=0, le=1, description="CROWN-IBP weight at eps_max (1 at eps = 0)")
    kappa_final: float = Field(0.0, ge=0, le=1, description="natural-loss weight at eps_max (1 at eps = 0)")
    loss_fusion: bool = False
    natural_below: float = Field(1e-8, ge=0, description="train naturally (no bounds) while eps <= this")
    select_method: Literal["ibp", "crown-ibp"] = "crown-ibp"

    @model_validator(mode="after")
    def _default_eps_test(self):
        if self.eps_test is None:
            object.__setattr__(self, "eps_test", self.eps)
        return self
