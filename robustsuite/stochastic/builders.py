"""Insert noise layers into zoo models where the papers put them, and rebuild them from a spec.

* ``learn2perturb``: a :class:`PerturbationInjection` after the first conv(+BN) before its ReLU
  (``post_stem``) and at the output of every residual block (``block.post_add``, after the
  addition, before the final ReLU). theta gets the shape of the feature map there, found by one
  dry forward pass, so any input size works.
* ``pni``: a :class:`ScalarNoise` at the same places (one learnable scalar per layer).
* ``anis2``: every ReLU of every residual block (``block.act1``, ``block.act2``) becomes a
  :class:`StocReLUEMA` with one sigma per channel.

Works for every zoo model with insertion points: ``resnet_v1``, ``resnet_small``,
``preact_resnet18``, ``wideresnet``. The model's ``spec`` gains a ``"stochastic"`` entry
(``{"kind": ..., options}``) and :func:`build_from_spec` rebuilds the same architecture::

    model = build_stochastic("learn2perturb", {"name": "resnet_v1", "in_shape": [3, 32, 32],
                                               "num_classes": 10, "options": {"depth": 20}})
    twin = build_from_spec(model.spec)        # load_state_dict gives the same model
"""
from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from .. import models
from ..errors import ConfigError
from .noise import KINDS, noise_kind

__all__ = ["KINDS", "add_noise", "build_stochastic", "build_from_spec", "base_spec", "is_stochastic_spec"]


def _input_shapes(model: nn.Module, names: list[str]) -> dict[str, tuple[int, ...]]:
    """The (per-sample) input shape of each named submodule, from one dry forward pass."""
    spec = getattr(model, "spec", None)
    if not spec or "in_shape" not in spec:
        raise ConfigError("model: expected a zoo model with a 'spec' (built by robustsuite.models.build)")
    shapes: dict[str, tuple[int, ...]] = {}
    hooks = []
    for name in names:
        def hook(_m, inputs, _out, name=name):
            shapes[name] = tuple(inputs[0].shape[1:])
        hooks.append(model.get_submodule(name).register_forward_hook(hook))
    p = next(iter(model.parameters()))
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(torch.zeros((1,) + tuple(spec["in_shape"]), device=p.device, dtype=p.dtype))
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    return shapes


def _options(kind: str, options: Mapping[str, Any]) -> dict[str, Any]:
    defaults = noise_kind(kind).defaults
    extra = sorted(set(options) - set(defaults))
    if extra:
        raise ConfigError(f"stochastic options: {kind!r} has no option(s) {', '.join(map(repr, extra))}; "
                          f"allowed: {', '.join(sorted(defaults))}")
    return {**defaults, **options}


def add_noise(model: nn.Module, kind: str, **options: Any) -> nn.Module:
    """Insert the noise layers of ``kind`` into the zoo ``model`` in place; return it.

    Options (defaults in :data:`KINDS`): learn2perturb ``init``, ``theta_min``, ``shared``;
    pni ``init``, ``shared``; anis2 ``alpha``, ``gamma``, ``shared``.

    Raises:
        UnknownNameError: unknown ``kind``.
        ConfigError: unknown options, a model without insertion points, or already stochastic.
    """
    opts = _options(kind, options)
    spec = getattr(model, "spec", None)
    if not isinstance(spec, Mapping):
        raise ConfigError("model: expected a zoo model with a 'spec' (built by robustsuite.models.build)")
    if "stochastic" in spec:
        raise ConfigError(f"model: already has {spec['stochastic'].get('kind')!r} noise layers")
    name = spec.get("name")
    entry = noise_kind(kind)
    names = models.block_activations(model) if entry.sites == "block_activations" else models.noise_sites(model)
    if not names:
        what = "residual block activations" if entry.sites == "block_activations" else "noise sites"
        raise ConfigError(f"model: {name!r} has no {what} for {kind!r}; use a residual model: resnet_v1, "
                          "resnet_small, preact_resnet18, wideresnet")
    shapes = _input_shapes(model, names)
    p = next(iter(model.parameters()))
    for n in names:
        layer = entry.layer.at_site(shapes[n], **opts)
        models.replace_module(model, n, layer.to(device=p.device))
    model.spec = {**copy.deepcopy(dict(spec)), "stochastic": {"kind": kind, **opts}}
    return model


def is_stochastic_spec(spec: Mapping[str, Any]) -> bool:
    """Whether a model spec (e.g. a checkpoint's ``model_spec``) describes a stochastic model."""
    return isinstance(spec, Mapping) and "stochastic" in spec


def base_spec(spec: Mapping[str, Any]) -> dict[str, Any]:
    """The deterministic zoo spec under a stochastic one (the teacher / PGD-AT architecture)."""
    return {k: copy.deepcopy(v) for k, v in spec.items() if k != "stochastic"}


def build_stochastic(kind: str, spec: Mapping[str, Any], **options: Any) -> nn.Module:
    """Build the zoo model of ``spec`` (see :func:`robustsuite.models.build_from_spec`) with the
    noise layers of ``kind``; fresh weights."""
    return add_noise(models.build_from_spec(base_spec(spec)), kind, **options)


def _rebuild_stochastic(spec: Mapping[str, Any]) -> nn.Module:
    """A spec with a ``"stochastic"`` entry: its zoo model with those noise layers (fresh weights)."""
    entry = spec["stochastic"]
    if not isinstance(entry, Mapping):
        raise ConfigError(f"spec.stochastic: expected a mapping with a 'kind' key, got {type(entry).__name__}")
    entry = dict(entry)
    kind = entry.pop("kind", None)
    return build_stochastic(kind, spec, **entry)


# checkpoints of stochastic models are rebuilt through the zoo's build_from_spec, which does not
# import this part: it dispatches on the spec's "stochastic" key
models.register_spec_builder("stochastic", _rebuild_stochastic)


def build_from_spec(spec: Mapping[str, Any]) -> nn.Module:
    """Rebuild any model spec: a stochastic one (with a ``"stochastic"`` entry) or a plain zoo one."""
    return models.build_from_spec(spec)
