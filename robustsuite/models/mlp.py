"""Fully connected ReLU network."""
from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

from torch import nn

from ._checks import int_tuple
from .normalize import Normalize
from .registry import register_model


@register_model("mlp", certifiable=True, summary="fully connected ReLU network; options hidden=(256, 256)")
class MLP(nn.Sequential):
    """Normalize -> Flatten -> [Linear -> ReLU] * len(hidden) -> Linear.

    Args:
        in_shape: (C, H, W) of one input image.
        num_classes: K, the number of logits.
        hidden: hidden layer sizes; empty gives a linear model.
        mean, std: per-channel normalization (see :class:`Normalize`).

    Shapes: input (B, C, H, W), output (B, K).
    Layers are named ``normalize, flatten, fc1, relu1, ..., fc_out``. Certifiable (Linear/ReLU only).
    """

    def __init__(self, in_shape: tuple[int, int, int], num_classes: int,
                 hidden: Sequence[int] = (256, 256),
                 mean: Sequence[float] | float | None = None,
                 std: Sequence[float] | float | None = None) -> None:
        hidden = int_tuple("hidden", hidden)
        c, h, w = in_shape
        layers: OrderedDict[str, nn.Module] = OrderedDict()
        layers["normalize"] = Normalize(0.0 if mean is None else mean, 1.0 if std is None else std, c)
        # nn.Flatten (not x.view(x.size(0), -1)) so auto_LiRPA parses it at every batch size.
        layers["flatten"] = nn.Flatten()
        width = c * h * w
        for i, size in enumerate(hidden, start=1):
            layers[f"fc{i}"] = nn.Linear(width, size)
            layers[f"relu{i}"] = nn.ReLU()
            width = size
        layers["fc_out"] = nn.Linear(width, num_classes)
        super().__init__(layers)
