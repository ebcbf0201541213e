"""The run config: the YAML a training run is described by, validated into typed pydantic models.

A run config has the sections ``data``, ``model`` and ``train`` (plus ``verify`` for the checks made
after training). The ``train`` section is chosen by its ``method`` key through the trainer registry
(:mod:`robustsuite.training.registry`): each trainer registers its config class where it is defined,
so a new trainer extends the format without touching this file. Unknown keys, wrong types and bad
values raise :class:`~robustsuite.errors.ConfigError` naming the key path, what was given and what is
allowed. ``--set a.b=value`` overrides any key before validation; every run writes its resolved
config beside its outputs::

    from robustsuite.training.config import load_config
    cfg = load_config("configs/digits_crown_ibp.yaml", ["train.epochs=5"])
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, Optional

import yaml
from pydantic import Field, ValidationError, field_validator

from ..data.registry import available as data_names
from ..errors import ConfigError
from ..models.registry import available as model_names
from ..settings import (DeviceName, LinfRadius, SafeName, Strict, _format_error, apply_overrides, load_yaml)
from .registry import methods, train_config_class

__all__ = ["DataConfig", "ModelConfig", "OptimConfig", "TrainBase", "VerifyConfig", "RunConfig", "validate",
           "load_config", "dump_yaml"]


def _registered(name: str, what: str, known: list[str]) -> str:
    """``name`` if a registry holds it. Checked when the config is loaded, not when the thing is built,
    so a typo stops the run before it takes its output folder."""
    if name not in known:
        raise ValueError(f"unknown {what}; choose one of: {', '.join(known)}")
    return name


class DataConfig(Strict):
    """Which data set, and how to split it."""

    name: str = "digits"
    root: Optional[str] = None
    download: bool = False
    options: dict[str, Any] = Field(default_factory=dict)
    val_fraction: float = Field(0.1, ge=0.0, lt=1.0, description="held out of train for model selection")
    train_subset: Optional[int] = Field(None, gt=0)
    test_subset: Optional[int] = Field(None, gt=0)

    @field_validator("name")
    @classmethod
    def _known_data_set(cls, v: str) -> str:
        return _registered(v, "data set", data_names())


class ModelConfig(Strict):
    """A model of the zoo (``robustsuite.models.build``) and its options."""

    name: str = "cnn_small"
    options: dict[str, Any] = Field(default_factory=dict)

    @field_validator("name")
    @classmethod
    def _known_model(cls, v: str) -> str:
        return _registered(v, "model", model_names())


class OptimConfig(Strict):
    """Optimizer and learning-rate schedule."""

    name: Literal["adam", "sgd"] = "adam"
    lr: float = Field(5e-4, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    milestones: list[int] = Field(default_factory=list, description="epochs at which lr is multiplied by gamma")
    gamma: float = Field(0.1, gt=0, le=1)
    grad_clip: Optional[float] = Field(10.0, gt=0)

    @field_validator("milestones")
    @classmethod
    def _sorted(cls, v: list[int]) -> list[int]:
        if any(m < 1 for m in v) or v != sorted(v):
            raise ValueError("milestones must be increasing epoch numbers >= 1")
        return v


class TrainBase(Strict):
    """Settings every trainer shares."""

    method: str
    epochs: int = Field(60, ge=1)
    batch_size: int = Field(64, ge=1)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    checkpoint_every: int = Field(1, ge=1, description="epochs between resumable checkpoints")


class VerifyConfig(Strict):
    """What to check after training (``robustsuite train`` prints it; ``make demo`` shows the table)."""

    methods: list[str] = Field(default_factory=lambda: ["ibp", "crown-ibp", "crown"])
    eps: list[LinfRadius] = Field(default_factory=list, description="radii; default the training eps_test")
    pgd_steps: int = Field(40, ge=0, description="PGD steps for the empirical column (0: off)")
    subset: Optional[int] = Field(None, gt=0)


class RunConfig(Strict):
    """A whole training run: data, model, trainer settings, and the checks afterwards."""

    name: SafeName = Field("run", description="names the default output folder runs/<name>")
    seed: int = 0
    device: DeviceName = "auto"
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    train: TrainBase
    verify: VerifyConfig = Field(default_factory=VerifyConfig)

    @field_validator("train", mode="before")
    @classmethod
    def _pick_trainer(cls, v: Any):
        if isinstance(v, TrainBase):
            return v
        if not isinstance(v, dict):
            raise ValueError("must be a mapping with a 'method' key")
        method = v.get("method")
        if method not in methods():
            raise ValueError(f"unknown train.method {method!r}; choose one of: {', '.join(methods())}")
        return train_config_class(method).model_validate(v)

    def resolved(self) -> dict:
        """The full config with every default filled in (what a run writes beside its outputs)."""
        out = self.model_dump(mode="json")
        out["train"] = self.train.model_dump(mode="json")
        return out


def validate(raw: dict) -> RunConfig:
    """Validate a raw mapping into a :class:`RunConfig`, or raise :class:`ConfigError`."""
    raw = dict(raw)
    train = raw.get("train")
    if not isinstance(train, dict):
        raise ConfigError("invalid config:\n  train: required section is missing (a mapping with a "
                          f"'method' key: one of {', '.join(methods())})")
    method = train.get("method")
    if method not in methods():
        raise ConfigError(f"invalid config:\n  train.method: unknown value {method!r}; choose one of: "
                          f"{', '.join(methods())}")
    cls = train_config_class(method)
    try:
        raw["train"] = cls.model_validate(train)
    except ValidationError as e:
        raise _format_error(e, cls, root="train") from None
    try:
        return RunConfig.model_validate(raw)
    except ValidationError as e:
        raise _format_error(e, RunConfig) from None


def load_config(path: str | Path, overrides: list[str] | None = None) -> RunConfig:
    """Load, override (``key.path=value`` strings) and validate a run config."""
    return validate(apply_overrides(load_yaml(path), overrides))


def dump_yaml(cfg: RunConfig) -> str:
    """The resolved config as YAML text."""
    return yaml.safe_dump(cfg.resolved(), sort_keys=False)
