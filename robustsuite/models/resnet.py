"""ResNet-V1 for CIFAR (He et al. 2016, section 4.2) and a tiny residual model for soundness tests.

Both use :class:`BasicBlock`: conv3x3-BN-ReLU-conv3x3-BN, plus the shortcut, then ReLU. Noise-layer
insertion points (see :mod:`robustsuite.models.sites`): ``model.post_stem`` after the first
conv+BN (before its ReLU), ``block.post_add`` after each residual addition (before the block's
final ReLU); the block's ReLUs are ``block.act1`` and ``block.act2``.

Option-A ("pad") shortcut and auto_LiRPA: the usual implementation
``F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, p, p))`` does not parse in auto_LiRPA 0.3 (its ``BoundSlice``
asserts step 1; measured: construction fails with an AssertionError in ``operators/shape.py``). The
same function is a fixed 1x1 convolution with stride 2 whose weight embeds input channel i as output
channel p + i; :class:`PadShortcut` computes it that way (weight a persistent buffer), which bounds in
every mode. So both shortcut kinds are certifiable.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from ._checks import boolean, positive_float, positive_int, scaled
from .normalize import Normalize
from .registry import register_model
from .sites import ResidualBlock, Site

SHORTCUTS = ("pad", "conv")


class PadShortcut(nn.Module):
    """He et al.'s option-A shortcut: subsample by ``stride`` and zero-pad the new channels.

    Equal to ``F.pad(x[:, :, ::s, ::s], (0, 0, 0, 0, p, q))`` with ``p = (out - in) // 2`` and
    ``q = out - in - p``, computed as a fixed 1x1 convolution so that auto_LiRPA 0.3 can bound it.

    Shapes: input (B, in_channels, H, W), output (B, out_channels, ceil(H/s), ceil(W/s)).
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        if out_channels < in_channels:
            raise ConfigError(f"shortcut: the 'pad' shortcut cannot reduce channels "
                              f"({in_channels} -> {out_channels})")
        self.stride = stride
        front = (out_channels - in_channels) // 2
        weight = torch.zeros(out_channels, in_channels, 1, 1)
        weight[front + torch.arange(in_channels), torch.arange(in_channels)] = 1.0
        # Persistent: auto_LiRPA traces a non-persistent buffer as a constant, and 0.3's CROWN through
        # a convolution with a constant weight fails in patches mode (measured).
        self.register_buffer("weight", weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight, None, stride=self.stride)

    def extra_repr(self) -> str:
        return f"{self.weight.shape[1]}, {self.weight.shape[0]}, stride={self.stride}"


def _bn_or_identity(channels: int, bn: bool) -> nn.Module:
    return nn.BatchNorm2d(channels) if bn else nn.Identity()


class BasicBlock(ResidualBlock):
    """conv3x3(stride)-BN-act1-conv3x3-BN, + shortcut(x), post_add, act2.

    Args:
        in_channels, out_channels: channel counts.
        stride: stride of the first convolution and of the shortcut.
        shortcut: ``"pad"`` (option A, parameter-free) or ``"conv"`` (option B: 1x1 conv + BN) when
            the shape changes; the identity otherwise.
        bn: BatchNorm after each convolution (and in the conv shortcut); without it the convolutions
            have biases.

    Shapes: input (B, in, H, W), output (B, out, ceil(H/stride), ceil(W/stride)).
    """

    ACTIVATIONS = ("act1", "act2")

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1,
                 shortcut: str = "pad", bn: bool = True) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=not bn)
        self.bn1 = _bn_or_identity(out_channels, bn)
        self.act1 = nn.ReLU()
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=not bn)
        self.bn2 = _bn_or_identity(out_channels, bn)
        if stride == 1 and in_channels == out_channels:
            self.shortcut: nn.Module = nn.Identity()
        elif shortcut == "pad":
            self.shortcut = PadShortcut(in_channels, out_channels, stride)
        else:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride, bias=not bn),
                _bn_or_identity(out_channels, bn))
        self.post_add = Site("block")
        self.act2 = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.act1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.act2(self.post_add(out + self.shortcut(x)))


def init_residual_weights(model: nn.Module) -> None:
    """He (Kaiming) normal initialization of every Conv2d and Linear weight, as in He et al."""
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.kaiming_normal_(m.weight)


@register_model("resnet_v1", certifiable=True,
                summary="CIFAR ResNet-V1, depth 6n+2 (20/32/44/56), shortcut 'pad' (option A) or 'conv'",
                note="the 'pad' shortcut is a fixed 1x1 convolution because 0.3 cannot parse strided "
                     "slicing; deep models are expensive under CROWN")
class ResNetV1(nn.Module):
    """CIFAR ResNet-V1 of depth 6n+2 (20, 32, 44, 56, 110, ...): 3 stages of n basic blocks.

    Normalize -> conv3x3 16w -> BN -> post_stem -> ReLU -> stage1 (16w) -> stage2 (32w, stride 2)
    -> stage3 (64w, stride 2) -> AdaptiveAvgPool2d(1) -> Flatten -> Linear K.

    Global average pooling makes any input size work (8x8 digits end at 2x2 before pooling).
    AdaptiveAvgPool2d(1) is bounded soundly by auto_LiRPA 0.3 (unlike AvgPool2d with kernel != stride).

    Args:
        in_shape: (C, H, W).
        num_classes: K.
        depth: 6n + 2 with n >= 1 (He et al. use 20, 32, 44, 56, 110).
        shortcut: ``"pad"`` (option A, the paper's CIFAR choice) or ``"conv"`` (option B).
        width: channel multiplier (16/32/64 at 1.0).
        mean, std: per-channel normalization.

    Shapes: input (B, C, H, W), output (B, K).
    """

    def __init__(self, in_shape: tuple[int, int, int], num_classes: int, depth: int = 20,
                 shortcut: str = "pad", width: float = 1.0,
                 mean: Sequence[float] | float | None = None,
                 std: Sequence[float] | float | None = None) -> None:
        super().__init__()
        depth = positive_int("depth", depth)
        if (depth - 2) % 6 != 0 or depth < 8:
            raise ConfigError(f"depth: ResNet-V1 needs depth = 6n + 2 with n >= 1 (e.g. 20, 32, 44, "
                              f"56, 110), got {depth}")
        if shortcut not in SHORTCUTS:
            raise ConfigError(f"shortcut: unknown value {shortcut!r}; choose one of: "
                              f"{', '.join(SHORTCUTS)}")
        width = positive_float("width", width)
        n = (depth - 2) // 6
        c = in_shape[0]
        widths = [scaled(16, width), scaled(32, width), scaled(64, width)]
        self.normalize = Normalize(0.0 if mean is None else mean, 1.0 if std is None else std, c)
        self.conv1 = nn.Conv2d(c, widths[0], 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.post_stem = Site("stem")
        self.stem_act = nn.ReLU()
        stages, cin = [], widths[0]
        for i, cout in enumerate(widths):
            blocks = [BasicBlock(cin if j == 0 else cout, cout, (1 if i == 0 else 2) if j == 0 else 1,
                                 shortcut) for j in range(n)]
            stages.append(nn.Sequential(*blocks))
            cin = cout
        self.layer1, self.layer2, self.layer3 = stages
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.linear = nn.Linear(widths[2], num_classes)
        init_residual_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, K)."""
        out = self.stem_act(self.post_stem(self.bn1(self.conv1(self.normalize(x)))))
        out = self.layer3(self.layer2(self.layer1(out)))
        return self.linear(self.flatten(self.pool(out)))


@register_model("resnet_small", certifiable=True,
                summary="tiny residual model: stem + 2 basic blocks (1x1 conv shortcut), optional BN",
                note="cheap enough for full CROWN on 1x8x8 on a CPU")
class ResNetSmall(nn.Module):
    """A tiny residual network, cheap enough for full CROWN on 8x8 inputs on a CPU.

    Normalize -> conv3x3 w -> [BN] -> post_stem -> ReLU -> BasicBlock(w -> w)
    -> BasicBlock(w -> 2w, stride 2, 1x1 conv shortcut) -> Flatten -> Linear K.
    For 8x8 inputs at w = 8: 512 neurons per layer at most, flatten 16 * 4 * 4 = 256.

    Args:
        in_shape: (C, H, W).
        num_classes: K.
        width: channels w of the first stage (an int; the second stage has 2w).
        bn: BatchNorm after every convolution.
        mean, std: per-channel normalization.

    Shapes: input (B, C, H, W), output (B, K).
    """

    def __init__(self, in_shape: tuple[int, int, int], num_classes: int, width: int = 8,
                 bn: bool = True, mean: Sequence[float] | float | None = None,
                 std: Sequence[float] | float | None = None) -> None:
        super().__init__()
        width = positive_int("width", width)
        bn = boolean("bn", bn)
        c, h, w = in_shape
        self.normalize = Normalize(0.0 if mean is None else mean, 1.0 if std is None else std, c)
        self.conv1 = nn.Conv2d(c, width, 3, 1, 1, bias=not bn)
        self.bn1 = _bn_or_identity(width, bn)
        self.post_stem = Site("stem")
        self.stem_act = nn.ReLU()
        self.layer1 = nn.Sequential(BasicBlock(width, width, 1, "conv", bn),
                                    BasicBlock(width, 2 * width, 2, "conv", bn))
        self.flatten = nn.Flatten()
        self.linear = nn.Linear(2 * width * ((h + 1) // 2) * ((w + 1) // 2), num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, K)."""
        out = self.stem_act(self.post_stem(self.bn1(self.conv1(self.normalize(x)))))
        return self.linear(self.flatten(self.layer1(out)))
