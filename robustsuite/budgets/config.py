"""The ``train`` section of ``method: budgets``: CROWN-IBP settings plus the budget generator's.

Example (YAML)::

    train:
      method: budgets
      eps: 0.12            # target radius e of the volume (the uniform radius of equal volume)
      eps_test: 0.1
      rho: 4               # every budget within [e / rho, rho * e]; 1 = uniform training exactly
      bound: crown-ibp     # or ibp
      generator: {kind: contextual, width: 32, depth: 2, coordinates: true, warmup_epochs: 0,
                  optim: {name: adam, lr: 0.003, grad_clip: 10}}

``generator.kind: fixed`` trains the input-independent baseline instead: one learned mask for every
image (:class:`~robustsuite.budgets.budget_generator.FixedBudgetGenerator`), same projection, loss, schedule
and optimizer; ``width``, ``depth`` and ``coordinates`` then do not apply.

:class:`~robustsuite.budgets.trainer.BudgetTrainer` registers ``method: budgets`` with this config
(:mod:`robustsuite.training.registry`); ``import robustsuite`` imports this part, so a config that
validates also trains, without importing this first.
"""
from __future__ import annotations

from typing import Literal, Optional

from pydantic import Field, model_validator

from ..certify.config import CertifiedTrainConfig
from ..settings import Strict
from ..training.config import OptimConfig

__all__ = ["BudgetTrainConfig", "GeneratorConfig"]


def _generator_optim() -> OptimConfig:
    return OptimConfig(name="adam", lr=3e-3, grad_clip=10.0)


class GeneratorConfig(Strict):
    """The budget generator: architecture and its own optimizer settings."""

    kind: Literal["contextual", "fixed"] = Field(
        "contextual", description="contextual: a network that reads the image (the paper's generator); "
                                  "fixed: one learned per-pixel mask for every image (the baseline)")
    width: int = Field(32, ge=1, description="channels of the hidden 3x3 convolutions")
    depth: int = Field(2, ge=1, description="number of hidden 3x3 convolutions")
    coordinates: bool = Field(True, description="feed row/column coordinate channels (needed to learn regions)")
    warmup_epochs: int = Field(0, ge=0, description="epochs before the generator starts to learn (uniform budgets until then)")
    optim: OptimConfig = Field(default_factory=_generator_optim,
                               description="the generator's optimizer; milestones count epochs as the classifier's")
    seed_offset: int = Field(1, description="the generator is initialized from seed + seed_offset (own RNG stream)")


class BudgetTrainConfig(CertifiedTrainConfig):
    """Joint CROWN-IBP training of a classifier and a budget generator (``method: budgets``)."""

    method: Literal["budgets"] = "budgets"
    bound: Literal["crown-ibp", "ibp"] = Field("crown-ibp", description="bounds of the training loss")
    rho: float = Field(4.0, ge=1.0, description="range ratio: budgets within [e / rho, rho * e]")
    rho_test: Optional[float] = Field(None, ge=1.0, description="range ratio for selection and evaluation; default rho")
    generator: GeneratorConfig = Field(default_factory=GeneratorConfig)

    @model_validator(mode="after")
    def _defaults(self):
        if self.rho_test is None:
            object.__setattr__(self, "rho_test", self.rho)
        if self.loss_fusion:
            raise ValueError("loss_fusion is not supported with method budgets (use the explicit margin bounds)")
        return self

