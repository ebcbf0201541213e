"""Soundness of the Verifier: no point of the set (random, vertex or PGD) has a margin below the bound.

For every bound method, on an MLP, the small CNN and a residual model of the zoo, for uniform L-inf
balls and random per-pixel boxes (both clipped to [0, 1]), and for L2 balls.
"""
from __future__ import annotations

import pytest
import torch

from robustsuite import Box, L2Ball, LinfBall
from robustsuite.certify import Verifier, margins
from robustsuite.models import build

METHODS = ["ibp", "crown-ibp", "crown", "alpha-crown"]
SHAPE = (1, 8, 8)
TOL = 1e-5


def _model(name: str) -> torch.nn.Module:
    torch.manual_seed(7)
    opts = {"mlp": {"hidden": (32, 32)}, "cnn_small": {}, "resnet_small": {"width": 4}}[name]
    model = build(name, SHAPE, 10, **opts).eval()
    # A few steps of BatchNorm statistics so eval-mode BN is not the identity.
    if any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules()):
        model.train()
        with torch.no_grad():
            for _ in range(3):
                model(torch.rand(32, *SHAPE))
        model.eval()
    return model


def _sampled_worst_margin(model, x, y, lo, hi, n_random=256, n_vertex=128) -> torch.Tensor:
    """Smallest margin z_y - z_j (per sample and j) seen at random points and vertices of [lo, hi]."""
    worst = None
    with torch.no_grad():
        for kind, n in (("uniform", n_random), ("vertex", n_vertex)):
            for _ in range(n // 64):
                r = torch.rand(64, *x.shape)
                if kind == "vertex":
                    r = (r > 0.5).float()
                pts = lo.unsqueeze(0) + r * (hi - lo).unsqueeze(0)  # (64, B, C, H, W)
                m = margins(model(pts.flatten(0, 1)), y.repeat(64)).view(64, x.shape[0], -1).min(0).values
                worst = m if worst is None else torch.minimum(worst, m)
    return worst


def _pgd_worst_margin(model, x, y, threat, steps=30) -> torch.Tensor:
    """PGD on each margin separately (signed steps, projected onto the set): (B, K-1) minima."""
    B, K1 = x.shape[0], 9
    xs = x.repeat_interleave(K1, 0)
    ys = y.repeat_interleave(K1, 0)
    j = torch.arange(K1).repeat(B)
    lo, hi = threat.bounds(x)
    lo, hi = lo.repeat_interleave(K1, 0), hi.repeat_interleave(K1, 0)
    step = (hi - lo) / 8
    best = torch.full((B * K1,), float("inf"))
    xa = lo + torch.rand_like(xs) * (hi - lo)
    for _ in range(steps):
        xa = xa.detach().requires_grad_(True)
        m = margins(model(xa), ys)[torch.arange(B * K1), j]
        (g,) = torch.autograd.grad(m.sum(), xa)
        best = torch.minimum(best, m.detach())
        if isinstance(threat, L2Ball):
            gn = g.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, 1, 1, 1)
            xa = threat.project(xs, xa - threat.eps / 4 * g / gn)
        else:
            xa = torch.min(torch.max(xa - step * g.sign(), lo), hi)
    with torch.no_grad():
        best = torch.minimum(best, margins(model(xa), ys)[torch.arange(B * K1), j])
    return best.view(B, K1)


def _threats(x: torch.Tensor):
    g = torch.Generator().manual_seed(3)
    eps = 0.02 + 0.06 * torch.rand(x.shape, generator=g)
    return {"linf": LinfBall(0.04), "box": Box(x - eps, x + 0.5 * eps)}


@pytest.mark.parametrize("model_name", ["mlp", "cnn_small", "resnet_small"])
@pytest.mark.parametrize("method", METHODS)
def test_certified_margins_contain_random_and_pgd_points(model_name, method):
    model = _model(model_name)
    torch.manual_seed(0)
    x = torch.rand(6, *SHAPE)
    y = model(x).argmax(1)
    v = Verifier(model, SHAPE, method=method, device="cpu", alpha_iterations=8)
    for name, threat in _threats(x).items():
        ml = v.margin_bounds(x, y, threat).detach()
        assert ml.shape == (6, 9)
        assert torch.isfinite(ml).all()
        lo, hi = threat.bounds(x)
        seen = torch.minimum(_sampled_worst_margin(model, x, y, lo, hi), _pgd_worst_margin(model, x, y, threat))
        gap = (seen - ml).min().item()
        assert gap >= -TOL, f"{method} on {model_name}/{name}: a point has margin {-gap:.2e} below the bound"


@pytest.mark.parametrize("method", ["ibp", "crown"])
def test_l2_ball_margins_contain_pgd_points(method):
    model = _model("cnn_small")
    torch.manual_seed(1)
    x = torch.rand(4, *SHAPE)
    y = model(x).argmax(1)
    threat = L2Ball(0.3)
    ml = Verifier(model, SHAPE, method=method, device="cpu").margin_bounds(x, y, threat).detach()
    seen = _pgd_worst_margin(model, x, y, threat, steps=40)
    assert (seen - ml).min().item() >= -TOL


@pytest.mark.parametrize("method", METHODS)
def test_logit_bounds_contain_sampled_logits(method):
    model = _model("cnn_small")
    torch.manual_seed(2)
    x = torch.rand(5, *SHAPE)
    threat = LinfBall(0.05)
    lo_b, hi_b = Verifier(model, SHAPE, method=method, device="cpu").bounds(x, threat)
    lo, hi = threat.bounds(x)
    with torch.no_grad():
        pts = lo.unsqueeze(0) + torch.rand(200, *x.shape) * (hi - lo).unsqueeze(0)
        z = model(pts.flatten(0, 1)).view(200, 5, 10)
    assert (z >= lo_b.detach() - TOL).all() and (z <= hi_b.detach() + TOL).all()


def test_certified_never_exceeds_pgd_robust_accuracy():
    from robustsuite.certify.accuracy import pgd_robust

    model = _model("cnn_small")
    torch.manual_seed(4)
    x = torch.rand(24, *SHAPE)
    y = model(x).argmax(1)
    for eps in (0.005, 0.02):
        robust = pgd_robust(model, x, y, eps, steps=20)
        for method in METHODS:
            cert = Verifier(model, SHAPE, method=method, device="cpu", alpha_iterations=8).verify(x, y, LinfBall(eps)).certified
            assert not (cert & ~robust).any()
            assert cert.float().mean() <= robust.float().mean()
