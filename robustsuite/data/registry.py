"""The data set registry: what each set is (:class:`DatasetInfo`), which options it takes, how it loads.

Each data set registers itself in the module that loads it, with :func:`register_dataset` (its
options and their checks, classes, image shape, normalization statistics and loader);
``robustsuite/data/__init__.py`` imports those modules (``digits``, ``torchvision_sets``,
``synthetic``, ``npz``, in that order, which is the order of :func:`available`), and this module
imports none of them::

    register_dataset("digits", options={"size": positive_int}, num_classes=10,
                     shape=lambda opts: (1, opts["size"] or 8, opts["size"] or 8),
                     mean=DIGITS_MEAN, std=DIGITS_STD,
                     build=lambda split, root, download, opts: load_digits_split(split, opts["size"]))

``load(name, split, root=None, download=False, **options)`` validates everything at this edge (name,
split, root, download, every option through its check) and then calls the set's loader. The options
of the built-in sets are listed in the package docstring (:mod:`robustsuite.data`).
"""
from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Union

from torch.utils.data import Dataset

from ..errors import ConfigError, unknown

SPLITS = ("train", "test")

__all__ = ["DatasetInfo", "DatasetEntry", "register_dataset", "unregister_dataset", "available", "info", "load",
           "positive_int", "seed", "boolean", "choice", "SPLITS"]


@dataclass(frozen=True)
class DatasetInfo:
    """What a model needs to know about a data set.

    Attributes:
        name: the registry name.
        shape: (C, H, W) of one image, for the options given to :func:`info`/:func:`load`.
        num_classes: number of labels (labels are 0 .. num_classes - 1).
        mean, std: per-channel pixel mean and standard deviation in [0, 1] units, for the model's
            Normalize layer. The usual published values for MNIST/CIFAR/SVHN; the train split at 8x8
            for digits; synthetic sets use their base data set's values.
    """

    name: str
    shape: tuple[int, int, int]
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]


# -- option checks: ``check(data set name, option, value) -> normalized value``, or ConfigError naming
# the option; None is "not given" and each check says what it becomes --------------------------------
#: the type of an option check
OptionCheck = Callable[[str, str, Any], Any]


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def positive_int(name: str, option: str, value: Any) -> Any:
    """An integer > 0, or None."""
    if value is not None and (not _is_int(value) or value <= 0):
        raise ConfigError(f"{name}: option {option!r} must be an integer > 0, got {value!r}")
    return value


def seed(name: str, option: str, value: Any) -> Any:
    """An integer >= 0; None means 0."""
    if value is None:
        return 0
    if not _is_int(value) or value < 0:
        raise ConfigError(f"{name}: option {option!r} must be an integer >= 0, got {value!r}")
    return value


def boolean(name: str, option: str, value: Any) -> Any:
    """True, False or None."""
    if value is not None and not isinstance(value, bool):
        raise ConfigError(f"{name}: option {option!r} must be true or false, got {value!r}")
    return value


def choice(choices: tuple[str, ...]) -> OptionCheck:
    """A check for an option with a fixed set of values; None means the first."""
    def check(name: str, option: str, value: Any) -> Any:
        if value is None:
            return choices[0]
        if value not in choices:
            raise ConfigError(f"{name}: option {option!r}: unknown value {value!r}; choose one of: "
                              f"{', '.join(choices)}")
        return value
    return check


Shape = tuple[int, int, int]
#: ``build(split, root, download, opts) -> Dataset``: opts holds every declared option, checked
Loader = Callable[[str, Any, bool, dict], Dataset]
#: ``describe(opts) -> (num_classes, mean, std)`` for sets whose classes and statistics come from the data
Describe = Callable[[dict], tuple[int, tuple[float, ...], tuple[float, ...]]]


@dataclass(frozen=True)
class DatasetEntry:
    """One registered data set (see :func:`register_dataset` for the fields)."""

    name: str
    options: Mapping[str, OptionCheck]
    shape: Callable[[dict], Shape]
    build: Loader
    num_classes: int | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    describe: Describe | None = None

    def describe_classes(self, opts: dict) -> tuple[int, tuple[float, ...], tuple[float, ...]]:
        """(num_classes, mean, std) for the checked options ``opts``."""
        if self.describe is not None:
            return self.describe(opts)
        return self.num_classes, self.mean, self.std  # type: ignore[return-value]


#: name -> entry, in registration order: the order of :func:`available` (the embedded digits first)
_REGISTRY: dict[str, DatasetEntry] = {}


def _where(fn: Callable[..., Any]) -> str:
    """``module.qualname (line N)`` of a loader: what an error names, and what tells a re-registration of
    the same definition (a module imported again) from a clash (two lambdas share a qualname, not a line)."""
    code = getattr(fn, "__code__", None)
    line = f" (line {code.co_firstlineno})" if code is not None else ""
    return f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', repr(fn))}{line}"


def _stats(name: str, field: str, value: Any) -> tuple[float, ...]:
    if isinstance(value, (str, bytes)) or not isinstance(value, (tuple, list)) or not value \
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
        raise ValueError(f"register_dataset({name!r}): {field} must be a tuple of numbers, one per channel, "
                         f"got {value!r}")
    return tuple(float(v) for v in value)


def register_dataset(name: str, *, options: Mapping[str, OptionCheck] | None = None,
                     shape: Union[Shape, Callable[[dict], Shape]], build: Loader,
                     num_classes: int | None = None, mean: tuple[float, ...] | None = None,
                     std: tuple[float, ...] | None = None, describe: Describe | None = None) -> DatasetEntry:
    """Make ``name`` a data set :func:`load` and :func:`info` accept.

    Args:
        name: lower-case registry name (``data.name`` in a config; lookups are case-insensitive).
        options: option name -> check (:func:`positive_int`, :func:`seed`, :func:`boolean`,
            :func:`choice` or your own ``check(name, option, value) -> value``); the only keyword
            options :func:`load` accepts, each passed to ``build`` checked (None when not given and
            the check keeps None).
        shape: (C, H, W) of one image, or ``shape(opts) -> (C, H, W)`` when options change it.
        build: ``build(split, root, download, opts) -> Dataset`` of (image float32 (C, H, W) in [0, 1],
            label int) pairs, e.g. an :class:`~robustsuite.data.ImageTensorDataset`.
        num_classes, mean, std: the number of labels and the per-channel pixel statistics for the
            model's Normalize layer; or instead
        describe: ``describe(opts) -> (num_classes, mean, std)`` for sets whose classes and statistics
            come from the data itself (``npz``).
    Returns:
        The entry.
    Raises:
        ValueError: a bad name, check or description, or ``name`` already registered with another
            loader (both are named); the same loader registered again (a module imported a second
            time) replaces its old entry.
    """
    if not isinstance(name, str) or not name or name != name.lower() or not name.replace("_", "").isalnum():
        raise ValueError(f"register_dataset: name must be lower-case letters, digits and '_', got {name!r}")
    options = dict(options or {})
    for option, check in options.items():
        if not isinstance(option, str) or not option.isidentifier() or not callable(check):
            raise ValueError(f"register_dataset({name!r}): options must map option names to checks "
                             f"check(name, option, value), got {option!r}: {check!r}")
    if not callable(build):
        raise ValueError(f"register_dataset({name!r}): build must be callable, got {build!r}")
    if describe is None:
        if not _is_int(num_classes) or num_classes < 2:
            raise ValueError(f"register_dataset({name!r}): num_classes must be an integer >= 2 (or give "
                             f"describe), got {num_classes!r}")
        mean, std = _stats(name, "mean", mean), _stats(name, "std", std)
        if len(mean) != len(std):
            raise ValueError(f"register_dataset({name!r}): mean and std need one value per channel each, got "
                             f"{len(mean)} and {len(std)}")
    elif not callable(describe) or num_classes is not None or mean is not None or std is not None:
        raise ValueError(f"register_dataset({name!r}): give either num_classes, mean and std, or describe "
                         "(a callable), not both")
    shape_of = shape if callable(shape) else (lambda opts, _fixed=tuple(shape): _fixed)
    old = _REGISTRY.get(name)
    if old is not None and _where(old.build) != _where(build):
        raise ValueError(f"register_dataset: data set {name!r} is already registered to {_where(old.build)}; "
                         f"cannot register {_where(build)} under the same name; choose another name")
    entry = DatasetEntry(name, options, shape_of, build, num_classes, mean, std, describe)
    _REGISTRY[name] = entry
    return entry


def unregister_dataset(name: str) -> DatasetEntry:
    """Remove ``name`` and return its entry (for tests and notebooks that register a set of their own).

    Raises:
        UnknownNameError: ``name`` is not registered (the message lists the names).
    """
    key, entry = _entry(name)
    del _REGISTRY[key]
    return entry


def available() -> list[str]:
    """The data set names :func:`load` accepts, in registration order: the embedded ``digits`` first."""
    return list(_REGISTRY)


def _entry(name: Any) -> tuple[str, DatasetEntry]:
    key = name.lower() if isinstance(name, str) else name
    if key not in _REGISTRY:
        raise unknown("data set", name, _REGISTRY)
    return key, _REGISTRY[key]


def _check_options(name: str, entry: DatasetEntry, options: dict) -> dict:
    for option in options:
        if option not in entry.options:
            allowed = ", ".join(entry.options) if entry.options else "none"
            raise ConfigError(f"{name}: unknown option {option!r}; allowed options: {allowed}")
    return {option: check(name, option, options.get(option)) for option, check in entry.options.items()}


def info(name: str, **options: Any) -> DatasetInfo:
    """Shape, number of classes and normalization statistics of ``name``.

    ``options`` are those of :func:`load` (e.g. ``size=16``) and change ``shape`` accordingly.
    Unknown name -> UnknownNameError listing the names; bad option -> ConfigError.
    """
    key, entry = _entry(name)
    opts = _check_options(key, entry, options)
    num_classes, mean, std = entry.describe_classes(opts)
    return DatasetInfo(key, tuple(entry.shape(opts)), num_classes, mean, std)


def load(name: str, split: str, root: str | os.PathLike | None = None, download: bool = False,
         **options: Any) -> Dataset:
    """Load a data set split as a Dataset of ``(image, label)``.

    Args:
        name: one of :func:`available` (``digits`` is embedded and needs no files).
        split: "train" or "test".
        root: folder holding the on-disk data sets; default ``$ROBUSTSUITE_DATA``, else ``./data``.
        download: let torchvision fetch a missing data set (needs internet access).
        options: per data set, see the package docstring (e.g. ``size``, ``augment``, ``seed``).
    Returns:
        An :class:`~robustsuite.data.ImageTensorDataset`: ``dataset[i]`` is (image float32 (C, H, W)
        in [0, 1], label int); a DataLoader batch is NCHW. ``dataset.info`` is its
        :class:`DatasetInfo`; synthetic sets also carry ``irrelevant_mask`` (bool (C, H, W)).
    Raises:
        UnknownNameError (unknown name), ConfigError (bad split, option or value),
        DataNotFoundError (files missing: the message says where and how to get them).
    """
    key, entry = _entry(name)
    if not isinstance(split, str) or split not in SPLITS:
        raise ConfigError(f"split: unknown value {split!r}; choose one of: {', '.join(SPLITS)}")
    if root is not None and not isinstance(root, (str, os.PathLike)):
        raise ConfigError(f"root: expected a path or None, got {root!r}")
    if not isinstance(download, bool):
        raise ConfigError(f"download: must be true or false, got {download!r}")
    opts = _check_options(key, entry, options)
    dataset = entry.build(split, root, download, opts)
    dataset.info = info(key, **options)
    return dataset
