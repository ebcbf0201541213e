"""The data set names: what each one is (:class:`DatasetInfo`), which options it takes, how it loads.

``load(name, split, root=None, download=False, **options)`` validates everything at this edge and then
calls the module that holds the data set. Options by name (all optional, None means the default):

=====================  =========================================================================
name                   options
=====================  =========================================================================
digits                 size (int > 0: resize the 8x8 images to size x size, bilinear)
mnist                  backend ("auto", "torchvision", "builtin")
cifar10, cifar100      augment (bool; default: on for train, off for test), backend
svhn                   augment (crop only), backend
digits_distractor      seed (int >= 0, default 0), size, right ("other_class": the right cell shows a
                       digit of another class, as the spec's set; "any": any digit, independent of
                       the label, so the right cell carries no information about it at all)
digits_border          seed, size, border (frame width in pixels, default H // 2)
mnist_distractor       seed, backend, right
mnist_border           seed, border, backend
npz                    path (required: your own .npz file with x and y, see ``data/npz.py``),
                       num_classes (int > 0, default 1 + the largest label)
=====================  =========================================================================

``root`` and ``download`` concern the data sets on disk (MNIST, CIFAR, SVHN and the MNIST synthetic
sets); the embedded digits and ``npz`` (its ``path`` is the file) ignore them.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Callable

from torch.utils.data import Dataset

from ..errors import ConfigError, unknown
from .digits import DIGITS_MEAN, DIGITS_STD, load_digits_split
from .npz import check_path, load_npz, npz_num_classes, npz_stats, read_npz
from .synthetic import load_synthetic
from .torchvision_sets import BACKENDS, load_torchvision_set

SPLITS = ("train", "test")


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


_STATS = {
    "digits": (DIGITS_MEAN, DIGITS_STD),
    "mnist": ((0.1307,), (0.3081,)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2471, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "svhn": ((0.4377, 0.4438, 0.4728), (0.198, 0.201, 0.197)),
}


# -- option checks: each returns the normalized value or raises ConfigError naming the option --------
def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _positive_int(name: str, option: str, value: Any) -> Any:
    if value is not None and (not _is_int(value) or value <= 0):
        raise ConfigError(f"{name}: option {option!r} must be an integer > 0, got {value!r}")
    return value


def _seed(name: str, option: str, value: Any) -> Any:
    if value is None:
        return 0
    if not _is_int(value) or value < 0:
        raise ConfigError(f"{name}: option {option!r} must be an integer >= 0, got {value!r}")
    return value


def _bool(name: str, option: str, value: Any) -> Any:
    if value is not None and not isinstance(value, bool):
        raise ConfigError(f"{name}: option {option!r} must be true or false, got {value!r}")
    return value


def _choice(choices: tuple[str, ...]) -> Callable[[str, str, Any], Any]:
    """A check for an option with a fixed set of values; None means the first."""
    def check(name: str, option: str, value: Any) -> Any:
        if value is None:
            return choices[0]
        if value not in choices:
            raise ConfigError(f"{name}: option {option!r}: unknown value {value!r}; choose one of: "
                              f"{', '.join(choices)}")
        return value
    return check


#: what a distractor set's right cell shows (see ``synthetic.make_distractor``); the first is the default
RIGHT_CELLS = ("other_class", "any")


def _path(name: str, option: str, value: Any) -> Any:
    return str(check_path(value))


_CHECKS: dict[str, Callable[[str, str, Any], Any]] = {
    "size": _positive_int, "border": _positive_int, "seed": _seed, "augment": _bool, "backend": _choice(BACKENDS),
    "path": _path, "num_classes": _positive_int, "right": _choice(RIGHT_CELLS),
}


@dataclass(frozen=True)
class _Entry:
    options: tuple[str, ...]
    num_classes: int
    stats: str
    shape: Callable[[dict], tuple[int, int, int]]
    build: Callable[[str, Any, bool, dict], Dataset]
    # For sets whose classes and statistics come from the data itself (npz): opts -> (num_classes,
    # mean, std); None means the fixed num_classes and _STATS[stats].
    describe: Callable[[dict], tuple[int, tuple[float, ...], tuple[float, ...]]] | None = None


def _digits_side(opts: dict) -> int:
    return opts.get("size") or 8


def _border(opts: dict, side: int) -> int:
    return opts["border"] if opts.get("border") is not None else side // 2


def _torchvision_entry(name: str, shape: tuple[int, int, int], num_classes: int, augment: bool) -> _Entry:
    options = ("augment", "backend") if augment else ("backend",)
    return _Entry(options, num_classes, name, lambda opts: shape,
                  lambda split, root, download, opts: load_torchvision_set(
                      name, split, root, download, augment=opts.get("augment"),
                      backend=opts["backend"]))


def _synthetic_entry(kind: str, base: str) -> _Entry:
    options = ("seed",) + (("size",) if base == "digits" else ("backend",)) + \
        (("border",) if kind == "border" else ("right",))

    def side(opts: dict) -> int:
        return _digits_side(opts) if base == "digits" else 28

    def shape(opts: dict) -> tuple[int, int, int]:
        s = side(opts)
        if kind == "distractor":
            return (1, s, 2 * s)
        b = _border(opts, s)
        return (1, s + 2 * b, s + 2 * b)

    def build(split: str, root: Any, download: bool, opts: dict) -> Dataset:
        return load_synthetic(kind, base, split, seed=opts["seed"], size=opts.get("size"),
                              border=opts.get("border"), right=opts.get("right", "other_class"),
                              root=root, download=download,
                              backend=opts.get("backend", "auto"))

    return _Entry(options, 10, base, shape, build)


def _npz_entry() -> _Entry:
    def shape(opts: dict) -> tuple[int, int, int]:
        return tuple(read_npz(opts["path"]).splits["test"][0].shape[1:])

    def describe(opts: dict) -> tuple[int, tuple[float, ...], tuple[float, ...]]:
        return (npz_num_classes(opts["path"], opts.get("num_classes")), *npz_stats(opts["path"]))

    return _Entry(("path", "num_classes"), 0, "", shape,
                  lambda split, root, download, opts: load_npz(opts["path"], split, opts.get("num_classes")),
                  describe)


_REGISTRY: dict[str, _Entry] = {
    "digits": _Entry(("size",), 10, "digits", lambda opts: (1, _digits_side(opts), _digits_side(opts)),
                     lambda split, root, download, opts: load_digits_split(split, opts.get("size"))),
    "mnist": _torchvision_entry("mnist", (1, 28, 28), 10, augment=False),
    "cifar10": _torchvision_entry("cifar10", (3, 32, 32), 10, augment=True),
    "cifar100": _torchvision_entry("cifar100", (3, 32, 32), 100, augment=True),
    "svhn": _torchvision_entry("svhn", (3, 32, 32), 10, augment=True),
    "digits_distractor": _synthetic_entry("distractor", "digits"),
    "digits_border": _synthetic_entry("border", "digits"),
    "mnist_distractor": _synthetic_entry("distractor", "mnist"),
    "mnist_border": _synthetic_entry("border", "mnist"),
    "npz": _npz_entry(),
}


def available() -> list[str]:
    """The data set names :func:`load` accepts, the embedded default ``digits`` first."""
    return list(_REGISTRY)


def _entry(name: Any) -> tuple[str, _Entry]:
    key = name.lower() if isinstance(name, str) else name
    if key not in _REGISTRY:
        raise unknown("data set", name, _REGISTRY)
    return key, _REGISTRY[key]


def _check_options(name: str, entry: _Entry, options: dict) -> dict:
    for option in options:
        if option not in entry.options:
            allowed = ", ".join(entry.options) if entry.options else "none"
            raise ConfigError(f"{name}: unknown option {option!r}; allowed options: {allowed}")
    return {option: _CHECKS[option](name, option, options.get(option)) for option in entry.options}


def info(name: str, **options: Any) -> DatasetInfo:
    """Shape, number of classes and normalization statistics of ``name``.

    ``options`` are those of :func:`load` (e.g. ``size=16``) and change ``shape`` accordingly.
    Unknown name -> UnknownNameError listing the names; bad option -> ConfigError.
    """
    key, entry = _entry(name)
    opts = _check_options(key, entry, options)
    if entry.describe is not None:
        num_classes, mean, std = entry.describe(opts)
    else:
        num_classes, (mean, std) = entry.num_classes, _STATS[entry.stats]
    return DatasetInfo(key, entry.shape(opts), num_classes, mean, std)


def load(name: str, split: str, root: str | os.PathLike | None = None, download: bool = False,
         **options: Any) -> Dataset:
    """Load a data set split as a Dataset of ``(image, label)``.

    Args:
        name: one of :func:`available` (``digits`` is embedded and needs no files).
        split: "train" or "test".
        root: folder holding the on-disk data sets; default ``$ROBUSTSUITE_DATA``, else ``./data``.
        download: let torchvision fetch a missing data set (needs internet access).
        options: per data set, see the module docstring (e.g. ``size``, ``augment``, ``seed``).
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
