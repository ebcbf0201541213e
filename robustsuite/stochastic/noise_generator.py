"""MNG-AC's meta noise generator: a small convolutional net from Gaussian noise (and optionally the
image) to a perturbation, fitted to the batch's threat set and [0, 1].

Architecture (the slides are silent on it; this is the authors' code, divyam3897/MNG_AC,
``NoiseResNet3x3Conv``): noise ``z ~ N(0, I)`` of shape (B, C, H + 2, W + 2), then
conv1x1 -> leaky ReLU -> conv3x3 (no padding: back to H x W) -> leaky ReLU -> conv1x1 -> leaky ReLU
-> conv1x1 to C channels, plus the centre H x W of ``z`` as a residual. ``hidden`` channels
(20 in the code). Convolution weights start at ``N(0, 2 / (k * k * out_channels))``, biases at 0
(the code's ``initialize_weights``).

Generator input: the slides say MNG-AC "meta-learns to generate *input-dependent* noise" (slide
"Meta-Noise Generator with Adversarial Consistency"); the authors' code feeds the generator only
noise. ``use_image=True`` (variant ``paper``) concatenates the image, zero-padded by one pixel to
the noise's size, to ``z`` as extra input channels; ``False`` (variant ``reference``) is the code.

Fitting the perturbation ``delta`` to the threat set (:func:`fit_perturbation`):

* ``"exact"`` (variant ``paper``; the spec: "projected onto the drawn norm's ball and [0, 1]"):
  the Euclidean projection of ``x + delta`` onto the ball around ``x`` intersected with [0, 1].
* ``"reference"`` (the code's ``fix_perturbation_size``): L-inf: ``delta`` clamped to
  [-eps, eps], then ``x + delta`` clipped to [0, 1] (the same point as ``"exact"``); L1: ``delta``
  projected onto the L1 ball, then ``x + delta`` clipped (inside the set, not the Euclidean
  projection); L2: ``delta`` *rescaled* by the ``eta >= 0`` with
  ``||clip(x + eta * delta, 0, 1) - x||_2 = eps`` exactly (scaled up as well as down; when no
  ``eta`` reaches eps, every moving pixel saturates), with ``eta`` differentiable in ``delta``.
"""
from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import ConfigError
from ..threats import L1Ball, L2Ball, LinfBall, project_l1_box

__all__ = ["NoiseGenerator", "fit_perturbation", "rescale_l2"]

PROJECTIONS = ("exact", "reference")


def rescale_l2(x: Tensor, delta: Tensor, eps: float) -> Tensor:
    """``clip(x + eta * delta, 0, 1)`` with the per-sample ``eta >= 0`` that makes its L2 distance
    to ``x`` exactly ``eps`` (the reference code's L2 fit). Shapes (B, ...) -> (B, ...).

    For ``t = eta^2`` the squared distance is ``sum_i min(t * delta_i^2, room_i^2)`` (``room_i`` the
    distance to the box face ``delta_i`` points at): piecewise linear in ``t`` with breakpoints
    ``f_i = room_i^2 / delta_i^2``. Sorting the breakpoints gives, per sample, the segment where it
    crosses ``eps^2`` and ``t`` in closed form, differentiable in ``delta``. When even every moving
    pixel saturated stays below ``eps``, ``t`` is the last breakpoint (all of them saturated).
    """
    d2 = delta.flatten(1).pow(2)
    s2 = torch.where(delta >= 0, 1 - x, x).flatten(1).pow(2)
    f = s2 / d2.clamp_min(1e-20)
    f_sorted, order = f.sort(dim=1)
    s2_sorted, d2_sorted = s2.gather(1, order), d2.gather(1, order)
    saturated_before = s2_sorted.cumsum(1) - s2_sorted                  # sum_{j < k} room_j^2
    free_from = d2_sorted.flip(1).cumsum(1).flip(1)                      # sum_{j >= k} delta_j^2
    at_break = saturated_before + s2_sorted + f_sorted * (free_from - d2_sorted)
    reached = at_break >= eps ** 2
    k = reached.float().argmax(1, keepdim=True)                          # first breakpoint past eps^2
    t = (eps ** 2 - saturated_before.gather(1, k)) / free_from.gather(1, k).clamp_min(1e-20)
    t = torch.where(reached.any(1, keepdim=True), t, f_sorted[:, -1:])
    eta = t.clamp_min(0).sqrt().view(-1, *([1] * (x.dim() - 1)))
    return (x + eta * delta).clamp(0, 1)


def fit_perturbation(x: Tensor, delta: Tensor, threat, mode: Literal["exact", "reference"] = "exact") -> Tensor:
    """``x_aug`` in the ``threat`` set around ``x`` and [0, 1] from an unconstrained ``delta``
    (see the module docstring for the two modes); differentiable in ``delta``. Shapes (B, C, H, W)."""
    if mode not in PROJECTIONS:
        raise ConfigError(f"generator.projection: expected one of {', '.join(PROJECTIONS)}, got {mode!r}")
    if mode == "exact" or isinstance(threat, LinfBall):
        return threat.project(x, x + delta)
    if isinstance(threat, L2Ball):
        return rescale_l2(x, delta, float(threat.eps))
    if isinstance(threat, L1Ball):
        unbounded = torch.full_like(delta, math.inf)
        return (x + project_l1_box(delta, -unbounded, unbounded, float(threat.eps))).clamp(0, 1)
    raise ConfigError(f"generator.projection 'reference' fits L-inf, L2 and L1 balls, got {type(threat).__name__}")


class NoiseGenerator(nn.Module):
    """The meta noise generator (architecture in the module docstring).

    Args:
        channels: image channels C.
        hidden: channels of the hidden layers (20 in the reference code).
        use_image: also feed the image (the paper's input-dependent noise) instead of noise only.
        projection: ``"exact"`` or ``"reference"`` (see :func:`fit_perturbation`).

    ``forward(x, threat)``: x (B, C, H, W) in [0, 1] -> ``x_aug`` (B, C, H, W) in the threat set
    around x and [0, 1], differentiable in the generator's parameters. The noise comes from torch's
    global RNG (:meth:`draw_noise`), fresh every call.
    """

    def __init__(self, channels: int, hidden: int = 20, use_image: bool = False,
                 projection: Literal["exact", "reference"] = "exact") -> None:
        super().__init__()
        if channels < 1 or hidden < 1:
            raise ConfigError(f"generator: channels and hidden must be >= 1, got {channels}, {hidden}")
        if projection not in PROJECTIONS:
            raise ConfigError(f"generator.projection: expected one of {', '.join(PROJECTIONS)}, got {projection!r}")
        self.use_image = bool(use_image)
        self.projection = projection
        cin = 2 * channels if use_image else channels
        self.net = nn.Sequential(nn.Conv2d(cin, hidden, 1), nn.LeakyReLU(),
                                 nn.Conv2d(hidden, hidden, 3), nn.LeakyReLU(),
                                 nn.Conv2d(hidden, hidden, 1), nn.LeakyReLU(),
                                 nn.Conv2d(hidden, channels, 1))
        for m in self.net:
            if isinstance(m, nn.Conv2d):
                fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
                nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / fan_out))
                nn.init.zeros_(m.bias)

    def draw_noise(self, x: Tensor) -> Tensor:
        """``z ~ N(0, I)`` of shape (B, C, H + 2, W + 2): one pixel wider on each side, so the
        unpadded 3x3 convolution returns H x W (a seam for tests to fix the noise)."""
        b, c, h, w = x.shape
        return torch.randn(b, c, h + 2, w + 2, device=x.device, dtype=x.dtype)

    def perturbation(self, x: Tensor, z: Tensor) -> Tensor:
        """The unconstrained perturbation ``delta`` (B, C, H, W) from noise ``z`` (B, C, H+2, W+2)."""
        inp = torch.cat([z, F.pad(x, (1, 1, 1, 1))], dim=1) if self.use_image else z
        return self.net(inp) + z[:, :, 1:-1, 1:-1]

    def forward(self, x: Tensor, threat) -> Tensor:
        return fit_perturbation(x, self.perturbation(x, self.draw_noise(x)), threat, self.projection)
