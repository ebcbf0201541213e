"""The embedded data set: scikit-learn's bundled 8x8 handwritten digits.

1797 grayscale images, 10 classes, pixel values 0..16 scaled to [0, 1] (value / 16), shape (1, 8, 8).
The train/test split is fixed: ``train_test_split(stratify=labels, test_size=450, random_state=0)``
on the sample indices, giving 1347 train and 450 test images (every class 43-46 times in test). Both
splits keep the order of ``load_digits()`` (``source_index`` holds the original indices), so a
sample's index in a report can be traced back to scikit-learn's array.

Mean and std for the Normalize layer (``DIGITS_MEAN``/``DIGITS_STD``) are the pixel mean and
population std of the train split at 8x8, computed once and written here; a test recomputes them.
"""
from __future__ import annotations

import functools

import numpy as np
import torch
import torch.nn.functional as F

from .registry import positive_int, register_dataset
from .tensor_dataset import ImageTensorDataset

NUM_IMAGES = 1797
TEST_SIZE = 450
SPLIT_SEED = 0
DIGITS_MEAN = (0.3052,)
DIGITS_STD = (0.3760,)


@functools.lru_cache(maxsize=1)
def _digits_arrays() -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    """(images float32 (1797, 1, 8, 8) in [0, 1], labels int64 (1797,), {split: sorted indices})."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    images = torch.from_numpy(bunch.images.astype(np.float32) / 16.0).unsqueeze(1)
    labels = torch.from_numpy(bunch.target.astype(np.int64))
    train_idx, test_idx = train_test_split(np.arange(len(labels)), test_size=TEST_SIZE,
                                           stratify=bunch.target, random_state=SPLIT_SEED)
    split = {"train": torch.from_numpy(np.sort(train_idx)), "test": torch.from_numpy(np.sort(test_idx))}
    return images, labels, split


def resize(images: torch.Tensor, size: int) -> torch.Tensor:
    """Resize float (N, C, H, W) in [0, 1] to (N, C, size, size).

    Bilinear (align_corners=False): each output pixel is a convex combination of input pixels, so
    values stay in [0, 1] (clamped anyway against rounding); smoother strokes than nearest, which
    would only duplicate pixels. Downsampling uses antialiasing.
    """
    if images.shape[-1] == size and images.shape[-2] == size:
        return images.clone()
    out = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False,
                        antialias=size < images.shape[-1])
    return out.clamp_(0.0, 1.0)


def load_digits_split(split: str, size: int | None = None) -> ImageTensorDataset:
    """The digits ``split`` ("train" or "test") as float32 (1, S, S) images, S = ``size`` or 8."""
    images, labels, indices = _digits_arrays()
    idx = indices[split]
    x = images[idx]  # tensor indexing copies: the cached arrays are never handed out
    if size is not None:
        x = resize(x, size)
    dataset = ImageTensorDataset(x, labels[idx], name="digits", split=split)
    dataset.source_index = idx.clone()
    return dataset


def _side(opts: dict) -> int:
    return opts.get("size") or 8


register_dataset("digits", options={"size": positive_int}, num_classes=10, mean=DIGITS_MEAN, std=DIGITS_STD,
                 shape=lambda opts: (1, _side(opts), _side(opts)),
                 build=lambda split, root, download, opts: load_digits_split(split, opts.get("size")))
