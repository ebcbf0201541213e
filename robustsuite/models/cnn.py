"""Plain convolutional networks for certified training: the small CNN and CNN-7.

Both are ``nn.Sequential`` of auto_LiRPA-safe layers only (Conv2d, BatchNorm2d, ReLU, nn.Flatten,
Linear), so they are certifiable in every bound mode.
"""
from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

from torch import nn

from ._checks import (boolean, check_spatial, conv_output_size, positive_float, positive_int,
                      scaled)
from .normalize import Normalize
from .registry import register_model


@register_model("cnn_small", certifiable=True,
                summary="2 conv (k4 s2) + 2 linear, the CROWN-IBP small CNN; needs H, W >= 4")
class CNNSmall(nn.Sequential):
    """The small CNN of CROWN-IBP / auto_LiRPA's MNIST examples.

    Normalize -> Conv(C, 16w, 4, stride 2, pad 1) -> ReLU -> Conv(16w, 32w, 4, stride 2, pad 1) -> ReLU
    -> Flatten -> Linear(32w * H/4 * W/4, linear) -> ReLU -> Linear(linear, K).

    Each convolution halves the spatial size (k=4, s=2, p=1 maps H to floor(H/2)), so the model works
    for every input of at least 4x4: the 8x8 digits end at 2x2 (flatten 128 at width 1), 28x28 MNIST
    at 7x7 (1568) and 32x32 CIFAR at 8x8 (2048).

    Args:
        in_shape: (C, H, W), H and W >= 4.
        num_classes: K.
        width: channel multiplier (16 and 32 channels at 1.0).
        linear: size of the hidden linear layer.
        mean, std: per-channel normalization.

    Shapes: input (B, C, H, W), output (B, K).
    """

    def __init__(self, in_shape: tuple[int, int, int], num_classes: int, width: float = 1.0,
                 linear: int = 100, mean: Sequence[float] | float | None = None,
                 std: Sequence[float] | float | None = None) -> None:
        width = positive_float("width", width)
        linear = positive_int("linear", linear)
        c, h, w = in_shape
        c1, c2 = scaled(16, width), scaled(32, width)
        sizes = (h, w)
        for _ in range(2):
            sizes = tuple(conv_output_size(s, 4, 2, 1) for s in sizes)
            check_spatial("cnn_small", in_shape, sizes, "H and W >= 4")
        super().__init__(OrderedDict([
            ("normalize", Normalize(0.0 if mean is None else mean, 1.0 if std is None else std, c)),
            ("conv1", nn.Conv2d(c, c1, 4, stride=2, padding=1)),
            ("relu1", nn.ReLU()),
            ("conv2", nn.Conv2d(c1, c2, 4, stride=2, padding=1)),
            ("relu2", nn.ReLU()),
            ("flatten", nn.Flatten()),
            ("fc1", nn.Linear(c2 * sizes[0] * sizes[1], linear)),
            ("relu3", nn.ReLU()),
            ("fc_out", nn.Linear(linear, num_classes)),
        ]))


@register_model("cnn7", certifiable=True,
                summary="CNN-7: 64-64-128/2-128-128-FC512-FC(K), optional BatchNorm",
                note="full CROWN at 3x32x32 needs ~30 GiB per image; use IBP/CROWN-IBP for training")
class CNN7(nn.Sequential):
    """CNN-7 of CROWN-IBP and "Fast certified robust training" (Shi et al. 2021).

    Normalize -> conv3x3 64 -> conv3x3 64 -> conv3x3 128 stride 2 -> conv3x3 128 -> conv3x3 128
    (each followed by BatchNorm2d when ``bn`` and by ReLU) -> Flatten -> Linear 512 -> ReLU
    -> Linear K. All convolutions use padding 1, so only the stride-2 one changes the spatial size
    (H -> ceil(H/2)); any input size works (8x8 digits: flatten 128*4*4; CIFAR: 128*16*16).

    Differences from the reference ``cnn_7layer_bn``: no BatchNorm1d after the first linear layer
    (0.3's parser warns on BN1d and the zoo keeps to BatchNorm2d), and convolutions have no bias
    when followed by BatchNorm (the BN shift makes it redundant).

    Args:
        in_shape: (C, H, W).
        num_classes: K.
        bn: BatchNorm2d after every convolution.
        width: channel multiplier (64 and 128 channels at 1.0).
        linear: size of the hidden linear layer (512 in the paper).
        mean, std: per-channel normalization.

    Shapes: input (B, C, H, W), output (B, K).
    """

    def __init__(self, in_shape: tuple[int, int, int], num_classes: int, bn: bool = True,
                 width: float = 1.0, linear: int = 512,
                 mean: Sequence[float] | float | None = None,
                 std: Sequence[float] | float | None = None) -> None:
        bn = boolean("bn", bn)
        width = positive_float("width", width)
        linear = positive_int("linear", linear)
        c, h, w = in_shape
        c64, c128 = scaled(64, width), scaled(128, width)
        plan = [(c, c64, 1), (c64, c64, 1), (c64, c128, 2), (c128, c128, 1), (c128, c128, 1)]
        layers: OrderedDict[str, nn.Module] = OrderedDict()
        layers["normalize"] = Normalize(0.0 if mean is None else mean, 1.0 if std is None else std, c)
        sizes = (h, w)
        for i, (cin, cout, stride) in enumerate(plan, start=1):
            layers[f"conv{i}"] = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=not bn)
            if bn:
                layers[f"bn{i}"] = nn.BatchNorm2d(cout)
            layers[f"relu{i}"] = nn.ReLU()
            sizes = tuple(conv_output_size(s, 3, stride, 1) for s in sizes)
        layers["flatten"] = nn.Flatten()
        layers["fc1"] = nn.Linear(c128 * sizes[0] * sizes[1], linear)
        layers["relu_fc1"] = nn.ReLU()
        layers["fc_out"] = nn.Linear(linear, num_classes)
        super().__init__(layers)
