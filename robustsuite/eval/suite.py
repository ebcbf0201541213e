"""The evaluation suite: what the unified evaluator runs, as a typed, validated value.

A suite is written in Python (``Suite(certify=[...], attacks=[...])``) or YAML (:func:`load_suite`)::

    certify:
      - {method: ibp, norm: linf, eps: [0.05, 0.1]}
      - {method: crown-ibp, norm: linf, eps: [0.1], budgets: learned, rho: 4}   # budget models only
    attacks:
      - {name: pgd, norm: linf, eps: [0.1], steps: 40}        # other keys: the attack's settings
      - {name: cw, norm: l2, eps: [1.0], steps: 100}
      - {name: transfer, source: pgd-at, attack: pgd, norm: linf, eps: [0.1], steps: 20}  # crafted on model 'pgd-at'
      - {name: autoattack, norm: linf, eps: [0.1]}            # the ensemble; per_attack: true adds each component's column
    eot: {samples: 10}        # attacks with an eot setting (gradient, Square, boundary) run again with EOT on stochastic models
                              # (AutoAttack's EOT run is its version rand with these draws; the reference's rand uses 20)
                              # (query budgets are multiplied by the samples: the same number of decisions)
    repeats: 5                # stochastic models: every metric R times (mean +- std)
    smoothing: {sigmas: [0.25], n0: 100, n: 1000, alpha: 0.001, radii: [0, 0.25, 0.5]}
    subset: {first: 200}      # or {every: 3}, or both (every k-th, then the first N of those)

Unknown keys, unknown methods / attacks / settings and threat sets an attack does not support raise
:class:`~robustsuite.errors.ConfigError` naming the key path (``attacks[1].norm: ...``).

The entries are also what the evaluator runs: :meth:`Suite.items` narrows each entry to one radius
(and EOT variant) per item, and each item decides whether it applies to a model and computes its
record columns (the protocol of :mod:`robustsuite.eval.items`); the evaluator knows no item kind.
"""
from __future__ import annotations

import abc
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal, Optional

from pydantic import ConfigDict, Field, PrivateAttr, ValidationError, field_validator, model_validator

from ..settings import Strict, _format_error, apply_overrides, load_yaml
from ..errors import ConfigError
from .items import ModelInfo, NotApplicable, RunContext

if TYPE_CHECKING:  # pragma: no cover
    from torch import Tensor, nn

__all__ = ["EvalItem", "CertifyItem", "AttackItem", "EOTConfig", "SmoothingItem", "SmoothingConfig",
           "SubsetConfig", "Suite", "load_suite", "suite_from_dict", "fmt_num"]

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


class EvalItem(Strict, abc.ABC):
    """Base of the suite entries the evaluator runs (see :mod:`robustsuite.eval.items` for the protocol).

    Abstract: a kind of item implements ``expand``, ``key``, ``columns``, ``stage``, ``describe`` and
    ``run`` (pydantic's model metaclass is an ``ABCMeta``, so a subclass missing one cannot be built).

    An entry of the suite may hold several radii; :meth:`expand` gives its items, copies that hold
    one radius each (``eps == [e]``), which ``applies`` / ``run`` act on.
    """

    #: the ``kind`` of the item in ``report.items``
    kind: ClassVar[str] = ""
    #: runs in repeat 0 only (its columns do not depend on the model's noise); None in later repeats
    once: ClassVar[bool] = False
    # position of the entry in its suite list (``report.items[...]["entry"]``)
    _entry: int = PrivateAttr(0)

    @abc.abstractmethod
    def expand(self, suite: "Suite", entry: int) -> list["EvalItem"]:
        """The items of this entry (position ``entry`` in its list), in report order."""

    @property
    @abc.abstractmethod
    def key(self) -> str:
        """The item's name in ``report.not_applicable`` (unique within a suite)."""

    @property
    @abc.abstractmethod
    def columns(self) -> list[str]:
        """The record keys the item fills (see :mod:`robustsuite.eval.metrics`)."""

    @property
    @abc.abstractmethod
    def stage(self) -> str:
        """The item's row in the report's timings (items of one stage add up)."""

    @abc.abstractmethod
    def describe(self) -> dict[str, Any]:
        """The item as ``report.items`` lists it (plain data)."""

    def fingerprint(self, suite: "Suite") -> dict[str, Any]:
        """Everything the item's columns depend on besides the model, the samples, the seed and the
        repeat (plain data): a resumed evaluation reuses a finished column only when it is equal."""
        return {"kind": self.kind, "config": self.model_dump(mode="json")}

    def uses_models(self) -> tuple[str, ...]:
        """Names of other models of the evaluation whose weights the columns depend on."""
        return ()

    def applies(self, info: ModelInfo) -> str | None:
        """Why the item does not apply to the model described by ``info``, or None when it does."""
        return None

    def notes(self, info: ModelInfo) -> list[str]:
        """Warnings for the report about running the item on the model described by ``info``
        (e.g. AutoAttack 'standard' on a stochastic model); none by default."""
        return []

    @abc.abstractmethod
    def run(self, ctx: RunContext) -> dict[str, list]:
        """The item's columns for the samples of ``ctx`` (one value per sample, in order).

        Raises:
            NotApplicable: the model turned out not to fit (the reason is recorded).
        """


class _ThreatItem(EvalItem):
    """An item over threat sets: the balls ``norm`` of radius ``eps``, or learned budget boxes."""

    @property
    def radius(self) -> float:
        return self.eps[0]

    @property
    def set_id(self) -> str:
        """``NORM@EPS`` or ``learned-rhoRHO@EPS`` (see :mod:`robustsuite.eval.metrics`)."""
        if self.budgets == "learned":
            return f"learned-rho{fmt_num(self.rho)}@{fmt_num(self.radius)}"
        return f"{self.norm}@{fmt_num(self.radius)}"

    def threat(self, model: "nn.Module", x: "Tensor"):
        """The threat set around the batch ``x`` (learned boxes come from the budget model)."""
        if self.budgets == "learned":
            import torch
            with torch.no_grad():
                return model.box(x, self.radius, self.rho)
        from ..threats import threat_from_name
        return threat_from_name(self.norm, self.radius)

    def _learned_reason(self, info: ModelInfo) -> str | None:
        if self.budgets == "learned" and not info.budget_model:
            return "learned budgets: the model has no budget generator"
        return None

    def _per_radius(self, entry: int) -> list["_ThreatItem"]:
        out = []
        for e in self.eps:
            item = self.model_copy(update={"eps": [e]})
            item._entry = entry
            out.append(item)
        return out


class CertifyItem(_ThreatItem):
    """Certified bounds with one method over the balls ``norm`` of each radius in ``eps``.

    ``method: milp`` is complete verification (:class:`~robustsuite.certify.CompleteVerifier`: attack,
    bound, then a MILP per undecided sample, L-inf only): its ``cert|milp|SET`` column is ``verified``
    and a second column ``status|milp|SET`` holds ``verified`` / ``falsified`` / ``unknown`` per sample.
    """

    kind: ClassVar[str] = "certify"
    once: ClassVar[bool] = True

    method: str = Field(..., description="ibp | crown-ibp | crown | alpha-crown | milp")
    norm: Literal["linf", "l2", "l1"] = "linf"
    eps: list[float] = Field(..., min_length=1)
    budgets: Literal["uniform", "learned"] = "uniform"
    rho: float = Field(4.0, ge=1.0, description="learned budgets: range factor (budgets within [eps/rho, rho eps])")
    time_limit: Optional[float] = Field(None, gt=0, description="method milp: MILP seconds per sample (default 60)")

    _eps = field_validator("eps", mode="before")(classmethod(lambda cls, v: _eps_list(v)))

    @field_validator("method")
    @classmethod
    def _method(cls, v: str) -> str:
        from ..certify import canonical_method
        if isinstance(v, str) and v.strip().lower() == "milp":
            return "milp"
        try:
            return canonical_method(v)
        except Exception as e:  # noqa: BLE001 - re-raised as a validation error with the key path
            raise ValueError(str(e)) from None

    _eps_range = field_validator("eps")(classmethod(lambda cls, v: _positive_eps(v)))

    @model_validator(mode="after")
    def _learned_linf(self):
        if self.budgets == "learned" and self.norm != "linf":
            raise ValueError("budgets: learned sets are per-pixel boxes; use norm: linf")
        if self.method == "milp" and self.norm != "linf":
            raise ValueError("method milp: exact for L-inf balls and per-pixel boxes only; use norm: linf")
        if self.method != "milp" and self.time_limit is not None:
            raise ValueError("time_limit: a setting of method milp only")
        return self

    @property
    def status_key(self) -> str:
        """``status|milp|SET``: the complete verification's status column (method milp only)."""
        return f"status|{self.method}|{self.set_id}"

    # ------------------------------------------------------------------ the item protocol
    def expand(self, suite: "Suite", entry: int) -> list["CertifyItem"]:
        return self._per_radius(entry)

    @property
    def key(self) -> str:
        return f"cert|{self.method}|{self.set_id}"

    @property
    def columns(self) -> list[str]:
        return [self.key, self.status_key] if self.method == "milp" else [self.key]

    @property
    def stage(self) -> str:
        return f"certify|{self.method}"

    def describe(self) -> dict[str, Any]:
        out = {"kind": self.kind, "entry": self._entry, "method": self.method, "norm": self.norm, "eps": self.radius,
               "budgets": self.budgets, "rho": self.rho, "set": self.set_id, "key": self.key, "columns": self.columns}
        if self.method == "milp":
            out["time_limit"] = self.time_limit or 60.0
        return out

    def fingerprint(self, suite: "Suite") -> dict[str, Any]:
        # time_limit exists for milp only: the other methods' fingerprints stay as before it existed
        exclude = None if self.method == "milp" else {"time_limit"}
        return {"kind": self.kind, "config": self.model_dump(mode="json", exclude=exclude)}

    def applies(self, info: ModelInfo) -> str | None:
        if info.stochastic:
            return "stochastic model: bounds do not apply"
        return self._learned_reason(info)

    def run(self, ctx: RunContext) -> dict[str, list]:
        """Certified (bool) per sample; :class:`NotApplicable` when the bound method cannot parse the model."""
        import torch

        from ..certify import Verifier
        from ..errors import UnsupportedModelError
        milp = {"time_limit": self.time_limit or 60.0} if self.method == "milp" else {}
        try:
            v = ctx.cache.get(("verifier", self.method, *milp.values()))
            if v is None:  # one verifier per method and model, shared by the radii
                v = Verifier(ctx.model, tuple(ctx.x.shape[1:]), method=self.method, device=ctx.device, **milp)
                ctx.cache[("verifier", self.method, *milp.values())] = v
            results = [v.verify(xb, yb, self.threat(ctx.model, xb)) for xb, yb in ctx.batches()]
        except UnsupportedModelError as e:
            raise NotApplicable(f"bound method {self.method!r} does not apply: {e}") from None
        out = {self.key: torch.cat([r.certified.cpu() for r in results]).tolist()}
        if self.method == "milp":
            out[self.status_key] = [s for r in results for s in r.status]
        return out


class AttackItem(_ThreatItem):
    """One attack on the balls ``norm`` of each radius in ``eps``; any other key is an attack setting."""

    model_config = ConfigDict(extra="allow", validate_assignment=True)
    kind: ClassVar[str] = "attack"
    # the EOT run of the attack on stochastic models (an item of an entry, see expand), and its draws
    _eot: bool = PrivateAttr(False)
    _eot_samples: int = PrivateAttr(0)
    # AutoAttack without EOT whose rand version (the EOT run) also runs: standard then applies to
    # deterministic models only (see applies)
    _rand_runs: bool = PrivateAttr(False)

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

    # ------------------------------------------------------------------ the item protocol
    @property
    def eot(self) -> bool:
        """Whether this item is the EOT run of the attack."""
        return self._eot

    @property
    def label(self) -> str:
        """The attack's name in record keys: ``pgd``, ``pgd+eot``, ``pgd-transfer-from-SOURCE``."""
        if self.name == "transfer":
            return f"{self.attack}-transfer-from-{self.source}"
        return self.name + ("+eot" if self._eot else "")

    def expand(self, suite: "Suite", entry: int) -> list["AttackItem"]:
        variants = [False] + ([True] if suite.eot is not None and self.eot_applies else [])
        out = []
        for item in self._per_radius(entry):
            for eot in variants:
                v = item.model_copy()
                v._entry, v._eot = entry, eot
                v._eot_samples = suite.eot.samples if eot else 0
                v._rand_runs = (not eot and self.name == "autoattack" and True in variants
                                and str(self.settings.get("version", "standard")).lower() == "standard")
                out.append(v)
        return out

    @property
    def key(self) -> str:
        return f"atk|{self.label}|{self.set_id}"

    @property
    def run_settings(self) -> dict[str, Any]:
        """The settings the attack runs with: the item's, and for the EOT run what the attack's
        ``eot_settings`` adds (the suite's ``eot.samples`` draws; AutoAttack: version ``rand``)."""
        settings = self.settings
        if self._eot:
            from ..attacks.registry import attack_class
            settings.update(attack_class(self.name).eot_settings(self._eot_samples, settings))
        return settings

    def _record_columns(self) -> dict[str, str]:
        """The attack's extra per-sample records (``record_names``) -> their record keys:
        ``KIND`` -> ``KIND|LABEL|SET``, ``KIND/SUB`` -> ``KIND|NAME/SUB[+eot]|SET``."""
        from ..attacks.registry import attack_class
        if self.name == "transfer":
            return {}
        out = {}
        for rec in attack_class(self.name).record_names(self.run_settings):
            kind, _, sub = rec.partition("/")
            label = f"{self.name}/{sub}" + ("+eot" if self._eot else "") if sub else self.label
            out[rec] = f"{kind}|{label}|{self.set_id}"
        return out

    @property
    def columns(self) -> list[str]:
        return [self.key, f"dist|{self.label}|{self.set_id}", *self._record_columns().values()]

    @property
    def stage(self) -> str:
        return f"attack|{self.label}"

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "entry": self._entry, "attack": self.label, "name": self.name, "norm": self.norm,
                "source": self.source, "inner": self.attack, "eps": self.radius, "budgets": self.budgets,
                "rho": self.rho, "set": self.set_id, "eot": self._eot, "settings": self.settings, "key": self.key,
                "columns": self.columns}

    def fingerprint(self, suite: "Suite") -> dict[str, Any]:
        out = {**super().fingerprint(suite), "eot": suite.eot.samples if self._eot else None}
        if self._eot:
            # what the attack's eot_settings hook adds (AutoAttack: version rand and its draws) is part of
            # what the column depends on: a changed hook must not reuse a column computed under the old one
            out["run"] = self.run_settings
        return out

    def uses_models(self) -> tuple[str, ...]:
        return (self.source,) if self.name == "transfer" else ()

    def applies(self, info: ModelInfo) -> str | None:
        reason = self._learned_reason(info)
        if reason:
            return reason
        if self._eot and not info.stochastic:
            return "deterministic model: EOT not needed (same as the attack without EOT)"
        if self._eot and self.name == "autoattack" and not info.varies:
            return ("AutoAttack rand: the model declares noise but two forward passes on the same input agree "
                    "(its noise is off); the item without EOT (standard) applies")
        if self._rand_runs and info.stochastic and info.varies:
            # the reference's protocol for randomized defenses is rand; standard would follow single
            # noise draws (and its Square/FAB cost the most while proving the least there)
            return ("stochastic model: AutoAttack's version for randomized defenses, rand, is this item's "
                    "EOT run (autoattack+eot); standard follows single noise draws")
        if self.name == "transfer" and self.source == info.name:
            return "the transfer source itself (its white-box attack is a separate item)"
        if self.name == "transfer" and self.budgets == "learned":
            return "transfer attacks use uniform sets only"
        return None

    def notes(self, info: ModelInfo) -> list[str]:
        if self.name == "autoattack" and not self._eot and info.stochastic \
                and str(self.settings.get("version", "standard")).lower() == "standard" \
                and not (self._rand_runs and info.varies):
            return [f"model {info.name}: AutoAttack 'standard' on a stochastic model follows single draws of its "
                    "noise and may overestimate robustness; its version 'rand' (APGD-CE and APGD-DLR with EOT) "
                    "is the item's EOT run (autoattack+eot; set `eot:` in the suite)"]
        return []

    def run(self, ctx: RunContext) -> dict[str, list]:
        """The attack changed the prediction (bool) and the perturbation's norm (float) per sample,
        and the attack's extra records (:meth:`_record_columns`, e.g. AutoAttack's ``by``)."""
        # looked up at run time (not import time), so a patched make_attack is used
        from ..attacks import TransferAttack, attack_class, make_attack, per_sample_robust
        settings = self.run_settings
        cls = attack_class(self.attack or self.name)
        known = cls.default_settings()
        if "seed" in known:
            settings.setdefault("seed", ctx.seed + ctx.repeat)
        if self._eot:
            samples = self._eot_samples
            # query budgets count model evaluations, every EOT draw included: scale them so the EOT run
            # makes as many decisions (iterations) as the one-draw run, as gradient attacks keep their
            # steps under EOT
            for budget in cls.query_budgets:
                if budget in known:
                    settings[budget] = int(settings.get(budget, known[budget])) * samples

        def attack(xb: "Tensor", yb: "Tensor", rows: slice):
            # the threat depends on the batch (a learned budget's boxes), so one attack per batch
            threat = self.threat(ctx.model, xb)
            if self.name == "transfer":
                return TransferAttack(make_attack(self.attack, ctx.models[self.source], threat, **settings), ctx.model)
            return make_attack(self.name, ctx.model, threat, **settings)

        extra = self._record_columns()
        collected: dict[str, list] = {k: [] for k in extra}

        def collect(res, rows: slice) -> None:
            records = res.extras.get("records", {})
            for k in extra:
                v = records[k]
                collected[k] += v.tolist() if hasattr(v, "tolist") else list(v)

        rec = per_sample_robust(ctx.model, ctx.x, ctx.y, attack, batch_size=ctx.suite.batch_size,
                                device=ctx.device, clean="none", on_batch=collect if extra else None)
        return {self.columns[0]: rec.success.tolist(), self.columns[1]: rec.distance.tolist(),
                **{extra[k]: v for k, v in collected.items()}}


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
    try:
        make_attack(attack, model, threat, **settings)
    except RobustSuiteError as e:
        # settings that are only valid together (AutoAttack's version: custom with its attacks) pass
        # the whole first; on an error, each alone names the key when one is wrong by itself
        for key, value in settings.items():
            try:
                make_attack(attack, model, threat, **{key: value})
            except RobustSuiteError as e_key:
                raise SubkeyError(key, str(e_key).removeprefix(f"{key}: "), value) from None
        raise ValueError(str(e)) from None


class EOTConfig(Strict):
    """Expectation over transformation for stochastic models: gradient draws averaged per step."""

    samples: int = Field(10, ge=2)


class SmoothingItem(EvalItem):
    """Randomized smoothing CERTIFY (Cohen et al.) at each sigma."""

    kind: ClassVar[str] = "smoothing"
    once: ClassVar[bool] = True

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

    # ------------------------------------------------------------------ the item protocol
    @property
    def sigma(self) -> float:
        return self.sigmas[0]

    def expand(self, suite: "Suite", entry: int) -> list["SmoothingItem"]:
        out = []
        for s in self.sigmas:
            item = self.model_copy(update={"sigmas": [s]})
            item._entry = entry
            out.append(item)
        return out

    @property
    def key(self) -> str:
        return f"smooth|{fmt_num(self.sigma)}"

    @property
    def columns(self) -> list[str]:
        return [f"smooth_pred|{fmt_num(self.sigma)}", f"smooth_radius|{fmt_num(self.sigma)}"]

    @property
    def stage(self) -> str:
        return f"smoothing|{fmt_num(self.sigma)}"

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "sigma": self.sigma, "key": self.key, "columns": self.columns}

    def fingerprint(self, suite: "Suite") -> dict[str, Any]:
        # the radii only select metrics from the columns
        return {"kind": self.kind, "config": self.model_dump(mode="json", exclude={"radii"})}

    def run(self, ctx: RunContext) -> dict[str, list]:
        """The smoothed prediction (class or -1 = abstain) and certified L2 radius per sample."""
        import torch

        from .smoothing import Smooth
        sm = Smooth(ctx.model, ctx.info.num_classes, self.sigma, seed=ctx.seed)
        preds, radii = [], []
        for xb, _ in ctx.batches():
            c = sm.certify(xb, n0=self.n0, n=self.n, alpha=self.alpha, batch=self.batch)
            preds.append(c.prediction.cpu())
            radii.append(c.radius.double().cpu())
        return {self.columns[0]: torch.cat(preds).tolist(), self.columns[1]: torch.cat(radii).tolist()}


#: the former name of :class:`SmoothingItem`
SmoothingConfig = SmoothingItem


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
    smoothing: Optional[SmoothingItem] = None
    subset: SubsetConfig = Field(default_factory=SubsetConfig)
    batch_size: int = Field(256, ge=1, description="samples per attack / bound batch")

    def resolved(self) -> dict:
        """The suite as plain data (attack settings inlined), loadable again with :func:`suite_from_dict`."""
        return self.model_dump(mode="json")

    def items(self) -> list[EvalItem]:
        """Every item the evaluator runs on each model, in report order: the bounds (entry, then
        radius), the attacks (entry, radius, then the EOT run when ``eot`` is set and the attack
        has one), the smoothing sigmas."""
        entries: list[EvalItem] = [*self.certify, *self.attacks, *([self.smoothing] if self.smoothing else [])]
        position: dict[str, int] = {}
        out: list[EvalItem] = []
        for e in entries:
            i = position[e.kind] = position.get(e.kind, -1) + 1
            out += e.expand(self, i)
        return out


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
