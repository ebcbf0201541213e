"""Losses and regularizers of the stochastic defenses.

* :func:`learn2perturb_regularizer`: ``g(theta) = -(gamma / tau) * sum sqrt(theta)`` with ``tau``
  the harmonic number of the epochs since noise started (:func:`harmonic_tau`).
* :func:`js_divergence`: MNG-AC's three-way Jensen-Shannon consistency.
* :func:`trades_kl`: TRADES' robust term ``KL(p(x) || p(x_adv))`` (the reference's argument order).
"""
from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import ConfigError
from .noise import PerturbationInjection

__all__ = ["harmonic_tau", "learn2perturb_regularizer", "js_divergence", "trades_kl"]


def harmonic_tau(epoch: int, noise_start: int) -> float:
    """``H_(e - s + 1) = sum_{i=1}^{e-s+1} 1/i`` for 0-based epoch ``e`` >= noise start ``s``.

    The paper's eq. (9) writes ``sum_i 1 / (i - s - 1)``, which divides by zero in the first noise
    epoch (as the reference code does); this is the harmonic number it intends: 1 in the first
    noise epoch, 1.5 in the second, ...
    """
    k = int(epoch) - int(noise_start) + 1
    if k < 1:
        raise ConfigError(f"epoch: the regularizer applies from the noise start {noise_start}, got epoch {epoch}")
    return float(sum(1.0 / i for i in range(1, k + 1)))


def learn2perturb_regularizer(model_or_thetas: nn.Module | Iterable[Tensor], gamma: float, tau: float) -> Tensor:
    """``-(gamma / tau) * sum over every theta element of sqrt(theta)`` (a scalar to minimize: it
    pushes the noise scales up, less as ``tau`` grows)."""
    if isinstance(model_or_thetas, nn.Module):
        thetas = [m.theta for m in model_or_thetas.modules() if isinstance(m, PerturbationInjection)]
    else:
        thetas = list(model_or_thetas)
    if not thetas:
        raise ConfigError("model: no PerturbationInjection layers to regularize")
    total = sum(t.clamp_min(1e-12).sqrt().sum() for t in thetas)
    return -(gamma / tau) * total


def js_divergence(*logits: Tensor, eps: float = 1e-7) -> Tensor:
    """Jensen-Shannon divergence of the softmax distributions of ``logits`` (each (B, K)):
    ``mean_i KL(p_i || m)``, ``m = mean_i p_i`` clamped to [eps, 1], averaged over the batch.

    Zero when the distributions are equal. MNG-AC uses it on (clean, adversarial, augmented).
    """
    if len(logits) < 2:
        raise ConfigError("js_divergence: needs at least two sets of logits")
    probs = [F.softmax(z, dim=1) for z in logits]
    log_m = torch.clamp(torch.stack(probs).mean(0), eps, 1.0).log()
    return sum(F.kl_div(log_m, p, reduction="batchmean") for p in probs) / len(probs)


def trades_kl(logits_adv: Tensor, logits_clean: Tensor) -> Tensor:
    """``KL(p_clean || p_adv)`` averaged over the batch, as TRADES' reference computes it
    (``KLDivLoss(log_softmax(adv), softmax(clean))``)."""
    return F.kl_div(F.log_softmax(logits_adv, dim=1), F.softmax(logits_clean, dim=1), reduction="batchmean")
