"""The model registry: build any zoo model by name, record how it was built, rebuild it from that.

    model = build("cnn7", (3, 32, 32), 10, bn=True, mean=(0.4914, 0.4822, 0.4465),
                  std=(0.2471, 0.2435, 0.2616))
    model.spec      # {"name": "cnn7", "in_shape": [3, 32, 32], "num_classes": 10, "options": {...}}
    twin = build_from_spec(model.spec)   # same architecture; load_state_dict gives the same model

``model.spec`` holds every option resolved (defaults filled in), as plain JSON/YAML types, so a
checkpoint rebuilds the same architecture even if a default changes later. A part that extends zoo
models records its changes under a key of its own in the spec (the stochastic part: ``"stochastic"``)
and registers how to rebuild such specs with :func:`register_spec_builder`; :func:`build_from_spec`
dispatches on that key, so code that loads checkpoints never imports the part.

Each model registers itself where it is defined, with :func:`register_model` on its class (or
factory); ``robustsuite/models/__init__.py`` imports every model module, so the table is full whenever
``robustsuite.models`` is imported (this module imports none of them)::

    @register_model("cnn7", certifiable=True, summary="CNN-7: ...", note="full CROWN at 3x32x32 ...")
    class CNN7(nn.Sequential):
        def __init__(self, in_shape, num_classes, width=1.0, bn=False, mean=None, std=None): ...

``info(name).certifiable`` says whether the model is in the layer family auto_LiRPA 0.3 bounds
soundly (Conv2d, Linear, ReLU, BatchNorm2d, residual add, nn.Flatten, AdaptiveAvgPool2d(1), and the
fixed 1x1 convolutions of Normalize and the option-A shortcut; see :mod:`.family`). Every
certifiable model is parsed and bounded (IBP and CROWN) by the zoo's tests.
"""
from __future__ import annotations

import copy
import inspect
import numbers
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
from torch import nn

from ..errors import ConfigError, unknown
from ._checks import is_int
from .normalize import Normalize

SPEC_KEYS = ("name", "in_shape", "num_classes", "options")
_NAME = re.compile(r"[a-z][a-z0-9_]*")

#: spec key -> the function that rebuilds a spec holding that key (see :func:`register_spec_builder`)
_SPEC_BUILDERS: dict[str, Callable[[Mapping[str, Any]], nn.Module]] = {}


@dataclass(frozen=True)
class ModelInfo:
    """One registry entry.

    Attributes:
        name: the registry name.
        factory: ``factory(in_shape, num_classes, **options) -> nn.Module``.
        certifiable: True when every layer is one auto_LiRPA 0.3 bounds soundly in IBP, CROWN-IBP
            and CROWN (patches and matrix mode); the verifier refuses the others.
        summary: one line for listings.
        note: cost or caveats worth knowing before bounding it.
    """

    name: str
    factory: Callable[..., nn.Module]
    certifiable: bool
    summary: str
    note: str = ""

    def defaults(self) -> dict[str, Any]:
        """The options this model accepts, with their default values."""
        params = inspect.signature(self.factory).parameters
        return {k: p.default for k, p in params.items() if k not in ("in_shape", "num_classes")}


#: name -> entry, in registration order (filled by :func:`register_model` where each model is defined)
_REGISTRY: dict[str, ModelInfo] = {}

F = TypeVar("F", bound=Callable[..., nn.Module])


def _where(factory: Callable[..., Any]) -> str:
    """``module.qualname`` of a factory (and its line, for a function): what an error names, and what
    tells a re-registration of the same definition (a module imported again) from a clash."""
    code = getattr(factory, "__code__", None)
    line = f" (line {code.co_firstlineno})" if code is not None else ""
    return f"{getattr(factory, '__module__', '?')}.{getattr(factory, '__qualname__', repr(factory))}{line}"


def register_model(name: str, *, certifiable: bool, summary: str, note: str = "") -> Callable[[F], F]:
    """Class (or function) decorator: make the decorated factory the zoo model ``name``.

    The factory is called as ``factory(in_shape, num_classes, **options)`` and must return a module
    mapping (B, C, H, W) pixels in [0, 1] to (B, num_classes) logits, with its Normalize layer as
    ``model.normalize``; its keyword parameters (with defaults) are the model's options
    (:meth:`ModelInfo.defaults`), so a spec records them all.

    Args:
        name: the registry name (lower-case letters, digits, ``_``; starts with a letter): what
            ``model.name`` in a config and ``spec["name"]`` in a checkpoint say.
        certifiable: True only when every layer is one auto_LiRPA 0.3 bounds soundly (see
            :mod:`.family`); the verifier still checks the traced graph of every model it bounds.
        summary: one line for listings.
        note: cost or caveats worth knowing before bounding it.
    Raises:
        ValueError: a bad name or flag, a factory that is not callable or whose signature is not
            ``(in_shape, num_classes, <options with defaults, mean and std among them>)``, or ``name`` already registered to another factory (both
            are named); the same factory registered again (a module imported a second time) replaces
            its old entry.
    """
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ValueError(f"register_model: name must be lower-case letters, digits and '_', starting with a "
                         f"letter, got {name!r}")
    if not isinstance(certifiable, bool):
        raise ValueError(f"register_model({name!r}): certifiable must be True or False, got {certifiable!r}")
    if not isinstance(summary, str) or not summary.strip() or not isinstance(note, str):
        raise ValueError(f"register_model({name!r}): summary must be a non-empty string (and note a string)")

    def decorate(factory: F) -> F:
        if not callable(factory):
            raise ValueError(f"register_model({name!r}): expected a class or function, got {factory!r}")
        _check_signature(name, factory)
        old = _REGISTRY.get(name)
        if old is not None and _where(old.factory) != _where(factory):
            raise ValueError(f"register_model: model {name!r} is already registered to {_where(old.factory)}; "
                             f"cannot register {_where(factory)} under the same name; choose another name")
        _REGISTRY[name] = ModelInfo(name, factory, certifiable, summary, note)
        return factory

    return decorate


def _check_signature(name: str, factory: Callable[..., Any]) -> None:
    """``factory(in_shape, num_classes, <options with defaults>)``, the options including ``mean`` and
    ``std``: what :func:`build` calls and what a spec records (every option resolved)."""
    params = inspect.signature(factory).parameters
    names = list(params)
    problem = None
    if names[:2] != ["in_shape", "num_classes"]:
        problem = f"its first parameters must be (in_shape, num_classes), got ({', '.join(names)})"
    elif any(p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD, p.POSITIONAL_ONLY) for p in params.values()):
        problem = "*args, **kwargs and positional-only parameters cannot be recorded in a spec"
    elif missing := [n for n in names[2:] if params[n].default is inspect.Parameter.empty]:
        problem = f"option(s) {', '.join(missing)} need a default value"
    elif not {"mean", "std"} <= set(names[2:]):
        problem = "it must take the options mean and std (for its Normalize layer, model.normalize)"
    if problem:
        raise ValueError(f"register_model({name!r}): {_where(factory)}: {problem}; see docs/extending.md")


def unregister_model(name: str) -> ModelInfo:
    """Remove ``name`` from the registry and return its entry (for tests and notebooks that register a
    model of their own; the zoo's models stay registered in normal use).

    Raises:
        UnknownNameError: ``name`` is not registered (the message lists the names).
    """
    entry = info(name)
    del _REGISTRY[name]
    return entry


def available() -> list[str]:
    """The registered model names, sorted."""
    return sorted(_REGISTRY)


def info(name: str) -> ModelInfo:
    """The registry entry of ``name``; UnknownNameError listing the names if there is none."""
    if not isinstance(name, str) or name not in _REGISTRY:
        raise unknown("model", name, _REGISTRY)
    return _REGISTRY[name]


def check_in_shape(in_shape: object) -> tuple[int, int, int]:
    """``in_shape`` as a (C, H, W) tuple of three ints >= 1."""
    if isinstance(in_shape, (str, bytes)) or not isinstance(in_shape, (Sequence, torch.Size)) \
            or len(in_shape) != 3 \
            or not all(is_int(v) and v >= 1 for v in in_shape):
        raise ConfigError(f"in_shape: expected (C, H, W), three integers >= 1, got {in_shape!r}")
    return tuple(int(v) for v in in_shape)  # type: ignore[return-value]


def check_num_classes(num_classes: object) -> int:
    """``num_classes`` as an int >= 2."""
    if not is_int(num_classes) or num_classes < 2:
        raise ConfigError(f"num_classes: expected an integer >= 2, got {num_classes!r}")
    return int(num_classes)


def _plain(value: Any) -> Any:
    """Tuples, tensors, arrays -> lists; numpy scalars -> Python numbers, recursively: a spec must
    survive JSON and YAML."""
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        return float(value)
    if isinstance(value, torch.Tensor) or hasattr(value, "__array__"):
        return torch.as_tensor(value).detach().cpu().tolist()
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def build(name: str, in_shape: Sequence[int], num_classes: int, **options: Any) -> nn.Module:
    """Build the zoo model ``name`` for inputs of shape ``in_shape`` = (C, H, W) and ``num_classes``.

    Every model starts with its Normalize layer (options ``mean``, ``std``: one value per channel
    or one number; default mean 0, std 1, i.e. none) and maps (B, C, H, W) pixels in [0, 1] to
    (B, num_classes) logits. Parameters are initialized from torch's global RNG: seed it first
    for reproducible weights.

    The returned model has a ``spec`` attribute (see :func:`build_from_spec`).

    Raises:
        UnknownNameError: unknown ``name`` (the message lists the names).
        ConfigError: bad ``in_shape``/``num_classes``, an option the model does not take (the message
            lists the allowed ones), or an option value out of range.
    """
    entry = info(name)
    in_shape = check_in_shape(in_shape)
    num_classes = check_num_classes(num_classes)
    defaults = entry.defaults()
    extra = sorted(set(options) - set(defaults))
    if extra:
        raise ConfigError(f"options: model {name!r} has no option(s) {', '.join(map(repr, extra))}; "
                          f"allowed: {', '.join(sorted(defaults))}")
    model = entry.factory(in_shape, num_classes, **options)
    if not isinstance(getattr(model, "normalize", None), Normalize):
        raise TypeError(f"model {name!r} ({_where(entry.factory)}) has no Normalize layer as model.normalize; "
                        "a zoo model carries its normalization (see docs/extending.md)")
    resolved = {**defaults, **options}
    # Store the resolved statistics, so the spec never depends on the default of mean/std.
    resolved["mean"], resolved["std"] = list(model.normalize.mean), list(model.normalize.std)
    model.spec = {"name": name, "in_shape": list(in_shape), "num_classes": num_classes,
                  "options": _plain(resolved)}
    return model


def register_spec_builder(key: str, builder: Callable[[Mapping[str, Any]], nn.Module]) -> None:
    """Make :func:`build_from_spec` rebuild every spec that holds ``key`` with ``builder(spec)`` (e.g. the
    stochastic part: a zoo model with noise layers inserted, recorded under ``"stochastic"``).

    Raises:
        ValueError: ``key`` is one of the zoo's own keys, or already has another builder.
    """
    if key in SPEC_KEYS:
        raise ValueError(f"register_spec_builder: {key!r} is a key of every zoo spec; choose another")
    old = _SPEC_BUILDERS.get(key)
    if old is not None and (old.__module__, old.__qualname__) != (builder.__module__, builder.__qualname__):
        raise ValueError(f"register_spec_builder: {key!r} is already rebuilt by {old.__module__}.{old.__qualname__}")
    _SPEC_BUILDERS[key] = builder


def build_from_spec(spec: Mapping[str, Any]) -> nn.Module:
    """Rebuild a model from ``model.spec`` (e.g. read back from a checkpoint): a zoo spec, or one with
    the key of a registered extension (:func:`register_spec_builder`), rebuilt by that extension.

    The result has freshly initialized weights: load the checkpoint's ``state_dict`` into it.
    """
    if not isinstance(spec, Mapping):
        raise ConfigError(f"spec: expected a mapping with keys {', '.join(SPEC_KEYS)}, "
                          f"got {type(spec).__name__}")
    for key, builder in _SPEC_BUILDERS.items():
        if key in spec:
            return builder(spec)
    extra = sorted(set(spec) - set(SPEC_KEYS))
    missing = [k for k in SPEC_KEYS[:3] if k not in spec]
    if extra or missing:
        raise ConfigError(f"spec: unknown key(s) {extra} / missing key(s) {missing}; "
                          f"expected keys: {', '.join(SPEC_KEYS)}")
    options = spec.get("options") or {}
    if not isinstance(options, Mapping):
        raise ConfigError(f"spec.options: expected a mapping, got {options!r}")
    return build(spec["name"], spec["in_shape"], spec["num_classes"], **copy.deepcopy(dict(options)))


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of scalar parameters (each shared tensor once; buffers such as Normalize's excluded)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)
