"""Data sets as ``(image, label)`` pairs: images float32 (C, H, W) in [0, 1], labels int.

Every data set comes through one call, :func:`load`, and is held as tensors
(:class:`ImageTensorDataset`), so a DataLoader batch is NCHW in pixel space; normalization is a layer
inside the model (mean/std in :func:`info`).

* ``digits``: scikit-learn's bundled 8x8 digits, embedded, a fixed stratified 1347/450 split; option
  ``size`` resizes (bilinear).
* ``mnist``, ``cifar10``, ``cifar100``, ``svhn``: torchvision's files under ``root`` (default
  ``$ROBUSTSUITE_DATA`` or ``./data``), ``download`` to fetch them, the papers' train augmentation.
* ``digits_distractor``, ``digits_border``, ``mnist_distractor``, ``mnist_border``: synthetic sets
  with a known label-irrelevant region (``dataset.irrelevant_mask``), deterministic from ``seed``.

Example::

    from robustsuite import data
    train = data.load("digits", "train", size=16)
    loader = data.make_loader(train, 128, shuffle=True, seed=0)
    x_test, y_test = data.as_tensors(data.load("digits", "test"))
"""
from .augment import RandomCropFlip
from .loaders import as_tensors, make_loader, subset
from .registry import DatasetInfo, available, info, load
from .synthetic import make_border, make_distractor
from .tensor_dataset import ImageTensorDataset
from .torchvision_sets import DATA_ENV, resolve_root

__all__ = [
    "DATA_ENV",
    "DatasetInfo",
    "ImageTensorDataset",
    "RandomCropFlip",
    "as_tensors",
    "available",
    "info",
    "load",
    "make_border",
    "make_distractor",
    "make_loader",
    "resolve_root",
    "subset",
]
