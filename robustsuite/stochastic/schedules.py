"""Schedules of the stochastic defenses: ANIS2's gamma staircase and MNG-AC's cyclic learning rate."""
from __future__ import annotations


from ..errors import ConfigError

__all__ = ["gamma_staircase", "cyclic_lr"]


def gamma_staircase(epoch: int, gamma_init: float, gamma_max: float, ramp_epochs: int, step_every: int) -> float:
    """ANIS2's noise factor after ``epoch`` completed epochs (so, during 0-based epoch ``epoch``).

    Algorithm 1 of the ANIS2 slides: ``k = r * (gamma_max - gamma_init) / T``; after every epoch t
    (1-based) with ``t mod r == 0``, ``gamma += k``. With ``T = ramp_epochs`` and ``r = step_every``
    that is ``gamma_init + k * floor(epoch / r)``, capped at ``gamma_max`` (reached after epoch T
    when r divides T; otherwise the last step stops short at ``gamma_init + k * floor(T / r)``).
    The slides' T is the number of training epochs (the trainer's default); ``ramp_epochs == 0``
    gives ``gamma_max`` from the start.
    """
    if ramp_epochs < 0 or step_every < 1:
        raise ConfigError(f"gamma schedule: ramp_epochs must be >= 0 and step_every >= 1, "
                          f"got {ramp_epochs} and {step_every}")
    if ramp_epochs == 0:
        return float(gamma_max)
    frac = min(1.0, (epoch // step_every) * step_every / ramp_epochs)
    return float(gamma_init + (gamma_max - gamma_init) * frac)


def cyclic_lr(step: int, total_steps: int, lr_max: float, peak: float = 0.4) -> float:
    """Triangular cyclic learning rate: 0 -> ``lr_max`` (at fraction ``peak`` of training) -> 0,
    linear in the step (MNG-AC's ``np.interp([t], [0, T * peak, T], [0, lr_max, 0])``)."""
    if total_steps < 1 or not 0 < peak < 1:
        raise ConfigError(f"cyclic lr: total_steps must be >= 1 and peak in (0, 1), got {total_steps}, {peak}")
    t = min(max(step, 0), total_steps) / total_steps
    if t <= peak:
        return lr_max * t / peak
    return lr_max * (1 - t) / (1 - peak)


