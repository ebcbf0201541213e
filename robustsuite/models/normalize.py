"""The Normalize layer every zoo model carries as its first module.

Inputs stay in pixel space ([0, 1]) everywhere in robustsuite; the per-channel standardization
``(x - mean) / std`` lives inside the model. auto_LiRPA 0.3 cannot bound a literal ``(x - mean) / std``
under CROWN in patches mode (Sub/Div nodes, error E6 of the auto_LiRPA notes), so the layer is written
as the equivalent fixed 1x1 convolution: weight ``diag(1 / std)``, bias ``-mean / std``. auto_LiRPA
bounds a convolution exactly in every mode (IBP, CROWN-IBP, CROWN; patches and matrix).

The weight and bias are *persistent* buffers, not parameters: an optimizer never changes them, and
auto_LiRPA needs them in the state dict (a non-persistent buffer is traced as a constant, and 0.3's
CROWN through a convolution with a constant weight fails in patches mode; measured).
"""
from __future__ import annotations

import math
import numbers
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError


def channel_values(field: str, value: float | Sequence[float] | None, channels: int,
                   default: float) -> tuple[float, ...]:
    """Resolve a per-channel ``mean``/``std`` setting to a tuple of ``channels`` finite floats.

    ``None`` gives ``default`` for every channel; a single number applies to every channel; a
    sequence must have exactly ``channels`` entries (a mismatch is a ConfigError, never a broadcast
    that could silently normalize with the wrong statistics).
    """
    if value is None:
        return (float(default),) * channels
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        values = [float(value)] * channels
    elif isinstance(value, torch.Tensor) or hasattr(value, "__array__"):  # tensors, numpy arrays
        values = [float(v) for v in torch.as_tensor(value).detach().flatten().tolist()]
    elif isinstance(value, Sequence) and not isinstance(value, str):
        if not all(isinstance(v, numbers.Real) and not isinstance(v, bool) for v in value):
            raise ConfigError(f"{field}: expected numbers, got {value!r}")
        values = [float(v) for v in value]
    else:
        raise ConfigError(f"{field}: expected a number or a sequence of {channels} numbers, "
                          f"got {value!r}")
    if len(values) != channels:
        raise ConfigError(f"{field}: got {len(values)} values {tuple(values)} but the input has "
                          f"{channels} channel(s); give one value per channel or a single number")
    if not all(math.isfinite(v) for v in values):
        raise ConfigError(f"{field}: values must be finite, got {tuple(values)}")
    return tuple(values)


def _length(value: object) -> int | None:
    """Number of entries of a per-channel sequence/array, None for a single number."""
    if isinstance(value, torch.Tensor) or hasattr(value, "__array__"):
        tensor = torch.as_tensor(value)
        return tensor.numel() if tensor.dim() > 0 else None
    if isinstance(value, Sequence) and not isinstance(value, str):
        return len(value)
    return None


class Normalize(nn.Module):
    """Per-channel standardization ``(x - mean) / std`` as a fixed 1x1 convolution.

    Args:
        mean: one value per channel (or one number for all channels).
        std: one positive value per channel (or one number for all channels).
        channels: number of input channels C; inferred from ``mean``/``std`` when they are sequences.

    Shapes: input (B, C, H, W), output (B, C, H, W).

    Buffers ``weight`` (C, C, 1, 1) and ``bias`` (C,) hold ``diag(1/std)`` and ``-mean/std``;
    ``mean`` and ``std`` are kept as tuples for ``repr`` and for rebuilding.
    """

    def __init__(self, mean: float | Sequence[float] = 0.0, std: float | Sequence[float] = 1.0,
                 channels: int | None = None) -> None:
        super().__init__()
        if channels is None:
            lengths = [n for n in (_length(mean), _length(std)) if n is not None]
            channels = lengths[0] if lengths else 1
        if not isinstance(channels, numbers.Integral) or isinstance(channels, bool) or channels < 1:
            raise ConfigError(f"channels: expected a positive int, got {channels!r}")
        channels = int(channels)
        self.mean = channel_values("mean", mean, channels, 0.0)
        self.std = channel_values("std", std, channels, 1.0)
        if not all(s > 0 for s in self.std):
            raise ConfigError(f"std: every value must be > 0, got {self.std}")
        self.channels = channels
        mean_t = torch.tensor(self.mean, dtype=torch.float32)
        std_t = torch.tensor(self.std, dtype=torch.float32)
        self.register_buffer("weight", torch.diag(1.0 / std_t).reshape(channels, channels, 1, 1))
        self.register_buffer("bias", -mean_t / std_t)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, C, H, W): ``(x - mean) / std`` per channel."""
        return F.conv2d(x, self.weight, self.bias)

    def extra_repr(self) -> str:
        return f"mean={self.mean}, std={self.std}"
