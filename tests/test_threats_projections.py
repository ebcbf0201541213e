"""The exact L2 / L1 ball-and-box projections (``threats.project_l2_box``: Newton from below with
the sort-based solver as exact fallback; ``project_l1_box``: sort-based) against a high-precision
reference and against the projection's own optimality condition, on random and edge cases, in
float64 and float32. ``l2`` is the default path (three Newton steps, the unsettled samples by the
sort), ``l2_sort`` the sort alone, ``l2_newton1`` one Newton step (more samples left to the sort)."""
from __future__ import annotations

from functools import partial

import pytest
import torch

from robustsuite import L1Ball, L2Ball
from robustsuite.errors import InputError
from robustsuite.attacks.geometry import geometry_for
from robustsuite.threats import (L1_NEWTON_STEPS, L2_NEWTON_STEPS, _l1_newton, _l2_newton, project_l1_box,
                                 project_l2_box)

PROJ = {"l2": project_l2_box, "l2_sort": partial(project_l2_box, newton_steps=0),
        "l2_newton1": partial(project_l2_box, newton_steps=1), "l1": project_l1_box,
        "l1_sort": partial(project_l1_box, newton_steps=0), "l1_newton1": partial(project_l1_box, newton_steps=1)}
P = {"l2": 2.0, "l2_sort": 2.0, "l2_newton1": 2.0, "l1": 1.0, "l1_sort": 1.0, "l1_newton1": 1.0}
L2_PATHS = ["l2", "l2_sort", "l2_newton1"]
L1_PATHS = ["l1", "l1_sort", "l1_newton1"]


def bisection_reference(norm: str, v: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, eps: float,
                        steps: int = 200) -> torch.Tensor:
    """The projection by bisection on the single multiplier, in float64, ``steps`` halvings
    (200: the bracket shrinks below float64 resolution); (B, n) tensors."""
    v, lo, hi = (t.double() for t in (v, lo, hi))
    d_full = torch.maximum(torch.minimum(v, hi), lo)
    B = v.shape[0]
    if P[norm] == 2.0:
        t_lo, t_hi = v.new_zeros(B, 1), v.new_ones(B, 1)
        for _ in range(steps):
            t = (t_lo + t_hi) / 2
            ok = torch.maximum(torch.minimum(v * t, hi), lo).norm(dim=1, keepdim=True) <= eps
            t_lo, t_hi = torch.where(ok, t, t_lo), torch.where(ok, t_hi, t)
        d = torch.maximum(torch.minimum(v * t_lo, hi), lo)
    else:
        a, cap = v.abs(), torch.where(v >= 0, hi, -lo)
        l_lo, l_hi = v.new_zeros(B, 1), a.max(1, keepdim=True).values
        for _ in range(steps):
            lam = (l_lo + l_hi) / 2
            ok = torch.minimum((a - lam).clamp_min(0), cap).sum(1, keepdim=True) <= eps
            l_lo, l_hi = torch.where(ok, l_lo, lam), torch.where(ok, lam, l_hi)
        d = torch.sign(v) * torch.minimum((a - l_hi).clamp_min(0), cap)
    inside = d_full.norm(p=P[norm], dim=1, keepdim=True) <= eps
    return torch.where(inside, d_full, d)


def cases(dtype=torch.float64):
    """(name, v, lo, hi, eps) with ``lo = -x``, ``hi = 1 - x`` for images ``x`` in [0, 1], (B, n)."""
    g = torch.Generator().manual_seed(0)

    def rand(*s):
        return torch.rand(*s, generator=g, dtype=torch.float64)

    def randn(*s):
        return torch.randn(*s, generator=g, dtype=torch.float64)

    out = []
    x = rand(6, 64)
    out += [(f"random_eps{e}", randn(6, 64), x, e) for e in (0.3, 1.0, 3.0)]
    xb = (rand(6, 64) > 0.5).double()                     # every coordinate at a bound: lo = 0 or hi = 0
    out += [(f"binary_image_eps{e}", randn(6, 64), xb, e) for e in (0.5, 2.0)]
    xm = torch.where(rand(6, 64) > 0.6, (rand(6, 64) > 0.5).double(), rand(6, 64))  # mixed
    out.append(("some_at_bounds", randn(6, 64) * 0.5, xm, 1.0))
    out.append(("eps_tiny", randn(6, 64), x, 1e-7))
    out.append(("eps_zero", randn(6, 64), x, 0.0))
    out.append(("eps_huge", randn(6, 64), x, 1e3))       # the box alone decides: clip(v)
    vz = randn(6, 64)
    vz[0] = 0                                             # v = 0
    vz[1] *= 1e-4                                         # well inside
    vz[2, ::2] = 0                                        # half the coordinates do not move
    out.append(("mixed_batch", vz, x, 0.5))
    vt = torch.full((4, 64), 0.3, dtype=torch.float64) * torch.tensor([1.0, -1.0, 2.0, -5.0]).view(4, 1)
    xt = torch.full((4, 64), 0.5, dtype=torch.float64)
    xt[:, ::3] = 0.9                                      # ties: two distinct breakpoints, many copies each
    out.append(("ties", vt, xt, 0.6))
    out.append(("one_element", randn(8, 1) * 2, rand(8, 1), 0.4))
    out.append(("one_element_at_bound", torch.tensor([[2.0], [-2.0], [2.0], [-2.0]], dtype=torch.float64),
                torch.tensor([[1.0], [0.0], [0.0], [1.0]], dtype=torch.float64), 0.5))
    out.append(("cifar_sized", randn(3, 3072) * 0.05, rand(3, 3072), 1.0))
    # most coordinates huge (saturated at once), a few tiny ones decide t: the free mass is a small
    # tail of a large sum, which a float32 difference of prefix sums would lose
    vh = torch.where(torch.arange(64) < 60, 1e3, 1e-2).double().repeat(4, 1) * randn(4, 64).sign()
    # 60 caps of 0.5 give 15; the 4 free coordinates (1e-2 each) reach eps^2 at t = 0.5
    out.append(("huge_saturated_tiny_free", vh, torch.full((4, 64), 0.5, dtype=torch.float64), 15.0001 ** 0.5))
    # every coordinate clipped and the clipped mass exactly eps^2: the last piece has slope 0 and
    # Newton's step is 0 / 0 there (the row is left to the sort)
    out.append(("plateau_at_eps", torch.tensor([[2.0, 2.0], [-2.0, 2.0]], dtype=torch.float64),
                torch.tensor([[0.5, 0.75], [0.5, 0.75]], dtype=torch.float64), 0.3125 ** 0.5))
    # a point inside the ball but outside the box: the answer is the clip (t = 1)
    out.append(("inside_ball_outside_box", torch.tensor([[0.6, -0.2, 0.0, 0.1]], dtype=torch.float64),
                torch.tensor([[0.5, 0.1, 0.0, 1.0]], dtype=torch.float64), 1.0))
    return [(name, v.to(dtype), (-x).to(dtype), (1 - x).to(dtype), eps) for name, v, x, eps in out]


CASES = cases()


def in_set(norm, d, lo, hi, eps, rtol):
    """Per row: ``||d||_p <= eps * (1 + rtol) + tiny`` and ``lo <= d <= hi``."""
    ok_norm = d.norm(p=P[norm], dim=1) <= eps * (1 + rtol) + 1e-30
    ok_box = ((d >= lo) & (d <= hi)).all(1)
    return ok_norm & ok_box


@pytest.mark.parametrize("norm", L2_PATHS + L1_PATHS)
@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_projection_matches_the_high_precision_reference(norm, case):
    """float64: in the set, as close to v as the 200-step float64 bisection (1e-9 relative) and the
    same point (1e-9)."""
    _, v, lo, hi, eps = case
    d = PROJ[norm](v, lo, hi, eps)
    assert d.dtype == v.dtype and d.shape == v.shape
    ref = bisection_reference(norm, v, lo, hi, eps)
    assert in_set(norm, d, lo, hi, eps, 1e-12).all()
    dist, dist_ref = (d - v).norm(dim=1), (ref - v).norm(dim=1)
    assert (dist <= dist_ref * (1 + 1e-9) + 1e-12).all()
    torch.testing.assert_close(d, ref, rtol=0, atol=1e-9)


@pytest.mark.parametrize("norm", L2_PATHS + L1_PATHS)
@pytest.mark.parametrize("case", cases(torch.float32), ids=[c[0] for c in CASES])
def test_projection_in_float32_is_feasible_and_optimal(norm, case):
    """float32: in the set (norm within 1e-6 relative; box exact), distance to v within 1e-5
    relative of the float64 reference (float32 rounding), same dtype back."""
    _, v, lo, hi, eps = case
    d = PROJ[norm](v, lo, hi, eps)
    assert d.dtype == torch.float32
    assert in_set(norm, d, lo, hi, eps, 1e-6).all()
    ref = bisection_reference(norm, v, lo, hi, eps)
    dist, dist_ref = (d.double() - v.double()).norm(dim=1), (ref - v.double()).norm(dim=1)
    assert (dist <= dist_ref * (1 + 1e-5) + 1e-6).all()
    torch.testing.assert_close(d.double(), ref, rtol=0, atol=1e-4)


@pytest.mark.parametrize("norm", L2_PATHS + L1_PATHS)
def test_projection_satisfies_the_variational_inequality(norm):
    """Independent of any multiplier: ``p`` is the projection of ``v`` onto the convex set C iff
    ``<v - p, q - p> <= 0`` for every ``q`` in C. Checked against many feasible ``q``: random points
    of C, its vertices-like points (box corners scaled into the ball), and ``p`` nudged and re-clipped."""
    g = torch.Generator().manual_seed(3)
    B, n, eps = 5, 16, 0.8
    x = torch.where(torch.rand(B, n, generator=g) > 0.7, 0.0, torch.rand(B, n, generator=g)).double()
    lo, hi = -x, 1 - x
    v = 1.5 * torch.randn(B, n, generator=g, dtype=torch.float64)
    p = PROJ[norm](v, lo, hi, eps)
    Q = 4000
    u = torch.rand(Q, B, n, generator=g, dtype=torch.float64)
    q = lo + u * (hi - lo)                                          # in the box
    q = torch.where(torch.rand(Q, B, n, generator=g) > 0.5, q, torch.where(u > 0.5, hi, lo))
    q = torch.cat([q, p + 0.05 * torch.randn(Q, B, n, generator=g, dtype=torch.float64)])
    q = torch.maximum(torch.minimum(q, hi), lo)
    nq = q.norm(p=P[norm], dim=2, keepdim=True)
    q = q * (eps / nq).clamp_max(1.0)                               # into the ball, staying in the box
    inner = ((v - p) * (q - p)).sum(2)
    assert inner.max() <= 1e-10


def test_l2_without_a_box_is_the_radial_scaling_and_l1_the_simplex_projection():
    """Infinite bounds (the noise generator's 'reference' mode uses them for L1): L2 gives
    ``v * min(1, eps / ||v||)``; L1 the classic sort-based projection onto the L1 ball."""
    g = torch.Generator().manual_seed(4)
    v = torch.randn(6, 50, generator=g, dtype=torch.float64)
    inf = torch.full_like(v, float("inf"))
    eps = 2.0
    want = v * (eps / v.norm(dim=1, keepdim=True)).clamp_max(1)
    torch.testing.assert_close(project_l2_box(v, -inf, inf, eps), want, rtol=0, atol=1e-12)
    # Duchi et al. 2008: theta from the sorted magnitudes
    mu = v.abs().sort(1, descending=True).values
    css = mu.cumsum(1)
    j = torch.arange(1, v.shape[1] + 1, dtype=v.dtype)
    rho = ((mu - (css - eps) / j) > 0).sum(1, keepdim=True)
    theta = (css.gather(1, rho - 1) - eps) / rho
    want1 = v.sign() * (v.abs() - theta).clamp_min(0)
    torch.testing.assert_close(project_l1_box(v, -inf, inf, eps), want1, rtol=0, atol=1e-12)
    # and Newton settles them itself: an infinite room is not a NaN in its sums
    assert _l2_newton(v, -inf, inf, eps, L2_NEWTON_STEPS)[-1].all()
    assert _l1_newton(v, -inf, inf, eps, 12)[-1].all()


@pytest.mark.parametrize("threat", [L2Ball(0.7), L1Ball(3.0)], ids=lambda t: t.norm)
def test_ball_projection_keeps_image_shape_and_points_already_inside(threat):
    """Through ``ThreatModel.project`` on (N, C, H, W) images: a point already in the set comes back
    exactly (the clip of a feasible point is itself), x itself too, and the box is [0, 1]."""
    g = torch.Generator().manual_seed(5)
    x = torch.rand(4, 3, 5, 5, generator=g)
    inside = threat.project(x, x + 0.01 * torch.randn(x.shape, generator=g))
    assert torch.equal(threat.project(x, inside), inside)
    assert torch.equal(threat.project(x, x), x)
    far = threat.project(x, x + 10 * torch.randn(x.shape, generator=g))
    assert far.shape == x.shape and threat.contains(x, far, atol=1e-6).all()


class _CountOps:
    """Records the aten ops a block runs (``TorchDispatchMode``)."""

    def __enter__(self):
        from torch.utils._python_dispatch import TorchDispatchMode

        ops = self.ops = []

        class Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                ops.append(str(func))
                return func(*args, **(kwargs or {}))

        self._mode = Mode()
        self._mode.__enter__()
        return self

    def __exit__(self, *exc):
        return self._mode.__exit__(*exc)

    def count(self, name: str) -> int:
        return sum(name in op for op in self.ops)


def pgd_like(shape=(64, 1, 8, 8), eps=0.5):
    """``(v, lo, hi)``: a point of the L2 sphere ∩ box around images ``x`` plus a step of eps / 4,
    what PGD and APGD hand the projection at every iteration."""
    g = torch.Generator().manual_seed(6)
    x = (torch.rand(shape, generator=g) * 1.4 - 0.2).clamp(0, 1)  # some pixels at 0 and 1, as in digits
    u = torch.randn(shape, generator=g)
    d = project_l2_box(eps * 2 * u / u.flatten(1).norm(dim=1).view(-1, 1, 1, 1), -x, 1 - x, eps)
    step = torch.randn(shape, generator=g)
    return d + eps / 4 * step / step.flatten(1).norm(dim=1).view(-1, 1, 1, 1), -x, 1 - x


@pytest.mark.parametrize("norm", ["l2_sort", "l1_sort"])
def test_sort_projections_are_one_pass_without_host_sync(norm):
    """The sort solvers are a fixed, short sequence of tensor ops (one sort), not an iteration, and
    never read a value back to the host (``aten::_local_scalar_dense`` is what ``.item()``/``bool()``
    run; ``nonzero`` syncs on a GPU), so on a GPU they do not stall the attack's pipeline. The
    60-step bisection they replaced ran ~500 ops and synced once per call."""
    v, lo, hi = pgd_like()
    with _CountOps() as c:
        PROJ[norm](v, lo, hi, 0.5)
    assert c.count("_local_scalar_dense") == 0 and c.count("aten.nonzero.") == 0
    assert c.count("sort") == 1
    assert len(c.ops) < 80


def test_l2_default_path_settles_a_pgd_iterate_by_newton_without_sorting():
    """On what PGD/APGD project (a point of the sphere plus a step) three Newton steps settle every
    sample, so the default path runs no sort, a bounded number of ops, and one host-side check."""
    v, lo, hi = pgd_like()
    *_, done = _l2_newton(v.flatten(1), lo.flatten(1), hi.flatten(1), 0.5, L2_NEWTON_STEPS)
    assert done.all()
    with _CountOps() as c:
        project_l2_box(v, lo, hi, 0.5)
    assert c.count("sort") == 0 and c.count("_local_scalar_dense") == 1 and c.count("aten.nonzero.") == 0
    assert len(c.ops) < 70


def test_l2_attack_geometry_projects_exactly_in_few_ops():
    """The attacks' L2 geometry (bounds and solver buffers built once per run) gives the same points
    as ``L2Ball.project`` and the float64 reference, for PGD iterates and points far outside, and its
    per-step projection is ~40 tensor ops (the 60-step bisection ran ~500, the first exact solver
    ~80): no sort, one host sync."""
    v, lo, hi = pgd_like()
    x = -lo
    threat = L2Ball(0.5)
    geo = geometry_for(threat, x)
    for x_adv in (x + v, x + 5 * v, x.clone()):
        want = threat.project(x, x_adv)
        got = geo.project(x_adv.clone())
        assert torch.equal(got, want)
        ref = bisection_reference("l2", (x_adv - x).flatten(1), lo.flatten(1), hi.flatten(1), 0.5)
        torch.testing.assert_close(got - x, ref.view_as(x).float(), rtol=0, atol=1e-5)
    x_adv = x + v
    with _CountOps() as c:
        geo.project(x_adv)
    assert c.count("sort") == 0 and c.count("_local_scalar_dense") == 1 and c.count("aten.nonzero.") == 0
    assert len(c.ops) <= 45
    start = geo.random_start(torch.Generator().manual_seed(0))
    assert threat.contains(x, start, atol=1e-6).all()


def test_l2_newton_flags_exactly_the_rows_it_settled_and_every_branch_occurs():
    """For 1 to 4 Newton steps on every reference case (float64): each row flagged settled is the
    exact projection (1e-9 of the reference; unsettled rows are only feasible, and go to the sort).
    Across the cases rows are first settled after 1, 2 and 3 steps and some are left after 3 (the
    sort's share), and every case goes through the default path exactly."""
    first = []
    for name, v, lo, hi, eps in CASES:
        if eps == 0:
            continue
        ref = bisection_reference("l2", v, lo, hi, eps)
        need = torch.full((v.shape[0],), 99)
        for steps in (1, 2, 3, 4):
            c, t, shrink, done = _l2_newton(v, lo, hi, eps, steps)
            d = c / shrink
            assert in_set("l2", d, lo, hi, eps, 1e-12).all(), name
            done = done.view(-1)
            torch.testing.assert_close(d[done], ref[done], rtol=0, atol=1e-9)
            need = torch.where(done & (need == 99), steps, need)
        first.append(need)
    seen = set(torch.cat(first).tolist())
    assert {1, 2, 3} <= seen and any(k > L2_NEWTON_STEPS for k in seen)


def test_l2_newton_leaves_far_points_to_the_sort_and_the_mix_is_exact():
    """Far outside the ball Newton may need more steps than it is given: those samples are flagged
    unsettled (never a wrong answer) and the sort finishes them, in the same batch as the settled
    ones (the case is one where both kinds occur)."""
    _, v, lo, hi, eps = next(c for c in CASES if c[0] == "random_eps3.0")
    *_, done = _l2_newton(v, lo, hi, eps, L2_NEWTON_STEPS)
    assert 0 < int(done.sum()) < len(done)
    torch.testing.assert_close(project_l2_box(v, lo, hi, eps), bisection_reference("l2", v, lo, hi, eps),
                               rtol=0, atol=1e-9)
    # rows settled at once (inside) before far ones that one step leaves short of the sphere: the
    # sort's answers go to the far rows, wherever they are in the batch
    v2 = torch.cat([v * 1e-3, v])
    lo2, hi2 = torch.cat([lo, lo]), torch.cat([hi, hi])
    for project in (project_l2_box, project_l1_box):
        norm = "l2" if project is project_l2_box else "l1"
        torch.testing.assert_close(project(v2, lo2, hi2, eps, newton_steps=1),
                                   bisection_reference(norm, v2, lo2, hi2, eps), rtol=0, atol=1e-9)


def pgd_l1_like(shape=(64, 1, 8, 8), eps=2.0):
    """``(v, lo, hi)``: a point of the L1 sphere ∩ box plus a sparse step of eps / 4 (SLIDE's top 1 %
    of a Gaussian's coordinates), what L1 PGD / APGD hand the projection."""
    g = torch.Generator().manual_seed(8)
    x = (torch.rand(shape, generator=g, dtype=torch.float64) * 1.4 - 0.2).clamp(0, 1)
    d = project_l1_box(torch.randn(shape, generator=g, dtype=torch.float64), -x, 1 - x, eps)
    e = torch.randn(shape, generator=g, dtype=torch.float64).flatten(1)
    k = max(1, e.shape[1] // 100)
    e = torch.sign(e) * (e.abs() >= e.abs().topk(k, 1).values[:, -1:])
    return d + eps / 4 * (e / e.abs().sum(1, keepdim=True)).view(shape), -x, 1 - x


@pytest.mark.parametrize("shape", [(64, 1, 8, 8), (8, 3, 32, 32)], ids=["digits", "cifar"])
def test_l1_newton_settles_a_pgd_iterate_without_sorting(shape):
    """L1 PGD/APGD iterates (digits- and CIFAR-shaped) are settled by the Newton steps: no sort,
    one host sync, and the float64 reference's answer."""
    v, lo, hi = pgd_l1_like(shape)
    *_, done = _l1_newton(v.flatten(1), lo.flatten(1), hi.flatten(1), 2.0, L1_NEWTON_STEPS)
    assert done.all()
    with _CountOps() as c:
        d = project_l1_box(v, lo, hi, 2.0)
    assert c.count("sort") == 0 and c.count("_local_scalar_dense") == 1 and c.count("aten.nonzero.") == 0
    assert len(c.ops) < 80
    ref = bisection_reference("l1", v.flatten(1), lo.flatten(1), hi.flatten(1), 2.0)
    torch.testing.assert_close(d.flatten(1), ref, rtol=0, atol=1e-9)


def test_l1_newton_flags_exactly_the_rows_it_settled_and_every_branch_occurs():
    """As for L2: for 0 to 4 steps, every row flagged settled is exact (1e-9 of the reference), and
    across the cases rows are settled at 0 (inside), 1, 2 and 3 steps and some are left to the sort."""
    first = []
    cases = CASES + [("pgd_l1", *(t.flatten(1) for t in pgd_l1_like()), 2.0)]
    for name, v, lo, hi, eps in cases:
        if eps == 0:
            continue
        ref = bisection_reference("l1", v, lo, hi, eps)
        need = torch.full((v.shape[0],), 99)
        for steps in (0, 1, 2, 3, 4):
            d, lam, done = _l1_newton(v, lo, hi, eps, steps)
            done = done.view(-1)
            torch.testing.assert_close(d[done], ref[done], rtol=0, atol=1e-9)
            assert (lam >= 0).all()
            need = torch.where(done & (need == 99), steps, need)
        first.append(need)
    seen = set(torch.cat(first).tolist())
    assert {0, 1, 2, 3} <= seen and any(k > L1_NEWTON_STEPS for k in seen)


@pytest.mark.parametrize("project", [project_l2_box, project_l1_box], ids=["l2", "l1"])
def test_newton_steps_must_be_a_count_and_empty_input_is_returned(project):
    v = torch.zeros(1, 4)
    with pytest.raises(InputError, match="newton_steps"):
        project(v, v - 1, v + 1, 0.5, newton_steps=-1)
    for shape in [(0, 5), (3, 0)]:   # (the sums and reshapes of the solvers need a non-empty row)
        v = torch.randn(shape)
        assert project(v, v - 1, v + 1, 0.5).shape == shape


@pytest.mark.parametrize("norm", L2_PATHS + L1_PATHS)
def test_gradient_flows_through_the_projection_at_fixed_multiplier(norm):
    """The noise generator fits its output with the exact projection and trains through it: the
    gradient is that of ``clip(t v)`` (L2) / the capped soft threshold (L1) with the multiplier held
    fixed; the value is the no-grad projection's. (For L2 the bisection gave the same; for L1 its
    multiplier carried a spurious gradient into the largest ``|v_i|``, the top of its bracket.)"""
    _, v, lo, hi, eps = next(c for c in CASES if c[0] == "random_eps1.0")
    with torch.no_grad():
        want = PROJ[norm](v, lo, hi, eps)
    vg = v.clone().requires_grad_(True)
    d = PROJ[norm](vg, lo, hi, eps)
    assert torch.equal(d.detach(), want)
    w = torch.randn(v.shape, generator=torch.Generator().manual_seed(7), dtype=v.dtype)
    (grad,) = torch.autograd.grad((d * w).sum(), vg)
    # coordinates strictly inside their range (the rounding guard may leave a clipped one an ulp inside)
    moving = ((d - lo).abs() > 1e-9) & ((d - hi).abs() > 1e-9) & (d.abs() > 1e-9)
    if P[norm] == 2.0:
        t_row = torch.where(moving, d / v, 0).max(1, keepdim=True).values   # d = t v there
        assert (t_row > 0).all()
        torch.testing.assert_close(grad, torch.where(moving, w * t_row, 0), rtol=1e-6, atol=1e-12)
    else:
        torch.testing.assert_close(grad, torch.where(moving, w, 0), rtol=1e-6, atol=1e-12)
