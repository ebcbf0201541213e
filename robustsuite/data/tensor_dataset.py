"""The one dataset class every loader returns: images and labels held as two tensors.

Keeping the whole set as tensors (uint8 for data sets stored as bytes, float32 for the rest) means
slicing, subsetting and :func:`robustsuite.data.as_tensors` are tensor indexing, and a DataLoader batch
is converted and augmented in one batched call (``__getitems__``) instead of per-sample PIL work.
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch.utils.data import Dataset

from ..errors import InputError

Transform = Callable[[torch.Tensor], torch.Tensor]


class ImageTensorDataset(Dataset):
    """``(image, label)`` pairs: image float32 (C, H, W) in [0, 1], label a Python int.

    Args:
        images: (N, C, H, W), either uint8 (pixel value v is read as v / 255) or float32 already in
            [0, 1]. Stored as given (no copy); uint8 keeps large sets at a quarter of the memory.
        labels: (N,) integer class indices (stored as int64).
        transform: optional batched augmentation, called on float (B, C, H, W) in [0, 1] and
            returning the same shape; it draws from torch's global RNG (see ``make_loader``).
        irrelevant_mask: optional bool (C, H, W), True where a pixel cannot matter for the label
            (synthetic budget sets).
        info: the :class:`~robustsuite.data.DatasetInfo` of this set (shape, classes, mean/std).
        name, split: for messages and logs.

    ``dataset[i]`` gives one pair; a DataLoader batch is NCHW float32 and int64 labels.
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, *, transform: Transform | None = None,
                 irrelevant_mask: torch.Tensor | None = None, info=None, name: str = "",
                 split: str = "") -> None:
        if images.dim() != 4:
            raise InputError(f"images: expected shape (N, C, H, W), got {tuple(images.shape)}")
        if images.dtype not in (torch.uint8, torch.float32):
            raise InputError(f"images: expected dtype uint8 or float32, got {images.dtype}")
        labels = torch.as_tensor(labels).long().reshape(-1)
        if labels.numel() != images.shape[0]:
            raise InputError(f"labels: {labels.numel()} labels for {images.shape[0]} images")
        if irrelevant_mask is not None:
            if irrelevant_mask.dtype != torch.bool or tuple(irrelevant_mask.shape) != tuple(images.shape[1:]):
                raise InputError(f"irrelevant_mask: expected bool of shape {tuple(images.shape[1:])}, got "
                                 f"{irrelevant_mask.dtype} {tuple(irrelevant_mask.shape)}")
        self.images = images
        self.labels = labels
        self.transform = transform
        self.irrelevant_mask = irrelevant_mask
        self.info = info
        self.name = name
        self.split = split

    # -- access -------------------------------------------------------------------------------
    def __len__(self) -> int:
        return self.images.shape[0]

    def _to_float(self, images: torch.Tensor) -> torch.Tensor:
        # copy=True: callers may modify the returned image in place without touching the data set.
        if images.dtype == torch.uint8:
            return images.to(torch.float32).div_(255.0)
        return images.to(torch.float32, copy=True)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image = self._to_float(self.images[index])
        if self.transform is not None:
            image = self.transform(image.unsqueeze(0))[0]
        return image, int(self.labels[index])

    def __getitems__(self, indices: Sequence[int]) -> list[tuple[torch.Tensor, int]]:
        """Batched fetch used by DataLoader: one gather, one conversion, one augmentation call."""
        idx = torch.as_tensor(indices, dtype=torch.long)
        images = self._to_float(self.images[idx])
        if self.transform is not None:
            images = self.transform(images)
        # A list of samples keeps the default collate (and any custom one) working unchanged.
        return list(zip(images.unbind(0), self.labels[idx].tolist()))

    def tensors(self, limit: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The first ``limit`` samples as (x float32 (N, C, H, W) in [0, 1], y int64 (N,)), without
        augmentation: a slice and one dtype conversion."""
        stop = len(self) if limit is None else min(int(limit), len(self))
        return self._to_float(self.images[:stop]), self.labels[:stop].clone()

    def select(self, index: slice) -> "ImageTensorDataset":
        """A dataset over ``images[index]`` (a view for slices) with the same transform, mask and info.

        Extra attributes set by a loader travel along: per-sample tensors (length N, such as
        ``source_index`` or ``other_index``) are indexed the same way, anything else is shared.
        """
        part = ImageTensorDataset(self.images[index], self.labels[index], transform=self.transform,
                                  irrelevant_mask=self.irrelevant_mask, info=self.info, name=self.name,
                                  split=self.split)
        for key, value in vars(self).items():
            if key in vars(part):
                continue
            per_sample = isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape[0] == len(self)
            setattr(part, key, value[index] if per_sample else value)
        return part

    def __repr__(self) -> str:
        shape = tuple(self.images.shape[1:])
        aug = f", transform={self.transform!r}" if self.transform is not None else ""
        return f"ImageTensorDataset(name={self.name!r}, split={self.split!r}, n={len(self)}, shape={shape}{aug})"
