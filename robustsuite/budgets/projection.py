"""The constraint set of learned budgets, and the exact Euclidean projection onto it.

With log-budgets ``u_i = log eps_i`` (one per input dimension, ``d`` of them per sample), target
radius ``e`` (the uniform radius of equal volume) and range ratio ``rho >= 1``:

    U(e, rho) = { u : mean_i u_i = log e,  log(e / rho) <= u_i <= log(rho * e) }

so ``prod_i eps_i = e^d`` (the volume of the uniform L-inf ball of radius ``e``) and every budget
lies within a factor ``rho`` of ``e``. ``rho = 1`` is the uniform ball exactly.

The projection of scores ``s`` onto U is ``u_i = clip(s_i + lam, log(e / rho), log(rho e))`` with the
scalar ``lam`` that meets the mean (KKT of ``min ||u - s||^2`` over U). Writing ``L = log rho`` and
``u = log e + v``, ``v_i = clip(s_i + lam, -L, L)`` with ``sum_i v_i = 0``: the sum is a
non-decreasing piecewise-linear function of ``lam`` with breakpoints ``-L - s_i`` (coordinate i
enters the free set) and ``L - s_i`` (it leaves it at the top). Sorting the ``2d`` breakpoints and a
cumulative sum of the slopes give its value at every breakpoint, and ``lam`` by linear
interpolation on the segment that crosses zero: exact, batched, ``O(d log d)`` per sample, no loop.

Gradients: ``lam`` is recomputed in closed form on the free set ``F`` (unclipped coordinates) with
autograd, ``lam = -(sum_F s_i + L (|U| - |Lo|)) / |F|``, so ``du_i/ds_j = [i = j] - 1/|F|`` on ``F``
and 0 on clipped coordinates (the Jacobian of the projection where it is differentiable).
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from ..errors import InputError, InputTypeError

__all__ = ["project_log_budgets", "log_budget_range", "check_rho", "check_eps"]


def check_rho(rho, field: str = "rho") -> float:
    """``rho`` as a float >= 1, or a clear error."""
    if isinstance(rho, Tensor):
        if rho.numel() != 1:
            raise InputError(f"{field}: expected one number >= 1, got a tensor of shape {tuple(rho.shape)}")
        rho = float(rho)
    if isinstance(rho, bool) or not isinstance(rho, (int, float)):
        raise InputTypeError(f"{field}: expected a number >= 1, got {type(rho).__name__}")
    rho = float(rho)
    if not math.isfinite(rho) or rho < 1.0:
        raise InputError(f"{field}: the range ratio must be a finite number >= 1 (1 = uniform budgets), got {rho}")
    return rho


def check_eps(eps, batch: int, *, device=None, dtype=torch.float32, field: str = "eps",
              check_values: bool = True) -> Tensor:
    """``eps`` (a number, or a (B,) tensor) as a (B,) tensor of finite radii > 0, or a clear error."""
    if isinstance(eps, Tensor):
        t = eps.to(device=device, dtype=dtype)
        if t.dim() == 0 or t.numel() == 1:
            t = t.reshape(1).expand(batch)
        elif tuple(t.shape) != (batch,):
            raise InputError(f"{field}: expected a number or a ({batch},) tensor (one radius per sample), "
                             f"got shape {tuple(eps.shape)}")
    elif isinstance(eps, bool) or not isinstance(eps, (int, float)):
        raise InputTypeError(f"{field}: expected a number or a (B,) tensor, got {type(eps).__name__}")
    else:
        if not math.isfinite(float(eps)) or float(eps) <= 0:
            raise InputError(f"{field}: the target radius must be finite and > 0, got {eps}")
        return torch.full((batch,), float(eps), device=device, dtype=dtype)
    if not check_values:
        return t
    bad = ~torch.isfinite(t.detach()) | (t.detach() <= 0)
    if bool(bad.any()):
        raise InputError(f"{field}: target radii must be finite and > 0, got {t.detach()[bad][:4].tolist()}")
    return t


def log_budget_range(eps, rho: float) -> tuple[Tensor | float, Tensor | float]:
    """``(log(eps / rho), log(rho * eps))``: the range of every log-budget."""
    L = math.log(check_rho(rho))
    if isinstance(eps, Tensor):
        return torch.log(eps) - L, torch.log(eps) + L
    return math.log(eps) - L, math.log(eps) + L


def _solve_shift(s: Tensor, L: float) -> Tensor:
    """The scalar ``lam`` per row of ``s`` (B, d) with ``sum_i clip(s_i + lam, -L, L) = 0``; exact.

    Works on a detached float64 copy. Breakpoints ``t`` sorted; ``g(t_k)`` by a cumulative sum of
    slope * segment length; the smallest and the largest root by linear interpolation on the
    segments where ``g`` reaches 0, and ``lam`` their midpoint (the roots form an interval when
    ``g`` is flat at 0: every point of it gives the same projection, and the midpoint keeps every
    coordinate clear of the clip limits).
    """
    s = s.detach().double()
    B, d = s.shape
    t = torch.cat([-L - s, L - s], dim=1)                                  # (B, 2d)
    inc = torch.cat([torch.ones_like(s), -torch.ones_like(s)], dim=1)      # slope change at each
    t, order = torch.sort(t, dim=1, stable=True)
    slope = torch.cumsum(torch.gather(inc, 1, order), dim=1)               # slope right of t_k
    g = torch.cat([torch.full((B, 1), -L * d, dtype=s.dtype, device=s.device),
                   -L * d + torch.cumsum(slope[:, :-1] * torch.diff(t, dim=1), dim=1)], dim=1)
    # g(t_0) = -L d < 0 and g(t_last) = +L d > 0 (L > 0); g is non-decreasing.
    hi_k = ((g <= 0).sum(dim=1, keepdim=True) - 1).clamp(0, 2 * d - 2)     # last breakpoint with g <= 0
    lo_k = (g < 0).sum(dim=1, keepdim=True).clamp(1, 2 * d - 1)            # first breakpoint with g >= 0
    t_hi, g_hi, c_hi = t.gather(1, hi_k), g.gather(1, hi_k), slope.gather(1, hi_k)
    lam_hi = torch.where(c_hi > 0, t_hi - g_hi / c_hi.clamp_min(1), t_hi)
    t_lo, g_lo, c_lo = t.gather(1, lo_k), g.gather(1, lo_k), slope.gather(1, lo_k - 1)
    lam_lo = torch.where(c_lo > 0, t_lo - g_lo / c_lo.clamp_min(1), t_lo)
    return (torch.minimum(lam_lo, lam_hi) + torch.maximum(lam_lo, lam_hi)) / 2  # (B, 1) float64


def project_log_budgets(scores: Tensor, eps, rho: float, *, check: bool = True) -> Tensor:
    """Exact Euclidean projection of scores onto the log-budget set, per sample.

    Args:
        scores: (B, ...) unconstrained scores, one per input dimension (any shape after the batch
            axis; all of it is one sample's ``d`` dimensions). Finite floats.
        eps: the target radius ``e`` > 0: a number, or a (B,) tensor (one per sample). The volume
            ``prod_i exp(u_i)`` equals ``e^d``.
        rho: the range ratio >= 1: every ``u_i`` lies in ``[log(e / rho), log(rho e)]``. ``rho = 1``
            returns ``log e`` everywhere.

    Returns:
        Log-budgets ``u`` of the shape and dtype of ``scores``, with ``mean u = log e`` per sample and
        every entry in range. Differentiable in ``scores`` (Jacobian ``I - 11^T/|F|`` on the free
        set ``F``, 0 on clipped coordinates) and in ``eps`` when it is a tensor that requires grad.

        check: validate the values of ``scores`` and ``eps`` (finite, > 0); each check is a host
            sync, so a training loop that checks its inputs elsewhere may turn them off.

    Raises:
        InputError / InputTypeError for NaN/inf scores, ``rho < 1``, ``eps <= 0`` or bad shapes.
    """
    if not isinstance(scores, Tensor):
        raise InputTypeError(f"scores: expected a torch.Tensor, got {type(scores).__name__}")
    if not scores.is_floating_point():
        raise InputError(f"scores: expected a floating tensor, got dtype {scores.dtype}")
    if scores.dim() < 2 or scores.shape[0] == 0 or scores[0].numel() == 0:
        raise InputError(f"scores: expected a non-empty batch (B, ...) with at least 2 dimensions, "
                         f"got shape {tuple(scores.shape)}")
    if check and not bool(torch.isfinite(scores.detach()).all()):
        raise InputError("scores: contains NaN or inf (the budget generator diverged, or its input is bad)")
    rho = check_rho(rho)
    B = scores.shape[0]
    e = check_eps(eps, B, device=scores.device, dtype=scores.dtype, check_values=check)
    log_e = torch.log(e).view(B, *([1] * (scores.dim() - 1)))
    L = math.log(rho)
    if L == 0.0:
        return log_e.expand_as(scores) + 0.0 * scores  # keeps the graph; zero gradient to the scores
    s = scores.reshape(B, -1).double()  # float64 inside: no cancellation for large scores
    lam = _solve_shift(s, L)
    with torch.no_grad():
        z = s + lam
        lower, upper = z <= -L, z >= L
        free = ~(lower | upper)
        n_free = free.sum(dim=1, keepdim=True)
    # Closed form of lam on the free set, with autograd (gives the free-set Jacobian).
    fixed = L * (upper.sum(dim=1, keepdim=True) - lower.sum(dim=1, keepdim=True)).double()
    lam_free = -((s * free).sum(dim=1, keepdim=True) + fixed) / n_free.clamp_min(1).double()
    lam_t = torch.where(n_free > 0, lam_free, lam)
    v = torch.where(free, s + lam_t, torch.where(upper, s.new_tensor(L), s.new_tensor(-L)))
    return log_e + v.to(scores.dtype).view_as(scores)
