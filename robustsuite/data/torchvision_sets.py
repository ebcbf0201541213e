"""MNIST, CIFAR-10, CIFAR-100 and SVHN: read through torchvision, held as uint8 tensors.

torchvision's dataset classes find, check (MD5 for CIFAR/SVHN) and optionally download the files;
we then take their arrays (``.data`` and ``.targets``/``.labels``) into an
:class:`~robustsuite.data.ImageTensorDataset`, so images are (C, H, W) float32 in [0, 1] (ToTensor's
scaling), with no normalization (that is a layer in the model) and batched tensor augmentation.

Where ``import torchvision`` fails (a CUDA torchvision wheel beside a CPU-only torch raises
``RuntimeError: operator torchvision::nms does not exist``), ``backend="auto"`` falls back to the
plain readers of :mod:`robustsuite.data.formats`, which read the same files from the same layout;
downloading needs torchvision. ``backend="torchvision"`` or ``"builtin"`` forces one path.

The root is the ``root`` argument, else ``$ROBUSTSUITE_DATA``, else ``./data``.
"""
from __future__ import annotations

import functools
import logging
import os
from pathlib import Path

import torch

from ..errors import ConfigError, DataNotFoundError
from . import formats
from .augment import RandomCropFlip
from .registry import boolean, choice, register_dataset
from .tensor_dataset import ImageTensorDataset

logger = logging.getLogger(__name__)

DATA_ENV = "ROBUSTSUITE_DATA"
BACKENDS = ("auto", "torchvision", "builtin")
NAMES = ("mnist", "cifar10", "cifar100", "svhn")
#: per set: (image shape (C, H, W), number of classes, per-channel mean, std: the usual published values)
DESCRIPTIONS = {
    "mnist": ((1, 28, 28), 10, (0.1307,), (0.3081,)),
    "cifar10": ((3, 32, 32), 10, (0.4914, 0.4822, 0.4465), (0.2471, 0.2435, 0.2616)),
    "cifar100": ((3, 32, 32), 100, (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "svhn": ((3, 32, 32), 10, (0.4377, 0.4438, 0.4728), (0.198, 0.201, 0.197)),
}

# The papers' train-time augmentation: crop with padding 4 and flip for CIFAR; crop only for SVHN
# (flipping a house number changes the digit); none for MNIST.
_AUGMENTATION = {
    "mnist": None,
    "cifar10": RandomCropFlip(padding=4, flip=True),
    "cifar100": RandomCropFlip(padding=4, flip=True),
    "svhn": RandomCropFlip(padding=4, flip=False),
}


def resolve_root(root: str | os.PathLike | None) -> Path:
    """``root``, else ``$ROBUSTSUITE_DATA``, else ``./data``, as an absolute path."""
    if root is None:
        root = os.environ.get(DATA_ENV) or "data"
    return Path(root).expanduser().resolve()


@functools.lru_cache(maxsize=1)
def _torchvision_datasets():
    """(``torchvision.datasets``, None), or (None, why it cannot be imported)."""
    try:
        import torchvision.datasets as tvd
    except Exception as exc:  # noqa: BLE001 - a broken torchvision raises RuntimeError, not ImportError
        return None, f"{type(exc).__name__}: {exc}"
    return tvd, None


def torchvision_error() -> str | None:
    """Why torchvision cannot be imported here, or None when it can."""
    return _torchvision_datasets()[1]


def _choose_backend(backend: str) -> str:
    if backend == "builtin":
        return backend
    tvd, error = _torchvision_datasets()
    if tvd is not None:
        return "torchvision"
    if backend == "torchvision":
        raise ConfigError(f"backend: 'torchvision' was asked for but torchvision cannot be imported here "
                          f"({error}); install a torchvision that matches torch, or use backend 'auto' "
                          "or 'builtin'")
    _warn_fallback(error)
    return "builtin"


@functools.lru_cache(maxsize=1)
def _warn_fallback(error: str) -> None:
    logger.warning("torchvision cannot be imported (%s); reading data files with robustsuite's own "
                   "readers (same layout, no checksum check, no download)", error)


def _missing_message(name: str, split: str, root: Path, download: bool, detail: str = "") -> str:
    files = formats.expected_files(name, split, root)
    where = files[0].parent
    listed = ", ".join(f.name for f in files)
    detail = f" ({detail})" if detail else ""
    if download:
        how = ("download was requested but did not succeed (this machine may have no internet access); "
               "download it on a machine with internet access and copy the files there")
    else:
        how = ("set `download: true` in the data section of the config (download=True in Python) to "
               "fetch it, or place the files there yourself")
    return (f"{name} ({split}): data set not found under {where} (looked for {listed}){detail}; {how}. "
            f"The data root is the `root` setting, else ${DATA_ENV}, else ./data; it resolved to {root}")


def _read_torchvision(tvd, name: str, split: str, root: Path, download: bool):
    train = split == "train"
    if name == "mnist":
        ds = tvd.MNIST(str(root), train=train, download=download)
        return ds.data.unsqueeze(1).contiguous(), ds.targets.long()
    if name in ("cifar10", "cifar100"):
        cls = tvd.CIFAR10 if name == "cifar10" else tvd.CIFAR100
        ds = cls(str(root), train=train, download=download)
        images = torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous()  # NHWC -> NCHW
        return images, torch.tensor(ds.targets, dtype=torch.int64)
    ds = tvd.SVHN(str(root), split=split, download=download)
    return torch.from_numpy(ds.data).contiguous(), torch.from_numpy(ds.labels).long()


def read_images(name: str, split: str, root: Path, download: bool = False,
                backend: str = "auto") -> tuple[torch.Tensor, torch.Tensor, str]:
    """(images uint8 (N, C, H, W), labels int64 (N,), the backend used) for ``name``'s ``split``.

    Raises DataNotFoundError naming the folder and files looked for and how to get them.
    """
    used = _choose_backend(backend)
    if used == "torchvision":
        tvd, _ = _torchvision_datasets()
        try:
            images, labels = _read_torchvision(tvd, name, split, root, download)
        except (RuntimeError, OSError) as exc:
            # torchvision says "Dataset not found or corrupted. You can use download=True ..." (RuntimeError)
            # or fails to reach the network (URLError, an OSError); either way the data is not usable.
            raise DataNotFoundError(_missing_message(name, split, root, download, str(exc))) from exc
    else:
        missing = [f for f in formats.expected_files(name, split, root) if not f.is_file()]
        if missing:
            detail = "missing: " + ", ".join(f.name for f in missing)
            if download:
                why = torchvision_error() if backend != "builtin" else "backend 'builtin' was chosen"
                detail += f"; downloading needs torchvision ({why})"
            raise DataNotFoundError(_missing_message(name, split, root, download, detail))
        images, labels = formats.read(name, split, root)
    return images, labels, used


def load_torchvision_set(name: str, split: str, root: str | os.PathLike | None = None, download: bool = False,
                         augment: bool | None = None, backend: str = "auto") -> ImageTensorDataset:
    """``name``'s ``split`` as an ImageTensorDataset of uint8 images read as float32 in [0, 1].

    ``augment`` None means the papers' default: on for the CIFAR/SVHN train split, off otherwise;
    an explicit True/False is honoured on either split.
    """
    resolved = resolve_root(root)
    images, labels, used = read_images(name, split, resolved, download, backend)
    if augment is None:
        augment = split == "train"
    transform = _AUGMENTATION[name] if augment else None
    logger.info("loaded %s %s: %d images %s from %s (%s)", name, split, len(labels),
                tuple(images.shape[1:]), resolved, used)
    dataset = ImageTensorDataset(images, labels, transform=transform, name=name, split=split)
    dataset.root = resolved
    return dataset


def _register(name: str) -> None:
    shape, num_classes, mean, std = DESCRIPTIONS[name]

    def build(split: str, root, download: bool, opts: dict) -> ImageTensorDataset:
        return load_torchvision_set(name, split, root, download, augment=opts.get("augment"),
                                    backend=opts["backend"])

    # MNIST has no train augmentation to switch, so no ``augment`` option
    options = {"augment": boolean} if _AUGMENTATION[name] is not None else {}
    register_dataset(name, options={**options, "backend": choice(BACKENDS)}, shape=shape,
                     num_classes=num_classes, mean=mean, std=std, build=build)


for _name in NAMES:
    _register(_name)
