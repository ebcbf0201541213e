"""The budget generator, and the classifier + generator pair that produces per-pixel boxes.

``BudgetGenerator`` maps an image to one unconstrained score per input dimension; the projection of
:mod:`.projection` turns the scores into log-budgets of a fixed volume and range.
``FixedBudgetGenerator`` is its input-independent baseline: one learnable score per input dimension,
the same for every image (a learned per-pixel mask), so comparing the two at equal volume measures
what the *context* adds over a fixed mask. ``GENERATORS`` maps ``train.generator.kind`` to the class.
``BudgetModel``
holds a classifier and its generator: ``budgets(x, eps, rho)`` gives per-pixel radii,
``box(x, eps, rho)`` the :class:`~robustsuite.threats.Box` clipped to [0, 1] that certification and
attacks use, and ``forward`` is the classifier's.

Example::

    gen = BudgetGenerator((1, 8, 8))
    bm = BudgetModel(classifier, gen)
    eps_i = bm.budgets(x, 0.1, rho=4)         # (B, 1, 8, 8), geometric mean 0.1 per sample
    Verifier(classifier, (1, 8, 8), "ibp").verify(x, y, bm.box(x, 0.1, rho=4))
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Any, Mapping, Sequence

import torch
from torch import Tensor, nn

from ..errors import ConfigError, InputError, InputTypeError
from ..threats import Box, check_images
from .projection import project_log_budgets

__all__ = ["BudgetGenerator", "FixedBudgetGenerator", "GENERATORS", "BudgetModel", "coordinate_channels",
           "generator_from_spec", "mean_mask_generator"]


def coordinate_channels(x: Tensor) -> Tensor:
    """(B, 2, H, W): the row and column of every pixel, each in [-1, 1] (a single row/column is 0)."""
    B, _, H, W = x.shape
    rows = torch.linspace(-1.0, 1.0, H, device=x.device, dtype=x.dtype) if H > 1 else x.new_zeros(1)
    cols = torch.linspace(-1.0, 1.0, W, device=x.device, dtype=x.dtype) if W > 1 else x.new_zeros(1)
    grid = torch.stack(torch.meshgrid(rows, cols, indexing="ij"))  # (2, H, W)
    return grid.unsqueeze(0).expand(B, 2, H, W)


class BudgetGenerator(nn.Module):
    """Small fully convolutional network: image (B, C, H, W) -> scores (B, C, H, W).

    ``depth`` 3x3 convolutions of ``width`` channels with ReLU (padding 1: same spatial size), then a
    1x1 convolution to C channels, zero-initialized so that training starts from uniform budgets.
    With ``coordinates`` the input also gets two channels holding each pixel's row and column in
    [-1, 1]: a purely convolutional network cannot tell where a pixel is, so without them it cannot
    learn that a whole region of the canvas is irrelevant.

    Args:
        in_shape: (C, H, W) of the images (H, W only recorded; any size works).
        width: channels of the hidden convolutions (> 0).
        depth: number of hidden 3x3 convolutions (>= 1).
        coordinates: add the two coordinate channels.

    ``spec`` holds the arguments, so :func:`generator_from_spec` rebuilds it from a checkpoint.
    """

    def __init__(self, in_shape: Sequence[int], *, width: int = 32, depth: int = 2, coordinates: bool = True):
        super().__init__()
        shape = tuple(int(v) for v in in_shape)
        if len(shape) != 3 or min(shape) < 1:
            raise InputError(f"in_shape: expected (C, H, W) with positive sizes, got {tuple(in_shape)}")
        for name, v, least in (("width", width, 1), ("depth", depth, 1)):
            if isinstance(v, bool) or not isinstance(v, int) or v < least:
                raise ConfigError(f"generator.{name}: expected an integer >= {least}, got {v!r}")
        if not isinstance(coordinates, bool):
            raise ConfigError(f"generator.coordinates: expected true or false, got {coordinates!r}")
        c = shape[0]
        layers: list[tuple[str, nn.Module]] = []
        ch = c + (2 if coordinates else 0)
        for i in range(depth):
            layers += [(f"conv{i + 1}", nn.Conv2d(ch, width, 3, padding=1)), (f"relu{i + 1}", nn.ReLU())]
            ch = width
        self.body = nn.Sequential(OrderedDict(layers))
        self.head = nn.Conv2d(ch, c, 1)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)
        self.coordinates = coordinates
        self.in_shape = shape
        self.spec = {"kind": "contextual", "in_shape": list(shape), "width": width, "depth": depth,
                     "coordinates": coordinates}

    def forward(self, x: Tensor) -> Tensor:
        """Scores (B, C, H, W), one per input dimension (unconstrained; see ``project_log_budgets``)."""
        if x.dim() != 4 or x.shape[1] != self.in_shape[0]:
            raise InputError(f"x: expected (B, {self.in_shape[0]}, H, W) images, got shape {tuple(x.shape)}")
        h = torch.cat([x * 2 - 1, coordinate_channels(x)], dim=1) if self.coordinates else x * 2 - 1
        return self.head(self.body(h))


class FixedBudgetGenerator(nn.Module):
    """The input-independent baseline: one learnable score per input dimension, shared by all images.

    ``forward(x)`` returns the same (C, H, W) scores for every image of the batch, so after the
    projection every image gets the same per-pixel budgets: a learned fixed mask of the same volume
    and range as the contextual generator's. The scores start at zero (uniform budgets), as the
    contextual generator's zero-initialized head does, and train through the same projection and
    the same certified loss; only the dependence on the image is missing.

    Args:
        in_shape: (C, H, W) of the images; the mask has exactly this shape, so images of another
            size are refused.

    ``spec`` holds the arguments, so :func:`generator_from_spec` rebuilds it from a checkpoint.
    """

    def __init__(self, in_shape: Sequence[int]):
        super().__init__()
        shape = tuple(int(v) for v in in_shape)
        if len(shape) != 3 or min(shape) < 1:
            raise InputError(f"in_shape: expected (C, H, W) with positive sizes, got {tuple(in_shape)}")
        self.scores = nn.Parameter(torch.zeros(shape))
        self.in_shape = shape
        self.spec = {"kind": "fixed", "in_shape": list(shape)}

    @classmethod
    def from_log_budgets(cls, log_budgets: Tensor) -> "FixedBudgetGenerator":
        """A fixed generator whose mask is ``log_budgets`` (C, H, W): log-budgets of the set at some
        radius e and ratio rho (mean log e, every entry within log rho of it) are a fixed point of
        the projection up to the shift by log e, so at that e and rho the generator reproduces them."""
        if log_budgets.dim() != 3:
            raise InputError(f"log_budgets: expected (C, H, W), got shape {tuple(log_budgets.shape)}")
        gen = cls(tuple(log_budgets.shape))
        with torch.no_grad():
            gen.scores.copy_(log_budgets - log_budgets.mean())
        return gen

    def forward(self, x: Tensor) -> Tensor:
        """Scores (B, C, H, W): the same mask for each of the B images."""
        if x.dim() != 4 or tuple(x.shape[1:]) != self.in_shape:
            raise InputError(f"x: the fixed budget mask has shape {self.in_shape}; expected (B, "
                             f"{', '.join(map(str, self.in_shape))}) images, got shape {tuple(x.shape)}")
        return self.scores.unsqueeze(0).expand(x.shape[0], *self.in_shape)


#: ``train.generator.kind`` -> generator class; each builds from ``(in_shape, **options)``.
GENERATORS: dict[str, type[nn.Module]] = {"contextual": BudgetGenerator, "fixed": FixedBudgetGenerator}


def generator_from_spec(spec: Mapping[str, Any]) -> nn.Module:
    """Rebuild a generator from its ``spec`` (as stored in a budget checkpoint; no ``kind`` means
    contextual, as checkpoints written before the fixed mask existed)."""
    if not isinstance(spec, Mapping) or "in_shape" not in spec:
        raise ConfigError(f"generator spec: expected a mapping with kind and in_shape; got {spec!r}")
    kind = spec.get("kind", "contextual")
    if kind == "fixed":
        return FixedBudgetGenerator(spec["in_shape"])
    if kind != "contextual":
        raise ConfigError(f"generator spec: unknown kind {kind!r}; choose one of: {', '.join(GENERATORS)}")
    return BudgetGenerator(spec["in_shape"], width=int(spec.get("width", 32)), depth=int(spec.get("depth", 2)),
                           coordinates=bool(spec.get("coordinates", True)))


class BudgetModel(nn.Module):
    """A classifier and its budget generator.

    ``forward(x)`` is the classifier's logits; the generator only decides the perturbation set.

    Args:
        classifier: maps (B, C, H, W) in [0, 1] to logits.
        generator: a :class:`BudgetGenerator` (contextual) or :class:`FixedBudgetGenerator` (one mask
            for all images) for the same images.
    """

    def __init__(self, classifier: nn.Module, generator: BudgetGenerator):
        super().__init__()
        if not isinstance(classifier, nn.Module):
            raise InputTypeError(f"classifier: expected a torch.nn.Module, got {type(classifier).__name__}")
        if not isinstance(generator, tuple(GENERATORS.values())):
            raise InputTypeError(f"generator: expected a BudgetGenerator or FixedBudgetGenerator, got "
                                 f"{type(generator).__name__}")
        self.classifier = classifier
        self.generator = generator

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(x)

    def log_budgets(self, x: Tensor, eps, rho: float, *, check: bool = True) -> Tensor:
        """Log-budgets (shape of ``x``): the generator's scores projected onto the volume/range set.

        ``check=False`` skips the value checks of ``x`` and the scores (host syncs; training loops).
        """
        if check:
            check_images(x, "x", ndim=4)
        return project_log_budgets(self.generator(x), eps, rho, check=check)

    def budgets(self, x: Tensor, eps, rho: float, *, check: bool = True) -> Tensor:
        """Per-pixel radii (shape of ``x``) before the [0, 1] clip: geometric mean ``eps`` per sample,
        each within ``[eps / rho, rho * eps]``. ``rho = 1`` gives ``eps`` everywhere, exactly.

        ``eps`` is a number or a (B,) tensor. Differentiable in the generator's parameters.
        """
        u = self.log_budgets(x, eps, rho, check=check)
        if float(rho) == 1.0:  # uniform: exactly eps (exp(log eps) may differ from eps in the last bit)
            e = eps if isinstance(eps, Tensor) else torch.tensor(float(eps), dtype=x.dtype, device=x.device)
            return e.to(x.dtype).reshape(-1, *([1] * (x.dim() - 1))).expand_as(x) + 0.0 * u
        return torch.exp(u)

    def box(self, x: Tensor, eps, rho: float, *, check: bool = True) -> Box:
        """The learned set ``[x - eps_i, x + eps_i]`` clipped to [0, 1], as a :class:`Box`."""
        b = self.budgets(x, eps, rho, check=check)
        return Box((x - b).clamp(0, 1), (x + b).clamp(0, 1))


def mean_mask_generator(model: BudgetModel, x: Tensor, eps: float, rho: float, *, batch: int = 1024) -> FixedBudgetGenerator:
    """The fixed mask that summarizes a budget model over images ``x`` (N, C, H, W): the per-pixel
    geometric mean of its budgets at radius ``eps`` and ratio ``rho`` (the mean log-budget).

    Every image's log-budgets lie in the set U(eps, rho) (mean log eps, range log rho), and U is
    convex, so their mean does too: the mask has the same volume and range and needs no further
    projection. Certifying the classifier under this mask separates "the classifier" from "the
    boxes": what is left of the contextual model's advantage is what the context adds.
    """
    check_images(x, "x", ndim=4)
    with torch.no_grad():
        dev = next(model.generator.parameters()).device
        total = None
        for i in range(0, x.shape[0], batch):
            u = model.log_budgets(x[i:i + batch].to(dev), eps, rho, check=False).sum(0)
            total = u if total is None else total + u
        mean = (total / x.shape[0]).float().cpu()
    return FixedBudgetGenerator.from_log_budgets(mean).to(dev)
