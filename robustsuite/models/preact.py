"""Pre-activation ResNet-18 ("ResNet-V2 18", He et al. 2016, "Identity mappings in deep residual
networks"), in the CIFAR layout used by the adversarial-training literature (3x3 stem, no max-pool).

Noise-layer insertion points (see :mod:`robustsuite.models.sites`): ``model.post_stem`` after the stem
convolution (the pre-activation stem has no BN of its own; the first block's BN-ReLU follows), and
``block.post_add`` after each residual addition, which is the block's output. The block activations
are ``block.act1`` and ``block.act2`` (the pre-activations).
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ._checks import positive_float, scaled
from .normalize import Normalize
from .registry import register_model
from .resnet import init_residual_weights
from .sites import ResidualBlock, Site


class PreActBlock(ResidualBlock):
    """BN-act1-conv3x3(stride)-BN-act2-conv3x3, + shortcut, post_add.

    The shortcut is the identity when the shape is unchanged; otherwise a 1x1 convolution applied to
    the pre-activated input (as in the reference PreAct-ResNet and WideResNet code).

    Shapes: input (B, in, H, W), output (B, out, ceil(H/stride), ceil(W/stride)).
    """

    ACTIVATIONS = ("act1", "act2")

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.act1 = nn.ReLU()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.act2 = nn.ReLU()
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False)
        self.shortcut = (nn.Conv2d(in_channels, out_channels, 1, stride, bias=False)
                         if stride != 1 or in_channels != out_channels else None)
        self.post_add = Site("block")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pre = self.act1(self.bn1(x))
        skip = x if self.shortcut is None else self.shortcut(pre)
        out = self.conv2(self.act2(self.bn2(self.conv1(pre))))
        return self.post_add(out + skip)


def preact_stage(in_channels: int, out_channels: int, blocks: int, stride: int) -> nn.Sequential:
    """``blocks`` PreActBlocks; the first one changes channels and stride."""
    return nn.Sequential(*[PreActBlock(in_channels if i == 0 else out_channels, out_channels,
                                       stride if i == 0 else 1) for i in range(blocks)])


@register_model("preact_resnet18", certifiable=True,
                summary="PreAct ResNet-18 ('ResNet-V2 18'), stages [2, 2, 2, 2] of 64-128-256-512",
                note="parses and bounds, but far too large for CROWN; IBP bounds are loose")
class PreActResNet18(nn.Module):
    """PreAct ResNet-18: stem conv3x3 64w, stages [2, 2, 2, 2] of 64w/128w/256w/512w channels
    (strides 1, 2, 2, 2), final BN-ReLU, AdaptiveAvgPool2d(1), Flatten, Linear K.

    Args:
        in_shape: (C, H, W); any size (global pooling).
        num_classes: K.
        width: channel multiplier (1.0 is the standard 64..512; tests use small values).
        mean, std: per-channel normalization.

    Shapes: input (B, C, H, W), output (B, K).
    """

    def __init__(self, in_shape: tuple[int, int, int], num_classes: int, width: float = 1.0,
                 mean: Sequence[float] | float | None = None,
                 std: Sequence[float] | float | None = None) -> None:
        super().__init__()
        width = positive_float("width", width)
        c = in_shape[0]
        widths = [scaled(b, width) for b in (64, 128, 256, 512)]
        self.normalize = Normalize(0.0 if mean is None else mean, 1.0 if std is None else std, c)
        self.conv1 = nn.Conv2d(c, widths[0], 3, 1, 1, bias=False)
        self.post_stem = Site("stem")
        self.layer1 = preact_stage(widths[0], widths[0], 2, 1)
        self.layer2 = preact_stage(widths[0], widths[1], 2, 2)
        self.layer3 = preact_stage(widths[1], widths[2], 2, 2)
        self.layer4 = preact_stage(widths[2], widths[3], 2, 2)
        self.bn = nn.BatchNorm2d(widths[3])
        self.act = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.linear = nn.Linear(widths[3], num_classes)
        init_residual_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, K)."""
        out = self.post_stem(self.conv1(self.normalize(x)))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        return self.linear(self.flatten(self.pool(self.act(self.bn(out)))))
