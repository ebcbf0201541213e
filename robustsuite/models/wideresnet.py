"""WideResNet (Zagoruyko and Komodakis 2016), WRN-depth-width, as used by MNG-AC (WRN-28-10).

Pre-activation blocks (:class:`~robustsuite.models.preact.PreActBlock`), dropout 0. Noise-layer
insertion points as in the other residual models: ``model.post_stem`` after the stem convolution
and ``block.post_add`` after each residual addition.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ..errors import ConfigError
from ._checks import positive_int
from .normalize import Normalize
from .preact import preact_stage
from .registry import register_model
from .resnet import init_residual_weights
from .sites import Site


@register_model("wideresnet", certifiable=True, summary="WideResNet WRN-depth-width, pre-activation, dropout 0",
                note="parses and bounds, but far too large for CROWN at the usual sizes")
class WideResNet(nn.Module):
    """WRN-d-k: stem conv3x3 16, three stages of n = (d - 4) / 6 pre-activation blocks with
    16k, 32k, 64k channels (strides 1, 2, 2), final BN-ReLU, AdaptiveAvgPool2d(1), Flatten, Linear K.

    Args:
        in_shape: (C, H, W); any size (global pooling; the reference's ``avg_pool2d(out, 8)`` is
            the same thing on 32x32 inputs).
        num_classes: K.
        depth: d with (d - 4) % 6 == 0 and d >= 10 (e.g. 16, 28, 34, 40).
        width: the widening factor k (an int >= 1; 10 for WRN-28-10).
        mean, std: per-channel normalization.

    Shapes: input (B, C, H, W), output (B, K).
    """

    def __init__(self, in_shape: tuple[int, int, int], num_classes: int, depth: int = 28,
                 width: int = 10, mean: Sequence[float] | float | None = None,
                 std: Sequence[float] | float | None = None) -> None:
        super().__init__()
        depth = positive_int("depth", depth)
        width = positive_int("width", width)
        if (depth - 4) % 6 != 0 or depth < 10:
            raise ConfigError(f"depth: WideResNet needs depth = 6n + 4 with n >= 1 (e.g. 16, 28, 34, "
                              f"40), got {depth}")
        n = (depth - 4) // 6
        c = in_shape[0]
        widths = [16, 16 * width, 32 * width, 64 * width]
        self.normalize = Normalize(0.0 if mean is None else mean, 1.0 if std is None else std, c)
        self.conv1 = nn.Conv2d(c, widths[0], 3, 1, 1, bias=False)
        self.post_stem = Site("stem")
        self.layer1 = preact_stage(widths[0], widths[1], n, 1)
        self.layer2 = preact_stage(widths[1], widths[2], n, 2)
        self.layer3 = preact_stage(widths[2], widths[3], n, 2)
        self.bn = nn.BatchNorm2d(widths[3])
        self.act = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.linear = nn.Linear(widths[3], num_classes)
        init_residual_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, K)."""
        out = self.post_stem(self.conv1(self.normalize(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        return self.linear(self.flatten(self.pool(self.act(self.bn(out)))))
