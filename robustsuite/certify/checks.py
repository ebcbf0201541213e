"""Checks that a model can be bounded soundly by auto_LiRPA 0.3, with errors that say why not."""
from __future__ import annotations

import torch
from torch import nn

from ..errors import UnsupportedModelError

SUPPORTED = ("Conv2d, Linear, ReLU, BatchNorm2d, Flatten, residual additions, MaxPool2d with "
             "kernel = stride, AvgPool2d with kernel = stride and no padding, AdaptiveAvgPool2d(1), "
             "and the Normalize layer of robustsuite.models")


def _pair(v) -> tuple:
    return tuple(v) if isinstance(v, (tuple, list)) else (v, v)


def is_stochastic(model: nn.Module) -> bool:
    """True when any submodule declares itself random (``is_stochastic = True``, as every noise
    layer of robustsuite.stochastic does)."""
    return any(bool(getattr(m, "is_stochastic", False)) for m in model.modules())


def check_boundable(model: nn.Module, method: str) -> None:
    """Raise :class:`UnsupportedModelError` naming the first layer auto_LiRPA 0.3 cannot bound soundly."""
    if is_stochastic(model):
        names = [n or type(model).__name__ for n, m in model.named_modules() if getattr(m, "is_stochastic", False)]
        raise UnsupportedModelError(
            f"model: stochastic layers ({', '.join(names[:4])}) cannot be bounded; certified bounds "
            "hold for deterministic models only. Evaluate stochastic models with attacks (EOT) or "
            "randomized smoothing instead.")
    for name, m in model.named_modules():
        where = name or type(m).__name__
        if isinstance(m, nn.AvgPool2d):
            k, s, p = _pair(m.kernel_size), _pair(m.stride if m.stride is not None else m.kernel_size), _pair(m.padding)
            if k != s or any(p) or not m.count_include_pad:
                raise UnsupportedModelError(
                    f"model layer {where!r}: AvgPool2d(kernel={m.kernel_size}, stride={m.stride}, "
                    f"padding={m.padding}) gives unsound CROWN bounds in auto_LiRPA 0.3; use kernel = "
                    f"stride without padding, or AdaptiveAvgPool2d(1). Supported: {SUPPORTED}.")
        if isinstance(m, nn.MaxPool2d) and method != "ibp":
            if _pair(m.kernel_size) != _pair(m.stride if m.stride is not None else m.kernel_size) or any(_pair(m.padding)):
                raise UnsupportedModelError(
                    f"model layer {where!r}: MaxPool2d with kernel != stride or padding is not supported "
                    f"by method {method!r} in auto_LiRPA 0.3 (use method 'ibp' or kernel = stride). "
                    f"Supported: {SUPPORTED}.")
        if isinstance(m, nn.MaxPool2d) and method == "alpha-crown":
            raise UnsupportedModelError(
                f"model layer {where!r}: alpha-crown does not support MaxPool2d in auto_LiRPA 0.3; "
                "use 'crown' or 'crown-ibp'.")
        if isinstance(m, (nn.Dropout, nn.Dropout2d)) and m.training:
            raise UnsupportedModelError(
                f"model layer {where!r}: Dropout in training mode is random; call model.eval() first.")


def check_deterministic(model: nn.Module, x: torch.Tensor) -> None:
    """Behaviour probe: two forward passes on the same input must agree (no hidden noise)."""
    with torch.no_grad():
        a, b = model(x), model(x)
    if not torch.equal(a, b):
        raise UnsupportedModelError(
            "model: two forward passes on the same input differ, so the model is random and cannot "
            "be bounded. Turn its noise off explicitly, or evaluate it with attacks (EOT) or "
            "randomized smoothing.")
