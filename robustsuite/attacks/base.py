"""The attack base classes and the result record.

``Attack.run`` is the one place where every attack's output is projected back onto the threat set
intersected with [0, 1], and where per-sample success and distance are computed, so no attack can
forget either (the idea of foolbox's ``FixedEpsilonAttack.__call__``). Subclasses implement only
``_perturb``, the algorithm itself.

Conventions shared by every attack:

* Images are NCHW floats in [0, 1]; labels are ``(B,)`` integer class indices. With
  ``targeted=True`` the labels are the *targets*.
* The model is any callable returning logits ``(B, K)``. Attacks never call ``model.eval()`` or
  ``model.train()``, never touch parameters' ``requires_grad`` or ``.data``, and take gradients
  with respect to the input only (``torch.autograd.grad``), so no ``.grad`` is left on the model.
  A stochastic model keeps its randomness on; use EOT (``eot=n`` or ``EOT(attack, n=...)``).
* Success is decided from the top-1 label of one forward pass on the returned point:
  untargeted ``argmax != y``, targeted ``argmax == y``.
* Device-agnostic: everything runs on ``x.device``; seeded generators are created there.
"""
from __future__ import annotations

import abc
import copy
import inspect
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Iterator, Literal

import torch
from torch import Tensor

from ..errors import InputError, InputTypeError, unknown
from ..threats import Box, L1Ball, L2Ball, LinfBall, ThreatModel, check_images
from .gradients import loss_and_grad, loss_and_logits
from .losses import REFERENCE_LOSSES, get_loss

__all__ = ["AttackResult", "Attack", "GradientAttack", "RestartAttack", "Perturbation"]

_THREAT_NAMES = {"linf": LinfBall, "l2": L2Ball, "l1": L1Ball, "box": Box}


@dataclass
class AttackResult:
    """What ``Attack.run`` returns; one entry per sample.

    Attributes:
        x_adv: ``(B, C, H, W)`` adversarial inputs, inside the threat set and [0, 1].
        success: ``(B,)`` bool: the model's top-1 label on ``x_adv`` differs from ``y``
            (targeted: equals ``y``). Within the threat set by construction.
        distance: ``(B,)`` float: ``||x_adv - x||`` in the attack's norm (the threat's norm;
            L-inf for a ``Box``; L2 for C&W/boundary without a threat; pixel count for few-pixel).
        queries: ``(B,)`` long: model evaluations the algorithm spent per sample (a
            forward+backward counts as one; EOT draws count each), not counting the final check.
        steps: iterations run (summed over restarts / binary-search steps).
        pred: ``(B,)`` long: the top-1 label on ``x_adv`` used for ``success``.
        extras: attack-specific records (e.g. the boundary attack's distance history).
    """

    x_adv: Tensor
    success: Tensor
    distance: Tensor
    queries: Tensor
    steps: int
    pred: Tensor
    extras: dict[str, Any] = field(default_factory=dict)

    @property
    def success_rate(self) -> float:
        """Fraction of samples attacked successfully (a host sync; for reporting)."""
        return float(self.success.float().mean()) if self.success.numel() else 0.0


@dataclass
class Perturbation:
    """What an attack's ``_perturb`` returns to the base class (before projection and checks)."""

    x_adv: Tensor
    queries: Tensor | int
    steps: int
    extras: dict[str, Any] = field(default_factory=dict)


# --- argument checks (used by every attack's constructor) -------------------------------------

def check_int(name: str, value: Any, *, minimum: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InputTypeError(f"{name}: expected an integer, got {type(value).__name__} {value!r}")
    if value < minimum:
        raise InputError(f"{name}: must be an integer >= {minimum}, got {value}")
    return int(value)


def check_float(name: str, value: Any, *, minimum: float | None = 0.0, maximum: float | None = None,
                strict: bool = False) -> float:
    if isinstance(value, Tensor) and value.numel() == 1:
        value = float(value)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InputTypeError(f"{name}: expected a number, got {type(value).__name__} {value!r}")
    value = float(value)
    if value != value or value in (float("inf"), float("-inf")):
        raise InputError(f"{name}: must be finite, got {value}")
    if minimum is not None and (value < minimum or (strict and value == minimum)):
        rel = ">" if strict else ">="
        raise InputError(f"{name}: must be {rel} {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise InputError(f"{name}: must be <= {maximum}, got {value}")
    return value


def check_bool(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise InputTypeError(f"{name}: expected a bool, got {type(value).__name__} {value!r}")
    return value


def check_optional_int(name: str, value: Any, *, minimum: int = 1) -> int | None:
    return None if value is None else check_int(name, value, minimum=minimum)


def check_seed(value: Any) -> int | None:
    return None if value is None else check_int("seed", value, minimum=0)


def check_threat(owner: str, threat: Any, allowed: tuple[str, ...]) -> ThreatModel | None:
    """Validate that ``threat`` is one of the allowed sets (``"none"`` allows ``None``)."""
    if threat is None:
        if "none" in allowed:
            return None
        raise InputError(f"{owner}: a threat set is required; choose one of: "
                         + ", ".join(_THREAT_NAMES[a].__name__ for a in allowed if a != "none"))
    if not isinstance(threat, ThreatModel):
        raise InputTypeError(f"{owner}: threat must be a threat set (LinfBall, L2Ball, L1Ball, Box), "
                             f"got {type(threat).__name__}; build one with threat_from_name(norm, eps)")
    if threat.norm not in allowed:
        names = [_THREAT_NAMES[a].__name__ for a in allowed if a != "none"]
        if "none" in allowed:
            names.append("None")
        raise InputError(f"{owner}: threat {type(threat).__name__} ({threat.norm}) is not supported; "
                         f"choose one of: {', '.join(names)}")
    return threat


# --- base classes -----------------------------------------------------------------------------

class Attack(abc.ABC):
    """Base of every attack: validation, projection onto the set and success, in one place.

    Subclasses set ``threats`` (the allowed sets: any of ``linf``, ``l2``, ``l1``, ``box``,
    ``none``) and implement ``_perturb(x, y, generator) -> Perturbation``; they register under a
    name with ``@register_attack("name")`` (``attacks.registry``). What the rest of the package
    needs to know about an attack is declared here, on the class (see the registry's docstring).
    """

    threats: ClassVar[tuple[str, ...]] = ("linf", "l2", "l1", "box")
    default_norm: ClassVar[float] = 2.0  # distance norm when the threat is None
    #: the registered name (set by ``register_attack``); None for an unregistered class
    name: ClassVar[str | None] = None
    #: whether the attack differentiates the evaluated model (True for every GradientAttack)
    uses_gradient: ClassVar[bool] = False
    #: whether ``make_attack`` builds it from a name and settings (False: built around another attack)
    by_name: ClassVar[bool] = True
    #: settings that cap the model queries per sample; an EOT run multiplies them by the draws
    query_budgets: ClassVar[tuple[str, ...]] = ()

    @classmethod
    def default_settings(cls) -> dict[str, Any]:
        """The keyword-only constructor settings and their defaults (``inspect.Parameter.empty``
        for a required one): what a suite item or ``--option`` may set."""
        return {p.name: p.default for p in inspect.signature(cls.__init__).parameters.values()
                if p.kind is inspect.Parameter.KEYWORD_ONLY}

    @classmethod
    def eot_kind(cls) -> Literal["gradient", "vote"] | None:
        """How the attack takes EOT on a stochastic model: ``"gradient"`` (gradients averaged over
        the draws), ``"vote"`` (a majority-vote label oracle and mean scores) or None (no ``eot``
        setting: it runs once, on single draws)."""
        if "eot" not in cls.default_settings():
            return None
        return "gradient" if cls.uses_gradient else "vote"

    @classmethod
    def eot_settings(cls, samples: int, settings: dict[str, Any]) -> dict[str, Any]:
        """What a suite's EOT run of the attack sets on top of the item's ``settings``: ``samples``
        draws (AutoAttack also switches to its ``rand`` version)."""
        return {"eot": samples}

    @classmethod
    def record_names(cls, settings: dict[str, Any]) -> list[str]:
        """Per-sample records besides success and distance that ``run`` returns, with these
        ``settings``, in ``extras["records"]`` (``{name: (B,) tensor or list of bool, int, float
        or str}``); a suite item stores each as a column: ``"KIND"`` as ``KIND|ATTACK|SET``,
        ``"KIND/SUB"`` as ``KIND|ATTACK/SUB|SET`` (see :mod:`robustsuite.eval.metrics`). None by
        default (AutoAttack: which component broke each sample)."""
        return []

    def __init__(self, model: Callable[[Tensor], Tensor], threat: ThreatModel | None, *,
                 targeted: bool = False, seed: int | None = 0):
        if not callable(model):
            raise InputTypeError(f"{type(self).__name__}: model must be callable (an nn.Module returning "
                                 f"logits), got {type(model).__name__}")
        self.model = model
        self.threat = check_threat(type(self).__name__, threat, self.threats)
        self.targeted = check_bool("targeted", targeted)
        self.seed = check_seed(seed)

    # --- public API ----------------------------------------------------------------------
    def __call__(self, x: Tensor, y: Tensor) -> Tensor:
        """Adversarial inputs ``(B, C, H, W)`` for ``x`` with labels ``y`` (no success check)."""
        x, y = self._validate(x, y)
        return self._generate(x, y)[0]

    def run(self, x: Tensor, y: Tensor) -> AttackResult:
        """Attack ``x`` (B, C, H, W) with labels ``y`` (B,); return the :class:`AttackResult`."""
        x, y = self._validate(x, y)
        x_adv, pert = self._generate(x, y)
        pred = self.predict(x_adv)
        success = self._is_success(pred, y)
        queries = pert.queries
        if not isinstance(queries, Tensor):
            queries = torch.full((x.shape[0],), int(queries), dtype=torch.long, device=x.device)
        return AttackResult(x_adv=x_adv, success=success, distance=self._distance(x, x_adv),
                            queries=queries, steps=int(pert.steps), pred=pred, extras=pert.extras)

    def predict(self, x: Tensor) -> Tensor:
        """Top-1 labels (B,) of the model on ``x``: the only model output decisions use."""
        with torch.no_grad():
            return self.model(x).argmax(1)

    def with_threat(self, threat: ThreatModel | None) -> "Attack":
        """A copy of this attack on another threat set (e.g. a slice of a per-sample ``Box``)."""
        new = copy.copy(self)
        new.threat = check_threat(type(self).__name__, threat, self.threats)
        return new

    def __repr__(self) -> str:
        keys = [k for k in vars(self) if k not in ("model",) and not k.startswith("_")]
        args = ", ".join(f"{k}={getattr(self, k)!r}" for k in keys)
        return f"{type(self).__name__}({args})"

    # --- the template ------------------------------------------------------------------------
    @abc.abstractmethod
    def _perturb(self, x: Tensor, y: Tensor, generator: torch.Generator | None) -> Perturbation:
        """The algorithm: adversarial candidates for validated ``x``, ``y``."""

    def _generate(self, x: Tensor, y: Tensor) -> tuple[Tensor, Perturbation]:
        pert = self._perturb(x, y, self._generator(x.device))
        return self.project(x, pert.x_adv.detach()), pert

    def project(self, x: Tensor, x_adv: Tensor) -> Tensor:
        """Exact projection onto the threat set around ``x`` intersected with [0, 1]."""
        if self.threat is None:
            return x_adv.clamp(0, 1)
        return self.threat.project(x, x_adv)

    @property
    def labels_are_targets(self) -> bool:
        """Whether ``y`` holds target labels (success: top-1 equals ``y``) rather than the true
        labels (success: top-1 differs). Equals ``targeted`` except for attacks that pick their
        own targets from the true labels (APGD-T)."""
        return self.targeted

    def _is_success(self, pred: Tensor, y: Tensor) -> Tensor:
        return pred == y if self.labels_are_targets else pred != y

    def _distance(self, x: Tensor, x_adv: Tensor) -> Tensor:
        if self.threat is None:
            return torch.linalg.vector_norm((x_adv - x).flatten(1), ord=self.default_norm, dim=1)
        return self.threat.distance(x, x_adv)

    def _generator(self, device: torch.device) -> torch.Generator | None:
        if self.seed is None:
            return None
        return torch.Generator(device=device).manual_seed(self.seed)

    def _check_images(self, x: Tensor) -> None:
        """x in [0, 1], finite, and fitting the threat set. The common case costs one fused pass
        (``aminmax`` propagates NaN, so any NaN/inf/out-of-range value fails it); anything
        unusual goes through the threat's own ``check``, which raises the standard error."""
        threat = self.threat
        ok = False
        if x.is_floating_point() and x.numel() > 0:
            lo, hi = torch.aminmax(x)
            ok = bool((lo >= 0) & (hi <= 1))
        if not ok:  # raise the standard error (or accept what the threat's check accepts)
            check_images(x, "x") if threat is None else threat.check(x, "x")
        elif isinstance(threat, Box):
            threat.check_against(x)
        elif threat is not None and type(threat).check is not ThreatModel.check:
            threat.check(x, "x")  # a threat set with checks of its own

    def _validate(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        if not isinstance(x, Tensor):
            raise InputTypeError(f"x: expected a torch.Tensor of images (B, C, H, W), got {type(x).__name__}")
        if x.dim() != 4:
            raise InputError(f"x: expected 4 dimensions (B, C, H, W), got shape {tuple(x.shape)}")
        if x.shape[0] == 0:
            raise InputError("x: the batch is empty")
        self._check_images(x)
        if not isinstance(y, Tensor):
            raise InputTypeError(f"y: expected a torch.Tensor of labels (B,), got {type(y).__name__}")
        if y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
            raise InputError(f"y: expected an integer tensor of class indices, got dtype {y.dtype}")
        if y.dim() != 1 or y.shape[0] != x.shape[0]:
            raise InputError(f"y: expected shape ({x.shape[0]},) to match x's batch, got {tuple(y.shape)}")
        if bool((y < 0).any()):
            raise InputError(f"y: class indices must be >= 0, got min {int(y.min())}")
        return x, y.to(device=x.device, dtype=torch.long)


class GradientAttack(Attack):
    """Base of the white-box attacks: the loss and its (EOT-averaged) input gradient.

    Settings shared by every gradient attack:
        loss (str): ``"ce"`` (default), ``"margin"`` (C&W margin) or what the class's ``losses``
            adds (``"dlr"``: APGD; ``"kl"``: PGD, TRADES' KL from the clean prediction); see
            ``attacks.losses``.
        targeted (bool): ``y`` are target labels. (Default: False)
        eot (int): draws of a stochastic model's randomness averaged per gradient, >= 1.
            (Default: 1)
        max_batch (int | None): most rows per forward pass for EOT replication; None: all.
    """

    losses: ClassVar[tuple[str, ...]] = ("ce", "margin")
    uses_gradient: ClassVar[bool] = True

    def __init__(self, model, threat, *, loss: str = "ce", targeted: bool = False, eot: int = 1,
                 max_batch: int | None = None, seed: int | None = 0):
        super().__init__(model, threat, targeted=targeted, seed=seed)
        if not isinstance(loss, str) or loss.lower() not in self.losses:
            raise unknown("loss", loss, self.losses)
        self.loss = loss.lower()
        if self.loss in REFERENCE_LOSSES and self.targeted:
            raise InputError(f"loss: {self.loss!r} is untargeted only; use 'ce' or 'margin' with targeted=True")
        self.eot = check_int("eot", eot, minimum=1)
        self.max_batch = check_optional_int("max_batch", max_batch, minimum=1)

    def _loss_fn(self) -> Callable[[Tensor, Tensor], Tensor]:
        fn, targeted = get_loss(self.loss), self.targeted
        return lambda logits, y: fn(logits, y, targeted)

    def _loss_reference(self, x: Tensor, y: Tensor) -> Tensor:
        """What the loss compares the logits with: the labels ``y`` (B,), or for a reference loss
        (``"kl"``) the clean logits (B, K), EOT-averaged, from one forward pass without gradients
        (the only extra model call; it counts ``eot`` queries)."""
        if self.loss not in REFERENCE_LOSSES:
            return y
        return self._loss_and_logits(x, y, loss_fn=lambda z, t: z.new_zeros(z.shape[0]))[1]

    def _loss_and_grad(self, x: Tensor, y: Tensor, *, loss_fn=None, check_labels: bool = False
                       ) -> tuple[Tensor, Tensor, Tensor]:
        return loss_and_grad(self.model, x, y, loss_fn or self._loss_fn(), n=self.eot,
                             max_batch=self.max_batch, check_labels=check_labels)

    def _loss_and_logits(self, x: Tensor, y: Tensor, *, loss_fn=None) -> tuple[Tensor, Tensor]:
        return loss_and_logits(self.model, x, y, loss_fn or self._loss_fn(), n=self.eot,
                               max_batch=self.max_batch)

    def gradient(self, x: Tensor, y: Tensor) -> Tensor:
        """The attack loss's input gradient at ``x`` (B, ...), averaged over ``eot`` draws."""
        x, y = self._validate(x, y)
        y_loss = self._loss_reference(x, y)
        return self._loss_and_grad(x, y_loss, check_labels=y_loss is y)[1]


class RestartAttack(GradientAttack):
    """Base of the gradient attacks with random restarts (FGSM/BIM/PGD/MIM, APGD): keeps, per
    sample, the worst case over ``self.restarts`` runs in one place.

    The rule (as torchattacks' and AutoAttack's restarts): the first restart whose returned point
    is adversarial, otherwise the one with the highest loss at its returned point. Later successes
    never replace an earlier one, so a noisy success of a stochastic model is not cherry-picked.
    """

    def __init__(self, model, threat, *, restarts: int = 1, loss: str = "ce", targeted: bool = False,
                 eot: int = 1, max_batch: int | None = None, seed: int | None = 0):
        super().__init__(model, threat, loss=loss, targeted=targeted, eot=eot, max_batch=max_batch,
                         seed=seed)
        self.restarts = check_int("restarts", restarts, minimum=1)

    @staticmethod
    def keep_worst_case(runs: Iterator[tuple[Tensor, Tensor | None, Tensor | None]]
                        ) -> tuple[Tensor, Tensor | None, Tensor | None]:
        """Fold the restarts ``runs`` (evaluated lazily, one after the other) into the worst case.

        Each run yields ``(x_adv (B, ...), success (B,) bool, loss (B,))``; with a single run its
        ``success``/``loss`` are not looked at and may be None (no extra forward pass is needed).
        Returns ``(x_adv, success, loss)`` of the kept points. No host sync.
        """
        best_x = best_ok = best_loss = None
        for x_r, ok, loss in runs:
            if best_x is None:
                best_x, best_ok, best_loss = x_r, ok, loss
                continue
            take = ~best_ok & (ok | (loss > best_loss))
            best_x = torch.where(take.view(-1, *([1] * (x_r.dim() - 1))), x_r, best_x)
            best_ok = best_ok | ok
            best_loss = torch.where(take, loss, best_loss)
        return best_x, best_ok, best_loss
