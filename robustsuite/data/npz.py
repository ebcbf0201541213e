"""Your own data from one NumPy ``.npz`` file (data set name ``npz``, option ``path``).

The file holds the images as ``x`` and the labels as ``y``, and the same arrays serve every split;
or it holds ``x_train``/``y_train`` and ``x_test``/``y_test``, and each split reads its own (a split's
own arrays win over ``x``/``y`` when both are present). Write one with::

    np.savez("mine.npz", x=images, y=labels)          # images (N, C, H, W) or (N, H, W)

* ``x``: (N, C, H, W) or (N, H, W) (one channel is added), either uint8 (0..255, read as v / 255) or
  floating point in [0, 1] (stored as float32); no NaN or inf.
* ``y``: (N,) integer class indices in 0 .. num_classes - 1.
* ``num_classes`` (option): default 1 + the largest label over every ``y`` array in the file.

Everything is checked when the file is read; each error names the array, the sample and the fix.
Mean/std for a model's Normalize layer are the per-channel pixel mean and population std of the
train split's images.
"""
from __future__ import annotations

import functools
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..errors import ConfigError, DataNotFoundError, InputError
from .registry import positive_int, register_dataset
from .tensor_dataset import ImageTensorDataset

SAVE_HINT = "write the file with np.savez(path, x=images, y=labels)"


@dataclass(frozen=True)
class NpzSplits:
    """The checked arrays of one file: per split (images uint8/float32 (N, C, H, W), labels int64 (N,))."""

    splits: dict[str, tuple[torch.Tensor, torch.Tensor]]
    max_label: int


def _where(path: Path) -> str:
    return f"npz file {str(path)!r}"


def _keys_for(split: str, files: list[str]) -> tuple[str, str]:
    """The (images, labels) array names ``split`` reads: ``x_<split>``/``y_<split>`` if present, else x/y."""
    if f"x_{split}" in files or f"y_{split}" in files:
        return f"x_{split}", f"y_{split}"
    return "x", "y"


def _check_images(where: str, key: str, x: np.ndarray) -> torch.Tensor:
    """uint8 or float (N, C, H, W)/(N, H, W) in [0, 1] -> a tensor (N, C, H, W), uint8 or float32."""
    if x.ndim == 3:
        x = x[:, None]
    if x.ndim != 4:
        raise InputError(f"{where}: array {key!r} has shape {x.shape}; expected (N, C, H, W) or (N, H, W) "
                         "images; fix: reshape the images to one of those")
    if x.shape[0] == 0:
        raise InputError(f"{where}: array {key!r} holds no images; fix: {SAVE_HINT} with N > 0 images")
    if x.shape[-1] in (1, 3) and x.shape[1] not in (1, 3):  # (N, H, W, C) is the usual mistake
        raise InputError(f"{where}: array {key!r} has shape {x.shape}, which looks channels-last (N, H, W, C); "
                         "fix: store x.transpose(0, 3, 1, 2) so it is (N, C, H, W)")
    if x.dtype == np.uint8:
        return torch.from_numpy(np.ascontiguousarray(x))
    if not np.issubdtype(x.dtype, np.floating):
        raise InputError(f"{where}: array {key!r} has dtype {x.dtype}; expected uint8 (0..255) or float in "
                         "[0, 1]; fix: store x.astype(np.uint8) or (x / x.max()).astype(np.float32)")
    bad = ~np.isfinite(x).reshape(x.shape[0], -1).all(axis=1)
    if bad.any():
        first = int(np.flatnonzero(bad)[0])
        raise InputError(f"{where}: array {key!r} contains NaN or inf at sample {first} ({int(bad.sum())} "
                         f"sample(s) affected); fix: replace them (e.g. np.nan_to_num) or drop those samples")
    lo, hi = float(x.min()), float(x.max())
    if lo < 0.0 or hi > 1.0:
        first = int(np.flatnonzero(((x < 0) | (x > 1)).reshape(x.shape[0], -1).any(axis=1))[0])
        raise InputError(f"{where}: array {key!r} has values in [{lo:g}, {hi:g}] (first outside [0, 1] at "
                         f"sample {first}); images are pixels in [0, 1]; fix: rescale (e.g. x / 255) or "
                         "store uint8")
    return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))


def _check_labels(where: str, key: str, y: np.ndarray, n: int, images: str) -> torch.Tensor:
    """Integer (N,) labels >= 0 -> int64 tensor."""
    if y.ndim != 1 or y.shape[0] != n:
        raise InputError(f"{where}: array {key!r} has shape {y.shape}; expected ({n},), one label per image "
                         f"of {images!r}; fix: store y.reshape(-1) with one class index per image")
    if not np.issubdtype(y.dtype, np.integer):
        raise InputError(f"{where}: array {key!r} has dtype {y.dtype}; labels are integer class indices; "
                         "fix: store y.astype(np.int64)")
    if y.min() < 0:
        first = int(np.flatnonzero(y < 0)[0])
        raise InputError(f"{where}: array {key!r} has a negative label {int(y[first])} at sample {first}; "
                         "labels are 0 .. num_classes - 1")
    return torch.from_numpy(y.astype(np.int64))


def _open(path: Path):
    """np.load without pickles, every failure as a clear error."""
    if not path.is_file():
        raise DataNotFoundError(f"npz: option 'path': file {str(path)!r} does not exist; fix: give the path "
                                f"of your .npz file ({SAVE_HINT})")
    try:
        arrays = np.load(path, allow_pickle=False)
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as e:
        raise InputError(f"{_where(path)} is not a readable .npz archive ({type(e).__name__}: {e}); "
                         f"fix: {SAVE_HINT}") from None
    if not isinstance(arrays, np.lib.npyio.NpzFile):
        raise InputError(f"{_where(path)} is a single .npy array, not an .npz archive; fix: {SAVE_HINT}")
    return arrays


@functools.lru_cache(maxsize=2)
def _read(path: str, _stamp: tuple[int, int]) -> NpzSplits:
    """Read and check both splits once per file version (``_stamp`` = mtime, size)."""
    p = Path(path)
    where = _where(p)
    with _open(p) as arrays:
        files = list(arrays.files)
        splits, seen = {}, {}
        for split in ("train", "test"):
            xk, yk = _keys_for(split, files)
            if (xk, yk) in seen:  # x/y serve both splits: one checked copy
                splits[split] = seen[xk, yk]
                continue
            for key in (xk, yk):
                if key not in files:
                    raise InputError(f"{where}: no array {key!r} (found: {', '.join(files) or 'none'}); fix: "
                                     f"{SAVE_HINT}, or give x_train/y_train and x_test/y_test")
            try:
                x, y = arrays[xk], arrays[yk]
            except ValueError as e:  # object arrays need pickles, which we do not load
                raise InputError(f"{where}: array {xk!r} or {yk!r} cannot be read ({e}); fix: store plain "
                                 "numeric arrays") from None
            images = _check_images(where, xk, x)
            splits[split] = seen[xk, yk] = (images, _check_labels(where, yk, y, images.shape[0], xk))
    shapes = {tuple(im.shape[1:]) for im, _ in splits.values()}
    if len(shapes) > 1:
        raise InputError(f"{where}: the train and test images differ in shape ({' vs '.join(map(str, shapes))}); "
                         "fix: store both splits at one (C, H, W)")
    return NpzSplits(splits, max(int(lab.max()) for _, lab in splits.values()))


def read_npz(path: str | os.PathLike) -> NpzSplits:
    """The checked splits of ``path`` (cached while the file is unchanged)."""
    p = Path(path).expanduser().resolve()
    stamp = (p.stat().st_mtime_ns, p.stat().st_size) if p.is_file() else (0, 0)
    return _read(str(p), stamp)


def npz_num_classes(path: str | os.PathLike, num_classes: int | None) -> int:
    """``num_classes`` if given (checked against the labels), else 1 + the largest label in the file."""
    found = read_npz(path)
    if num_classes is None:
        return found.max_label + 1
    if found.max_label >= num_classes:
        raise InputError(f"{_where(Path(path))}: label {found.max_label} is out of range for num_classes="
                         f"{num_classes}; fix: raise the option num_classes or fix the labels")
    return num_classes


def npz_stats(path: str | os.PathLike) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel (mean, std) of the train split's pixels in [0, 1] (population std, floored at 1e-3
    so a constant channel cannot divide by zero in Normalize)."""
    p = Path(path).expanduser().resolve()
    read_npz(p)  # checks the file (and raises its errors) first
    return _stats(str(p), (p.stat().st_mtime_ns, p.stat().st_size))


@functools.lru_cache(maxsize=2)
def _stats(path: str, _stamp: tuple[int, int]) -> tuple[tuple[float, ...], tuple[float, ...]]:
    images, _ = _read(path, _stamp).splits["train"]
    scale = 255.0 if images.dtype == torch.uint8 else 1.0
    total = torch.zeros(images.shape[1], dtype=torch.float64)
    squares = torch.zeros_like(total)
    for chunk in images.split(4096):  # float64 sums a chunk at a time: exact enough, small memory
        c = chunk.double() / scale
        total += c.sum(dim=(0, 2, 3))
        squares += c.square().sum(dim=(0, 2, 3))
    n = images.shape[0] * images.shape[2] * images.shape[3]
    mean = total / n
    std = (squares / n - mean.square()).clamp_min(0).sqrt().clamp_min(1e-3)
    return tuple(round(float(v), 4) for v in mean), tuple(round(float(v), 4) for v in std)


def load_npz(path: str | os.PathLike, split: str, num_classes: int | None = None) -> ImageTensorDataset:
    """The ``split`` of an .npz file as a dataset (see the module docstring for the layout)."""
    npz_num_classes(path, num_classes)  # labels within range
    images, labels = read_npz(path).splits[split]
    return ImageTensorDataset(images, labels, name="npz", split=split)


def check_path(value) -> Path:
    """The ``path`` option as a Path, or ConfigError saying what to give."""
    if value is None:
        raise ConfigError("npz: option 'path' is required: the .npz file with images x (N, C, H, W) and "
                          "labels y (N,); e.g. --data npz --data-option path=mine.npz (config: "
                          "data.options.path)")
    if not isinstance(value, (str, os.PathLike)):
        raise ConfigError(f"npz: option 'path' must be a file path, got {value!r}")
    return Path(value)


register_dataset(
    "npz", options={"path": lambda name, option, value: str(check_path(value)), "num_classes": positive_int},
    shape=lambda opts: tuple(read_npz(opts["path"]).splits["test"][0].shape[1:]),
    describe=lambda opts: (npz_num_classes(opts["path"], opts.get("num_classes")), *npz_stats(opts["path"])),
    build=lambda split, root, download, opts: load_npz(opts["path"], split, opts.get("num_classes")))
