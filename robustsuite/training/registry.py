"""The trainer registry: ``train.method`` -> (its config class, its trainer class), one table.

A trainer registers itself where it is defined, with the config class of its ``train`` section::

    @register_trainer("pgd_at", config=PGDATConfig)
    class PGDATTrainer(AdversarialTrainer):
        ...

Everything else reads this table: config validation (``train.method`` picks the config class, and an
unknown method's error lists :func:`methods`), :func:`robustsuite.training.run.train` (the trainer
class), the stochastic part's exports. ``training`` imports none of the parts that define trainers
(``certify``, ``budgets``, ``stochastic``): ``robustsuite/__init__.py`` imports them, so any import of
``robustsuite.x`` fills the table before it is read.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, TypeVar

from ..errors import unknown

if TYPE_CHECKING:  # for the annotations only
    from .config import TrainBase
    from .loop import Trainer

__all__ = ["TrainerEntry", "register_trainer", "trainer_entry", "trainer_class", "train_config_class", "methods",
           "entries"]

T = TypeVar("T", bound=type)


@dataclass(frozen=True)
class TrainerEntry:
    """One ``train.method``: the pydantic class of its ``train`` section and the trainer that runs it
    (``trainer(model, train_set, val_set, run_config, out_dir, device, quiet=...)``)."""

    method: str
    config: "type[TrainBase]"
    trainer: "type[Trainer]"


_TRAINERS: dict[str, TrainerEntry] = {}


def register_trainer(*methods: str, config: "type[TrainBase]") -> Callable[[T], T]:
    """Class decorator: ``train.method: <m>`` (for each of ``methods``) validates its ``train`` section
    with ``config`` and trains with the decorated class. A class that names no checkpoint ``kind`` of
    its own (neither it nor a base other than :class:`~robustsuite.training.loop.Trainer`) gets the
    first method as its ``kind``.

    Raises:
        ValueError: no method given, ``config`` is not a class, or a method is already registered to
            another trainer or config (two parts would silently fight over one name); the same classes
            registered again (a module imported a second time) replace the old entry.
    """
    if not methods or not all(isinstance(m, str) and m for m in methods):
        raise ValueError(f"register_trainer: give one or more method names, got {methods!r}")
    if not isinstance(config, type):
        raise ValueError(f"register_trainer({', '.join(methods)}): config must be a class, got {config!r}")

    def decorate(cls: T) -> T:
        for m in methods:
            old = _TRAINERS.get(m)
            # a module imported again (a reload, a script run as __main__) registers its own classes anew
            same = old is not None and all(
                (getattr(o, "__module__", None), o.__qualname__) == (getattr(n, "__module__", None), n.__qualname__)
                for o, n in ((old.trainer, cls), (old.config, config)))
            if old is not None and not same:
                raise ValueError(f"train.method {m!r} is already registered to {old.trainer.__qualname__} "
                                 f"({old.config.__qualname__}); choose another name")
            _TRAINERS[m] = TrainerEntry(m, config, cls)
        if getattr(cls, "kind", "base") == "base":  # a checkpoint records its trainer's kind: by default its method
            cls.kind = methods[0]
        return cls

    return decorate


def methods() -> list[str]:
    """The registered ``train.method`` names, sorted."""
    return sorted(_TRAINERS)


def entries() -> dict[str, TrainerEntry]:
    """A copy of the table (method -> entry)."""
    return dict(_TRAINERS)


def trainer_entry(method: str) -> TrainerEntry:
    """The entry of ``method``, or :class:`~robustsuite.errors.UnknownNameError` listing the methods."""
    if not isinstance(method, str) or method not in _TRAINERS:
        raise unknown("train.method", method, _TRAINERS)
    return _TRAINERS[method]


def trainer_class(method: str) -> "type[Trainer]":
    """The trainer class of ``method``."""
    return trainer_entry(method).trainer


def train_config_class(method: str) -> "type[TrainBase]":
    """The config class of ``method``'s ``train`` section."""
    return trainer_entry(method).config
