"""Where each torchvision data set lives on disk, and plain readers for those files.

The layouts are torchvision's (what its ``download=True`` produces), so one ``root`` serves both:

* MNIST: ``<root>/MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte`` (unpacked idx files)
* CIFAR-10: ``<root>/cifar-10-batches-py/data_batch_1..5`` and ``test_batch`` (pickles)
* CIFAR-100: ``<root>/cifar-100-python/train`` and ``test`` (pickles, ``fine_labels``)
* SVHN: ``<root>/train_32x32.mat`` and ``test_32x32.mat`` (X (32, 32, 3, N) uint8, y (N, 1), 10 = digit 0)

The readers are the fallback used when torchvision itself cannot be imported (for instance a
torchvision wheel built for CUDA beside a CPU-only torch, whose import fails). Unlike torchvision they
do not verify the official MD5 checksums; a file that does not parse is reported as unreadable.
The CIFAR pickles are read by a restricted unpickler (containers, strings, bytes, numbers, NumPy
arrays only), so a tampered file cannot run code.
Every reader returns (images uint8 (N, C, H, W), labels int64 (N,)).
"""
from __future__ import annotations

import math
import pickle
import struct
from pathlib import Path

import numpy as np
import torch

from ..errors import DataNotFoundError

CIFAR10_FOLDER = "cifar-10-batches-py"
CIFAR100_FOLDER = "cifar-100-python"


def expected_files(name: str, split: str, root: Path) -> list[Path]:
    """The files that ``name``'s ``split`` is read from under ``root``."""
    train = split == "train"
    if name == "mnist":
        prefix = "train" if train else "t10k"
        raw = root / "MNIST" / "raw"
        return [raw / f"{prefix}-images-idx3-ubyte", raw / f"{prefix}-labels-idx1-ubyte"]
    if name == "cifar10":
        names = [f"data_batch_{i}" for i in range(1, 6)] if train else ["test_batch"]
        return [root / CIFAR10_FOLDER / n for n in names]
    if name == "cifar100":
        return [root / CIFAR100_FOLDER / ("train" if train else "test")]
    if name == "svhn":
        return [root / f"{split}_32x32.mat"]
    raise KeyError(name)


def read(name: str, split: str, root: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """Read ``name``'s ``split`` from ``root``, whose files the caller has checked exist.

    A file that does not parse raises DataNotFoundError naming the files and the reason.
    """
    files = expected_files(name, split, root)
    reader = {"mnist": _read_mnist, "cifar10": _read_cifar, "cifar100": _read_cifar, "svhn": _read_svhn}[name]
    try:
        return reader(files)
    except (ValueError, KeyError, TypeError, EOFError, struct.error, pickle.UnpicklingError) as exc:
        raise DataNotFoundError(f"{name} ({split}): could not read the files {[str(f) for f in files]}: "
                                f"{type(exc).__name__}: {exc}; they are corrupted or not in the expected "
                                "format") from exc


def _read_idx_ubyte(path: Path) -> np.ndarray:
    """An idx file of unsigned bytes (magic 0x0000 08 <ndim>, big-endian uint32 dims, then data)."""
    data = path.read_bytes()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise ValueError(f"{path.name}: not an unsigned-byte idx file (magic {data[:4].hex()})")
    ndim = data[3]
    header = 4 + 4 * ndim
    dims = struct.unpack(f">{ndim}I", data[4:header])
    array = np.frombuffer(data, dtype=np.uint8, offset=header)
    if array.size != math.prod(dims):
        raise ValueError(f"{path.name}: header says {dims} but holds {array.size} values")
    return array.reshape(dims)


def _read_mnist(files: list[Path]) -> tuple[torch.Tensor, torch.Tensor]:
    images = _read_idx_ubyte(files[0])
    labels = _read_idx_ubyte(files[1])
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise ValueError(f"images {images.shape} and labels {labels.shape} do not match")
    return torch.from_numpy(images.copy()).unsqueeze(1), torch.from_numpy(labels.astype(np.int64))


#: the only globals a CIFAR batch pickle may name: NumPy's array reconstruction (plain data, no code)
_CIFAR_GLOBALS = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
                  ("numpy", "ndarray"), ("numpy", "dtype")}


class _DataUnpickler(pickle.Unpickler):
    """Unpickles builtin containers, ``str``, ``bytes``, numbers and NumPy arrays, nothing else: a data
    file is data, so a pickle naming any other global (a payload that would run code) is refused
    before anything in it runs."""

    def find_class(self, module: str, name: str):
        if (module, name) in _CIFAR_GLOBALS:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refused to load global {module}.{name}: a CIFAR batch file holds only "
                                     "dicts, lists, strings, bytes, numbers and NumPy arrays (the file is not "
                                     "an official CIFAR file, or was tampered with)")


def _read_cifar(files: list[Path]) -> tuple[torch.Tensor, torch.Tensor]:
    data, labels = [], []
    for path in files:
        with open(path, "rb") as f:
            entry = _DataUnpickler(f, encoding="latin1").load()  # the official pickles were written by Python 2
        if not isinstance(entry, dict):
            raise TypeError(f"{path.name}: holds a {type(entry).__name__}, not a dict of 'data' and labels")
        data.append(np.asarray(entry["data"], dtype=np.uint8))
        labels.extend(entry["labels"] if "labels" in entry else entry["fine_labels"])
    images = np.vstack(data).reshape(-1, 3, 32, 32)  # rows are stored as R plane, G plane, B plane
    if len(images) != len(labels):
        raise ValueError(f"{len(images)} images but {len(labels)} labels")
    return torch.from_numpy(images), torch.tensor(labels, dtype=torch.int64)


def _read_svhn(files: list[Path]) -> tuple[torch.Tensor, torch.Tensor]:
    import scipy.io

    mat = scipy.io.loadmat(str(files[0]))
    images = np.ascontiguousarray(np.transpose(mat["X"], (3, 2, 0, 1)))  # (H, W, C, N) -> (N, C, H, W)
    labels = mat["y"].astype(np.int64).reshape(-1)
    labels[labels == 10] = 0  # SVHN stores the digit 0 as class 10
    if images.dtype != np.uint8 or len(images) != len(labels):
        raise ValueError(f"X {mat['X'].shape} {mat['X'].dtype} and y {mat['y'].shape} do not match")
    return torch.from_numpy(images), torch.from_numpy(labels)
