"""The model zoo: MLP, small CNN, CNN-7, ResNet-V1, PreAct ResNet-18, WideResNet, a tiny ResNet.

Every model takes ``in_shape`` = (C, H, W) and ``num_classes``, maps pixels in [0, 1] (B, C, H, W)
to logits (B, K), and carries its :class:`Normalize` layer inside. Build by name::

    from robustsuite.models import build, build_from_spec, available, info
    model = build("resnet_v1", (3, 32, 32), 10, depth=20, mean=(0.49, 0.48, 0.45),
                  std=(0.25, 0.24, 0.26))
    twin = build_from_spec(model.spec)

``info(name).certifiable`` says whether auto_LiRPA 0.3 bounds the model soundly;
:func:`is_certifiable` and :func:`unsupported_layers` check a model instance (a noise layer inserted
later makes it uncertifiable, and the names say where). Residual models mark where noise layers go
(:func:`noise_sites`) and name their block activations (:func:`block_activations`);
:func:`replace_module` swaps a submodule.

Each model registers itself where it is defined (``@register_model(name, certifiable=..., summary=...)``
on its class, see :mod:`.registry` and ``docs/extending.md``); importing the model modules below is
what fills the registry, so a new model is its file plus one import line here.
"""
from .cnn import CNN7, CNNSmall
from .family import is_certifiable, unsupported_layers
from .mlp import MLP
from .normalize import Normalize
from .preact import PreActBlock, PreActResNet18
from .registry import (ModelInfo, available, build, build_from_spec, check_in_shape,
                       check_num_classes, count_parameters, info, register_model, register_spec_builder,
                       unregister_model)
from .resnet import BasicBlock, PadShortcut, ResNetSmall, ResNetV1
from .sites import ResidualBlock, Site, block_activations, noise_sites, replace_module
from .wideresnet import WideResNet

__all__ = [
    "build", "build_from_spec", "register_model", "unregister_model", "register_spec_builder", "available", "info", "is_certifiable", "unsupported_layers",
    "count_parameters",
    "check_in_shape", "check_num_classes", "ModelInfo",
    "Normalize", "MLP", "CNNSmall", "CNN7", "ResNetV1", "ResNetSmall", "PreActResNet18",
    "WideResNet", "BasicBlock", "PreActBlock", "PadShortcut",
    "Site", "ResidualBlock", "noise_sites", "block_activations", "replace_module",
]
