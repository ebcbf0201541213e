"""The evaluation suite: what the unified evaluator runs, as a typed, validated value.

A suite is written in Python (``Suite(certify=[...], attacks=[...])``) or YAML (:func:`load_suite`)::

    certify:
      - {method: ibp, norm: linf, eps: [0.05, 0.1]}
      - {method: crown-ibp, norm: linf, eps: [0.1], budgets: learned, rho: 4}   # budget models only
    attacks:
      - {name: pgd, norm: linf, eps: [0.1], steps: 40}        # other keys: the attack's settings
      - {name: cw, norm: l2, eps: [1.0], steps: 100}
      - {name: transfer, source: pgd-at, attack: pgd, norm: linf, eps: [0.1], steps: 20}  # crafted on model 'pgd-at'
    eot: {samples: 10}        # attacks with an eot setting (gradient, Square, boundary) run again with EOT on stochastic models
                              # (query budgets are multiplied by the samples: the same number of decisions)
    repeats: 5                # stochastic models: every metric R times (mean +- std)
    smoothing: {sigmas: [0.25], n0: 100, n: 1000, alpha: 0.001, radii: [0, 0.25, 0.5]}
    subset: {first: 200}      # or {every: 3}, or both (every k-th, then the first N of those)

Unknown keys, unknown methods / attacks / settings and threat sets an attack does not support raise
:class:`~robustsuite.errors.ConfigError` naming the key path (``attacks[1].norm: ...``).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, Optional

from pydantic import ConfigDict, Field, ValidationError, field_validator, model_validator

from ..settings import Strict, _format_error, apply_overrides, load_yaml
from ..errors import ConfigError

__all__ = ["CertifyItem", "AttackItem", "EOTConfig", "SmoothingConfig", "SubsetConfig", "Suite",
           "load_suite", "suite_from_dict", "fmt_num"]

NORMS = ("linf", "l2", "l1")


def fmt_num(v: float) -> str:
    """A number as it appears in record keys: shortest round-trip text (``0.1``, ``1``)."""
    v = float(v)
    return str(int(v)) if v.is_integer() else repr(v)


def _eps_list(v: Any) -> list[float]:
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        v = [v]
    return v


def _positive_eps(v: list[float]) -> list[float]:
    """Every radius of a suite item must be > 0 (eps 0 is the clean accuracy, always reported)."""
    if any(not (e > 0) for e in v):
        raise ValueError(f"every eps must be > 0, got {v}")
    return [float(e) for e in v]


class CertifyItem(Strict):
    """Certified bounds with one method over the balls ``norm`` of each radius in ``eps``."""

    method: str = Field(..., description="ibp | crown-ibp | crown | alpha-crown")
    norm: Literal["linf", "l2", "l1"] = "linf"
    eps: list[float] = Field(..., min_length=1)
    budgets: Literal["uniform", "learned"] = "uniform"
    rho: float = Field(4.0, ge=1.0, description="learned budgets: range factor (budgets within [eps/rho, rho eps])")

    _eps = field_validator("eps", mode="before")(classmethod(lambda cls, v: _eps_list(v)))

    @field_validator("method")
    @classmethod
    def _method(cls, v: str) -> str:
        from ..certify import canonical_method
        try:
            return canonical_method(v)
        except Exception as e:  # noqa: BLE001 - re-raised as a validation error with the key path
            raise ValueError(str(e)) from None

    _eps_range = field_validator("eps")(classmethod(lambda cls, v: _positive_eps(v)))

    @model_validator(mode="after")
    def _learned_linf(self):
        if self.budgets == "learned" and self.norm != "linf":
            raise ValueError("budgets: learned sets are per-pixel boxes; use norm: linf")
        return self


class AttackItem(Strict):
    """One attack on the balls ``norm`` of each radius in ``eps``; any other key is an attack setting."""

    model_config = ConfigDict(extra="allow", validate_assignment=True)

    name: str
    norm: Literal["linf", "l2", "l1"] = "linf"
    eps: list[float] = Field(..., min_length=1)
    budgets: Literal["uniform", "learned"] = "uniform"
    rho: float = Field(4.0, ge=1.0)
    source: Optional[str] = Field(None, description="transfer: the model (by name) the examples are crafted on")
    attack: Optional[str] = Field(None, description="transfer: the attack run on the source model")

    _eps = field_validator("eps", mode="before")(classmethod(lambda cls, v: _eps_list(v)))

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        from ..attacks.registry import ATTACKS, attack_names, canonical_attack_name
        key = canonical_attack_name(v)
        if key not in ATTACKS:
            raise ValueError(f"unknown attack {v!r}; choose one of: {', '.join(attack_names(by_name=False))}")
        return key

    _eps_range = field_validator("eps")(classmethod(lambda cls, v: _positive_eps(v)))

    @model_validator(mode="after")
    def _check_attack(self):
        from ..attacks.registry import ATTACKS, attack_names, canonical_attack_name
        inner = self.name
        if not ATTACKS[self.name].by_name:  # transfer: built around an attack on another model
            if not self.source or not self.attack:
                raise ValueError(f"a {self.name} attack needs 'source' (a model name) and 'attack' (the attack run on it)")
            inner = canonical_attack_name(self.attack)
            if inner not in attack_names():
                raise ValueError(f"attack: unknown attack {self.attack!r}; choose one of: {', '.join(attack_names())}")
            object.__setattr__(self, "attack", inner)
        elif self.source is not None or self.attack is not None:
            raise ValueError("'source' and 'attack' are settings of name: transfer only")
        cls = ATTACKS[inner]
        kind = "box" if self.budgets == "learned" else self.norm
        if kind not in cls.threats:
            allowed = [t for t in cls.threats if t != "none"]
            raise ValueError(f"attack {inner!r} does not support {'learned budgets' if kind == 'box' else 'norm ' + repr(self.norm)}"
                             f"; it supports: {', '.join(allowed)}")
        allowed_settings = set(cls.default_settings()) - {"targeted", "eot"}
        bad = sorted(set(self.settings) - allowed_settings)
        if bad:
            raise ValueError(f"unknown setting(s) {', '.join(map(repr, bad))} for attack {inner!r}; "
                             f"allowed keys here: name, norm, eps, budgets, rho, source, attack, "
                             f"{', '.join(sorted(allowed_settings))}")
        _check_settings(inner, kind, self.eps[0], self.settings)
        return self

    @property
    def settings(self) -> dict[str, Any]:
        """The attack's own settings (every key besides name, norm, eps, budgets, rho, source, attack)."""
        return dict(self.model_extra or {})

    @property
    def gradient(self) -> bool:
        """Whether the attack uses the evaluated model's gradient (the registry's ``uses_gradient``)."""
        from ..attacks.registry import attack_class
        return attack_class(self.name).uses_gradient

    @property
    def eot_applies(self) -> bool:
        """Whether the attack runs again with EOT on stochastic models: every attack with an ``eot``
        setting (the registry's ``eot_kind``: the gradient attacks average gradients; Square and the
        boundary attack query a majority-vote label oracle and mean scores over the draws)."""
        from ..attacks.registry import attack_class
        return attack_class(self.name).eot_kind() is not None


def _check_settings(attack: str, kind: str, eps: float, settings: dict[str, Any]) -> None:
    """Validate an attack's settings now, at load, by building the attack (its constructor checks
    every value) on a stand-in model: a wrong type or range fails here with the key path instead of
    when the item runs, maybe hours later. Each setting alone first, so the error names its key."""
    import torch

    from ..attacks import make_attack
    from ..settings import SubkeyError
    from ..errors import RobustSuiteError
    from ..threats import Box, threat_from_name

    threat = Box(torch.zeros(1, 1, 1, 1), torch.ones(1, 1, 1, 1)) if kind == "box" else threat_from_name(kind, eps)
    model = torch.nn.Identity()
    for key, value in settings.items():
        try:
            make_attack(attack, model, threat, **{key: value})
        except RobustSuiteError as e:
            raise SubkeyError(key, str(e).removeprefix(f"{key}: "), value) from None
    try:
        make_attack(attack, model, threat, **settings)
    except RobustSuiteError as e:
        raise ValueError(str(e)) from None


class EOTConfig(Strict):
    """Expectation over transformation for stochastic models: gradient draws averaged per step."""

    samples: int = Field(10, ge=2)


class SmoothingConfig(Strict):
    """Randomized smoothing CERTIFY (Cohen et al.) at each sigma."""

    sigmas: list[float] = Field(..., min_length=1)
    n0: int = Field(100, ge=1)
    n: int = Field(1000, ge=1)
    alpha: float = Field(0.001, gt=0, lt=1)
    batch: int = Field(1000, ge=1, description="noisy samples per forward pass")
    radii: list[float] = Field(default_factory=lambda: [0.0, 0.25, 0.5, 0.75, 1.0])

    @field_validator("sigmas")
    @classmethod
    def _pos(cls, v):
        if any(not (s > 0) for s in v):
            raise ValueError(f"every sigma must be > 0, got {v}")
        return [float(s) for s in v]

    @field_validator("radii")
    @classmethod
    def _radii(cls, v):
        if any(not (r >= 0) for r in v):
            raise ValueError(f"every radius must be >= 0, got {v}")
        return [float(r) for r in v]


class SubsetConfig(Strict):
    """Which test samples: every k-th (``every``), then the first N of those (``first``)."""

    first: Optional[int] = Field(None, ge=1)
    every: Optional[int] = Field(None, ge=1)


class Suite(Strict):
    """Everything one evaluation runs (see the module docstring for the YAML form)."""

    name: str = "suite"
    certify: list[CertifyItem] = Field(default_factory=list)
    attacks: list[AttackItem] = Field(default_factory=list)
    eot: Optional[EOTConfig] = None
    repeats: int = Field(5, ge=1, description="runs of every metric on a stochastic model")
    smoothing: Optional[SmoothingConfig] = None
    subset: SubsetConfig = Field(default_factory=SubsetConfig)
    batch_size: int = Field(256, ge=1, description="samples per attack / bound batch")

    def resolved(self) -> dict:
        """The suite as plain data (attack settings inlined), loadable again with :func:`suite_from_dict`."""
        return self.model_dump(mode="json")


def suite_from_dict(raw: dict, overrides: list[str] | None = None) -> Suite:
    """Validate a mapping (plus ``key.path=value`` overrides) into a :class:`Suite`."""
    if not isinstance(raw, dict):
        raise ConfigError(f"suite: expected a mapping of sections, got {type(raw).__name__}")
    raw = apply_overrides(raw, overrides)
    try:
        return Suite.model_validate(raw)
    except ValidationError as e:
        err = _format_error(e, Suite)
        # pydantic writes list positions as ".0."; show them as [0]
        import re
        msg = re.sub(r"\.(\d+)(?=[.:])", r"[\1]", str(err)).replace("invalid config", "invalid suite")
        raise ConfigError(msg) from None


def load_suite(path: str | Path, overrides: list[str] | None = None) -> Suite:
    """Read and validate a suite YAML file (see ``configs/suites/``)."""
    return suite_from_dict(load_yaml(path), overrides)
