"""MNG-AC's meta noise generator: a small convolutional net from noise (and optionally the image)
to a perturbation, projected onto the batch's threat set and [0, 1]."""
from __future__ import annotations

import torch
from torch import Tensor, nn

from ..errors import ConfigError

__all__ = ["NoiseGenerator"]


class NoiseGenerator(nn.Module):
    """conv3x3 -> ReLU -> conv3x3 -> ReLU -> conv3x3 on ``z ~ N(0, I)`` of the image's shape, or on
    ``[z, x]`` (``use_image=True``, as the paper describes; the reference code feeds only noise).

    ``forward(x, threat)`` returns ``x_aug = threat.project(x, x + g(z[, x]))``, differentiable in
    the generator's parameters. Noise comes from torch's global RNG.

    Shapes: x (B, C, H, W) in [0, 1] -> (B, C, H, W) in the threat set around x and [0, 1].
    """

    def __init__(self, channels: int, hidden: int = 16, use_image: bool = False) -> None:
        super().__init__()
        if channels < 1 or hidden < 1:
            raise ConfigError(f"generator: channels and hidden must be >= 1, got {channels}, {hidden}")
        self.use_image = bool(use_image)
        cin = 2 * channels if use_image else channels
        self.net = nn.Sequential(nn.Conv2d(cin, hidden, 3, 1, 1), nn.ReLU(),
                                 nn.Conv2d(hidden, hidden, 3, 1, 1), nn.ReLU(),
                                 nn.Conv2d(hidden, channels, 3, 1, 1))

    def forward(self, x: Tensor, threat) -> Tensor:
        z = torch.randn_like(x)
        delta = self.net(torch.cat([z, x], dim=1) if self.use_image else z)
        return threat.project(x, x + delta)
