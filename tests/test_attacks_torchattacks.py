"""Cross-checks against torchattacks on the same (deterministic, eval-mode) model, data and seed.

torchattacks calls ``model.eval()``; the test model has no dropout or batch norm, so its mode does
not matter, and it is restored to what it was afterwards anyway.
"""
from __future__ import annotations

import pytest
import torch

from robustsuite.attacks import CW, FGSM, PGD
from robustsuite.threats import L2Ball, LinfBall

torchattacks = pytest.importorskip("torchattacks")

try:
    from test_attacks_support import held_out, trained_cnn, one_thread  # noqa: F401
except ImportError:
    from tests.test_attacks_support import held_out, trained_cnn, one_thread  # noqa: F401


def _robust_accuracy(model, x_adv, y) -> float:
    with torch.no_grad():
        return float((model(x_adv).argmax(1) == y).float().mean())


@pytest.mark.parametrize("eps", [0.05, 0.1, 0.2])
def test_pgd_without_random_start_matches_torchattacks_robust_accuracy(eps):
    model = trained_cnn()
    x, y = held_out(256)
    ours = PGD(model, LinfBall(eps), steps=10, step_size=eps / 4, random_start=False).run(x, y)
    theirs = torchattacks.PGD(model, eps=eps, alpha=eps / 4, steps=10, random_start=False)(x, y)
    assert float((~ours.success).float().mean()) == _robust_accuracy(model, theirs, y)
    assert torch.allclose(ours.x_adv, theirs, atol=1e-6)


@pytest.mark.parametrize("eps", [0.05, 0.1, 0.2])
def test_fgsm_matches_torchattacks_robust_accuracy(eps):
    model = trained_cnn()
    x, y = held_out(256)
    ours = FGSM(model, LinfBall(eps)).run(x, y)
    theirs = torchattacks.FGSM(model, eps=eps)(x, y)
    assert float((~ours.success).float().mean()) == _robust_accuracy(model, theirs, y)
    assert torch.allclose(ours.x_adv, theirs, atol=1e-6)


@pytest.mark.parametrize("c", [0.1, 1.0])
def test_cw_succeeds_as_often_with_no_larger_median_l2_than_torchattacks(c):
    """Same c and steps; ours adds the binary search on c and keeps the smallest success."""
    model = trained_cnn()
    x, y = held_out(64)
    steps = 60
    ours = CW(model, c=c, steps=steps, search_steps=4).run(x, y)
    adv = torchattacks.CW(model, c=c, kappa=0, steps=steps, lr=0.01)(x, y)
    with torch.no_grad():
        theirs_ok = model(adv).argmax(1) != y
    theirs_l2 = (adv - x).flatten(1).norm(dim=1)
    inf = torch.tensor(float("inf"))
    assert int(ours.success.sum()) >= int(theirs_ok.sum())
    # median over all samples, a failure counting as an infinite distance
    ours_med = torch.where(ours.success, ours.distance, inf).median()
    theirs_med = torch.where(theirs_ok, theirs_l2, inf).median()
    assert ours_med <= theirs_med
    # and on the samples both attacks broke
    both = ours.success & theirs_ok
    assert int(both.sum()) > 0
    assert ours.distance[both].median() <= theirs_l2[both].median()


def test_cw_with_l2_budget_counts_success_within_the_budget():
    model = trained_cnn()
    x, y = held_out(64)
    free = CW(model, c=1.0, steps=60, search_steps=3).run(x, y)
    eps = float(free.distance[free.success].median())
    bounded = CW(model, L2Ball(eps), c=1.0, steps=60, search_steps=3).run(x, y)
    assert bool((bounded.distance <= eps + 1e-5).all())
    # every minimal adversarial within the budget counts; a slightly longer one may still be
    # adversarial after its projection onto the ball, and then counts too
    within = free.success & (free.distance <= eps - 1e-4)
    assert int(within.sum()) > 0
    assert bool(bounded.success[within].all())
    with torch.no_grad():
        assert torch.equal(bounded.success, model(bounded.x_adv).argmax(1) != y)
