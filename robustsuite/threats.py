"""Threat models: the perturbation sets that attacks search and bounds certify.

A threat model is a value. Every set is intersected with the image domain [0, 1]:

* ``LinfBall(eps)``: ``{x' : ||x' - x||_inf <= eps} ∩ [0, 1]^d``
* ``L2Ball(eps)``:   ``{x' : ||x' - x||_2   <= eps} ∩ [0, 1]^d``
* ``L1Ball(eps)``:   ``{x' : ||x' - x||_1   <= eps} ∩ [0, 1]^d``
* ``Box(lower, upper)``: ``{x' : lower <= x' <= upper} ∩ [0, 1]^d`` with per-element tensors, the
  general case of a uniform L-inf ball and the set a learned budget produces.

Norms are taken per sample over all of C*H*W, in pixel units of [0, 1] images. Projections are exact
Euclidean projections onto the set intersected with [0, 1]: a clamp for L-inf balls and boxes; for
L2 and L1 balls the single multiplier of the norm constraint is found exactly, batched, with no loop
over samples. The norm as a function of the multiplier is piecewise linear (in ``t^2`` for L2, in
the soft threshold for L1), and a few Newton steps on the line of the piece at the current iterate
land on the solution once they reach its piece; a step that returns its own start is verified
exact. The samples they leave go to a sort-based solver that reads the solution off the sorted
breakpoints (:func:`project_l2_box`, :func:`project_l1_box`).

Cost: an L2 projection is about 40 tensor ops (of which ~20 passes over the (B, C*H*W) data) and
one host sync, L1 about 70; PGD/APGD iterates are settled by the Newton steps (no sort) on digits-
and CIFAR-shaped images. On a CPU a PGD step's projection is dominated by per-op dispatch, and
right after the model's backward pass the first call of each kind of op costs several times more,
so the solvers are written for few ops of few kinds; the sort they fall back to costs more than
the whole Newton path (on 3x32x32 images more than a 60-step bisection).
"""
from __future__ import annotations

import abc
import math
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from .errors import InputError, InputTypeError, unknown

__all__ = ["ThreatModel", "LinfBall", "L2Ball", "L1Ball", "Box", "check_images", "check_image_tensor",
           "image_range_problem", "threat_from_name"]

def check_images(x: Tensor, name: str = "x", *, ndim: int | None = None) -> Tensor:
    """Check that ``x`` is a floating tensor of images in [0, 1] without NaN/inf; return it."""
    check_image_tensor(x, name, ndim=ndim)
    # One pass and one host sync: NaN propagates through min/max, inf shows up as out of range.
    lo, hi = torch.stack(torch.aminmax(x.detach())).tolist()
    problem = image_range_problem(lo, hi, name)
    if problem:
        raise InputError(problem)
    return x


def check_image_tensor(x: Tensor, name: str = "x", *, ndim: int | None = None) -> None:
    """The part of :func:`check_images` that needs no values: a floating, non-empty batch tensor
    (of ``ndim`` dimensions when given). Callers that fuse the value check with other reductions
    (one host sync for all) pass its min and max to :func:`image_range_problem`."""
    if not isinstance(x, Tensor):
        raise InputTypeError(f"{name}: expected a torch.Tensor of images, got {type(x).__name__}")
    if not x.is_floating_point():
        raise InputError(f"{name}: expected a floating tensor with values in [0, 1], got dtype {x.dtype}")
    if ndim is not None and x.dim() != ndim:
        raise InputError(f"{name}: expected {ndim} dimensions (N, C, H, W), got shape {tuple(x.shape)}")
    if x.dim() < 2:
        raise InputError(f"{name}: expected a batch (N, ...) with at least 2 dimensions, got shape {tuple(x.shape)}")
    if x.numel() == 0:
        raise InputError(f"{name}: empty batch (shape {tuple(x.shape)})")


def image_range_problem(lo: float, hi: float, name: str = "x") -> str | None:
    """What is wrong with images whose min and max are ``lo`` and ``hi`` (NaN when any value is
    NaN), or None when they are finite and in [0, 1]."""
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return f"{name}: contains NaN or inf; images must be finite floats in [0, 1]"
    if lo < 0.0 or hi > 1.0:
        return (f"{name}: values must lie in [0, 1] (normalization belongs inside the model), "
                f"got range [{lo:.4g}, {hi:.4g}]")
    return None


def _check_eps(eps: float, field: str = "eps") -> float:
    if isinstance(eps, Tensor):
        if eps.numel() != 1:
            raise InputError(f"{field}: a ball takes one scalar radius; use Box for per-element budgets")
        eps = float(eps)
    if not isinstance(eps, (int, float)) or isinstance(eps, bool):
        raise InputTypeError(f"{field}: expected a number, got {type(eps).__name__}")
    eps = float(eps)
    if not math.isfinite(eps) or eps < 0:
        raise InputError(f"{field}: must be a finite number >= 0, got {eps}")
    return eps


def _flat_norm(d: Tensor, p: float) -> Tensor:
    return d.flatten(1).norm(p=p, dim=1)


def _per_sample(v: Tensor, like: Tensor) -> Tensor:
    return v.view(-1, *([1] * (like.dim() - 1)))


class ThreatModel(abc.ABC):
    """Base of the perturbation sets. Subclasses implement the set-specific geometry."""

    norm: ClassVar[str] = ""

    # --- geometry every set supplies ------------------------------------------------------
    @abc.abstractmethod
    def bounds(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Element-wise box ``(lower, upper)`` containing the set around ``x``, clipped to [0, 1].

        Exact for ``LinfBall`` and ``Box``; the enclosing box for L2/L1 balls. Shapes as ``x``.
        """

    @abc.abstractmethod
    def project(self, x: Tensor, x_adv: Tensor) -> Tensor:
        """Exact Euclidean projection of ``x_adv`` onto the set around ``x`` intersected with [0, 1]."""

    def distance(self, x: Tensor, x_adv: Tensor) -> Tensor:
        """Per-sample distance (B,) in this set's norm (L-inf for a Box)."""
        return _flat_norm(x_adv - x, self._p)

    @abc.abstractmethod
    def random_point(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """A random point of the set around ``x`` (the random start of PGD)."""

    # --- shared --------------------------------------------------------------------------
    _p: ClassVar[float] = float("inf")

    def contains(self, x: Tensor, x_adv: Tensor, atol: float = 1e-5) -> Tensor:
        """(B,) bool: ``x_adv`` lies in the set around ``x`` and in [0, 1], up to ``atol``."""
        in_unit = ((x_adv >= -atol) & (x_adv <= 1 + atol)).flatten(1).all(1)
        return in_unit & self._contains(x, x_adv, atol)

    def _contains(self, x: Tensor, x_adv: Tensor, atol: float) -> Tensor:
        return self.distance(x, x_adv) <= self.eps + atol

    def check(self, x: Tensor, name: str = "x") -> Tensor:
        """Validate images for this set (range, finiteness, shape); return them."""
        return check_images(x, name)


@dataclass(frozen=True)
class LinfBall(ThreatModel):
    """L-inf ball of radius ``eps`` (pixel units, images in [0, 1]) intersected with [0, 1]."""

    eps: float
    norm: ClassVar[str] = "linf"
    _p: ClassVar[float] = float("inf")

    def __post_init__(self):
        object.__setattr__(self, "eps", _check_eps(self.eps))

    def bounds(self, x):
        return (x - self.eps).clamp(0, 1), (x + self.eps).clamp(0, 1)

    def project(self, x, x_adv):
        return torch.min(torch.max(x_adv, x - self.eps), x + self.eps).clamp(0, 1)

    def random_point(self, x, generator=None):
        u = torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        return (x + (2 * u - 1) * self.eps).clamp(0, 1)


@dataclass(frozen=True)
class L2Ball(ThreatModel):
    """L2 ball of radius ``eps`` (norm over all C*H*W pixels in [0, 1]) intersected with [0, 1]."""

    eps: float
    norm: ClassVar[str] = "l2"
    _p: ClassVar[float] = 2.0

    def __post_init__(self):
        object.__setattr__(self, "eps", _check_eps(self.eps))

    def bounds(self, x):
        return (x - self.eps).clamp(0, 1), (x + self.eps).clamp(0, 1)

    def project(self, x, x_adv):
        return x + project_l2_box(x_adv - x, -x, 1 - x, self.eps)

    def random_point(self, x, generator=None):
        return self.project(x, self.uniform_in_ball(x, generator))

    def uniform_in_ball(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """``x`` plus a uniform draw from the ball, not yet clipped to [0, 1] (a Gaussian
        direction, radius ``eps * U^(1/d)``): :meth:`random_point` before its projection."""
        d = x[0].numel()
        g = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        g = g / _per_sample(_flat_norm(g, 2).clamp_min(1e-12), x)
        r = torch.rand(x.shape[0], generator=generator, device=x.device, dtype=x.dtype) ** (1.0 / d)
        return x + g * _per_sample(r * self.eps, x)


@dataclass(frozen=True)
class L1Ball(ThreatModel):
    """L1 ball of radius ``eps`` (sum of |delta| over all C*H*W pixels) intersected with [0, 1]."""

    eps: float
    norm: ClassVar[str] = "l1"
    _p: ClassVar[float] = 1.0

    def __post_init__(self):
        object.__setattr__(self, "eps", _check_eps(self.eps))

    def bounds(self, x):
        return (x - self.eps).clamp(0, 1), (x + self.eps).clamp(0, 1)

    def project(self, x, x_adv):
        return x + project_l1_box(x_adv - x, -x, 1 - x, self.eps)

    def random_point(self, x, generator=None):
        # Uniform on the simplex-scaled L1 ball: Laplace direction, radius eps * U^(1/d).
        d = x[0].numel()
        e = torch.empty(x.shape, device=x.device, dtype=x.dtype).exponential_(generator=generator)
        s = torch.randint(0, 2, x.shape, generator=generator, device=x.device).to(x.dtype) * 2 - 1
        g = e * s
        g = g / _per_sample(_flat_norm(g, 1).clamp_min(1e-12), x)
        r = torch.rand(x.shape[0], generator=generator, device=x.device, dtype=x.dtype) ** (1.0 / d)
        return self.project(x, x + g * _per_sample(r * self.eps, x))


class Box(ThreatModel):
    """Per-element box ``{x' : lower <= x' <= upper}`` intersected with [0, 1].

    ``lower`` and ``upper`` are tensors broadcastable to the image batch (N, C, H, W), usually
    ``x - eps`` and ``x + eps`` with a per-element budget ``eps``. Gradients flow from anything
    computed on the box (bounds, losses) back to ``lower``/``upper`` when they require grad.
    """

    norm: ClassVar[str] = "box"
    _p: ClassVar[float] = float("inf")

    def __init__(self, lower: Tensor, upper: Tensor):
        for name, t in (("lower", lower), ("upper", upper)):
            if not isinstance(t, Tensor):
                raise InputTypeError(f"Box.{name}: expected a torch.Tensor, got {type(t).__name__}")
            if not t.is_floating_point():
                raise InputError(f"Box.{name}: expected a floating tensor, got dtype {t.dtype}")
            if not torch.isfinite(t.detach()).all():
                raise InputError(f"Box.{name}: contains NaN or inf")
        try:
            torch.broadcast_shapes(lower.shape, upper.shape)
        except RuntimeError:
            raise InputError(f"Box: lower {tuple(lower.shape)} and upper {tuple(upper.shape)} "
                             "have shapes that do not broadcast") from None
        lo, hi = lower.detach(), upper.detach()
        # One host sync for both checks: crossed bounds, and a box that misses [0, 1] somewhere (its
        # intersection with the image domain is empty; clipping would silently collapse it to a face).
        crossed, outside = (v for v in torch.stack([(lo > hi).any(), ((hi < 0) | (lo > 1)).any()]).tolist())
        if crossed:
            worst = float((lo - hi).max())
            raise InputError(f"Box: lower must be <= upper element-wise (largest violation {worst:.3g})")
        if outside:
            raise InputError("Box: disjoint from the image domain [0, 1] at some element (upper < 0 or "
                             "lower > 1), so the set is empty; give bounds that overlap [0, 1] everywhere")
        self.lower = lower
        self.upper = upper

    @classmethod
    def around(cls, x: Tensor, eps: Tensor | float) -> "Box":
        """The box ``[x - eps, x + eps]`` for a per-element (or scalar) budget ``eps >= 0``."""
        eps_t = torch.as_tensor(eps, dtype=x.dtype, device=x.device)
        if bool((eps_t.detach() < 0).any()):
            raise InputError("Box.around: eps must be >= 0 everywhere")
        return cls(x - eps_t, x + eps_t)

    @property
    def eps(self) -> Tensor:
        """Half-widths of the (unclipped) box, per element."""
        return (self.upper - self.lower) / 2

    def __repr__(self) -> str:
        return f"Box(lower={tuple(self.lower.shape)}, upper={tuple(self.upper.shape)})"

    def __getitem__(self, idx) -> "Box":
        """The box of a subset of the batch (when lower/upper carry a batch axis)."""
        lo = self.lower[idx] if self.lower.dim() == 4 and self.lower.shape[0] > 1 else self.lower
        hi = self.upper[idx] if self.upper.dim() == 4 and self.upper.shape[0] > 1 else self.upper
        return Box(lo, hi)

    def to(self, *args, **kwargs) -> "Box":
        return Box(self.lower.to(*args, **kwargs), self.upper.to(*args, **kwargs))

    def check_against(self, x: Tensor) -> None:
        """Raise if the box does not broadcast to ``x``'s shape."""
        try:
            shape = torch.broadcast_shapes(self.lower.shape, self.upper.shape, x.shape)
        except RuntimeError:
            raise InputError(f"Box: lower {tuple(self.lower.shape)} / upper {tuple(self.upper.shape)} "
                             f"do not broadcast to the input shape {tuple(x.shape)}") from None
        if tuple(shape) != tuple(x.shape):
            raise InputError(f"Box: broadcasting lower/upper to the input gives {tuple(shape)}, "
                             f"not the input shape {tuple(x.shape)}")

    def check(self, x, name="x"):
        """Validate ``x`` for this box: images, broadcastable shape, and ``x`` inside the box.

        A box that does not contain ``x`` is refused: a certificate (or a robust-accuracy count)
        states that the clean prediction at ``x`` and every point of the set around it are correct,
        which needs ``x`` in its own set.
        """
        check_images(x, name)
        self.check_against(x)
        xd = x.detach()
        lo = self.lower.detach().to(xd.device).clamp(0, 1)
        hi = self.upper.detach().to(xd.device).clamp(0, 1)
        outside = (xd < lo) | (xd > hi)
        if bool(outside.any()):
            n = int(outside.flatten(1).any(1).sum())
            raise InputError(f"Box: {name} lies outside the box (clipped to [0, 1]) for {n} sample(s); "
                             f"the box must contain {name}, e.g. Box(x - eps, x + eps)")
        return x

    def bounds(self, x):
        lo = self.lower.clamp(0, 1).expand_as(x)
        hi = self.upper.clamp(0, 1).expand_as(x)
        return lo, hi

    def project(self, x, x_adv):
        lo, hi = self.bounds(x)
        return torch.min(torch.max(x_adv, lo.detach()), hi.detach())

    def random_point(self, x, generator=None):
        lo, hi = self.bounds(x)
        u = torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        return lo.detach() + u * (hi - lo).detach()

    def _contains(self, x, x_adv, atol):
        lo, hi = self.bounds(x)
        return ((x_adv >= lo - atol) & (x_adv <= hi + atol)).flatten(1).all(1)


# --- projections (pure functions) -------------------------------------------------------------
#
# Both find the single multiplier of the norm constraint exactly (Newton on the piece lines, verified, with
# a sort-based solver for what Newton leaves), batched over samples. The multiplier is
# solved without autograd; where the caller needs gradients (the noise generator's 'exact' fit), ``d`` is
# rebuilt from the detached multiplier, so the gradient is that of ``clip(t v)`` / the soft threshold at
# fixed ``t`` / ``lam`` (for L2 as with the bisection before; the L1 bisection's multiplier leaked a
# gradient into the largest |v_i|, the top of its bracket). A last rescaling by ``min(1, eps / ||d||)`` (which
# stays in the box because it contains 0) absorbs the final rounding so the result is never outside the ball.

def _expand(v: Tensor, lo: Tensor, hi: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``(v, lo, hi)`` flattened to (B, n) with ``lo``/``hi`` broadcast to ``v``."""
    B = v.shape[0]
    return (v.reshape(B, -1), torch.broadcast_to(lo, v.shape).reshape(B, -1),
            torch.broadcast_to(hi, v.shape).reshape(B, -1))


def _shrink(norm: Tensor, eps: float) -> Tensor:
    """``max(1, norm / eps)`` (B, 1) for rows of norms ``norm`` (B, 1), ``eps > 0``: dividing a row
    by it puts it into the ball, a rounding guard, ulp-sized where it acts."""
    return (norm / eps).clamp_min_(1.0)


def _into_ball(d: Tensor, norm: Tensor, eps: float) -> tuple[Tensor, Tensor]:
    """``(d / shrink, shrink)`` with :func:`_shrink` for rows ``d`` (B, n) of norms ``norm`` (B, 1)
    (``eps = 0``: zeros, shrink 1)."""
    if eps == 0:
        return torch.zeros_like(d), torch.ones_like(norm)
    shrink = _shrink(norm, eps)
    return d / shrink, shrink


def _needs_grad(*ts: Tensor) -> bool:
    return torch.is_grad_enabled() and any(t.requires_grad for t in ts)


def _solver_rows(v: Tensor, lo: Tensor, hi: Tensor, newton_steps: int) -> tuple[Tensor, Tensor, Tensor] | None:
    """The projections' common entry: ``newton_steps`` checked, ``(v, lo, hi)`` as rows (B, n)
    (:func:`_expand`), or None for an empty ``v``."""
    if newton_steps < 0:
        raise InputError(f"newton_steps: expected an integer >= 0, got {newton_steps}")
    if v.numel() == 0:
        return None
    return _expand(v, lo, hi)


def _unsettled(done: Tensor) -> Tensor | None:
    """Indices of the rows Newton left (``done`` (B, 1) False), or None when it settled all: one
    host sync (the count); the indices come without a second one (``nonzero`` would wait again)."""
    n_left = done.numel() - int(torch.count_nonzero(done))
    if not n_left:
        return None
    return done.view(-1).to(torch.uint8).argsort(stable=True)[:n_left]   # the unsettled rows first


L2_NEWTON_STEPS = 3
"""Newton steps :func:`project_l2_box` takes before the sort (see there)."""


def project_l2_box(v: Tensor, lo: Tensor, hi: Tensor, eps: float, *, newton_steps: int = L2_NEWTON_STEPS) -> Tensor:
    """Exact projection of perturbations ``v`` (B, ...) onto ``{||d||_2 <= eps, lo <= d <= hi}``.

    Requires ``lo <= 0 <= hi`` (the box contains 0; not checked here, the callers build it as
    ``[-x, 1 - x]``); ``lo``/``hi`` broadcast to ``v``, infinite bounds allowed. Returns ``d`` of
    ``v``'s shape and dtype, in the box and with ``||d||_2 <= eps`` per sample (up to the rounding
    of one multiplication); samples whose clipped ``v`` is inside the ball are returned clipped.

    KKT: ``d = clip(t * v, lo, hi)`` for the largest ``t`` in [0, 1] with ``||d||_2 <= eps``. With
    ``a_i = |v_i|`` and ``cap_i`` the room to the bound in the direction of ``v_i``, coordinate ``i``
    is clipped once ``s = t^2`` passes its breakpoint ``b_i = cap_i^2 / a_i^2``, and
    ``f(s) = ||clip(t v)||^2 = sum_i min(s a_i^2, cap_i^2)`` is piecewise linear, non-decreasing and
    concave: on the piece holding ``s``, ``f = s A + C`` with ``A`` the free coordinates' ``a_i^2``
    and ``C`` the clipped ones' ``cap_i^2``. Two exact solvers:

    * Newton from below (``newton_steps`` steps, the fast path): from the classic start
      ``s_1 = eps^2 / ||v||^2`` (the line of "nothing clipped"), ``s_{k+1} = (eps^2 - C_k) / A_k``,
      the root of the line of the piece at ``s_k``. Every such line lies above ``f`` (each term
      ``s a_i^2`` or ``cap_i^2`` bounds ``min(s a_i^2, cap_i^2)``), so every iterate is ``<= s*``
      and they increase (kept so against rounding, and ``<= 1``); a step that returns its own start
      (``s_{k+1} = s_k``, bit for bit: the same piece gives the same sums) found ``s_k`` on the
      line of its own piece at height ``eps^2``: ``f(s_k) = eps^2``, exactly ``s*`` (or ``s = 1``:
      inside). PGD/APGD iterates (a point of the sphere plus a step) on digits- and CIFAR-shaped
      images are verified by the second or third step. Each step is one comparison, one fused
      multiply-add and one sum over (2, B, n + 1), and two ops on (B, 1): no sort.
    * The sort (the exact fallback for the samples Newton did not settle, and the whole method
      with ``newton_steps=0``): sorting the ``b_i`` per sample, cumulative sums give ``f`` at
      every breakpoint, and the segment holding ``eps^2`` gives ``t`` in closed form
      (:func:`_project_l2_box_sorted`); on a CPU a sort costs more than the whole Newton path.

    One host sync per call (how many samples Newton left unsettled), none with ``newton_steps=0``.
    """
    rows = _solver_rows(v, lo, hi, newton_steps)
    if rows is None:  # no sample, or nothing to move
        return v.clone()
    shape = v.shape
    vf, lof, hif = rows
    with torch.no_grad():
        c, t, shrink = _project_l2_rows(vf, lof, hif, eps, newton_steps)
    if _needs_grad(v, lo, hi):
        return (torch.clamp(vf * t, lof, hif) / shrink).view(shape)
    return c.div_(shrink).view(shape)


def _project_l2_rows(v: Tensor, lo: Tensor, hi: Tensor, eps: float, newton_steps: int,
                     work: "_L2Work | None" = None) -> tuple[Tensor, Tensor, Tensor]:
    """:func:`project_l2_box` on rows (B, n) without autograd: ``(c, t, shrink)`` with
    ``c = clip(t v)`` (B, n) a new tensor (the caller may work in place on it), ``t`` and the
    rounding guard ``shrink = max(1, ||c|| / eps)`` (B, 1); the projection is ``c / shrink``.
    ``work``: the solver's buffers for these rows, to reuse across calls (the attack geometry
    keeps one per run); its bounds must then be finite."""
    if eps == 0:  # the ball is {0}
        return torch.zeros_like(v), v.new_zeros(v.shape[0], 1), v.new_ones(v.shape[0], 1)
    if not newton_steps:
        return _project_l2_box_sorted(v, lo, hi, eps)
    c, t, shrink, done = _l2_newton(v, lo, hi, eps, newton_steps, work)
    rest = _unsettled(done)                                                 # the host sync
    if rest is not None:
        c[rest], t[rest], shrink[rest] = _project_l2_box_sorted(v[rest], lo[rest], hi[rest], eps)
    return c, t, shrink


class _L2Work:
    """Buffers of :func:`_l2_newton` for rows (B, n) and one radius, reusable across calls: setting
    them up is a dozen small ops, as many as two Newton steps.

    ``P = [a^2 | 0 ; cap^2 | 0]`` and ``Q = [0 | 0 ; -cap^2 | eps^2]``, (2, B, n + 1). With ``m = 1``
    on the free coordinates and 0 on the clipped ones, ``Q + m P`` is, element by element and
    exactly, ``[a^2 ; 0]`` or ``[0 ; -cap^2]``, so one sum over the last axis gives the piece's
    slope ``A`` and ``eps^2 - C`` with no cancellation (``C`` as a difference of two sums would
    lose the clipped part when the free coordinates have much more room); the last column adds
    ``eps^2``. The mask (B, n + 1) broadcasts over the leading axis, a fast path (over a middle
    axis it is not)."""

    def __init__(self, like: Tensor, eps: float, *, finite: bool):
        B, n = like.shape
        self.shape, self.eps, self.finite = (B, n), eps, finite
        self.P = like.new_zeros(2, B, n + 1)
        self.Q = like.new_zeros(2, B, n + 1)
        self.Q[1, :, n] = eps * eps
        self.a2, self.cap2 = self.P[:, :, :n].unbind(0)
        self.q1 = self.Q[1, :, :n]
        self.b2 = like.new_empty(B, n)
        self.m = like.new_zeros(B, n + 1)
        self.m_rows = self.m[:, :n]
        self.Z = torch.empty_like(self.P)
        self.S = like.new_empty(2, B, 1)
        self.A, self.rhs = self.S.unbind(0)
        self.zero = like.new_zeros(B, 1)
        self.one = like.new_ones(())

    def fits(self, v: Tensor, eps: float) -> bool:
        return tuple(v.shape) == self.shape and eps == self.eps and v.dtype == self.P.dtype


def _l2_newton(v: Tensor, lo: Tensor, hi: Tensor, eps: float, steps: int, work: _L2Work | None = None
               ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Newton from below on ``f(s) = ||clip(sqrt(s) v, lo, hi)||^2 = eps^2`` (rows of (B, n),
    ``eps > 0``; see :func:`project_l2_box`): the start ``s_1 = eps^2 / ||v||^2`` and ``steps``
    Newton steps from it. Returns ``(c, t, shrink, done)`` as :func:`_project_l2_rows` plus
    ``done`` (B, 1) bool: exact in those rows (the last step returned its start), feasible but
    possibly short of the sphere elsewhere.

    Cost: 5 passes over (B, n) to set up, 4 for the start, 5 per step (a comparison, a fused
    multiply-add and a sum over (2, B, n + 1), a division and a clamp of (B, 1)), 5 to build the
    result: about 35 tensor ops with ``work``. Each is a PGD/APGD step's overhead over the model's
    own passes, and on a CPU a small tensor op costs mostly its dispatch, so the op count is what is
    kept low here (no boolean masks, no ``where``, preallocated outputs)."""
    if work is None or not work.fits(v, eps):
        work = _L2Work(v, eps, finite=False)
    fin = torch.finfo(v.dtype)
    # cap_i = |clip(v_i * max)|, the bound in v_i's direction: v_i * max overflows past it (to +-inf at
    # worst, never NaN), and v_i = 0 gives cap_i = 0 (a coordinate that cannot move contributes
    # nothing, clipped or not). A tiny v_i may stop short of its bound; then b_i is huge and it is
    # never clipped at s <= 1, where cap_i does not matter.
    # (Few distinct kernels as well as few ops: after the model's backward pass the first call of
    # each kind of op costs several times the next ones, so squares and negations are products.)
    torch.mul(v, v, out=work.a2)
    cap2 = torch.mul(v, fin.max, out=work.cap2).clamp_(lo, hi)
    cap2.mul_(cap2)
    if not work.finite:
        cap2.clamp_(max=fin.max)            # infinite bounds: inf * 0 below would be NaN
    torch.mul(cap2, -1.0, out=work.q1)
    b2 = torch.div(cap2, work.a2, out=work.b2)  # clipped iff s >= b2; NaN where v_i = 0 (never free)
    P, Q, Z, S, A, rhs, one = work.P, work.Q, work.Z, work.S, work.A, work.rhs, work.one
    s = work.zero
    torch.sum(torch.add(Q, P, out=Z), 2, keepdim=True, out=S)  # nothing clipped: s_1 = eps^2 / ||v||^2
    for k in range(steps + 1):
        if k:
            torch.gt(b2, s, out=work.m_rows)  # free at s; one exactly at its bound counts as clipped
            torch.sum(torch.addcmul(Q, work.m, P, out=Z), 2, keepdim=True, out=S)
        # The root of this piece's line, kept monotone (rounding) and <= 1 (inside). A = 0 gives +inf
        # (clamped to 1) or, for 0 / 0, NaN, which stays and leaves the row unsettled.
        s_prev, s = s, torch.div(rhs, A).clamp_(s, one)
    # same s twice: the piece at s_prev has its root at s_prev, f(s) = eps^2 (or s = 1: inside); the
    # start's line is not a piece's, so with steps = 0 nothing is settled
    done = s == s_prev if steps else torch.zeros_like(s, dtype=torch.bool)
    t = s.sqrt_()
    c = torch.mul(v, t).clamp_(lo, hi)
    shrink = torch.linalg.vector_norm(c, dim=1, keepdim=True).div_(eps).clamp_(one)
    return c, t, shrink, done


def _project_l2_box_sorted(vf: Tensor, lof: Tensor, hif: Tensor, eps: float) -> tuple[Tensor, Tensor, Tensor]:
    """The sort-based exact solver of :func:`project_l2_box` on rows (B, n) (see there); returns
    ``(c, t, shrink)`` as :func:`_project_l2_rows`.

    ``N(t) = sum_{b_i <= t} cap_i^2 + t^2 sum_{b_i > t} a_i^2``; sorting the ``b_i``, cumulative
    sums give ``N`` at every breakpoint; on the segment ``[b_(m-1), b_(m)]`` holding ``eps^2``,
    ``t = sqrt((eps^2 - S) / A)`` with ``S`` the saturated part and ``A`` the free squared mass.
    Ties and zero-length segments are harmless (``t`` is clamped into its segment). Cost: one sort
    of (B, n) and a few elementwise passes, no host sync.
    """
    B, n = vf.shape
    a = vf.abs()
    cap = torch.where(vf >= 0, hif, -lof).clamp_min(0)
    free = a > 0
    inf = torch.tensor(float("inf"), dtype=vf.dtype, device=vf.device)
    bp = torch.where(free, cap / torch.where(free, a, 1), inf)          # where coordinate i saturates
    bp_s, order = bp.sort(dim=1)
    a2_s = a.square().gather(1, order)
    finite = torch.isfinite(bp_s)
    cap2_s = torch.where(finite, cap.gather(1, order).square(), 0)
    zero = vf.new_zeros(B, 1)
    # S[k]: squared mass of the first k (saturated) coordinates; A[k]: free mass from k on, summed from
    # the end so that a small tail is not the difference of two large sums. Both (B, n + 1).
    S = torch.cat([zero, cap2_s.cumsum(1)], 1)
    A = torch.cat([a2_s.flip(1).cumsum(1).flip(1), zero], 1)
    e2 = eps * eps
    at_bp = torch.where(finite, S[:, :-1] + bp_s.square() * A[:, :-1], inf)   # N(b_(k))
    m = (at_bp <= e2).sum(1, keepdim=True)                              # breakpoints reached: (B, 1)
    S_m, A_m = S.gather(1, m), A.gather(1, m)
    t = torch.where(A_m > 0, ((e2 - S_m).clamp_min(0) / torch.where(A_m > 0, A_m, 1)).sqrt(), inf)
    bp_pad = torch.cat([zero, bp_s, inf.expand(B, 1)], 1)               # b_(m-1) at m, b_(m) at m + 1
    t = torch.minimum(torch.maximum(t, bp_pad.gather(1, m)), bp_pad.gather(1, m + 1)).clamp_max(1.0)
    c = torch.clamp(vf * t, lof, hif)
    return c, t, _shrink(torch.linalg.vector_norm(c, ord=2, dim=1, keepdim=True), eps)


L1_NEWTON_STEPS = 3
"""Newton steps :func:`project_l1_box` takes before the sort (see there)."""


def project_l1_box(v: Tensor, lo: Tensor, hi: Tensor, eps: float, *, newton_steps: int = L1_NEWTON_STEPS
                   ) -> Tensor:
    """Exact projection of ``v`` (B, ...) onto ``{||d||_1 <= eps, lo <= d <= hi}`` (``lo <= 0 <= hi``).

    Same conventions and guarantees as :func:`project_l2_box` (infinite bounds allowed: the plain
    L1 ball). KKT: ``d_i = sign(v_i) * min(max(|v_i| - lam, 0), cap_i)`` with ``cap_i`` the room in
    the direction of ``v_i`` and the smallest soft threshold ``lam >= 0`` giving ``||d||_1 <= eps``
    (the simplex projection of Duchi et al. 2008 / Condat 2016 with box caps, as in Croce & Hein's
    L1-APGD). ``g(lam) = ||d(lam)||_1`` is piecewise linear and non-increasing with breakpoints
    ``l_i = |v_i| - cap_i`` (coordinate ``i`` leaves its cap: slope -1 more) and ``|v_i|`` (it
    reaches 0: slope -1 less); on the piece holding ``lam``, ``g = S - N lam`` with ``N`` the moving
    coordinates and ``S`` their ``|v_i|`` plus the capped ones' ``cap_i``. Two exact solvers:

    * Newton on the piece lines (``newton_steps`` steps, the fast path): from ``lam_0 = 0``,
      ``lam_{k+1} = (S_k - eps) / N_k`` (clamped to ``[0, max |v_i|]``); a step that returns its
      start found ``lam_k`` on its own piece's line at height ``eps``: ``g(lam_k) = eps``, exact (or
      ``lam = 0``: inside). ``g`` is not convex (the caps bend it the other way), so the iterates are
      not monotone and nothing guarantees convergence: rows not settled go to the sort. A PGD /
      APGD iterate (a point of the sphere plus a sparse step) is settled after two or three steps,
      on 1x8x8 and 3x32x32 images alike; a far point (a Gaussian) needs 6-9. Each step is one
      comparison over (2, B, n), a product and sums: 6 passes, no sort.
    * The sort (the fallback, and the whole method with ``newton_steps=0``): sorting the 2n
      breakpoints, a cumulative sum of the slopes gives the moving count on each segment, a second
      one the decrease ``g(0) - g(b_k)``; ``lam`` is solved on the segment where the decrease
      reaches ``g(0) - eps`` (:func:`_project_l1_box_sorted`). On a CPU a sort of (B, 2n) costs more
      than 60 bisection steps for 3x32x32 images.

    One host sync per call (how many rows Newton left), none with ``newton_steps=0``.
    """
    rows = _solver_rows(v, lo, hi, newton_steps)
    if rows is None:  # no sample, or nothing to move
        return v.clone()
    shape = v.shape
    vf, lof, hif = rows
    with torch.no_grad():
        d, lam, shrink = _project_l1_rows(vf, lof, hif, eps, newton_steps)
    if _needs_grad(v, lo, hi):
        cap = torch.where(vf >= 0, hif, -lof).clamp_min(0)
        d = torch.copysign(torch.minimum((vf.abs() - lam).clamp_min(0), cap), vf) / shrink
    return d.view(shape)


def _project_l1_rows(v: Tensor, lo: Tensor, hi: Tensor, eps: float, newton_steps: int
                     ) -> tuple[Tensor, Tensor, Tensor]:
    """:func:`project_l1_box` on rows (B, n) without autograd: ``(d, lam, shrink)`` ((B, n), (B, 1),
    (B, 1)), ``d`` already divided by the rounding guard ``shrink``."""
    if eps == 0 or not newton_steps:
        d, lam = _project_l1_box_sorted(v, lo, hi, eps)
    else:
        d, lam, done = _l1_newton(v, lo, hi, eps, newton_steps)
        rest = _unsettled(done)                                             # the host sync
        if rest is not None:
            d[rest], lam[rest] = _project_l1_box_sorted(v[rest], lo[rest], hi[rest], eps)
    d, shrink = _into_ball(d, d.abs().sum(1, keepdim=True), eps)
    return d, lam, shrink


def _l1_newton(v: Tensor, lo: Tensor, hi: Tensor, eps: float, steps: int) -> tuple[Tensor, Tensor, Tensor]:
    """Newton on the piece lines of ``g(lam) = eps`` (rows of (B, n), see :func:`project_l1_box`):
    the piece at ``lam = 0`` and ``steps`` more. Returns ``(d, lam, done)``: ``d`` (B, n) before the
    rounding guard, ``lam`` (B, 1), ``done`` (B, 1) bool: exact in those rows (the last step
    returned its start).

    The masks are exact 0/1 floats and each product picks one term, so the sums ``S`` and ``N``
    are of the piece alone (a difference of sums would cancel) and identical for two iterates on
    the same piece: the fixed point is detected bit for bit. Cost: 10 tensor ops per step (the
    multiplier is kept as (1, B, 1) so that every reduction lands in its shape)."""
    B, n = v.shape
    fin = torch.finfo(v.dtype)
    buf = v.new_empty(3, B, n)              # [cap ; a ; l], W = [cap ; a], TH = [a ; l]
    cap, a, low = buf.unbind(0)
    W, TH = buf[:2], buf[1:]
    torch.abs(v, out=a)
    # cap_i = |clip(v_i * max)|: the bound in v_i's direction (see _l2_newton); finite, so that a
    # zero mask times it is 0 (infinite bounds: the plain L1 ball)
    torch.mul(v, fin.max, out=cap).clamp_(lo, hi).abs_().clamp_(max=fin.max)
    torch.sub(a, cap, out=low)              # l_i: where coordinate i leaves its cap
    G = torch.empty_like(TH)                # [lam >= a ; lam >= l]
    g_zero, g_moves = G.unbind(0)
    M = torch.empty_like(W)                 # [capped ; moving]
    m_capped, m_moving = M.unbind(0)
    moving = M[1:]
    zero = v.new_zeros(1, B, 1)
    top = a.amax(1, keepdim=True).unsqueeze(0)
    lam = prev = zero
    for _ in range(steps + 1):
        torch.le(TH, lam, out=G)            # at a breakpoint, the side to its right
        torch.neg(g_moves, out=m_capped).add_(1.0)
        torch.sub(g_moves, g_zero, out=m_moving)
        S = torch.mul(M, W).sum((0, 2), keepdim=True)
        # N = 0 (a flat piece) gives +-inf (clamped) or NaN, which stays: the row is left to the sort
        prev, lam = lam, S.sub_(eps).div_(moving.sum(2, keepdim=True)).clamp_(zero, top)
    done = (lam == prev).view(B, 1)
    lam = lam.view(B, 1)
    d = torch.copysign(torch.minimum((a - lam).clamp_min_(0), cap), v)
    return d, lam, done


def _project_l1_box_sorted(vf: Tensor, lof: Tensor, hif: Tensor, eps: float) -> tuple[Tensor, Tensor]:
    """The sort-based solver of :func:`project_l1_box` on rows (B, n); returns ``(d, lam)`` ((B, n),
    (B, 1)), ``d`` before the rounding guard."""
    B, n = vf.shape
    a = vf.abs()
    cap = torch.where(vf >= 0, hif, -lof).clamp_min(0)
    full = torch.minimum(a, cap)                                        # |clip(v)|: lam = 0
    excess = full.sum(1, keepdim=True) - eps                            # (B, 1); > 0: outside
    bp = torch.cat([(a - cap).clamp_min(0), a], 1)                      # (B, 2n)
    slope = torch.cat([vf.new_ones(B, n), vf.new_full((B, n), -1.0)], 1)
    bp_s, order = bp.sort(dim=1)
    active = slope.gather(1, order).cumsum(1)                           # coordinates moving after b_(k)
    gaps = bp_s.diff(dim=1)                                             # (B, 2n - 1), >= 0
    zero = vf.new_zeros(B, 1)
    drop = torch.cat([zero, (active[:, :-1] * gaps).cumsum(1)], 1)     # f(0) - f(b_(k)), non-decreasing
    k = ((drop < excess).sum(1, keepdim=True) - 1).clamp_min(0)         # segment [b_(k), b_(k+1)]
    lam = bp_s.gather(1, k) + (excess - drop.gather(1, k)) / active.gather(1, k).clamp_min(1)
    nxt = torch.cat([bp_s[:, 1:], bp_s[:, -1:]], 1).gather(1, k)
    lam = torch.where(excess > 0, torch.minimum(lam, nxt).clamp_min(0), 0)
    return torch.copysign(torch.minimum((a - lam).clamp_min(0), cap), vf), lam


_BY_NAME = {"linf": LinfBall, "l2": L2Ball, "l1": L1Ball}


def threat_from_name(norm: str, eps: float) -> ThreatModel:
    """``LinfBall``/``L2Ball``/``L1Ball`` from a norm name (``linf``, ``l2``, ``l1``) and a radius."""
    key = str(norm).lower().replace("-", "").replace("_", "")
    key = {"inf": "linf", "2": "l2", "1": "l1"}.get(key, key)
    if key not in _BY_NAME:
        raise unknown("norm", norm, _BY_NAME)
    return _BY_NAME[key](eps)
