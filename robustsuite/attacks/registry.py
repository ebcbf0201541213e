"""Attacks by name: the one registry, and robust accuracy (the API the CLI's ``robustsuite attack`` calls).

Every attack registers itself where it is defined, with a class decorator::

    @register_attack("pgd")
    class PGD(IterativeAttack): ...

and everything other parts need is read from the class, never from a list kept elsewhere:

* :data:`ATTACKS` (name -> class) and :func:`attack_names`: suite validation, the CLI's choices;
* ``cls.threats``: the threat kinds it supports (``linf``, ``l2``, ``l1``, ``box``, ``none``);
* ``cls.uses_gradient``: whether it differentiates the evaluated model (True for every
  :class:`~robustsuite.attacks.base.GradientAttack`); the evaluator's gradient-masking check
  compares the attacks without it against those with it;
* ``cls.eot_kind()``: how it takes EOT on stochastic models: ``"gradient"`` (averaged gradients),
  ``"vote"`` (a majority-vote label oracle: Square, boundary) or None; derived from whether the
  constructor has an ``eot`` setting;
* ``cls.query_budgets``: settings that cap model queries (scaled by the EOT samples in EOT runs);
* ``cls.default_settings()``: the keyword-only settings with their defaults;
* ``cls.by_name``: False for an attack built around another attack (``transfer``), which
  :func:`make_attack` cannot build from a name and settings.

Example (what ``robustsuite attack CKPT --attack pgd --norm linf --eps 0.1 --set steps=20`` does)::

    threat = threat_from_name("linf", 0.1)
    atk = make_attack("pgd", model, threat, steps=20)
    report = robust_accuracy(model, x, y, atk, batch_size=256)
    # {"clean_accuracy": ..., "robust_accuracy": ..., "asr": ..., "n": ...}
"""
from __future__ import annotations

import re
from typing import Any, Callable, TypeVar

import torch
from torch import Tensor

from ..errors import InputError, InputTypeError, unknown
from ..threats import Box, ThreatModel, check_images
from .base import Attack

__all__ = ["ATTACKS", "register_attack", "attack_class", "attack_names", "canonical_attack_name",
           "make_attack", "attack_settings", "robust_accuracy"]

#: attack name (canonical: lowercase letters and digits) -> class; filled by :func:`register_attack`
ATTACKS: dict[str, type[Attack]] = {}

_A = TypeVar("_A", bound=type)
_NAME = re.compile(r"^[a-z][a-z0-9]*$")


def canonical_attack_name(name: Any) -> str:
    """``name`` as the registry spells it: lowercase, without ``-`` and ``_`` (``APGD``, ``a-pgd``
    -> ``apgd``). Non-strings are returned as their ``str``."""
    return str(name).lower().replace("-", "").replace("_", "")


def register_attack(name: str) -> Callable[[_A], _A]:
    """Class decorator: register an :class:`~robustsuite.attacks.base.Attack` subclass as ``name``.

    ``name`` must already be canonical (lowercase letters and digits, starting with a letter); the
    class gets it as ``cls.name``. Registering a second class under a taken name raises (two
    attacks cannot share a name); registering the same class again is a no-op.
    """
    if not isinstance(name, str) or not _NAME.match(name):
        raise InputError(f"register_attack: the name must be lowercase letters and digits starting with "
                         f"a letter (it is matched after removing '-' and '_'), got {name!r}")

    def deco(cls: _A) -> _A:
        if not (isinstance(cls, type) and issubclass(cls, Attack)):
            raise InputTypeError(f"register_attack({name!r}): expected a subclass of robustsuite.attacks.Attack, "
                                 f"got {cls!r}")
        bad = sorted(set(cls.threats) - {"linf", "l2", "l1", "box", "none"})
        if bad or not cls.threats:
            raise InputError(f"register_attack({name!r}): {cls.__name__}.threats must be a non-empty tuple of "
                             f"linf, l2, l1, box, none; got {cls.threats!r}")
        old = ATTACKS.get(name)
        if old is not None and old is not cls:
            raise InputError(f"register_attack: the name {name!r} is taken by {old.__module__}.{old.__qualname__}; "
                             f"choose another name for {cls.__module__}.{cls.__qualname__}")
        cls.name = name
        ATTACKS[name] = cls
        return cls

    return deco


def attack_class(name: str) -> type[Attack]:
    """The class registered as ``name`` (any case, ``-``/``_`` ignored); unknown names raise an
    error listing the registered ones."""
    if not isinstance(name, str) or canonical_attack_name(name) not in ATTACKS:
        raise unknown("attack", name, ATTACKS)
    return ATTACKS[canonical_attack_name(name)]


def attack_names(*, by_name: bool = True, eot: bool | None = None, gradient: bool | None = None) -> list[str]:
    """Registered attack names, sorted.

    Args:
        by_name: only attacks :func:`make_attack` builds from a name and settings (the CLI's
            ``--attack`` choices, a transfer attack's inner attack); False adds ``transfer``.
        eot: if given, only attacks that take EOT (True) or do not (False).
        gradient: if given, only attacks that use (True) or do not use (False) the model's gradient.
    """
    return sorted(n for n, c in ATTACKS.items()
                  if (c.by_name or not by_name)
                  and (eot is None or (c.eot_kind() is not None) == eot)
                  and (gradient is None or c.uses_gradient == gradient))


def attack_settings(name: str) -> dict[str, Any]:
    """The settings an attack takes, with their defaults (``inspect.Parameter.empty`` if none)."""
    return attack_class(name).default_settings()


def make_attack(name: str, model: Callable[[Tensor], Tensor], threat: ThreatModel | None,
                **settings: Any) -> Attack:
    """Build the attack called ``name`` (see :data:`ATTACKS`) on ``model`` and ``threat``.

    Unknown names and unknown settings raise errors that list the allowed ones; setting values
    are validated by the attack's constructor.
    """
    cls = attack_class(name)
    if not cls.by_name:
        raise InputError(f"attack: {cls.name!r} is built around another attack, not by name "
                         f"(e.g. {cls.__name__}(make_attack('pgd', source_model, threat), model)); "
                         f"attacks built by name: {', '.join(attack_names())}")
    allowed = cls.default_settings()
    bad = sorted(set(settings) - set(allowed))
    if bad:
        raise InputError(f"{cls.__name__}: unknown setting(s) {', '.join(map(repr, bad))}; "
                         f"choose from: {', '.join(sorted(allowed))}")
    return cls(model, threat, **settings)


def _model_device(model, fallback: torch.device) -> torch.device:
    if isinstance(model, torch.nn.Module):
        for p in model.parameters():
            return p.device
        for b in model.buffers():
            return b.device
    return fallback


def robust_accuracy(model: Callable[[Tensor], Tensor], x: Tensor, y: Tensor, attack: Attack, *,
                    batch_size: int = 256, device: str | torch.device | None = None,
                    return_records: bool = False) -> dict[str, Any]:
    """Clean and robust accuracy of ``model`` on ``(x, y)`` under an untargeted ``attack``.

    A sample counts as robust when the model classifies it correctly *and* the attack fails.
    Batches of ``batch_size`` go to ``device`` (default: the model's parameters' device). A
    per-sample ``Box`` threat (lower/upper with a batch axis of ``len(x)``) is sliced with the data.

    Returns ``{"clean_accuracy", "robust_accuracy", "asr", "n"}`` where ``asr`` (attack success
    rate) is over the clean-correct samples (0.0 when there are none). With ``return_records``
    also ``"records"``: per-sample dicts (index, label, clean_pred, clean_correct, success,
    distance, queries).
    """
    if not isinstance(attack, Attack):
        raise InputTypeError(f"attack: expected a robustsuite attack, got {type(attack).__name__}")
    if attack.labels_are_targets:
        raise InputError("attack: robust accuracy needs the true labels, so an untargeted attack "
                         "(targeted=False) or one that picks its own targets (APGD with loss='dlr')")
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise InputError(f"batch_size: must be an integer >= 1, got {batch_size!r}")
    check_images(x, "x", ndim=4)
    if not isinstance(y, Tensor) or y.dim() != 1 or y.shape[0] != x.shape[0]:
        raise InputError(f"y: expected a (N,) label tensor matching x's {x.shape[0]} samples, "
                         f"got {tuple(y.shape) if isinstance(y, Tensor) else type(y).__name__}")
    dev = torch.device(device) if device is not None else _model_device(model, x.device)
    n = x.shape[0]
    per_sample_box = isinstance(attack.threat, Box) and attack.threat.lower.dim() == 4 \
        and attack.threat.lower.shape[0] == n and n > 1
    clean, success, dist, queries, preds = [], [], [], [], []
    for start in range(0, n, batch_size):
        sl = slice(start, min(n, start + batch_size))
        xb, yb = x[sl].to(dev), y[sl].to(dev)
        atk = attack.with_threat(attack.threat[sl].to(dev)) if per_sample_box else attack
        with torch.no_grad():
            pred = model(xb).argmax(1)
        res = atk.run(xb, yb)
        preds.append(pred.cpu())
        clean.append((pred == yb).cpu())
        success.append(res.success.cpu())
        dist.append(res.distance.detach().cpu())
        queries.append(res.queries.cpu())
    clean_t, succ_t = torch.cat(clean), torch.cat(success)
    robust = clean_t & ~succ_t
    n_clean = int(clean_t.sum())
    out: dict[str, Any] = {
        "clean_accuracy": float(clean_t.float().mean()),
        "robust_accuracy": float(robust.float().mean()),
        "asr": float((clean_t & succ_t).sum()) / n_clean if n_clean else 0.0,
        "n": n,
    }
    if return_records:
        cols = zip(y.tolist(), torch.cat(preds).tolist(), clean_t.tolist(), succ_t.tolist(),
                   torch.cat(dist).tolist(), torch.cat(queries).tolist())
        out["records"] = [
            {"index": i, "label": int(label), "clean_pred": int(pred), "clean_correct": bool(clean),
             "success": bool(succ), "distance": float(d), "queries": int(q)}
            for i, (label, pred, clean, succ, d, q) in enumerate(cols)
        ]
    return out
