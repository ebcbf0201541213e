"""Attacks by name: the one registry (robust accuracy: :mod:`robustsuite.attacks.robustness`).

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
    report = robust_accuracy(model, x, y, atk, batch_size=256)   # attacks.robustness
    # {"clean_accuracy": ..., "robust_accuracy": ..., "asr": ..., "n": ...}
"""
from __future__ import annotations

import re
from typing import Any, Callable, TypeVar

from torch import Tensor

from ..errors import InputError, InputTypeError, unknown
from ..threats import ThreatModel
from .base import Attack

__all__ = ["ATTACKS", "register_attack", "attack_class", "attack_names", "canonical_attack_name",
           "make_attack", "attack_settings"]

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
