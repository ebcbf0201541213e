"""The Square attack's pieces (schedule, start, updates, bookkeeping) and the voting EOT mode of the
query-based attacks (Square, boundary) on a noisy model."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from robustsuite.attacks import ATTACKS, BoundaryAttack, Square, make_attack, robust_accuracy
from robustsuite.attacks.eot import majority_vote
from robustsuite.attacks.losses import margin_loss
from robustsuite.attacks.square import meta_pattern, square_p, square_side
from robustsuite.errors import InputError, UnknownNameError
from robustsuite.threats import Box, L1Ball, L2Ball, LinfBall

try:
    from test_attacks_support import held_out, one_thread, trained_cnn  # noqa: F401
except ImportError:
    from tests.test_attacks_support import held_out, one_thread, trained_cnn  # noqa: F401


class Recorder(nn.Module):
    """Forwards to ``inner`` and records every batch of inputs and logits it was asked for."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner
        self.calls: list[tuple[torch.Tensor, torch.Tensor]] = []

    def forward(self, x):
        z = self.inner(x)
        self.calls.append((x.detach().clone(), z.detach().clone()))
        return z


# --- the pieces ---------------------------------------------------------------------------------

def test_p_schedule_is_the_papers_piecewise_constant_schedule_rescaled_to_the_budget():
    # over 10,000 queries: halved after 10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000
    expected = {0: 1, 10: 1, 11: 2, 50: 2, 51: 4, 200: 4, 201: 8, 501: 16, 1001: 32, 2001: 64,
                4001: 128, 6001: 256, 8000: 256, 8001: 512, 9999: 512}
    for it, div in expected.items():
        assert square_p(it, 10000, 0.8) == pytest.approx(0.8 / div), it
    # rescaled: with 1000 queries, iteration 100 is iteration 1000 of the 10k schedule
    assert square_p(100, 1000, 0.8) == pytest.approx(0.8 / 16)
    assert square_p(101, 1000, 0.8) == pytest.approx(0.8 / 32)
    assert square_p(1, 100, 0.5) == pytest.approx(0.5 / 4)


def test_square_side_follows_p_and_the_l2_rules():
    assert square_side(0.8, 8, 8) == 7                     # round(sqrt(0.8 * 64)) = 7
    assert square_side(0.8 / 512, 8, 8) == 1                # at least 1
    assert square_side(0.8, 32, 32) == 29
    assert square_side(0.1, 32, 32, l2=True) == 11          # round(10.1) = 10 -> odd 11
    assert square_side(0.001, 32, 32, l2=True) == 3        # at least 3
    assert square_side(1.0, 8, 4) == 4                      # at most min(h, w)


def test_meta_pattern_is_unit_norm_with_opposite_halves_peaked_at_their_centres():
    eta = meta_pattern(7)
    assert eta.shape == (7, 7)
    assert float(eta.norm()) == pytest.approx(1.0)
    assert bool((eta[:3] > 0).all()) and bool((eta[3:] < 0).all())
    assert eta[:3].argmax() == 1 * 7 + 3                    # centre of the top half (row 1, col 3)
    assert eta[3:].argmin() == 2 * 7 + 3                    # centre of the 4-row bottom half (row 5, col 3)
    # ring k weighs 1/(k+1)^2: a cell at Chebyshev distance d holds tail[d] = sum_{k>=d} 1/(k+1)^2
    tail = [sum(1 / (k + 1) ** 2 for k in range(d, 4)) for d in range(4)]
    top = eta[:3]
    for d, col in ((1, 2), (2, 1), (3, 0)):
        assert float(top[1, 3] / top[1, col]) == pytest.approx(tail[0] / tail[d], rel=1e-5)


def test_linf_start_is_vertical_stripes_at_the_vertices():
    x, y = held_out(16)
    atk = Square(trained_cnn(), LinfBall(0.1))
    lo, hi = LinfBall(0.1).bounds(x)
    x0 = atk._linf_start(x, lo, hi, torch.Generator().manual_seed(0))
    at_hi = x0 == hi
    assert bool((at_hi | (x0 == lo)).all())
    # one choice per (sample, channel, column): every column is all-high or all-low
    assert bool((at_hi.all(2) | (~at_hi).all(2)).all())
    frac = at_hi[:, :, 0].float().mean()
    assert 0.3 < float(frac) < 0.7


def test_linf_update_changes_one_square_per_sample_to_vertices():
    x, _ = held_out(32)
    atk = Square(trained_cnn(), LinfBall(0.1))
    lo, hi = LinfBall(0.1).bounds(x)
    xb = x.clone()                                          # a point off the vertices
    cand = atk._linf_step(xb, lo, hi, p=0.25, generator=torch.Generator().manual_seed(1))
    s = square_side(0.25, 8, 8)
    changed = (cand != xb) | (cand == hi) & (cand == lo)
    for i in range(32):
        rows = changed[i, 0].any(1).nonzero().squeeze(1)
        cols = changed[i, 0].any(0).nonzero().squeeze(1)
        # the changed pixels lie inside one s x s window (pixels where lo == hi == x may not change)
        assert rows.numel() <= s and cols.numel() <= s
        if rows.numel():
            assert int(rows.max() - rows.min()) < s and int(cols.max() - cols.min()) < s
    assert bool(((cand == xb) | (cand == lo) | (cand == hi)).all())
    # per-sample positions: not every sample changed the same window
    win = changed.flatten(1)
    assert not bool((win == win[0]).all())


def test_l2_start_and_steps_keep_the_norm_at_eps():
    x, y = held_out(32)
    eps = 0.8
    atk = Square(trained_cnn(), L2Ball(eps))
    gen = torch.Generator().manual_seed(0)
    xb = atk._l2_start(x, gen)
    for p in (0.8, 0.1, 0.01):
        xb = atk._l2_step(x, xb, p, gen)
        d = (xb - x).flatten(1).norm(dim=1)
        assert bool((d <= eps + 1e-5).all())
        # the norm is eps before clipping to [0, 1]; clipping only removes a little of it
        assert float(d.median()) > 0.7 * eps


# --- the attack ---------------------------------------------------------------------------------

def test_only_improvements_are_kept():
    """On samples that stay robust, the returned point has the best loss of all points queried."""
    rec = Recorder(trained_cnn())
    x, y = held_out(64)
    with torch.no_grad():
        keep = margin_loss(trained_cnn()(x), y) < -3.0        # confidently correct
    x, y = x[keep][:16], y[keep][:16]
    res = Square(rec, LinfBall(0.01), n_queries=60).run(x, y)
    assert not bool(res.success.any())                       # no sample broken: no compaction
    queried = torch.stack([margin_loss(z, y) for _, z in rec.calls[:-1]])   # (61, 16)
    final = margin_loss(rec.calls[-1][1], y)
    assert torch.allclose(final, queried.max(0).values)
    assert not torch.allclose(final, queried[-1])            # the last proposal was often worse


def test_per_sample_query_counts_and_early_stop():
    rec = Recorder(trained_cnn())
    x, y = held_out(64)
    res = Square(rec, LinfBall(0.15), n_queries=200).run(x, y)
    rows = sum(c[0].shape[0] for c in rec.calls[:-1])         # all but the final check
    assert int(res.queries.sum()) == rows
    assert bool((res.queries[~res.success] == 201).all())
    assert bool((res.queries[res.success] <= 201).all())
    assert int(res.queries.min()) < 50 and int(res.queries.max()) > 100   # counts differ per sample
    # early stop: when every sample breaks, the loop ends before the budget
    res = Square(trained_cnn(), LinfBall(0.4), n_queries=500).run(x, y)
    assert bool(res.success.all()) and res.steps < 500 and int(res.queries.max()) <= res.steps + 1


def test_square_stays_in_the_set_and_beats_random_noise():
    model = trained_cnn()
    x, y = held_out(128)
    for threat in (LinfBall(0.1), L2Ball(0.8)):
        res = Square(model, threat, n_queries=150).run(x, y)
        assert bool(threat.contains(x, res.x_adv).all())
        noise = threat.project(x, threat.random_point(x, torch.Generator().manual_seed(0)))
        with torch.no_grad():
            noise_ok = model(noise).argmax(1) != y
        assert int(res.success.sum()) > int(noise_ok.sum()) + 20


def test_square_in_a_per_pixel_box_never_moves_pixels_with_zero_budget():
    model = trained_cnn()
    x, y = held_out(64)
    eps = torch.zeros_like(x)
    eps[:, :, 2:6, 2:6] = 0.3                                 # only the centre may change
    box = Box.around(x, eps)
    res = Square(model, box, n_queries=100).run(x, y)
    assert torch.equal(res.x_adv[:, :, :2], x[:, :, :2]) and torch.equal(res.x_adv[:, :, :, 6:], x[:, :, :, 6:])
    assert bool(box.contains(x, res.x_adv).all()) and int(res.success.sum()) > 0
    out = robust_accuracy(model, x, y, Square(model, box, n_queries=30), batch_size=16)
    assert 0.0 <= out["robust_accuracy"] <= out["clean_accuracy"]


def test_square_is_seeded_registered_and_validated():
    model = trained_cnn()
    x, y = held_out(32)
    a = Square(model, LinfBall(0.1), n_queries=30, seed=3).run(x, y)
    b = Square(model, LinfBall(0.1), n_queries=30, seed=3).run(x, y)
    c = Square(model, LinfBall(0.1), n_queries=30, seed=4).run(x, y)
    assert torch.equal(a.x_adv, b.x_adv) and not torch.equal(a.x_adv, c.x_adv)
    assert ATTACKS["square"] is Square
    assert make_attack("square", model, L2Ball(0.5), n_queries=10).n_queries == 10
    with pytest.raises(InputError, match="L1Ball"):
        Square(model, L1Ball(1.0))
    with pytest.raises(InputError, match="p_init"):
        Square(model, LinfBall(0.1), p_init=1.5)
    with pytest.raises(InputError, match="n_queries"):
        Square(model, LinfBall(0.1), n_queries=0)
    with pytest.raises(UnknownNameError, match="loss"):
        Square(model, LinfBall(0.1), loss="dlr")
    with pytest.raises(InputError, match="labels must lie in"):
        Square(model, LinfBall(0.1), n_queries=2).run(x, torch.full((32,), 12))


def test_targeted_square_reaches_targets():
    model = trained_cnn()
    x, y = held_out(64)
    t = (y + 1) % 10
    res = Square(model, LinfBall(0.3), n_queries=300, targeted=True).run(x, t)
    assert bool((res.pred[res.success] == t[res.success]).all()) and res.success_rate > 0.5


# --- EOT: the majority-vote oracle on a noisy model ---------------------------------------------

class NoisyLinear(nn.Module):
    """Three classes, logits ``W x + b + sigma * N(0, I)``: the noise-free model gives class 0 a
    margin of at least ``margin - |W| eps`` on every point within L-inf ``eps`` of the inputs."""

    def __init__(self, sigma: float):
        super().__init__()
        self.sigma = sigma
        self.lin = nn.Linear(64, 3)
        with torch.no_grad():
            self.lin.weight.zero_()
            self.lin.weight[1] = 0.05                          # class 1 gains with brightness
            self.lin.bias.copy_(torch.tensor([2.0, 0.0, -5.0]))

    def clean(self, x):
        return self.lin(x.flatten(1))

    def forward(self, x):
        z = self.clean(x)
        return z + self.sigma * torch.randn_like(z)


def _vote(model, x, n=401):
    torch.manual_seed(99)
    with torch.no_grad():
        return majority_vote(torch.stack([model(x) for _ in range(n)], 1))


def test_single_draw_square_misreports_noise_as_success_while_the_vote_is_stable():
    torch.manual_seed(0)
    model = NoisyLinear(sigma=1.5)
    x = torch.full((64, 1, 8, 8), 0.2)                         # clean margin 2 - 64*0.05*0.2 = 1.36
    y = torch.zeros(64, dtype=torch.long)
    eps = 0.05                                                  # worst margin 1.36 - 0.16 > 0: robust
    with torch.no_grad():
        assert bool((model.clean(LinfBall(eps).bounds(x)[1]).argmax(1) == 0).all())
    torch.manual_seed(1)
    single = Square(model, LinfBall(eps), n_queries=50).run(x, y)
    torch.manual_seed(1)
    voted = Square(model, LinfBall(eps), n_queries=50, eot=25).run(x, y)
    # one noisy draw calls many samples broken; the points are not adversarial by a stable vote
    assert single.success_rate > 0.15
    assert bool((_vote(model, single.x_adv) == 0).all())
    # the voting oracle reports none (and its stop/success checks use the vote)
    assert voted.success_rate == 0.0
    # every draw is a query (a few samples stop early on a lucky vote; none is confirmed)
    assert bool((voted.queries % 25 == 0).all()) and bool((voted.queries <= 25 * 51).all())
    assert float((voted.queries == 25 * 51).float().mean()) > 0.7


def test_voting_square_finds_adversarials_that_exist():
    torch.manual_seed(0)
    model = NoisyLinear(sigma=1.0)
    x = torch.full((32, 1, 8, 8), 0.2)
    y = torch.zeros(32, dtype=torch.long)
    eps = 0.8                                                   # all at 1.0: margin 2 - 3.2 < 0
    torch.manual_seed(2)
    res = Square(model, LinfBall(eps), n_queries=300, eot=25).run(x, y)
    assert res.success_rate > 0.9
    with torch.no_grad():
        clean_pred = model.clean(res.x_adv).argmax(1)
    # the search moved to the noise-free boundary or across it (clean margin 1.36), mostly across
    with torch.no_grad():
        gap = margin_loss(model.clean(res.x_adv), y)          # > 0: across the noise-free boundary
    assert float(gap[res.success].min()) > -0.5
    assert float((clean_pred[res.success] != 0).float().mean()) > 0.6


def test_voting_boundary_attack_does_not_report_the_noise():
    torch.manual_seed(0)
    model = NoisyLinear(sigma=1.5)
    x = torch.full((16, 1, 8, 8), 0.2)
    y = torch.zeros(16, dtype=torch.long)
    eps = 0.4                                                   # L2 0.4: margin loss <= 0.05*0.4*8 = 0.16
    torch.manual_seed(3)
    single = BoundaryAttack(model, L2Ball(eps), max_queries=300).run(x, y)
    torch.manual_seed(3)
    voted = BoundaryAttack(model, L2Ball(eps), max_queries=300 * 9, eot=9).run(x, y)
    assert single.success_rate > 0.15
    assert bool((_vote(model, single.x_adv) == 0).all())
    assert voted.success_rate == 0.0
    # every draw is a query, and the budget is respected
    assert bool((voted.queries <= 300 * 9).all()) and bool((voted.queries % 9 == 0).all())


def test_majority_vote_counts_draws_and_breaks_ties_by_mean_probability():
    z = torch.tensor([[[5.0, 0, 0], [0, 5, 0], [0, 6, 0]],        # class 1 wins 2:1
                      [[5.0, 0, 0], [0, 9, 0], [4, 0, 0]]])       # class 0 wins 2:1 despite the big 9
    assert majority_vote(z).tolist() == [1, 0]
    tie = torch.tensor([[[5.0, 0, 0], [0, 9, 0]]])                 # 1:1, class 1 more probable
    assert majority_vote(tie).tolist() == [1]


# --- APGD-T: target selection and the targeted DLR loss ------------------------------------------

def test_targeted_dlr_sign_and_value():
    from robustsuite.attacks.losses import dlr_targeted_loss
    z = torch.tensor([[4.0, 3.0, 1.0, 0.0, -1.0], [1.0, 5.0, 2.0, 0.0, -1.0]])
    y = torch.tensor([0, 0])
    t = torch.tensor([1, 1])
    loss = dlr_targeted_loss(z, y, t)
    # -(z_y - z_t) / (z_(1) - (z_(3) + z_(4)) / 2)
    assert loss[0] == pytest.approx(-(4 - 3) / (4 - (1 + 0) / 2))
    assert loss[1] == pytest.approx(-(1 - 5) / (5 - (1 + 0) / 2))
    assert loss[0] < 0 < loss[1]                                   # positive once t beats y


def test_apgd_t_targets_are_the_top_non_true_classes_and_success_is_misclassification():
    from robustsuite.attacks import APGD
    lin = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    with torch.no_grad():
        lin[1].weight.zero_()
        lin[1].bias.copy_(torch.tensor([0.0, 9, 8, 7, 6, 5, 4, 3, 2, 1]))
    x = torch.rand(2, 1, 8, 8)
    y = torch.tensor([1, 0])                                       # sample 1 is misclassified
    atk = APGD(lin, LinfBall(0.1), loss="dlr", targeted=True, n_target_classes=3, steps=2)
    assert atk.target_classes(x, y).tolist() == [[2, 3, 4], [1, 2, 3]]  # never the true class
    res = atk.run(x, y)
    assert res.success.tolist() == [False, True]                   # untargeted success on true labels
    assert res.extras["targets"].shape == (2, 3)
    assert atk.labels_are_targets is False and atk.targeted is True


def test_apgd_t_runs_one_target_at_a_time_on_a_cpu_by_default():
    """On a CPU stacking the targets costs the same per row and runs broken samples again, so
    the default is one target at a time (the reference's cost); another device stacks them all."""
    from robustsuite.attacks import APGD
    model = trained_cnn()
    x, y = held_out(96)
    kw = dict(loss="dlr", targeted=True, n_target_classes=3, steps=10)
    auto = APGD(model, LinfBall(0.1), **kw)
    assert auto.target_group(3, torch.device("cpu")) == 1
    assert auto.target_group(3, torch.device("meta")) == 3
    assert APGD(model, LinfBall(0.1), target_batch=2, **kw).target_group(3, "cpu") == 2
    res = auto.run(x, y)
    one = APGD(model, LinfBall(0.1), target_batch=1, **kw).run(x, y)
    assert torch.equal(res.x_adv, one.x_adv) and torch.equal(res.queries, one.queries)
    # a sample broken by its first target is not attacked for the other two
    assert bool((res.queries == 1 + 11).any()) and bool((res.queries == 1 + 3 * 11).any())


def test_apgd_t_is_at_least_as_strong_as_apgd_dlr_and_counts_queries():
    from robustsuite.attacks import APGD
    model = trained_cnn()
    x, y = held_out(96)
    dlr = APGD(model, LinfBall(0.1), loss="dlr", steps=20).run(x, y)
    t = APGD(model, LinfBall(0.1), loss="dlr", targeted=True, n_target_classes=3, steps=20)
    res = t.run(x, y)
    assert int(res.success.sum()) >= int(dlr.success.sum())
    # clean forward + 21 per target run; a sample leaves after its first successful group
    assert int(res.queries.max()) == 1 + 3 * 21
    one = APGD(model, LinfBall(0.1), loss="dlr", targeted=True, n_target_classes=3, steps=20,
               target_batch=1).run(x, y)
    assert set(one.queries.tolist()) <= {1 + 21, 1 + 2 * 21, 1 + 3 * 21}
    assert abs(int(one.success.sum()) - int(res.success.sum())) <= 3
    out = robust_accuracy(model, x, y, t, batch_size=48)         # accepted: y are true labels
    assert out["robust_accuracy"] <= out["clean_accuracy"]
