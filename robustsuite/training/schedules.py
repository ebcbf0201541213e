"""Schedules of certified training, as pure functions of the step or of the current eps.

The eps schedule follows the CROWN-IBP reference code: zero for the first epochs, then a ramp
("smoothed": a degree-4 polynomial up to a midpoint, then linear to the target with a continuous
slope; or "linear"), then constant. beta and kappa are functions of the current eps, so they move
together with it: ``beta = (eps_max - eps * (1 - beta_final)) / eps_max`` goes 1 -> beta_final.
"""
from __future__ import annotations

from ..errors import ConfigError


def eps_at(step: int, *, eps_max: float, start_step: int, ramp_steps: int, kind: str = "smoothed",
           mid: float = 0.25) -> float:
    """Training radius at global batch ``step`` (0-based).

    Args:
        eps_max: the target radius reached at ``start_step + ramp_steps``.
        start_step: steps trained with eps = 0 (natural training).
        ramp_steps: length of the ramp in steps (0: jump to ``eps_max``).
        kind: ``smoothed`` (polynomial then linear, continuous slope) or ``linear``.
        mid: for ``smoothed``, the fraction of the ramp spent in the polynomial part.
    """
    if kind not in ("smoothed", "linear"):
        raise ConfigError(f"train.schedule.kind: unknown value {kind!r}; choose one of: linear, smoothed")
    if not 0 < mid < 1:
        raise ConfigError(f"train.schedule.mid: must lie in (0, 1), got {mid}")
    if step < start_step:
        return 0.0
    if ramp_steps <= 0 or step >= start_step + ramp_steps:
        return float(eps_max)
    t = (step - start_step) / ramp_steps  # in [0, 1)
    if kind == "linear":
        return float(eps_max) * t
    # Smoothed: eps(t) = a t^4 on [0, m], then linear to eps_max at t = 1 with the slope 4 a m^3
    # the polynomial ends with. Continuity of value and slope at m fixes a:
    # a m^4 + 4 a m^3 (1 - m) = eps_max  =>  a = eps_max / (m^4 + 4 m^3 (1 - m)).
    m = mid
    a = eps_max / (m**4 + 4 * m**3 * (1 - m))
    if t <= m:
        return float(a * t**4)
    return float(a * m**4 + 4 * a * m**3 * (t - m))


def mix_factor(eps: float, eps_max: float, final: float) -> float:
    """``(eps_max - eps * (1 - final)) / eps_max``: 1 at eps = 0, ``final`` at eps = eps_max.

    Used for beta (CROWN-IBP weight in the margin mix) and kappa (natural-loss weight).
    """
    if eps_max <= 0:
        return 1.0
    return (eps_max - eps * (1.0 - final)) / eps_max
