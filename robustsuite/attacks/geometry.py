"""The geometry of each threat set for the first-order attacks: random start, steepest-ascent
step, projection. The one place where these are written (the exact projections themselves are the
threat sets' ``project`` in ``robustsuite.threats``).

An attack's loop is written once (``descent.py``, ``apgd.py``; TRADES' inner maximization is
:class:`~robustsuite.attacks.PGD` too); what depends on the threat set lives here, one small class
per set, built around the clean batch ``x`` at the start of a run:

================  ==========================  =================================  =====================
set               ``random_start``            ``step(x_adv, d, size)``           ``project``
================  ==========================  =================================  =====================
``LinfBall``      uniform in the ball         ``x_adv + size * sign(d)``         clamp to the bounds
``Box``           uniform in each element's   ``x_adv + size * w * sign(d)``,    clamp to the bounds
                  interval                    ``w`` = element half-width
``L2Ball``        uniform in the ball         ``x_adv + size * d / ||d||_2``     exact, buffers per run
``L1Ball``        uniform in the ball         sparse L1 descent (see below)      exact (threat.project)
``None``          ``x``                       as L2                              clip to [0, 1]
================  ==========================  =================================  =====================

``gaussian_start(sigma)`` is ``x + sigma * N(0, 1)`` projected onto the set (TRADES' start).
``size`` is a float or a per-sample ``(B,)`` tensor. **Box units:** for a ``Box`` the step size
is a *fraction of each element's half-width* ``(upper - lower) / 2``, so a per-pixel budget is
searched at the same relative speed everywhere (a step of 1.0 moves every element by its own
half-width; FGSM on a box centred on ``x`` lands on the box's faces).

**Sparse L1 descent** (SLIDE, Tramèr & Boneh 2019): directions that would leave [0, 1] at
saturated pixels are dropped, the sign of the gradient is kept only where its magnitude is in the
top ``l1_fraction`` of the coordinates (at least one), and the result is normalized to unit L1
norm; the step is then projected exactly onto the L1 ball intersected with [0, 1].

Projections onto L-inf balls and boxes are a single clamp against bounds computed once per run
(``threat.bounds``), which is the exact projection onto the set intersected with [0, 1]. The L2
geometry builds its box ``[-x, 1 - x]`` and the Newton solver's buffers once per run too and calls
the solver of ``threats.project_l2_box`` directly (same points, fewer ops per step).
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from ..threats import L2_NEWTON_STEPS, Box, L1Ball, L2Ball, LinfBall, ThreatModel, _L2Work, _project_l2_rows

__all__ = ["Geometry", "geometry_for"]


def _per_sample(v: Tensor | float, like: Tensor) -> Tensor | float:
    if isinstance(v, Tensor) and v.dim() == 1:
        return v.view(-1, *([1] * (like.dim() - 1)))
    return v


def _add_scaled_(x_adv: Tensor, d: Tensor, size: Tensor | float) -> Tensor:
    """``x_adv += size * d`` in place, ``size`` a float or a per-sample (B,) tensor."""
    if isinstance(size, Tensor):
        return x_adv.addcmul_(d, _per_sample(size, x_adv))
    return x_adv.add_(d, alpha=size)


def _l2_normalize(d: Tensor) -> Tensor:
    n = torch.linalg.vector_norm(d.flatten(1), ord=2, dim=1).clamp_min_(1e-12)
    return d / n.view(-1, *([1] * (d.dim() - 1)))


class Geometry:
    """Hooks for one threat set around one clean batch ``x``. Subclasses override what differs."""

    def __init__(self, threat: ThreatModel | None, x: Tensor):
        self.threat = threat
        self.x = x

    def random_start(self, generator: torch.Generator | None) -> Tensor:
        """A random point of the set (PGD's random start)."""
        return self.threat.random_point(self.x, generator)

    def gaussian_start(self, sigma: float, generator: torch.Generator | None) -> Tensor:
        """``x + sigma * N(0, 1)`` projected onto the set (TRADES' start, ``sigma = 0.001``); with
        ``generator=None`` the noise is drawn from torch's global RNG."""
        x = self.x
        noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        return self.project(x + sigma * noise)

    def step(self, x_adv: Tensor, direction: Tensor, size: Tensor | float) -> Tensor:
        """A new tensor: ``x_adv`` moved by ``size`` along the steepest-ascent step for ``direction``."""
        return self.step_(x_adv.clone(), direction, size)

    def step_(self, x_adv: Tensor, direction: Tensor, size: Tensor | float) -> Tensor:
        """The same step, in place on ``x_adv`` (which the caller owns); ``direction`` is not changed."""
        return _add_scaled_(x_adv, _l2_normalize(direction), size)

    def project(self, x_adv: Tensor) -> Tensor:
        """Projection onto the set intersected with [0, 1]; may work in place on ``x_adv``."""
        return self.threat.project(self.x, x_adv)


class _BoundsGeometry(Geometry):
    """Sets whose projection is a clamp: L-inf ball and Box (bounds computed once)."""

    def __init__(self, threat, x):
        super().__init__(threat, x)
        lo, hi = threat.bounds(x)
        self.lo = lo.detach().contiguous()
        self.hi = hi.detach().contiguous()

    def project(self, x_adv):
        return x_adv.clamp_(self.lo, self.hi)


class LinfGeometry(_BoundsGeometry):
    def step_(self, x_adv, direction, size):
        return _add_scaled_(x_adv, direction.sign(), size)


class BoxGeometry(_BoundsGeometry):
    def __init__(self, threat: Box, x: Tensor):
        super().__init__(threat, x)
        self.half_width = threat.eps.detach().expand_as(x).contiguous()

    def step_(self, x_adv, direction, size):
        return _add_scaled_(x_adv, direction.sign().mul_(self.half_width), size)


class L2Geometry(Geometry):
    """L2 ball: the exact projection of :func:`~robustsuite.threats.project_l2_box` on rows, with
    the box ``[-x, 1 - x]`` built once per run (like :class:`_BoundsGeometry`'s bounds) and the
    point's difference to ``x`` taken in place: a PGD step adds no pass beyond the solver's own."""

    def __init__(self, threat: L2Ball, x: Tensor):
        super().__init__(threat, x)
        B = x.shape[0]
        self.eps = float(threat.eps)
        self.x_rows = x.detach().reshape(B, -1)
        self.lo = self.x_rows.neg()
        self.hi = self.x_rows.neg().add_(1.0)
        self.work = _L2Work(self.x_rows, self.eps, finite=True)

    def random_start(self, generator):
        # the threat's own draw, projected with this run's solver and bounds
        return self.project(self.threat.uniform_in_ball(self.x, generator))

    def step_(self, x_adv, direction, size):
        # x_adv + d / (||d|| / size): one fused pass, the divisor per sample (B, 1, ...)
        B = x_adv.shape[0]
        n = torch.linalg.vector_norm(direction.reshape(B, -1), dim=1).clamp_(min=1e-12).div_(size)
        return x_adv.addcdiv_(direction, n.view(-1, *([1] * (x_adv.dim() - 1))))

    def project(self, x_adv):
        B = x_adv.shape[0]
        v = x_adv.sub_(self.x).reshape(B, -1)       # x_adv is ours (the caller's contract)
        c, _, shrink = _project_l2_rows(v, self.lo, self.hi, self.eps, L2_NEWTON_STEPS, self.work)
        return c.div_(shrink).add_(self.x_rows).view(self.x.shape)


class L1Geometry(Geometry):
    def __init__(self, threat: L1Ball, x: Tensor, l1_fraction: float = 0.01):
        super().__init__(threat, x)
        d = x[0].numel()
        self.k = max(1, min(d, int(math.ceil(l1_fraction * d))))

    def step_(self, x_adv, direction, size):
        g = direction
        # Directions leaving [0, 1] at saturated pixels cannot be taken: drop them.
        blocked = ((x_adv <= 0) & (g < 0)) | ((x_adv >= 1) & (g > 0))
        a = g.abs().masked_fill_(blocked, 0).flatten(1)
        thr = a.topk(self.k, dim=1).values[:, -1:]
        keep = (a >= thr) & (a > 0)
        e = torch.sign(g.flatten(1)) * keep
        e = e / e.abs().sum(1, keepdim=True).clamp_min_(1.0)
        return _add_scaled_(x_adv, e.view_as(x_adv), size)


class UnitBoxGeometry(Geometry):
    """No threat set: only the image domain [0, 1] (minimal-perturbation attacks)."""

    def random_start(self, generator):
        return self.x.clone()

    def project(self, x_adv):
        return x_adv.clamp_(0, 1)


def geometry_for(threat: ThreatModel | None, x: Tensor, *, l1_fraction: float = 0.01) -> Geometry:
    """The hooks for ``threat`` around the clean batch ``x``."""
    if threat is None:
        return UnitBoxGeometry(None, x)
    if isinstance(threat, LinfBall):
        return LinfGeometry(threat, x)
    if isinstance(threat, Box):
        return BoxGeometry(threat, x)
    if isinstance(threat, L2Ball):
        return L2Geometry(threat, x)
    if isinstance(threat, L1Ball):
        return L1Geometry(threat, x, l1_fraction)
    raise TypeError(f"no attack geometry for threat {type(threat).__name__}")  # pragma: no cover
