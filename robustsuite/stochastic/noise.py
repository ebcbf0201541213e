"""Noise layers of the stochastic defenses: Learn2Perturb, PNI and ANIS2.

Every layer here declares ``is_stochastic = True`` (the verifier refuses such models) and follows
the same switches:

* Noise is drawn afresh on every forward pass, in ``train()`` *and* ``eval()`` mode: these models
  are random by design, and an attack must face the randomness (use EOT). Only an explicit switch
  turns it off: ``layer.noise_on = False``, or for a whole model :func:`set_noise` /
  :func:`noise_disabled`.
* Noise is independent per sample by default. ``shared=True`` reproduces the reference code's draw
  of one noise tensor for the whole batch (a known weakness: the samples of a batch then share
  their randomness).
* Noise comes from torch's global RNG, whose state every resumable checkpoint saves.

Each layer class registers its ``stochastic.kind`` where it is defined (:func:`register_noise`): the
kind's name, where it goes in a zoo model (``sites``) and its options with their defaults, read from
the class's ``__init__`` signature. :data:`KINDS` (kind -> option defaults) and :func:`noise_kind`
read that table; :mod:`robustsuite.stochastic.builders` inserts any registered kind.
"""
from __future__ import annotations

import abc
import contextlib
import inspect
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

import torch
from torch import Tensor, nn

from ..errors import ConfigError, unknown

__all__ = ["NoiseLayer", "PerturbationInjection", "ScalarNoise", "StocReLUEMA", "set_noise",
           "noise_disabled", "noise_layers", "set_gamma", "ema_paused", "clamp_noise_scales",
           "mean_noise_scale", "NoiseKind", "register_noise", "noise_kind", "KINDS"]


def _positive(name: str, value: float, *, allow_zero: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or value < 0 or (value == 0 and not allow_zero):
        rel = ">= 0" if allow_zero else "> 0"
        raise ConfigError(f"{name}: expected a finite number {rel}, got {value!r}")
    return float(value)


def _draw(x: Tensor, shared: bool) -> Tensor:
    """Standard normal noise of ``x``'s shape: per sample, or one draw broadcast over the batch."""
    if shared:
        return torch.randn((1,) + tuple(x.shape[1:]), device=x.device, dtype=x.dtype)
    return torch.randn_like(x)


class NoiseLayer(nn.Module, abc.ABC):
    """Base of the noise layers: the ``noise_on`` switch, the ``shared`` flag, ``is_stochastic``."""

    is_stochastic = True

    def __init__(self, shared: bool = False) -> None:
        super().__init__()
        if not isinstance(shared, bool):
            raise ConfigError(f"shared: expected a bool, got {shared!r}")
        self.shared = shared
        self.noise_on = True

    @abc.abstractmethod
    def noise_scale(self) -> Tensor:
        """The mean learned noise scale of this layer (for logging and plots)."""

    @classmethod
    def at_site(cls, shape: tuple[int, ...], **options: Any) -> "NoiseLayer":
        """The layer for a site whose input has the per-sample shape ``shape`` (e.g. (C, H, W))."""
        return cls(**options)


# ------------------------------------------------------------------------------------- registry
@dataclass(frozen=True)
class NoiseKind:
    """One ``stochastic.kind``: its layer class, where the layers go in a zoo model (``noise_sites``:
    after the stem and at every residual block's output; ``block_activations``: every block ReLU,
    replaced) and its options with their defaults (the class's ``__init__`` keywords)."""

    name: str
    layer: type[NoiseLayer]
    sites: Literal["noise_sites", "block_activations"]
    defaults: dict[str, Any]


_KINDS: dict[str, NoiseKind] = {}
#: kind -> the options it takes, with defaults (filled by :func:`register_noise`).
KINDS: dict[str, dict[str, Any]] = {}

L = TypeVar("L", bound=type)


def register_noise(kind: str, *, sites: Literal["noise_sites", "block_activations"]) -> Callable[[L], L]:
    """Class decorator: make ``stochastic.kind: <kind>`` insert the decorated :class:`NoiseLayer` at
    ``sites``, built by its :meth:`~NoiseLayer.at_site`; its options are the keyword parameters of its
    ``__init__`` that have defaults."""
    if sites not in ("noise_sites", "block_activations"):
        raise ValueError(f"register_noise({kind!r}): sites must be 'noise_sites' or 'block_activations', got {sites!r}")

    def decorate(cls: L) -> L:
        params = inspect.signature(cls.__init__).parameters.values()
        defaults = {p.name: p.default for p in params if p.default is not inspect.Parameter.empty}
        _KINDS[kind] = NoiseKind(kind, cls, sites, defaults)
        KINDS[kind] = dict(defaults)
        return cls

    return decorate


def noise_kind(kind: str) -> NoiseKind:
    """The registry entry of ``kind``, or :class:`~robustsuite.errors.UnknownNameError` listing the kinds."""
    if not isinstance(kind, str) or kind not in _KINDS:
        raise unknown("stochastic.kind", kind, _KINDS)
    return _KINDS[kind]


@register_noise("learn2perturb", sites="noise_sites")
class PerturbationInjection(NoiseLayer):
    """Learn2Perturb's perturbation-injection module: ``P = x + theta * N(0, 1)``.

    ``theta`` is a learnable noise-scale map of the feature map's shape (C, H, W), initialized to
    ``init`` (0.25 in the paper) and kept >= ``theta_min`` (0.01) by :meth:`clamp_` after every
    optimizer step. No weight decay belongs on ``theta`` (the trainers put it in its own optimizer).

    Shapes: input (B, C, H, W) (or any (B, *shape)), output the same.
    """

    def __init__(self, shape: Sequence[int], init: float = 0.25, theta_min: float = 0.01,
                 shared: bool = False) -> None:
        super().__init__(shared)
        self.theta_min = _positive("theta_min", theta_min, allow_zero=True)
        init = _positive("init", init)
        if init < self.theta_min:
            raise ConfigError(f"init: the initial noise scale {init} is below theta_min {self.theta_min}")
        self.theta = nn.Parameter(torch.full(tuple(int(s) for s in shape), init))

    def forward(self, x: Tensor) -> Tensor:
        if not self.noise_on:
            return x
        return x + self.theta * _draw(x, self.shared)

    @classmethod
    def at_site(cls, shape: tuple[int, ...], **options: Any) -> "PerturbationInjection":
        return cls(shape, **options)  # theta has the feature map's shape

    @torch.no_grad()
    def clamp_(self) -> None:
        """Project ``theta`` onto ``[theta_min, inf)`` (in place)."""
        self.theta.clamp_(min=self.theta_min)

    def noise_scale(self) -> Tensor:
        return self.theta.detach().mean()

    def extra_repr(self) -> str:
        return f"shape={tuple(self.theta.shape)}, theta_min={self.theta_min}, shared={self.shared}"


@register_noise("pni", sites="noise_sites")
class ScalarNoise(NoiseLayer):
    """PNI's parametric noise injection on activations: ``x + alpha * std(x) * N(0, 1)``.

    One learnable scalar ``alpha`` per layer (init 0.25, as in He et al. 2019); ``std(x)`` is the
    standard deviation of each sample's activation tensor, without gradient (the reference uses the
    whole batch's; per sample keeps the samples independent).

    Shapes: input (B, *shape), output the same.
    """

    def __init__(self, init: float = 0.25, shared: bool = False) -> None:
        super().__init__(shared)
        self.alpha = nn.Parameter(torch.tensor(_positive("init", init, allow_zero=True)))

    def forward(self, x: Tensor) -> Tensor:
        if not self.noise_on:
            return x
        if self.shared:
            std = x.detach().std()
        else:
            std = x.detach().flatten(1).std(dim=1).view((-1,) + (1,) * (x.dim() - 1))
        return x + self.alpha * std * _draw(x, self.shared)

    def noise_scale(self) -> Tensor:
        return self.alpha.detach().abs()

    def extra_repr(self) -> str:
        return f"shared={self.shared}"


@register_noise("anis2", sites="block_activations")
class StocReLUEMA(NoiseLayer):
    """ANIS2's stochastic ReLU: ``ReLU(x + d)``, ``d ~ N(0, gamma * sigma_c^2)`` per channel c.

    ``sigma`` (C,) is a buffer: in training mode (and while ``track`` is True) each forward pass
    first uses the current ``sigma`` and then updates it by the exponential moving average of the
    ANIS2 slides (Tan et al., "Proposed Method" and Algorithm 1)::

        sigma_{t+1} = (1 - alpha) * sigma_t + alpha * STD_chnwise(x)

    ``alpha`` in (0, 1] is the weight of the *new* batch statistic (the slides use 0.5; alpha = 1
    keeps only the last batch); ``STD_chnwise`` is the (unbiased) standard deviation of each channel
    of the input over the batch and spatial axes. The slides leave sigma_0 open; here the first
    update copies ``STD_chnwise`` (as if sigma_0 were the first batch's statistic), so the noise is
    not scaled down by a zero start. No public code of the authors was found, so there is no
    ``reference`` variant. In eval mode ``sigma`` is frozen. ``gamma`` is set by the trainer's
    staircase (:func:`set_gamma`).

    Shapes: input (B, C, *spatial), output the same.
    """

    def __init__(self, channels: int, alpha: float = 0.5, gamma: float = 0.0, shared: bool = False) -> None:
        super().__init__(shared)
        if isinstance(channels, bool) or not isinstance(channels, int) or channels < 1:
            raise ConfigError(f"channels: expected an integer >= 1, got {channels!r}")
        alpha = _positive("alpha", alpha)
        if alpha > 1:
            raise ConfigError(f"alpha: the EMA weight of the new batch statistic must be in (0, 1], got {alpha}")
        self.alpha = alpha
        self.track = True
        # Buffers, so a checkpoint keeps the noise level reached by the staircase.
        self.register_buffer("gamma_t", torch.tensor(_positive("gamma", gamma, allow_zero=True)))
        self.register_buffer("sigma", torch.zeros(channels))
        self.register_buffer("updates", torch.zeros((), dtype=torch.long))

    @classmethod
    def at_site(cls, shape: tuple[int, ...], **options: Any) -> "StocReLUEMA":
        return cls(int(shape[0]), **options)  # one sigma per channel

    def forward(self, x: Tensor) -> Tensor:
        out = x
        if self.noise_on:
            scale = (self.gamma_t.sqrt() * self.sigma).view((1, -1) + (1,) * (x.dim() - 2))
            out = x + scale * _draw(x, self.shared)
        if self.training and self.track:
            self._update(x.detach())
        return torch.relu(out)

    @torch.no_grad()
    def _update(self, x: Tensor) -> None:
        std = x.transpose(0, 1).reshape(x.shape[1], -1).std(dim=1)
        first = self.updates == 0
        new = torch.where(first, std, (1 - self.alpha) * self.sigma + self.alpha * std)
        self.sigma.copy_(new)
        self.updates.add_(1)

    @property
    def gamma(self) -> float:
        """The noise variance factor (a host read; set it with :func:`set_gamma`)."""
        return float(self.gamma_t)

    @gamma.setter
    def gamma(self, value: float) -> None:
        self.gamma_t.fill_(_positive("gamma", value, allow_zero=True))

    def noise_scale(self) -> Tensor:
        return self.gamma_t.sqrt() * self.sigma.mean()

    def extra_repr(self) -> str:
        return f"channels={self.sigma.numel()}, alpha={self.alpha}, gamma={self.gamma}, shared={self.shared}"


# ------------------------------------------------------------------------------------- model-wide
def noise_layers(model: nn.Module) -> list[tuple[str, NoiseLayer]]:
    """(qualified name, layer) of every noise layer of ``model``, in module order."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, NoiseLayer)]


def set_noise(model: nn.Module, enabled: bool) -> None:
    """Turn the noise of every noise layer on or off (a diagnostic switch; the default is on)."""
    for _, m in noise_layers(model):
        m.noise_on = bool(enabled)


@contextlib.contextmanager
def noise_disabled(model: nn.Module) -> Iterator[nn.Module]:
    """Context in which ``model`` runs without noise; the previous switches are restored after."""
    layers = noise_layers(model)
    before = [m.noise_on for _, m in layers]
    try:
        for _, m in layers:
            m.noise_on = False
        yield model
    finally:
        for (_, m), on in zip(layers, before):
            m.noise_on = on


@contextlib.contextmanager
def ema_paused(model: nn.Module) -> Iterator[nn.Module]:
    """Context in which the StocReLUEMA layers do not update ``sigma`` (e.g. while crafting
    adversarial examples in training mode, so that one batch makes exactly one EMA update)."""
    layers = [m for _, m in noise_layers(model) if isinstance(m, StocReLUEMA)]
    before = [m.track for m in layers]
    try:
        for m in layers:
            m.track = False
        yield model
    finally:
        for m, t in zip(layers, before):
            m.track = t


def set_gamma(model: nn.Module, gamma: float) -> None:
    """Set the noise variance factor of every StocReLUEMA layer."""
    gamma = _positive("gamma", gamma, allow_zero=True)
    for _, m in noise_layers(model):
        if isinstance(m, StocReLUEMA):
            m.gamma = gamma


def clamp_noise_scales(model: nn.Module) -> None:
    """Apply the ``theta >= theta_min`` projection of every PerturbationInjection layer."""
    for _, m in noise_layers(model):
        if isinstance(m, PerturbationInjection):
            m.clamp_()


def mean_noise_scale(model: nn.Module) -> float:
    """Mean over layers of each layer's mean noise scale (theta, |alpha| or sqrt(gamma) sigma)."""
    scales = [m.noise_scale() for _, m in noise_layers(model)]
    return float(torch.stack(scales).mean()) if scales else 0.0
