"""C&W: its settings, and its early abort and binary search against a plain re-computation written from CW's docstring.

The re-computation keeps every sample in the batch and freezes a stopped one with masks (no
sub-batches, no write-back), so it states the rules directly: a search step ends when the running
samples' total objective did not go 0.01 % below its value at the last check; a sample stops when
its objective, its least objective and its least adversarial L2 of the step all stalled; checks every
``steps // 10`` iterations (at least every iteration); ``c`` bisected per sample, times 10 while no
upper bound is known. The attack must return the same points, per-sample iterations and loop count.
A tiny float64 MLP keeps the two computations bit-close whatever the sub-batch, and the scenarios
are chosen so that each of the three stall conditions alone keeps some sample running, samples stop
at different iterations, and search steps end early (asserted, so the test cannot go vacuous).
"""
from __future__ import annotations

import collections

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from robustsuite.attacks import CW
from robustsuite.errors import InputError, InputTypeError

try:
    from test_attacks_support import one_thread  # noqa: F401
except ImportError:
    from tests.test_attacks_support import one_thread  # noqa: F401


def _gap(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Z_y - max_{j != y} Z_j, (B,)."""
    z_y = logits.gather(1, y[:, None]).squeeze(1)
    other = logits.masked_fill(F.one_hot(y, logits.shape[1]).bool(), float("-inf")).amax(1)
    return z_y - other


def cw_reference(model, x, y, *, c0: float, steps: int, search_steps: int, lr: float, kappa: float = 0.0,
                 abort: bool = True, stats: collections.Counter | None = None):
    """Untargeted C&W L2 with the documented early abort, every sample kept in the batch.

    Returns (best_x (B, C, H, W), best squared L2 (B,) (inf: never adversarial), iterations per
    sample (B,), loop iterations). ``stats`` counts the decisions the scenario exercised."""
    B = x.shape[0]
    col = (-1,) + (1,) * (x.dim() - 1)
    w0 = torch.atanh((2 * x - 1) * (1 - 1e-6))
    c = torch.full((B,), c0, dtype=x.dtype)
    lo, up = torch.zeros(B, dtype=x.dtype), torch.full((B,), 1e10, dtype=x.dtype)
    best_l2, best_x = torch.full((B,), float("inf"), dtype=x.dtype), x.clone()
    iters, loop = torch.zeros(B, dtype=torch.long), 0
    every = max(1, steps // 10)
    for _ in range(search_steps):
        w, m, v = w0.clone(), torch.zeros_like(x), torch.zeros_like(x)
        found = torch.zeros(B, dtype=torch.bool)
        active = torch.ones(B, dtype=torch.bool)
        inf = torch.full((B,), float("inf"), dtype=x.dtype)
        obj_min, adv_min, obj_ref, adv_ref, last = inf, inf, inf, inf, inf
        ran = torch.zeros(B, dtype=torch.long)
        t = -1
        for t in range(steps):
            wl = w.detach().requires_grad_(True)
            xa = (torch.tanh(wl) + 1) / 2
            logits = model(xa)
            l2sq = (xa - x).flatten(1).pow(2).sum(1)
            obj = l2sq + c * (_gap(logits, y) + kappa).clamp_min(0)
            g, = torch.autograd.grad(obj.sum(), wl)
            xa, l2sq, obj, logits = xa.detach(), l2sq.detach(), obj.detach(), logits.detach()
            ok = (logits.argmax(1) != y) & (_gap(logits, y) <= -kappa) & active
            found |= ok
            better = ok & (l2sq < best_l2)
            best_l2 = torch.where(better, l2sq, best_l2)
            best_x = torch.where(better.view(col), xa, best_x)
            a = active.view(col)
            m = torch.where(a, 0.9 * m + 0.1 * g, m)
            v = torch.where(a, 0.999 * v + 0.001 * g * g, v)
            w = torch.where(a, w - lr * (m / (1 - 0.9 ** (t + 1))) / ((v / (1 - 0.999 ** (t + 1))).sqrt() + 1e-8), w)
            if not abort:
                continue
            obj_min = torch.where(active, torch.minimum(obj_min, obj), obj_min)
            adv_min = torch.where(ok, torch.minimum(adv_min, l2sq), adv_min)
            if t % every:
                continue
            stalled = torch.zeros(B, dtype=torch.bool)
            if t > 0:
                if obj[active].sum() > 0.9999 * last[active].sum():
                    if stats is not None:
                        stats["step_ends"] += 1
                    break
                by_obj, by_min, by_adv = obj > 0.9999 * last, obj_min > 0.9999 * obj_ref, ~(adv_min < 0.9999 * adv_ref)
                stalled = active & by_obj & by_min & by_adv
                if stats is not None:
                    stats["stops"] += int(stalled.sum())
                    stats["kept_by_obj"] += int((active & ~by_obj & by_min & by_adv).sum())
                    stats["kept_by_min"] += int((active & by_obj & ~by_min & by_adv).sum())
                    stats["kept_by_adv"] += int((active & by_obj & by_min & ~by_adv).sum())
            obj_ref = torch.where(active, obj_min, obj_ref)
            adv_ref = torch.where(active, adv_min, adv_ref)
            last = torch.where(active, obj, last)
            ran[stalled] = t + 1
            active = active & ~stalled
            if not bool(active.any()):
                break
        ran[active] = t + 1
        iters += ran
        loop += t + 1
        up = torch.where(found, torch.minimum(up, c), up)
        lo = torch.where(found, lo, torch.maximum(lo, c))
        c = torch.where(up < 1e9, (lo + up) / 2, c * 10)
    return best_x, best_l2, iters, loop


def _mlp(seed: int) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    net = nn.Sequential(nn.Flatten(), nn.Linear(16, 12), nn.Tanh(), nn.Linear(12, 4)).double()
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64))
    return net


def _data(net: nn.Module, seed: int, n: int = 24) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.rand(n, 1, 4, 4, generator=torch.Generator().manual_seed(100 + seed), dtype=torch.float64)
    with torch.no_grad():
        return x, net(x).argmax(1)


# (model seed, c0, lr, steps, search steps, kappa, batch): chosen so that every rule decides somewhere
SCENARIOS = {
    "small-c": (0, 0.01, 0.02, 40, 4, 0.0, 24),
    "mid-c-kappa": (1, 0.1, 0.05, 50, 3, 0.3, 24),
    "odd-window": (2, 1.0, 0.05, 45, 3, 0.0, 24),
    "window-of-one": (0, 0.1, 0.05, 8, 3, 0.0, 24),
    # one sample stops and the other runs on alone to the end of the search step (a sub-batch of one)
    "one-left": (0, 0.1, 0.05, 30, 2, 0.0, 2),
    "single-sample": (1, 1.0, 0.05, 50, 3, 0.0, 1),
}


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_cw_abort_and_search_equal_the_documented_rules(name):
    seed, c0, lr, steps, search, kappa, n = SCENARIOS[name]
    net = _mlp(seed)
    x, y = _data(net, seed, n)
    stats: collections.Counter = collections.Counter()
    bx, bl2, iters, loop = cw_reference(net, x, y, c0=c0, steps=steps, search_steps=search, lr=lr, kappa=kappa,
                                        stats=stats)
    res = CW(net, c=c0, lr=lr, steps=steps, search_steps=search, kappa=kappa).run(x, y)
    assert torch.allclose(res.x_adv, bx, rtol=0, atol=1e-9)
    assert res.queries.dtype == torch.long and torch.equal(res.queries, iters)
    assert res.steps == loop
    found = torch.isfinite(bl2)
    assert torch.equal(res.success, found)
    assert torch.allclose(res.extras["best_l2"][found], bl2[found].sqrt(), rtol=0, atol=1e-9)
    assert 0 < int(found.sum())
    if n > 1:  # the scenario is not vacuous: samples stopped, at different iterations
        assert stats["stops"] > 0 and int(iters.min()) < int(iters.max())
    if n > 2 and name != "window-of-one":
        assert stats["kept_by_obj"] > 0 and stats["kept_by_min"] > 0 and stats["kept_by_adv"] > 0


def test_cw_abort_rules_decide_somewhere_in_the_scenarios():
    """Across the scenarios a search step ends early (the total rule), and some sample is never
    made adversarial (its c grows tenfold): the checks above see both branches."""
    ends, failed = 0, 0
    for seed, c0, lr, steps, search, kappa, n in SCENARIOS.values():
        net = _mlp(seed)
        x, y = _data(net, seed, n)
        stats: collections.Counter = collections.Counter()
        _, bl2, _, _ = cw_reference(net, x, y, c0=c0, steps=steps, search_steps=search, lr=lr, kappa=kappa,
                                    stats=stats)
        ends += stats["step_ends"]
        failed += int((~torch.isfinite(bl2)).sum())
    assert ends > 0 and failed > 0


def test_cw_without_abort_runs_every_iteration_and_equals_the_rules():
    net = _mlp(3)
    x, y = _data(net, 3, n=16)
    bx, bl2, iters, loop = cw_reference(net, x, y, c0=0.05, steps=30, search_steps=3, lr=0.05, abort=False)
    res = CW(net, c=0.05, lr=0.05, steps=30, search_steps=3, abort_early=False).run(x, y)
    assert torch.allclose(res.x_adv, bx, rtol=0, atol=1e-9)
    assert bool((res.queries == 90).all()) and bool((iters == 90).all()) and res.steps == loop == 90
    assert torch.equal(res.success, torch.isfinite(bl2))


def test_cw_averages_eot_draws_per_iteration_and_counts_them_as_queries():
    """A deterministic model: the EOT mean of identical gradients is the gradient, so the run is the
    same and only the queries (iterations x draws) double; max_batch splits the replicas, no more."""
    net = _mlp(0)
    x, y = _data(net, 0, n=8)
    one = CW(net, c=0.1, lr=0.05, steps=20, search_steps=2).run(x, y)
    two = CW(net, c=0.1, lr=0.05, steps=20, search_steps=2, eot=2, max_batch=5)
    assert (two.eot, two.max_batch) == (2, 5)
    res = two.run(x, y)
    assert torch.allclose(res.x_adv, one.x_adv, rtol=0, atol=1e-9)
    assert torch.equal(res.queries, 2 * one.queries) and res.steps == one.steps


def test_cw_defaults_are_the_papers():
    atk = CW(_mlp(0))
    assert (atk.c, atk.kappa, atk.steps, atk.lr, atk.search_steps, atk.abort_early) == (1e-3, 0.0, 1000, 1e-2, 9, True)
    assert (atk.targeted, atk.eot, atk.max_batch, atk.threat, atk.loss) == (False, 1, None, None, "margin")
    assert atk.seed is None  # C&W draws no random numbers


@pytest.mark.parametrize("settings,error,message", [
    ({"c": 0.0}, InputError, "c: must be > 0.0, got 0.0"),
    ({"c": -1.0}, InputError, "c: must be > 0.0, got -1.0"),
    ({"kappa": -0.5}, InputError, "kappa: must be >= 0.0, got -0.5"),
    ({"steps": 0}, InputError, "steps: must be an integer >= 1, got 0"),
    ({"lr": 0.0}, InputError, "lr: must be > 0.0, got 0.0"),
    ({"lr": -1.0}, InputError, "lr: must be > 0.0, got -1.0"),
    ({"search_steps": 0}, InputError, "search_steps: must be an integer >= 1, got 0"),
    ({"abort_early": 1}, InputTypeError, "abort_early: expected a bool"),
])
def test_cw_bad_settings_get_the_message_naming_the_setting(settings, error, message):
    with pytest.raises(error) as e:
        CW(_mlp(0), **settings)
    assert str(e.value).startswith(message)


def test_cw_smallest_settings_are_accepted():
    atk = CW(_mlp(0), c=1e-12, kappa=0.0, steps=1, lr=1e-12, search_steps=1)
    assert (atk.steps, atk.search_steps) == (1, 1)


def test_cw_refuses_labels_outside_the_models_classes_even_with_one_iteration():
    net = _mlp(0)  # 4 classes
    x, y = _data(net, 0, n=4)
    y[2] = 4
    with pytest.raises(InputError, match=r"^y: labels must lie in \[0, 3\] for a model with 4 classes, got max 4$"):
        CW(net, steps=1, search_steps=1).run(x, y)
