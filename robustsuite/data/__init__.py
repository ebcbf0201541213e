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
* ``npz``: your own images and labels from one ``.npz`` file (``data/npz.py``).

Options by name (all optional, None means the default):

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

Each set registers itself in the module that loads it (:func:`register_dataset`, see
:mod:`.registry` and ``docs/extending.md``); the imports below fill the registry, in the order
:func:`available` lists the sets (the embedded ``digits`` first).

Example::

    from robustsuite import data
    train = data.load("digits", "train", size=16)
    loader = data.make_loader(train, 128, shuffle=True, seed=0)
    x_test, y_test = data.as_tensors(data.load("digits", "test"))
"""
# The modules that register data sets, in the order available() lists them (so not sorted).
from . import digits, torchvision_sets, synthetic, npz  # noqa: F401  # isort: skip
from .augment import RandomCropFlip
from .loaders import as_tensors, make_loader, subset
from .registry import DatasetInfo, available, info, load, register_dataset, unregister_dataset
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
    "register_dataset",
    "resolve_root",
    "subset",
    "unregister_dataset",
]
