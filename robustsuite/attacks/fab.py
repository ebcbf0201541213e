"""FAB: the Fast Adaptive Boundary attack (untargeted and FAB-T; L-inf, L2 and L1), and the exact
batched projection onto a hyperplane intersected with the image box that it is built on.

Croce & Hein, "Minimally distorted Adversarial Examples with a Fast Adaptive Boundary Attack",
ICML 2020 [https://arxiv.org/abs/1907.02044]; FAB-T as configured by AutoAttack (Croce & Hein,
ICML 2020 [https://arxiv.org/abs/2003.01690]).
"""
from __future__ import annotations

import torch
from torch import Tensor

from ..errors import InputError
from ..threats import ThreatModel
from .base import Attack, Perturbation, check_float, check_int, check_optional_int
from .gradients import check_label_range, loss_and_grad
from .registry import register_attack

__all__ = ["FAB", "project_hyperplane_box"]

_NORMS = {"linf": float("inf"), "l2": 2.0, "l1": 1.0}
_DUAL = {"linf": 1.0, "l2": 2.0, "l1": float("inf")}


# --- the projection onto {w.z = b} ∩ [0, 1]^d ----------------------------------------------------

def project_hyperplane_box(t: Tensor, w: Tensor, b: Tensor, norm: str) -> Tensor:
    r"""The smallest move onto a hyperplane inside the unit box, batched and exact.

    For each row solves

    .. math:: \delta^\star = \arg\min_\delta \|\delta\|_p \quad\text{s.t.}\quad
              w^\top (t + \delta) = b,\; 0 \le t + \delta \le 1

    for ``p`` = inf, 2 or 1. If the hyperplane misses the box (infeasible), the move goes to the box
    vertex closest to it instead: every coordinate with ``w_i != 0`` to the bound that moves
    ``w.z`` towards ``b`` (so ``w.(t + delta) - b`` has the sign of ``w.t - b`` and the smallest
    magnitude the box allows); coordinates with ``w_i = 0`` never move.

    Method: with ``c = |w.t - b|`` and ``a_i = |w_i|``, an optimal move goes against
    ``sign(w_i) sign(w.t - b)`` by ``m_i in [0, cap_i]`` (``cap_i`` = room to the box in that
    direction) with ``sum_i a_i m_i = c``:

    * L2: ``m_i = min(lam a_i, cap_i)`` (KKT); the total ``sum a_i m_i`` is piecewise linear and
      increasing in ``lam`` with breakpoints ``cap_i / a_i``: sorting them, the segment holding
      ``c`` is found by a cumulative sum and ``lam`` solved on it in closed form;
    * L-inf: ``m_i = min(mu, cap_i)`` for ``a_i > 0``, the same water-filling with breakpoints
      ``cap_i`` (the minimal max-move ``mu`` is unique, the minimiser is not: this one moves
      every coordinate by ``mu`` or to the box, as the reference's does);
    * L1: the fractional knapsack: coordinates by decreasing ``a_i`` are moved to their cap until
      the remainder fits in one coordinate, which takes the rest.

    One sort per row, no loop over rows or coordinates, no host sync: exact up to floating-point
    rounding (the equality holds to about ``d * eps_machine * sum a_i cap_i``).

    Args:
        t: ``(N, d)`` points in [0, 1] (slightly outside is treated as on the bound).
        w: ``(N, d)`` hyperplane normals (any scale, zeros allowed).
        b: ``(N,)`` offsets.
        norm: ``"linf"``, ``"l2"`` or ``"l1"``.

    Returns:
        ``delta`` ``(N, d)`` with ``t + delta`` in [0, 1] (up to rounding) and on the hyperplane
        whenever it meets the box.
    """
    if norm not in _NORMS:
        raise InputError(f"norm: unknown value {norm!r}; choose one of: l1, l2, linf")
    if t.dim() != 2 or w.shape != t.shape or b.shape != t.shape[:1]:
        raise InputError(f"project_hyperplane_box: expected t, w of shape (N, d) and b of shape (N,), "
                         f"got {tuple(t.shape)}, {tuple(w.shape)}, {tuple(b.shape)}")
    gap = (w * t).sum(1) - b
    side = torch.where(gap >= 0, 1.0, -1.0).to(t.dtype).unsqueeze(1)
    ws = w * side                                    # now w.(t + delta) must decrease by c >= 0
    c = gap.abs()
    a = ws.abs()
    down = ws > 0                                    # these coordinates move towards 0, others to 1
    cap = torch.where(down, t, 1 - t).clamp_min(0)
    direction = torch.where(down, -1.0, 1.0).to(t.dtype) * (a > 0)
    reach = (a * cap).sum(1)                          # the largest decrease the box allows
    if norm == "l1":
        m = _knapsack(a, cap, c)
    else:
        s = a if norm == "l2" else (a > 0).to(t.dtype)
        m = _water_fill(a, s, cap, c)
    # infeasible: the closest vertex (what the solves give in exact arithmetic; explicit because in
    # float32 the water-filling's lam can overflow to inf there, and inf * 0 is NaN)
    m = torch.where((reach < c).unsqueeze(1), cap, m)
    return direction * m


def _water_fill(a: Tensor, s: Tensor, cap: Tensor, c: Tensor) -> Tensor:
    """``m_i = min(lam s_i, cap_i)`` with ``lam >= 0`` solving ``sum_i a_i m_i = c`` (rows of
    ``(N, d)``; ``c`` ``(N,)``; meaningful where ``sum a_i cap_i >= c``)."""
    inf = torch.tensor(float("inf"), dtype=a.dtype, device=a.device)
    bp = torch.where(s > 0, cap / torch.where(s > 0, s, 1), inf)       # where coordinate i saturates
    bp_sorted, order = bp.sort(dim=1)
    a_s = a * s
    filled = torch.cumsum((a * cap).gather(1, order), 1)                # saturated part after each bp
    slope_total = a_s.sum(1, keepdim=True)
    slope = slope_total - torch.cumsum(a_s.gather(1, order), 1)         # slope beyond each bp
    at_bp = torch.where(torch.isfinite(bp_sorted), filled + bp_sorted * slope, inf)  # g(bp_k)
    k = (at_bp < c.unsqueeze(1)).sum(1, keepdim=True)                   # bps strictly below the root
    prev = (k - 1).clamp_min(0)
    filled_prev = torch.where(k > 0, filled.gather(1, prev), 0)
    slope_prev = torch.where(k > 0, slope.gather(1, prev), slope_total)
    lam = ((c.unsqueeze(1) - filled_prev) / slope_prev.clamp_min(torch.finfo(a.dtype).tiny)).clamp_min(0)
    return torch.minimum(lam * s, cap)


def _knapsack(a: Tensor, cap: Tensor, c: Tensor) -> Tensor:
    """The minimal ``sum m_i`` with ``sum_i a_i m_i = c``, ``0 <= m_i <= cap_i``: fill by decreasing
    ``a_i`` (rows of ``(N, d)``; meaningful where ``sum a_i cap_i >= c``)."""
    order = a.argsort(dim=1, descending=True)
    a_o, cap_o = a.gather(1, order), cap.gather(1, order)
    used = torch.cumsum(a_o * cap_o, 1)
    k = (used < c.unsqueeze(1)).sum(1, keepdim=True)                    # coordinates filled to cap
    col = torch.arange(a.shape[1], device=a.device).unsqueeze(0)
    kk = k.clamp_max(a.shape[1] - 1)
    rest = c.unsqueeze(1) - torch.where(k > 0, used.gather(1, (k - 1).clamp_min(0)), 0)
    a_k = a_o.gather(1, kk)
    part = torch.where(a_k > 0, rest / torch.where(a_k > 0, a_k, 1), 0).clamp_min(0)
    m_o = torch.where(col < k, cap_o, torch.where(col == k, torch.minimum(part, cap_o), 0))
    return torch.zeros_like(m_o).scatter_(1, order, m_o)


# --- the attack ------------------------------------------------------------------------------------

@register_attack("fab")
class FAB(Attack):
    r"""FAB in the paper 'Minimally distorted Adversarial Examples with a Fast Adaptive Boundary
    Attack' [https://arxiv.org/abs/1907.02044]; FAB-T as in AutoAttack
    [https://arxiv.org/abs/2003.01690].

    Distance Measure : Linf, L2, L1.

    A minimal-distortion attack (the paper's Alg. 1). From ``x^(0)`` (``x``, or for restarts a
    random point at distance ``eps / 2``) each step linearises the decision boundary at the
    current point ``x^(k)``: the hyperplane ``pi = {z : f(x^(k)) + grad f(x^(k)).(z - x^(k)) = 0}``
    of ``f = z_j - z_y`` for the class ``j`` whose linearised boundary is closest in the attack's
    norm (untargeted; ``|f_j| / ||grad f_j||_q``, ``q`` the dual norm) or the target class (FAB-T).
    Both ``x^(k)`` and the original ``x`` are projected onto ``pi`` intersected with [0, 1]
    exactly (:func:`project_hyperplane_box`), giving moves ``d_k`` and ``d_orig``, and

    .. math:: x^{(k+1)} = \operatorname{clip}_{[0,1]}\big((1 - \alpha)(x^{(k)} + \eta d_k)
              + \alpha (x + \eta d_{orig})\big),\quad
              \alpha = \min\Big(\frac{\|d_k\|}{\|d_k\| + \|d_{orig}\|}, \alpha_{max}\Big).

    When ``x^(k+1)`` is misclassified it is recorded if it is the closest to ``x`` so far and the
    iterate goes back towards ``x``: ``x^(k+1) <- x + beta (x^(k+1) - x)``. Each step costs one
    forward with input gradients (``K - 1`` backward passes untargeted, one for FAB-T), whose
    logits also decide success (see "Differences"), and one projection of ``2 R`` rows; memory:
    the untargeted Jacobian holds ``R (K - 1)`` images for ``R`` rows.

    FAB-T (``targeted=True``; ``y`` are still the *true* labels and success is misclassification,
    like APGD-T): one targeted run per target class ``t``, the classes of the 2nd to
    ``(n_target_classes + 1)``-th largest clean logits (true class excluded), with
    ``f = z_t - z_y`` (one input gradient per step instead of ``K - 1``). The runs for a group of
    targets are stacked into one batch (each sample keeps its closest success over the group), and
    the restarts follow each group. Samples already misclassified at ``x``, or with a success
    within ``eps`` (the threat's radius) after a group/restart, are not attacked again, as in the
    reference, so ``extras['min_distance']`` is minimal over the runs a sample took part in. By
    default the first target runs alone (it breaks most of what FAB-T breaks), then all the
    others stacked: on the digits CNN this costs 0.4-0.7x the reference's CPU time where stacking
    all nine costs 1.2-3x (every sample runs every target) and one at a time 0.65-0.75x.

    The returned point is the closest misclassified point found (``x`` where none was); the base
    class projects it onto the threat set, so a success found beyond ``eps`` counts only if its
    projection is still misclassified (the reference counts it never).

    Defaults (AutoAttack's ``standard`` FAB-T for L-inf, L2 and L1, and the paper's step
    settings): ``steps=100``, ``restarts=1``, ``n_target_classes=9``, ``alpha_max=0.1``,
    ``eta=1.05``, ``beta=0.9``. AutoAttack's untargeted FAB (``plus`` version) uses
    ``restarts=5``.

    Differences from the reference (``pyautoattack`` 0.2.0, ``fab_base.py``), all marked in the code:
    the projection is our own exact water-filling/knapsack (same problem); random restarts draw
    the L1 direction from a Laplace distribution (uniform on the L1 sphere; the reference
    normalises a Gaussian); FAB-T targets are stacked in groups (the reference runs them one by
    one; ``target_batch=1`` is its order); the untargeted Jacobian takes ``K - 1`` backward passes
    of logit differences instead of ``K`` of logits; success is decided from the logits of the
    forward that linearises the boundary at the new point (the reference spends a second forward
    on it and, after a success, linearises at the point after the backward step): the iterates
    are the reference's up to a row's first success and on linear models throughout; a success
    beyond ``eps`` is returned (projected by the base class) rather than dropped; a restart's
    random point that is already misclassified is recorded.

    ``queries`` counts per sample the clean forward plus ``steps + 1`` per run taken part in (the
    start and every step's point, each evaluated once). ``extras``:
    ``min_distance`` (B,) the closest success found in the attack's norm (``inf`` where none;
    may exceed ``eps``), and with ``targeted`` ``targets`` (B, T).

    Arguments:
        model (nn.Module): model returning logits; its mode is left as it is.
        threat (LinfBall | L2Ball | L1Ball): the norm, and ``eps``: restart radius ``eps / 2`` and
            the success radius beyond which a sample is attacked again.
        targeted (bool): FAB-T on the true labels (see above). (Default: False)
        n_target_classes (int): FAB-T's target classes per sample, >= 1 (at most K - 1 are used).
            (Default: 9)
        steps (int): iterations per run, >= 1. (Default: 100)
        restarts (int): runs per target group, the first from ``x``, the others from random
            points at distance ``eps / 2``, >= 1. (Default: 1)
        alpha_max (float): largest weight of the step from ``x``, in [0, 1]. (Default: 0.1)
        eta (float): overshoot of the projections, >= 1. (Default: 1.05)
        beta (float): backward step after a success, in (0, 1]. (Default: 0.9)
        target_batch (int | None): FAB-T targets stacked per batch (rows = B * target_batch).
            (Default: None = the first target alone, then the others together)
        seed (int | None): seed of the random restarts. (Default: 0)

    Shape:
        - x: :math:`(N, C, H, W)` in [0, 1].
        - y: :math:`(N)` true class indices.
        - output: :math:`(N, C, H, W)`, inside the threat set and [0, 1].

    Examples::
        >>> fab_t = FAB(model, LinfBall(8/255), targeted=True)
        >>> res = fab_t.run(x, y)   # res.success: misclassified within eps
        >>> res.extras["min_distance"]
    """

    threats = ("linf", "l2", "l1")
    # not a GradientAttack (no loss, no EOT), but it follows the model's gradients: the masking check
    # must not count it among the gradient-free attacks
    uses_gradient = True

    def __init__(self, model, threat: ThreatModel, *, targeted: bool = False, n_target_classes: int = 9,
                 steps: int = 100, restarts: int = 1, alpha_max: float = 0.1, eta: float = 1.05,
                 beta: float = 0.9, target_batch: int | None = None, seed: int | None = 0):
        super().__init__(model, threat, targeted=targeted, seed=seed)
        self.n_target_classes = check_int("n_target_classes", n_target_classes, minimum=1)
        self.steps = check_int("steps", steps, minimum=1)
        self.restarts = check_int("restarts", restarts, minimum=1)
        self.alpha_max = check_float("alpha_max", alpha_max, minimum=0.0, maximum=1.0)
        self.eta = check_float("eta", eta, minimum=1.0)
        self.beta = check_float("beta", beta, minimum=0.0, maximum=1.0, strict=True)
        self.target_batch = check_optional_int("target_batch", target_batch, minimum=1)

    @property
    def labels_are_targets(self) -> bool:
        # FAB-T picks its own targets from the true labels; success is always misclassification
        return False

    # --- the outer loop: targets, restarts, samples still to break ------------------------------
    def _perturb(self, x: Tensor, y: Tensor, generator: torch.Generator | None) -> Perturbation:
        B = x.shape[0]
        flat = x.flatten(1)
        with torch.no_grad():
            logits = self.model(x)
        check_label_range(logits, y)
        K = logits.shape[1]
        if K < 2:
            raise InputError(f"FAB: the model has {K} class; a decision boundary needs at least 2")
        eps = float(self.threat.eps)
        # clean-misclassified samples are already adversarial at distance 0 (not attacked)
        best_dist = torch.where(logits.argmax(1) == y, float("inf"), 0.0).to(x.dtype)
        best = flat.clone()
        queries = torch.ones(B, dtype=torch.long, device=x.device)
        if self.targeted:
            T = min(self.n_target_classes, K - 1)
            targets = logits.scatter(1, y.unsqueeze(1), float("-inf")).topk(T, dim=1).indices  # (B, T)
            # differs from the reference (one target at a time): groups of targets stacked
            if self.target_batch is None:
                groups = [(0, 1), (1, T)] if T > 1 else [(0, 1)]
            else:
                groups = [(t0, min(T, t0 + self.target_batch)) for t0 in range(0, T, self.target_batch)]
        else:
            targets, groups = None, [(0, 1)]
        runs = 0
        for t0, t1 in groups:
            for r in range(self.restarts):
                active = (best_dist > eps).nonzero().squeeze(1)       # one host sync per run
                if active.numel() == 0:
                    break
                c = t1 - t0
                rows = active.repeat(c)                               # target-major rows
                tgt = targets[active, t0:t1].t().reshape(-1) if targets is not None else None
                x_r, d_r = self._run(flat[rows], y[rows], tgt, x.shape[1:], r > 0, generator)
                d_r, x_r = d_r.view(c, -1), x_r.view(c, active.numel(), -1)
                d_min, pick = d_r.min(0)                              # closest success over the group
                x_pick = x_r[pick, torch.arange(active.numel(), device=x.device)]
                better = d_min < best_dist[active]
                best[active] = torch.where(better.unsqueeze(1), x_pick, best[active])
                best_dist[active] = torch.minimum(d_min, best_dist[active])
                queries[active] += (self.steps + 1) * c
                runs += c
        # differs from the reference (which returns x where the closest success is beyond eps): the
        # base class projects such a point onto the threat set and decides success on it
        extras = {"min_distance": best_dist}
        if targets is not None:
            extras["targets"] = targets
        return Perturbation(best.view_as(x), queries, runs * self.steps, extras)

    # --- one run of Alg. 1 on a batch of rows -------------------------------------------------------
    def _run(self, x0: Tensor, y: Tensor, target: Tensor | None, shape: torch.Size, random_start: bool,
             generator: torch.Generator | None) -> tuple[Tensor, Tensor]:
        """FAB from ``x0`` (R, d) (rows of images of ``shape``); the closest success per row (R, d)
        and its distance (R,) (``x0`` and ``inf`` where none). ``steps + 1`` model evaluations: the
        start and each step's point, each a forward with input gradient (the last without)."""
        norm, p = self.threat.norm, _NORMS[self.threat.norm]
        R = x0.shape[0]
        with torch.no_grad():
            x1 = self._random_start(x0, generator) if random_start else x0.clone()
            best, best_dist = x0.clone(), x0.new_full((R,), float("inf"))
            f, jac, adv = self._boundary(x1, y, target, shape)
            rows = torch.arange(R, device=x0.device)
            for k in range(self.steps):
                # (at k = 0, a restart's random point that is already misclassified: the reference
                # does not check it)
                best, best_dist = _keep_closest(x1, x0, adv, best, best_dist, p)
                # The reference evaluates each new point twice: a forward deciding success, then at
                # the next step a forward + backward at the point after the backward step. We
                # linearise once, at the new point, and decide success from the same logits: up to a
                # row's first success the iterates are the reference's exactly (the two points
                # coincide); after a success the boundary is linearised 1 - beta further out than in
                # the reference (the same steps on a linear model). The class to go for is chosen
                # with the linearisation's values at the point actually projected.
                shrunk = torch.where(adv.unsqueeze(1), x0 + self.beta * (x1 - x0), x1)
                f = f + torch.bmm(jac, (shrunk - x1).unsqueeze(2)).squeeze(2)   # (R, J) at `shrunk`
                x1 = shrunk
                if f.shape[1] > 1:     # untargeted: the closest linearised boundary, in the dual norm
                    reach = f.abs() / (torch.linalg.vector_norm(jac, ord=_DUAL[norm], dim=2) + 1e-12)
                    j = reach.argmin(1)
                    f_j, g = f[rows, j], jac[rows, j]
                else:
                    f_j, g = f[:, 0], jac[:, 0]
                b = (g * x1).sum(1) - f_j                              # pi = {z : g.z = b}
                d = project_hyperplane_box(torch.cat([x1, x0]), torch.cat([g, g]), torch.cat([b, b]), norm)
                size = torch.linalg.vector_norm(d, ord=p, dim=1).clamp_min(1e-8)
                d1, d2 = d[:R], d[R:]
                alpha = (size[:R] / (size[:R] + size[R:])).clamp(0, self.alpha_max).unsqueeze(1)
                x1 = ((x1 + self.eta * d1) * (1 - alpha) + (x0 + self.eta * d2) * alpha).clamp_(0, 1)
                f, jac, adv = self._boundary(x1, y, target, shape, gradient=k < self.steps - 1)
            best, best_dist = _keep_closest(x1, x0, adv, best, best_dist, p)
        return best, best_dist

    def _boundary(self, x1: Tensor, y: Tensor, target: Tensor | None, shape: torch.Size, *,
                  gradient: bool = True) -> tuple[Tensor, Tensor, Tensor]:
        """At ``x1`` (R, d): ``f_j = z_j - z_y`` (R, J), their input gradients (R, J, d) and whether
        ``x1`` is misclassified (R,); ``j`` the target (J = 1) or every class but ``y``
        (J = K - 1). Without ``gradient`` only the last (one forward, no graph)."""
        R = x1.shape[0]
        xs = x1.view(R, *shape)
        if not gradient:
            with torch.no_grad():
                adv = self.model(xs).argmax(1) != y
            return x1.new_zeros(R, 1), x1.new_zeros(R, 1, x1.shape[1]), adv
        if target is not None:
            pair = torch.stack([y, target], 1)
            f, g, logits = loss_and_grad(self.model, xs, pair, _logit_gap)
            return f.unsqueeze(1), g.flatten(1).unsqueeze(1), logits.argmax(1) != y
        with torch.enable_grad():
            leaf = xs.detach().requires_grad_(True)
            logits = self.model(leaf)
            K = logits.shape[1]
            # class j of row r on pass i: the i-th class other than y_r (K - 1 passes, not K)
            others = torch.arange(K - 1, device=y.device).unsqueeze(0)
            others = others + (others >= y.unsqueeze(1)).long()          # (R, K - 1)
            rows = torch.arange(R, device=y.device)
            grads = []
            for i in range(K - 1):
                sel = torch.zeros_like(logits)
                sel[rows, others[:, i]] = 1.0
                sel[rows, y] = -1.0
                (gi,) = torch.autograd.grad(logits, leaf, grad_outputs=sel, retain_graph=i < K - 2)
                grads.append(gi.flatten(1))
        z = logits.detach()
        f = z.gather(1, others) - z.gather(1, y.unsqueeze(1))
        return f, torch.stack(grads, 1), z.argmax(1) != y

    def _random_start(self, x0: Tensor, generator: torch.Generator | None) -> Tensor:
        """A point at distance ``eps / 2`` from ``x0`` in the attack's norm, clipped to [0, 1] (the
        reference's restart radius)."""
        norm = self.threat.norm
        if norm == "linf":
            u = 2 * torch.rand(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype) - 1
        elif norm == "l2":
            u = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
        else:  # differs from the reference (a normalised Gaussian): Laplace, uniform on the L1 sphere
            e = torch.empty_like(x0).exponential_(generator=generator)
            s = torch.randint(0, 2, x0.shape, generator=generator, device=x0.device).to(x0.dtype) * 2 - 1
            u = e * s
        u = u / torch.linalg.vector_norm(u, ord=_NORMS[norm], dim=1, keepdim=True).clamp_min(1e-12)
        return (x0 + 0.5 * float(self.threat.eps) * u).clamp(0, 1)


def _keep_closest(x1: Tensor, x0: Tensor, adv: Tensor, best: Tensor, best_dist: Tensor, p: float
                  ) -> tuple[Tensor, Tensor]:
    """``best`` (R, d) / ``best_dist`` (R,) updated with ``x1`` where it is misclassified and closer."""
    dist = torch.linalg.vector_norm(x1 - x0, ord=p, dim=1)
    closer = adv & (dist < best_dist)
    return torch.where(closer.unsqueeze(1), x1, best), torch.where(closer, dist, best_dist)


def _logit_gap(logits: Tensor, pair: Tensor) -> Tensor:
    """``z_target - z_y`` per row, the labels packed as ``(R, 2)`` = (true label, target)."""
    return logits.gather(1, pair[:, 1:2]).squeeze(1) - logits.gather(1, pair[:, 0:1]).squeeze(1)
