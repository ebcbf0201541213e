"""YAML configs, validated at load into typed pydantic models.

A run config has the sections ``data``, ``model`` and ``train`` (plus ``verify`` for the checks made
after training). The ``train`` section is chosen by its ``method`` key from a registry that names
every built-in trainer's config lazily (imported on first use); a new trainer adds itself with
:func:`register_train_config`, so it extends the format without touching this file. Unknown keys, wrong types and bad values raise :class:`ConfigError` naming the
key path, what was given and what is allowed. ``--set a.b=value`` overrides any key before
validation; every run writes its resolved config beside its outputs.
"""
from __future__ import annotations

import copy
import typing
from pathlib import Path
from typing import Annotated, Any, Literal, Optional, Type

import yaml
from pydantic import (AfterValidator, BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator,
                      model_validator)

from .errors import ConfigError


class SubkeyError(ValueError):
    """A validator's error about one key below what it validates (e.g. an attack setting of a suite
    item, ``value`` given): :func:`_format_error` appends ``key`` to the error's path."""

    def __init__(self, key: str, message: str, value: Any = None):
        super().__init__(message)
        self.key, self.value = key, value


def _takes_bool(ann: Any) -> bool:
    """Whether a field of annotation ``ann`` may hold a bool (bool, Any, or no number in it)."""
    if ann is bool or ann is Any:
        return True
    origin = typing.get_origin(ann)
    if origin is Annotated:
        return _takes_bool(typing.get_args(ann)[0])
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        return any(_takes_bool(a) for a in typing.get_args(ann) if a is not type(None))
    if origin is Literal:
        return any(isinstance(a, bool) for a in typing.get_args(ann))
    return ann not in (int, float)


def _bool_for_number(ann: Any, value: Any) -> bool:
    """Whether ``value`` (or an element of it) is a bool where ``ann`` expects a number: pydantic's lax
    mode reads ``true`` as 1, so ``--set train.epochs=true`` would silently train one epoch."""
    origin = typing.get_origin(ann)
    if origin is Annotated:
        return _bool_for_number(typing.get_args(ann)[0], value)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        members = [a for a in typing.get_args(ann) if a is not type(None)]
        return len(members) == 1 and _bool_for_number(members[0], value)
    if origin in (list, tuple, set) and isinstance(value, (list, tuple)):
        args = [a for a in typing.get_args(ann) if a is not Ellipsis]
        return bool(args) and any(_bool_for_number(args[0], v) for v in value)
    if origin is dict and isinstance(value, dict):
        args = typing.get_args(ann)
        return len(args) == 2 and any(_bool_for_number(args[1], v) for v in value.values())
    return isinstance(value, bool) and not _takes_bool(ann)


class Strict(BaseModel):
    """Base of every config section: unknown keys are errors, values are validated on assignment,
    and a number field refuses booleans (``true`` is not 1)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    @field_validator("*", mode="before")
    @classmethod
    def _no_bool_for_number(cls, v: Any, info: ValidationInfo) -> Any:
        field = cls.model_fields.get(info.field_name) if info.field_name else None
        if field is not None and _bool_for_number(field.annotation, v):
            raise ValueError(f"expected a number, got the boolean {v!r}")
        return v


def _linf_radius(v: float) -> float:
    if not (0.0 < v <= 1.0):
        raise ValueError(f"an L-inf radius must be in (0, 1] (pixel units, images in [0, 1]), got {v}")
    return float(v)


#: An L-inf radius in pixel units: 0 < eps <= 1 (at 1 the ball already covers all of [0, 1]^d).
LinfRadius = Annotated[float, AfterValidator(_linf_radius)]


def check_linf_radii(values: Any, field: str = "eps") -> list[float]:
    """``values`` (a number or a list) as a list of :data:`LinfRadius`, or a :class:`ConfigError`."""
    from pydantic import TypeAdapter
    items = values if isinstance(values, (list, tuple)) else [values]
    try:
        return TypeAdapter(list[LinfRadius]).validate_python(list(items))
    except ValidationError as e:
        raise ConfigError(f"{field}: {e.errors()[0]['msg'].removeprefix('Value error, ')}") from None


def _safe_name(v: str) -> str:
    from .files import name_problem
    problem = name_problem(v)
    if problem:
        raise ValueError(f"name {v!r} is not allowed: {problem}")
    return v


#: A name that becomes part of a path (a run folder, a model label, a plot file): see files.safe_name.
SafeName = Annotated[str, AfterValidator(_safe_name)]


class DataConfig(Strict):
    """Which data set, and how to split it."""

    name: str = "digits"
    root: Optional[str] = None
    download: bool = False
    options: dict[str, Any] = Field(default_factory=dict)
    val_fraction: float = Field(0.1, ge=0.0, lt=1.0, description="held out of train for model selection")
    train_subset: Optional[int] = Field(None, gt=0)
    test_subset: Optional[int] = Field(None, gt=0)


class ModelConfig(Strict):
    """A model of the zoo (``robustsuite.models.build``) and its options."""

    name: str = "cnn_small"
    options: dict[str, Any] = Field(default_factory=dict)


class ScheduleConfig(Strict):
    """The eps ramp, in epochs (converted to batch steps by the trainer)."""

    kind: Literal["smoothed", "linear"] = "smoothed"
    start_epoch: int = Field(1, ge=0, description="epochs of natural training (eps = 0) first")
    ramp_epochs: int = Field(20, ge=0)
    mid: float = Field(0.25, gt=0.0, lt=1.0)


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


class VerifyConfig(Strict):
    """What to check after training (``robustsuite train`` prints it; ``make demo`` shows the table)."""

    methods: list[str] = Field(default_factory=lambda: ["ibp", "crown-ibp", "crown"])
    eps: list[LinfRadius] = Field(default_factory=list, description="radii; default the training eps_test")
    pgd_steps: int = Field(40, ge=0, description="PGD steps for the empirical column (0: off)")
    subset: Optional[int] = Field(None, gt=0)


#: train.method -> its config class, or a ``"package.module:Class"`` string imported on first use
#: (so this module never imports the parts that build on it).
_TRAIN_CONFIGS: dict[str, Any] = {
    "crown-ibp": CertifiedTrainConfig,
    "ibp": CertifiedTrainConfig,
    "budgets": "robustsuite.budgets.config:BudgetTrainConfig",
    "gaussian": "robustsuite.training.gaussian:GaussianTrainConfig",
    "pgd_at": "robustsuite.stochastic.config:PGDATConfig",
    "pni": "robustsuite.stochastic.config:PNIConfig",
    "learn2perturb": "robustsuite.stochastic.config:Learn2PerturbConfig",
    "trades": "robustsuite.stochastic.config:TradesConfig",
    "anis2": "robustsuite.stochastic.config:ANIS2Config",
    "mng_ac": "robustsuite.stochastic.config:MNGACConfig",
}


def register_train_config(method: str, cls: "Type[TrainBase] | str") -> None:
    """Make ``train.method: <method>`` validate with ``cls`` (a class, or ``"module:Class"``)."""
    _TRAIN_CONFIGS[method] = cls


def train_config_class(method: str) -> Type[TrainBase]:
    """The config class of a training method (importing it if registered by name)."""
    target = _TRAIN_CONFIGS[method]
    if isinstance(target, str):
        import importlib
        mod, _, name = target.partition(":")
        target = _TRAIN_CONFIGS[method] = getattr(importlib.import_module(mod), name)
    return target


def _device_name(v: str) -> str:
    if v not in ("auto", "cpu", "cuda") and not v.startswith("cuda:"):
        raise ValueError("must be one of auto, cpu, cuda, cuda:N")
    return v


#: A ``device`` field: auto, cpu, cuda or cuda:N (resolved at run time by ``runtime.resolve_device``).
DeviceName = Annotated[str, AfterValidator(_device_name)]


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
        if method not in _TRAIN_CONFIGS:
            raise ValueError(f"unknown train.method {method!r}; choose one of: {', '.join(sorted(_TRAIN_CONFIGS))}")
        return train_config_class(method).model_validate(v)

    def resolved(self) -> dict:
        """The full config with every default filled in (what a run writes beside its outputs)."""
        out = self.model_dump(mode="json")
        out["train"] = self.train.model_dump(mode="json")
        return out


# ----------------------------------------------------------------------------------- loading
def _format_error(err: ValidationError, model: type[BaseModel], root: str = "") -> ConfigError:
    lines = []
    for e in err.errors():
        parts = [str(p) for p in e["loc"] if not str(p).startswith("function-") and p != "[key]"]
        keyed = (e.get("ctx") or {}).get("error")
        if isinstance(keyed, SubkeyError):  # the error is about a key below this field
            parts.append(keyed.key)
            e = {**e, "msg": str(keyed), "input": keyed.value}
        loc = ".".join(([root] if root else []) + parts) or "<config>"
        if e["type"] == "extra_forbidden":
            allowed = _allowed_keys(model, e["loc"][:-1])
            lines.append(f"{loc}: unknown key" + (f"; allowed keys here: {allowed}" if allowed else ""))
        elif e["type"] == "missing":
            lines.append(f"{loc}: required key is missing")
        else:
            given = e.get("input")
            given_s = "" if isinstance(given, (dict, list)) else f" (given {given!r})"
            msg = e["msg"].removeprefix("Value error, ")  # pydantic's prefix for a validator's ValueError
            lines.append(f"{loc}: {msg}{given_s}")
    return ConfigError("invalid config:\n  " + "\n  ".join(lines))


def _allowed_keys(model: Any, loc: tuple) -> str:
    for part in loc:
        field = getattr(model, "model_fields", {}).get(part)
        ann = getattr(field, "annotation", None)
        model = ann if isinstance(ann, type) and issubclass(ann, BaseModel) else None
        if model is None:
            return ""
    return ", ".join(model.model_fields)


def parse_override(item: str) -> tuple[list[str], Any]:
    """``a.b.c=value`` -> (["a", "b", "c"], value parsed as YAML)."""
    if "=" not in item:
        raise ConfigError(f"--set {item!r}: expected key.path=value (for example train.epochs=5)")
    key, raw = item.split("=", 1)
    path = [p for p in key.strip().split(".") if p]
    if not path:
        raise ConfigError(f"--set {item!r}: empty key path")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as e:
        raise ConfigError(f"--set {item!r}: value is not valid YAML ({e})") from None
    return path, value


def apply_overrides(raw: dict, overrides: list[str] | None) -> dict:
    """Return a copy of ``raw`` with every ``key.path=value`` override applied."""
    out = copy.deepcopy(raw)
    for item in overrides or []:
        path, value = parse_override(item)
        node = out
        for i, p in enumerate(path[:-1]):
            nxt = node.get(p)
            if nxt is None:
                nxt = node[p] = {}
            if not isinstance(nxt, dict):
                raise ConfigError(f"--set {item!r}: {'.'.join(path[:i + 1])} is not a section")
            node = nxt
        node[path[-1]] = value
    return out


def load_yaml(path: str | Path) -> dict:
    """Read a YAML mapping with an error that names the file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} does not exist (ready configs are in configs/)")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {str(path)!r} is not valid YAML: {e}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"config file {str(path)!r} must hold a mapping of sections (data, model, train, ...)")
    return raw


def validate(raw: dict) -> RunConfig:
    """Validate a raw mapping into a :class:`RunConfig`, or raise :class:`ConfigError`."""
    raw = dict(raw)
    train = raw.get("train")
    if not isinstance(train, dict):
        raise ConfigError("invalid config:\n  train: required section is missing (a mapping with a "
                          f"'method' key: one of {', '.join(sorted(_TRAIN_CONFIGS))})")
    method = train.get("method")
    if method not in _TRAIN_CONFIGS:
        raise ConfigError(f"invalid config:\n  train.method: unknown value {method!r}; choose one of: "
                          f"{', '.join(sorted(_TRAIN_CONFIGS))}")
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
