"""Learned budgets: the projection onto the volume/range set, the generator, the budget metrics."""
from __future__ import annotations

import math

import pytest
import torch

from robustsuite import Box, InputError, InputTypeError
from robustsuite.budgets import (BudgetGenerator, BudgetModel, budget_ratio, coordinate_channels,
                                 project_log_budgets)
from robustsuite.models import build


def _in_range(u, eps, rho, tol=1e-6):
    log_e = torch.log(torch.as_tensor(eps, dtype=u.dtype)).reshape(-1, *([1] * (u.dim() - 1)))
    L = math.log(rho)
    return bool(((u >= log_e - L - tol) & (u <= log_e + L + tol)).all())


def _brute_force(s: torch.Tensor, eps: float, rho: float, iters: int = 200) -> torch.Tensor:
    """Bisection on the multiplier in float64, 200 halvings: a slow reference solver."""
    L = math.log(rho)
    s = s.double().flatten(1)
    lo = torch.full((s.shape[0], 1), -1e3, dtype=torch.float64)
    hi = -lo
    for _ in range(iters):
        mid = (lo + hi) / 2
        g = (s + mid).clamp(-L, L).sum(1, keepdim=True)
        lo, hi = torch.where(g < 0, mid, lo), torch.where(g < 0, hi, mid)
    return math.log(eps) + (s + (lo + hi) / 2).clamp(-L, L)


# --------------------------------------------------------------------------- the projection
@pytest.mark.parametrize("rho", [1.0001, 1.5, 2.0, 4.0, 50.0])
def test_projection_meets_the_volume_to_1e5_and_keeps_every_budget_in_range(rho):
    torch.manual_seed(0)
    s = torch.randn(16, 1, 8, 8) * torch.logspace(-2, 1, 16).view(16, 1, 1, 1)
    for eps in (0.1, torch.linspace(0.01, 0.4, 16)):
        u = project_log_budgets(s, eps, rho)
        assert u.shape == s.shape and u.dtype == s.dtype
        target = torch.log(torch.as_tensor(eps)).expand(16)
        assert (u.flatten(1).mean(1) - target).abs().max() < 1e-5
        assert _in_range(u, eps if isinstance(eps, float) else eps, rho)


def test_rho_one_returns_log_eps_everywhere():
    s = torch.randn(4, 3, 5, 5) * 10
    u = project_log_budgets(s, 0.2, 1.0)
    assert torch.equal(u, torch.full_like(s, math.log(0.2)))
    eps = torch.tensor([0.1, 0.2, 0.3, 0.4])
    u = project_log_budgets(s, eps, 1)
    assert torch.allclose(u, eps.log().view(4, 1, 1, 1).expand_as(s), atol=0)


def test_projection_is_idempotent():
    torch.manual_seed(1)
    s = torch.randn(8, 1, 6, 6) * 3
    u = project_log_budgets(s, 0.1, 4.0)
    assert torch.allclose(project_log_budgets(u, 0.1, 4.0), u, atol=1e-6)


def test_projection_matches_a_brute_force_bisection_solver():
    torch.manual_seed(2)
    s = torch.randn(32, 1, 8, 8) * torch.logspace(-1, 1.3, 32).view(32, 1, 1, 1)
    for rho in (1.3, 4.0, 20.0):
        u = project_log_budgets(s.double(), 0.1, rho).flatten(1)
        assert torch.allclose(u, _brute_force(s, 0.1, rho), atol=1e-9)


def test_projection_matches_a_generic_constrained_optimizer_on_small_problems():
    scipy_opt = pytest.importorskip("scipy.optimize")
    import numpy as np

    torch.manual_seed(3)
    eps, rho = 0.1, 3.0
    a, b, m = math.log(eps / rho), math.log(eps * rho), math.log(eps)
    for _ in range(5):
        s = (torch.randn(1, 6) * 2).double()
        res = scipy_opt.minimize(lambda v: float(((v - s[0].numpy()) ** 2).sum()), x0=np.full(6, m),
                                 jac=lambda v: 2 * (v - s[0].numpy()), method="SLSQP", bounds=[(a, b)] * 6,
                                 constraints=[{"type": "eq", "fun": lambda v: v.mean() - m}],
                                 options={"ftol": 1e-14, "maxiter": 500})
        u = project_log_budgets(s, eps, rho)[0].numpy()
        assert np.allclose(u, res.x, atol=1e-6)


def test_projection_is_closer_to_the_scores_than_other_points_of_the_set():
    torch.manual_seed(4)
    s = torch.randn(1, 1, 8, 8).double() * 2
    u = project_log_budgets(s, 0.1, 4.0)
    others = project_log_budgets(torch.randn(200, 1, 8, 8).double() * 3, 0.1, 4.0)  # feasible points
    assert ((others - s) ** 2).flatten(1).sum(1).min() >= ((u - s) ** 2).sum() - 1e-12


def test_projection_jacobian_matches_finite_differences_on_the_free_set():
    torch.manual_seed(5)
    eps, rho = 0.1, 4.0
    L = math.log(rho)
    s = (torch.randn(1, 1, 4, 5) * 1.5).double()
    u0 = project_log_budgets(s, eps, rho)
    v = (u0 - math.log(eps)).flatten()
    free = v.abs() < L - 1e-9
    lam = (v - s.flatten())[free][0]
    z = s.flatten() + lam  # before the clip: keep every coordinate clear of the kinks at +-L,
    assert ((z.abs() - L).abs() > 1e-3).all()  # so finite differences see one smooth piece
    assert 2 <= int(free.sum()) < v.numel()
    J = torch.autograd.functional.jacobian(lambda t: project_log_budgets(t, eps, rho).flatten(), s).reshape(20, 20)
    h = 1e-6
    J_fd = torch.empty(20, 20, dtype=torch.float64)
    for j in range(20):
        d = torch.zeros(20, dtype=torch.float64)
        d[j] = h
        up = project_log_budgets(s + d.view_as(s), eps, rho).flatten()
        dn = project_log_budgets(s - d.view_as(s), eps, rho).flatten()
        J_fd[:, j] = (up - dn) / (2 * h)
    assert torch.allclose(J, J_fd, atol=1e-6)
    nF = int(free.sum())
    expected = torch.zeros(20, 20, dtype=torch.float64)
    Fi = free.nonzero().flatten()
    expected[Fi.unsqueeze(1), Fi.unsqueeze(0)] = torch.eye(nF, dtype=torch.float64) - 1.0 / nF
    assert torch.allclose(J, expected, atol=1e-12)


def test_projection_handles_ties_single_dimensions_and_extreme_scores():
    u = project_log_budgets(torch.zeros(2, 1, 3, 3), 0.1, 4.0)
    assert torch.allclose(u, torch.full_like(u, math.log(0.1)))
    u = project_log_budgets(torch.tensor([[5.0]]), 0.1, 4.0)  # d = 1: the volume fixes it
    assert torch.allclose(u, torch.tensor([[math.log(0.1)]]))
    s = torch.tensor([[1e6, -1e6, 1e6, -1e6]])
    u = project_log_budgets(s, 0.1, 4.0)
    assert torch.allclose(u, math.log(0.1) + math.log(4.0) * torch.tensor([[1.0, -1, 1, -1]]))


@pytest.mark.parametrize("kwargs, match", [
    (dict(rho=0.5), "rho"), (dict(rho=float("nan")), "rho"), (dict(rho=float("inf")), "rho"),
    (dict(eps=0.0), "eps"), (dict(eps=-0.1), "eps"), (dict(eps=float("nan")), "eps"),
    (dict(eps=torch.tensor([0.1, 0.0, 0.1])), "eps"), (dict(eps=torch.tensor([0.1, 0.1])), "eps"),
    (dict(scores=torch.tensor([[0.0, float("nan")]] * 3)), "NaN"),
    (dict(scores=torch.tensor([[0.0, float("inf")]] * 3)), "NaN or inf"),
    (dict(scores=torch.zeros(3, 2, dtype=torch.long)), "floating"),
    (dict(scores=torch.zeros(3)), "dimensions"),
])
def test_bad_inputs_raise_clear_errors(kwargs, match):
    args = dict(scores=torch.zeros(3, 4), eps=0.1, rho=2.0)
    args.update(kwargs)
    with pytest.raises(InputError, match=match):
        project_log_budgets(args["scores"], args["eps"], args["rho"])


def test_bad_input_types_raise_type_errors():
    with pytest.raises(InputTypeError, match="scores"):
        project_log_budgets([[0.0, 1.0]], 0.1, 2.0)
    with pytest.raises(InputTypeError, match="rho"):
        project_log_budgets(torch.zeros(2, 2), 0.1, "4")
    with pytest.raises(InputTypeError, match="eps"):
        project_log_budgets(torch.zeros(2, 2), "0.1", 2.0)


# --------------------------------------------------------------------------- generator and model
def _pair(shape=(1, 8, 8), seed=0, head_std=1.0, coordinates=True):
    torch.manual_seed(seed)
    clf = build("cnn_small", shape, 10, width=0.5, linear=32)
    gen = BudgetGenerator(shape, width=8, depth=2, coordinates=coordinates)
    if head_std:
        torch.nn.init.normal_(gen.head.weight, std=head_std)
    return BudgetModel(clf, gen)


def test_generator_keeps_the_image_shape_and_starts_from_uniform_budgets():
    gen = BudgetGenerator((3, 6, 10))
    x = torch.rand(4, 3, 6, 10)
    assert gen(x).shape == x.shape
    assert torch.equal(gen(x), torch.zeros_like(x))  # zero-initialized head
    bm = BudgetModel(build("mlp", (3, 6, 10), 10, hidden=(16,)), gen)
    assert torch.allclose(bm.budgets(x, 0.1, 4.0), torch.full_like(x, 0.1), rtol=1e-6)
    assert torch.equal(bm.budgets(x, 0.1, 1.0), torch.full_like(x, 0.1))


def test_coordinate_channels_let_the_generator_tell_positions_apart():
    x = torch.full((1, 1, 6, 6), 0.5)
    c = coordinate_channels(x)
    assert c.shape == (1, 2, 6, 6) and c.min() == -1 and c.max() == 1
    with_c = _pair((1, 6, 6), coordinates=True).generator(x)[0, 0]
    without = _pair((1, 6, 6), coordinates=False).generator(x)[0, 0]
    interior = without[2:4, 2:4]
    assert torch.allclose(interior, interior[0, 0].expand_as(interior))  # translation invariant
    assert with_c[2:4, 2:4].unique().numel() > 1


def test_budget_model_box_has_the_volume_and_is_clipped_to_the_unit_interval():
    bm = _pair()
    x = torch.rand(8, 1, 8, 8)
    b = bm.budgets(x, 0.2, 4.0)
    assert (b.log().flatten(1).mean(1) - math.log(0.2)).abs().max() < 1e-5
    assert b.min() >= 0.05 * (1 - 1e-5) and b.max() <= 0.8 * (1 + 1e-5)
    box = bm.box(x, 0.2, 4.0)
    assert isinstance(box, Box)
    assert box.lower.min() >= 0 and box.upper.max() <= 1
    assert bool(box.contains(x, x).all())
    assert torch.allclose(box.upper - box.lower, (x + b).clamp(0, 1) - (x - b).clamp(0, 1))
    with pytest.raises(InputError, match="x"):
        bm.budgets(x * 2, 0.2, 4.0)


def test_gradient_reaches_the_generator_through_box_bounds_and_loss():
    from robustsuite.certify.lirpa import BoundedModule
    from robustsuite.certify.trainer import margin_lower_bounds, robust_ce_from_margins

    bm = _pair(head_std=0.0)  # as at the start of training: zero head, uniform budgets
    x, y = torch.rand(6, 1, 8, 8), torch.randint(0, 10, (6,))
    bounded = BoundedModule(bm.classifier, torch.zeros(2, 1, 8, 8))
    bounded.train()
    bounded(x)
    box = bm.box(x, 0.1, 4.0)
    for beta in (0.0, 1.0):  # IBP and CROWN-IBP
        bm.zero_grad(set_to_none=True)
        m = margin_lower_bounds(bounded, x, y, box.lower, box.upper, beta, 10)
        robust_ce_from_margins(m).mean().backward(retain_graph=True)
        grads = [p.grad for p in bm.generator.parameters()]
        assert bm.generator.head.weight.grad.abs().sum() > 0
        assert all(g is not None and torch.isfinite(g).all() for g in grads)


# --------------------------------------------------------------------------- metrics
def test_budget_ratio_measures_the_irrelevant_region_against_the_relevant_one():
    mask = torch.zeros(1, 4, 8, dtype=torch.bool)
    mask[:, :, 4:] = True
    eps, rho = 0.1, 4.0
    b = torch.where(mask, eps * rho, eps / rho).expand(3, 1, 4, 8).clone()
    r = budget_ratio(b, mask, eps=eps, rho=rho)
    assert r["ratio"] == pytest.approx(rho ** 2) and r["frac_irrelevant_at_upper"] == 1.0
    assert r["ratio_cap"] == pytest.approx(rho ** 2)
    frame = torch.ones(1, 8, 8, dtype=torch.bool)
    frame[:, 2:6, 2:6] = False  # irrelevant 3/4 of the input: the volume caps the ratio at rho^(4/3)
    assert budget_ratio(torch.full((2, 1, 8, 8), eps), frame, eps=eps, rho=rho)["ratio_cap"] == pytest.approx(rho ** (4 / 3))
    assert r["frac_relevant_at_lower"] == 1.0 and r["frac_relevant_at_upper"] == 0.0
    assert budget_ratio(torch.full((3, 1, 4, 8), eps), mask, eps=eps, rho=rho)["ratio"] == pytest.approx(1.0)
    with pytest.raises(InputError, match="irrelevant_mask"):
        budget_ratio(b, torch.ones(1, 4, 8, dtype=torch.bool), eps=eps, rho=rho)
