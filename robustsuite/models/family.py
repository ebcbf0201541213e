"""The layer family auto_LiRPA 0.3 bounds soundly, and the check that a model stays inside it.

Measured (``shared/notes/auto-lirpa-0.3-on-torch-2.md`` and the zoo's tests): Conv2d, Linear, ReLU,
BatchNorm2d, residual additions, nn.Flatten, AdaptiveAvgPool2d(1) and MaxPool2d with kernel = stride
(no padding) are bounded soundly by IBP, CROWN-IBP and CROWN. Excluded: AvgPool2d (silently unsound
CROWN bounds unless kernel = stride), other MaxPools (CROWN fails), and anything random (noise layers
cannot be traced).

Types are compared exactly, not with ``isinstance``: a noise layer that subclasses ``nn.Identity`` or
``nn.ReLU`` (as the stochastic defenses' modules may) must not pass for the deterministic layer.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import nn
from torch.nn.modules.utils import _pair

from .cnn import CNN7, CNNSmall
from .mlp import MLP
from .normalize import Normalize
from .preact import PreActBlock, PreActResNet18
from .registry import info
from .resnet import BasicBlock, PadShortcut, ResNetSmall, ResNetV1
from .sites import Site
from .wideresnet import WideResNet

# Containers whose forward is known (the zoo's own classes): only their children need checking.
CONTAINERS = (nn.Sequential, MLP, CNNSmall, CNN7, ResNetV1, ResNetSmall, PreActResNet18, WideResNet,
              BasicBlock, PreActBlock)
LEAVES = (nn.Conv2d, nn.Linear, nn.ReLU, nn.BatchNorm2d, nn.Flatten, nn.Identity, Site, Normalize,
          PadShortcut, nn.AdaptiveAvgPool2d, nn.MaxPool2d)


def _leaf_ok(module: nn.Module) -> bool:
    kind = type(module)
    if kind not in LEAVES:
        return False
    if kind is nn.AdaptiveAvgPool2d:
        return module.output_size in (1, (1, 1))
    if kind is nn.MaxPool2d:
        kernel = _pair(module.kernel_size)
        return kernel == _pair(module.stride or module.kernel_size) and _pair(module.padding) == (0, 0) \
            and _pair(module.dilation) == (1, 1) and not module.ceil_mode
    return True


def unsupported_layers(model: nn.Module) -> list[str]:
    """Qualified names (with types) of the submodules outside the sound family; empty if none.

    A module with children is accepted only if it is one of the zoo's containers, since the forward
    of an unknown container could do anything.
    """
    bad = []
    for name, module in model.named_modules():
        known = type(module) in CONTAINERS if next(module.children(), None) is not None \
            else _leaf_ok(module)
        if not known:
            bad.append(f"{name or '<model>'} ({type(module).__name__})")
    return bad


def is_certifiable(target: str | Mapping[str, Any] | nn.Module) -> bool:
    """Whether a model name, a spec, or a model is in the family auto_LiRPA 0.3 bounds soundly.

    For a model: it must have been built by the zoo (a ``spec`` naming a certifiable entry) and
    still contain only layers of the family (a noise layer inserted at a site makes it
    uncertifiable). A model not built by the zoo is reported as not known to be certifiable.
    """
    if isinstance(target, nn.Module):
        spec = getattr(target, "spec", None)
        if not isinstance(spec, Mapping):
            return False
        return info(spec["name"]).certifiable and not unsupported_layers(target)
    name = target["name"] if isinstance(target, Mapping) else target
    return info(name).certifiable
