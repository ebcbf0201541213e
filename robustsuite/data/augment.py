"""Train-time augmentation of the papers, on batched tensors.

Same semantics as torchvision's ``RandomCrop(size, padding=4)`` (zero padding) followed by
``RandomHorizontalFlip(0.5)``, but applied to a whole (B, C, H, W) batch at once, with an independent
crop offset and flip per image. Written here rather than taken from ``torchvision.transforms`` so that
it runs on tensors (no PIL round trip) and works wherever torch does.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..errors import ConfigError


class RandomCropFlip:
    """Random crop back to the original size after zero padding, then an optional horizontal flip.

    Args:
        padding: pixels of zero padding on each side before cropping (>= 0); 4 in the papers.
        flip: flip each image left-right with probability 0.5 (off for digits: SVHN).

    Call on float (B, C, H, W) in [0, 1]; returns a new tensor of the same shape, still in [0, 1]
    (padding is 0). Randomness comes from torch's global RNG, which a DataLoader worker seeds from
    the loader's generator.
    """

    def __init__(self, padding: int = 4, flip: bool = True) -> None:
        if isinstance(padding, bool) or not isinstance(padding, int) or padding < 0:
            raise ConfigError(f"padding: expected an integer >= 0, got {padding!r}")
        self.padding = padding
        self.flip = bool(flip)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        p = self.padding
        if p > 0:
            padded = F.pad(x, (p, p, p, p))
            dy = torch.randint(0, 2 * p + 1, (n,))
            dx = torch.randint(0, 2 * p + 1, (n,))
            # Two gathers (rows, then columns) with expanded, uncopied index tensors: a few times
            # faster than one 4-d advanced index on CPU.
            rows = (dy[:, None] + torch.arange(h)).view(n, 1, h, 1).expand(n, c, h, w + 2 * p)
            x = padded.gather(2, rows)
            cols = (dx[:, None] + torch.arange(w)).view(n, 1, 1, w).expand(n, c, h, w)
            x = x.gather(3, cols)
        if self.flip:
            flip = (torch.rand(n) < 0.5)[:, None, None, None]
            x = torch.where(flip, x.flip(-1), x)
        return x

    def __repr__(self) -> str:
        return f"RandomCropFlip(padding={self.padding}, flip={self.flip})"
