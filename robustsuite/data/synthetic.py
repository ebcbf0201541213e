"""Synthetic sets with a known label-irrelevant region, for the learned perturbation budgets.

Built from any digit data (the embedded digits, or MNIST where it is on disk), deterministically from
a seed (see ``budgets.md``). Sample i is made from base sample i of the same split, so its label is
the base label. Each set carries ``irrelevant_mask``, a bool (C, H, W) tensor, True on the pixels
that cannot matter for the label.

* ``distractor``: two cells side by side, (C, H, 2W). The left cell holds the labelled digit; the
  right cell holds a random base image of a different class (``other_index`` gives which).
  Irrelevant region: the right cell.
* ``border``: the digit in the centre of a (C, H + 2b, W + 2b) canvas whose frame of width b is
  uniform noise in [0, 1], drawn independently per image and pixel. Irrelevant region: the frame.

Randomness: one CPU ``torch.Generator`` seeded with ``2 * seed + (0 for train, 1 for test)``, so the
two splits draw different streams and a seed gives the same set on every call and machine.
"""
from __future__ import annotations

import logging
import os

import torch

from ..errors import ConfigError, InputError
from .digits import DIGITS_MEAN, DIGITS_STD, load_digits_split
from .registry import choice, positive_int, register_dataset, seed as seed_check
from .tensor_dataset import ImageTensorDataset
from .torchvision_sets import BACKENDS, DESCRIPTIONS, load_torchvision_set

logger = logging.getLogger(__name__)
KINDS = ("distractor", "border")
BASES = ("digits", "mnist")
#: what a distractor set's right cell shows (see :func:`make_distractor`); the first is the default
RIGHT_CELLS = ("other_class", "any")

SPLIT_STREAM = {"train": 0, "test": 1}


def generator_for(seed: int, split: str) -> torch.Generator:
    """The generator that builds ``split`` of a synthetic set from ``seed``."""
    return torch.Generator().manual_seed(2 * int(seed) + SPLIT_STREAM[split])


def make_distractor(images: torch.Tensor, labels: torch.Tensor, *, generator: torch.Generator,
                    right: str = "other_class") -> tuple[torch.Tensor, torch.Tensor]:
    """Two-cell canvases: left = ``images[i]``, right = a random image of another class.

    Args:
        images: (N, C, H, W) uint8 or float32 base images.
        labels: (N,) class labels; at least two classes must be present.
        generator: the source of randomness.
        right: "other_class" (the right cell's label differs from ``labels[i]``: it tells which class
            the label is not, a little information) or "any" (a uniformly random base image,
            independent of the label: the right cell carries no information about it).
    Returns:
        (canvas (N, C, H, 2W) of the images' dtype, other_index (N,) int64: the base index shown in
        the right cell).
    """
    if right == "any":
        other_index = torch.randint(0, images.shape[0], (images.shape[0],), generator=generator)
        return torch.cat([images, images[other_index]], dim=-1), other_index
    if right != "other_class":
        raise ConfigError(f"right: expected 'other_class' or 'any', got {right!r}")
    labels = labels.long()
    present = torch.unique(labels)  # sorted
    if present.numel() < 2:
        raise InputError(f"labels: a distractor set needs at least two classes, got {present.tolist()}")
    n, p = labels.numel(), present.numel()
    # Other class: shift the label's rank among the present classes by 1..p-1, uniformly, so it differs.
    rank = torch.searchsorted(present, labels)
    shift = torch.randint(1, p, (n,), generator=generator)
    other_class_rank = (rank + shift) % p
    # A uniformly random base image of that class: indices grouped by class, then a random offset.
    order = torch.argsort(rank, stable=True)
    counts = torch.bincount(rank, minlength=p)
    starts = torch.cumsum(counts, 0) - counts
    u = torch.rand(n, generator=generator)
    offset = torch.minimum((u * counts[other_class_rank]).long(), counts[other_class_rank] - 1)
    other_index = order[starts[other_class_rank] + offset]
    canvas = torch.cat([images, images[other_index]], dim=-1)
    return canvas, other_index


def distractor_mask(shape: tuple[int, int, int]) -> torch.Tensor:
    """Bool (C, H, 2W) for a distractor canvas of ``shape`` = (C, H, 2W): True on the right cell."""
    c, h, w2 = shape
    mask = torch.zeros(c, h, w2, dtype=torch.bool)
    mask[:, :, w2 // 2:] = True
    return mask


def make_border(images: torch.Tensor, *, border: int, generator: torch.Generator) -> torch.Tensor:
    """The images in the centre of a noise frame of width ``border``.

    Args:
        images: (N, C, H, W) uint8 (noise uniform over 0..255) or float32 (noise uniform in [0, 1)).
        border: frame width in pixels, >= 1.
        generator: the source of randomness.
    Returns:
        (N, C, H + 2 border, W + 2 border) of the images' dtype.
    """
    if border < 1:
        raise ConfigError(f"border: expected an integer >= 1, got {border!r}")
    n, c, h, w = images.shape
    size = (n, c, h + 2 * border, w + 2 * border)
    if images.dtype == torch.uint8:
        canvas = torch.randint(0, 256, size, generator=generator, dtype=torch.uint8)
    else:
        canvas = torch.rand(size, generator=generator, dtype=images.dtype)
    canvas[:, :, border:border + h, border:border + w] = images
    return canvas


def border_mask(shape: tuple[int, int, int], border: int) -> torch.Tensor:
    """Bool (C, H, W) for a border canvas of ``shape``: True on the frame of width ``border``."""
    c, h, w = shape
    mask = torch.ones(c, h, w, dtype=torch.bool)
    mask[:, border:h - border, border:w - border] = False
    return mask


def load_synthetic(kind: str, base: str, split: str, *, seed: int = 0, size: int | None = None,
                   border: int | None = None, right: str = "other_class", root: str | os.PathLike | None = None, download: bool = False,
                   backend: str = "auto") -> ImageTensorDataset:
    """The ``kind`` set ("distractor" or "border") built from ``base``'s ("digits" or "mnist") ``split``.

    ``size`` resizes digits cells (digits base only); ``border`` is the frame width, default H // 2
    (a 16x16 canvas for 8x8 digits, 56x56 for MNIST); ``right`` what the distractor's right cell
    shows (see :func:`make_distractor`). ``root``/``download``/``backend`` reach MNIST.
    Returns an ImageTensorDataset with ``irrelevant_mask`` set, plus ``seed`` and, for distractor
    sets, ``other_index``.
    """
    if base == "digits":
        source = load_digits_split(split, size)
    else:
        source = load_torchvision_set("mnist", split, root, download, augment=False, backend=backend)
    images, labels = source.images, source.labels
    generator = generator_for(seed, split)
    if kind == "distractor":
        canvas, other_index = make_distractor(images, labels, generator=generator, right=right)
        mask = distractor_mask(tuple(canvas.shape[1:]))
    else:
        width = images.shape[-2] // 2 if border is None else border
        canvas = make_border(images, border=width, generator=generator)
        mask = border_mask(tuple(canvas.shape[1:]), width)
    dataset = ImageTensorDataset(canvas, labels.clone(), irrelevant_mask=mask, name=f"{base}_{kind}",
                                 split=split)
    dataset.seed = int(seed)
    if kind == "distractor":
        dataset.other_index = other_index
    logger.info("built %s %s: %d images %s, seed %d", dataset.name, split, len(dataset),
                tuple(canvas.shape[1:]), seed)
    return dataset


def _register(kind: str, base: str) -> None:
    """Register ``<base>_<kind>``: options seed, size (digits) or backend (mnist), border or right;
    the base's classes and statistics."""
    options = {"seed": seed_check, **({"size": positive_int} if base == "digits" else {"backend": choice(BACKENDS)}),
               **({"border": positive_int} if kind == "border" else {"right": choice(RIGHT_CELLS)})}
    mean, std = (DIGITS_MEAN, DIGITS_STD) if base == "digits" else DESCRIPTIONS[base][2:]

    def shape(opts: dict) -> tuple[int, int, int]:
        side = (opts.get("size") or 8) if base == "digits" else 28
        if kind == "distractor":
            return (1, side, 2 * side)
        frame = opts["border"] if opts.get("border") is not None else side // 2
        return (1, side + 2 * frame, side + 2 * frame)

    def build(split: str, root, download: bool, opts: dict) -> ImageTensorDataset:
        return load_synthetic(kind, base, split, seed=opts["seed"], size=opts.get("size"),
                              border=opts.get("border"), right=opts.get("right", "other_class"),
                              root=root, download=download, backend=opts.get("backend", "auto"))

    register_dataset(f"{base}_{kind}", options=options, shape=shape, num_classes=10, mean=mean, std=std,
                     build=build)


for _base in BASES:  # digits_distractor, digits_border, mnist_distractor, mnist_border
    for _kind in KINDS:
        _register(_kind, _base)
