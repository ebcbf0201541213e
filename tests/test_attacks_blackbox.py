"""Black-box attacks: boundary (labels only), few-pixel (differential evolution), transfer."""
from __future__ import annotations

import pytest
import torch

from robustsuite.attacks import PGD, BoundaryAttack, PixelAttack, TransferAttack
from robustsuite.threats import L2Ball, LinfBall

try:
    from test_attacks_support import Counting, LabelOnly, digits, held_out, trained_cnn, one_thread  # noqa: F401
except ImportError:
    from tests.test_attacks_support import Counting, LabelOnly, digits, held_out, trained_cnn, one_thread  # noqa: F401


# --- boundary attack ------------------------------------------------------------------------------

def test_boundary_attack_works_on_a_label_only_model_and_its_distance_shrinks():
    model = LabelOnly(trained_cnn())
    x, y = held_out(32)
    res = BoundaryAttack(model, max_queries=1000, seed=0).run(x, y)
    found = res.extras["start_found"]
    assert bool(found.all())
    assert bool(res.success.all())  # found starts stay adversarial: only adversarial moves are taken
    hist = res.extras["distance_history"]          # (T, B)
    assert hist.shape[0] > 10
    assert bool((hist[1:] <= hist[:-1] + 1e-6).all())  # never increases
    walked = hist[0] > 0
    assert float(hist[-1][walked].median()) < 0.7 * float(hist[0][walked].median())
    assert torch.allclose(hist[-1], res.distance, atol=1e-5)
    assert bool((res.queries <= 1000).all())
    assert model.rows >= int(res.queries.sum())


@pytest.mark.parametrize("eot", [1, 3])
def test_boundary_attack_counts_every_forwarded_row_and_spends_its_budget(eot):
    """Every row the model is asked for is a counted query (start search, line search, each
    step's candidate, each check step's spherical candidate); without a convergence stop every
    walking sample spends its budget, but for at most one label."""
    model = Counting(trained_cnn())
    x, y = held_out(16)
    budget = 437 * eot
    res = BoundaryAttack(model, max_queries=budget, source_step_convergence=0.0, eot=eot, seed=0).run(x, y)
    assert model.rows == int(res.queries.sum()) + eot * x.shape[0]   # + run's final success check
    walked = res.extras["distance_history"][0] > 0
    assert int(walked.sum()) >= 12
    assert bool((res.queries[walked] <= budget).all())
    assert bool((res.queries[walked] > budget - 2 * eot).all())
    # the spherical candidate is labelled only every update_every (10) steps, as in foolbox: about
    # 10 / 11 of the labels left after the start go to walk steps (2 labels per step would give 1/2)
    assert res.steps > 0.85 * 437
    assert not bool(res.extras["converged"].any())


def test_boundary_attack_stops_early_only_when_converged():
    """A sample stops before its budget only for a documented reason: here its source step fell
    below source_step_convergence (set at the initial step, so the first decrease stops it)."""
    model = Counting(trained_cnn())
    x, y = held_out(16)
    res = BoundaryAttack(model, max_queries=1500, source_step_convergence=0.01, seed=0).run(x, y)
    # a stopped sample is no longer forwarded
    assert model.rows == int(res.queries.sum()) + x.shape[0]
    walked = res.extras["distance_history"][0] > 0
    early = walked & (res.queries <= 1500 - 2)
    assert int(early.sum()) > 0
    assert bool(res.extras["converged"][early].all())


def test_boundary_attack_with_more_queries_finds_no_larger_distances():
    model = trained_cnn()
    x, y = held_out(32)
    short = BoundaryAttack(model, max_queries=300, seed=0).run(x, y)
    long = BoundaryAttack(model, max_queries=1000, seed=0).run(x, y)
    assert bool((long.distance <= short.distance + 1e-6).all())
    assert float(long.distance.median()) < float(short.distance.median())


def test_boundary_attack_success_with_l2_budget_means_within_the_budget():
    model = trained_cnn()
    x, y = held_out(32)
    free = BoundaryAttack(model, max_queries=800, seed=0).run(x, y)
    eps = float(free.distance.median())
    res = BoundaryAttack(model, L2Ball(eps), max_queries=800, seed=0).run(x, y)
    assert bool((res.distance[res.success] <= eps + 1e-5).all())
    assert int(res.success.sum()) >= int((free.distance <= eps).sum())
    # samples that got within eps stopped spending queries
    assert int(res.queries.sum()) < int(free.queries.sum())


def test_boundary_attack_targeted_from_starting_points_reaches_the_targets():
    model = trained_cnn()
    x, y = held_out(20)
    target = (y + 1) % 10
    xs, ys = digits()
    with torch.no_grad():
        pool_pred = model(xs[:1500]).argmax(1)
    # for each sample, a training image the model assigns to its target class
    starts = torch.stack([xs[:1500][(pool_pred == t).nonzero()[0, 0]] for t in target.tolist()])
    res = BoundaryAttack(model, targeted=True, starting_points=starts, max_queries=400).run(x, target)
    assert bool(res.success.all())
    assert torch.equal(res.pred, target)
    assert bool((res.distance < (starts - x).flatten(1).norm(dim=1)).all())


# --- few-pixel attack -----------------------------------------------------------------------------

def test_pixel_attack_changes_at_most_k_pixels_and_evaluates_a_population_per_call():
    model = Counting(trained_cnn())
    x, y = held_out(8)
    iters = 6
    res = PixelAttack(model, pixels=3, population=60, iterations=iters, seed=0).run(x, y)
    changed = ((res.x_adv - x).abs().amax(1) > 0).flatten(1).sum(1)
    assert bool((changed <= 3).all())
    assert torch.equal(res.distance, changed.float())
    assert int(res.success.sum()) >= 1
    # one model call per DE generation (+ the initial population), plus the two batch-level checks
    assert model.calls <= x.shape[0] * (iters + 1) + 2
    with torch.no_grad():
        assert torch.equal(res.success, model(res.x_adv).argmax(1) != y)


def test_pixel_attack_in_a_linf_ball_keeps_pixel_values_in_the_ball():
    x, y = held_out(6)
    res = PixelAttack(trained_cnn(), LinfBall(0.3), pixels=2, population=30, iterations=3).run(x, y)
    assert bool(((res.x_adv - x).abs() <= 0.3 + 1e-6).all())


# --- transfer --------------------------------------------------------------------------------------

def test_transfer_attack_crafts_on_the_source_and_queries_the_target_once():
    source, target = trained_cnn(seed=1), Counting(trained_cnn(seed=0))
    x, y = held_out(64)
    res = TransferAttack(PGD(source, LinfBall(0.15), steps=10), target_model=target).run(x, y)
    assert target.calls == 1  # the success check only
    with torch.no_grad():
        assert torch.equal(res.success, target(res.x_adv).argmax(1) != y)
        assert torch.equal(res.extras["source_success"], source(res.x_adv).argmax(1) != y)
    # transfer works, but less often than on the source itself
    assert 0 < int(res.success.sum()) <= int(res.extras["source_success"].sum())
    assert bool(LinfBall(0.15).contains(x, res.x_adv).all())


def test_transfer_to_the_source_itself_equals_the_source_attack():
    model = trained_cnn()
    x, y = held_out(64)
    pgd = PGD(model, LinfBall(0.1), steps=5)
    assert torch.equal(TransferAttack(pgd, target_model=model).run(x, y).success, pgd.run(x, y).success)
