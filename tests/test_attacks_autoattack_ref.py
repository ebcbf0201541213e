"""Cross-checks against the AutoAttack reference implementation (``pyautoattack`` 0.2.0, the test
extra) on the same deterministic digits CNN, data and seeds.

Robust accuracies are compared in percentage points. APGD-CE/DLR and APGD-T differ from the
reference only in their random start (same algorithm otherwise), so one run each is compared.
Square is a random search whose outcome varies from run to run; the reference draws one square
position per query for the whole batch, so its batch robust accuracy varies much more than ours
(per-sample positions). Both are therefore averaged over five seeds, on all 1797 digits, the
reference run on chunks of 100 samples with their own seeds (independent positions between
chunks); ours uses ``reference_positions=True`` (the reference's corner range, see ``Square``).
"""
from __future__ import annotations

import pytest
import torch

from robustsuite.attacks import APGD, AutoAttack, Square
from robustsuite.attacks.square import meta_pattern, square_p
from robustsuite.threats import L2Ball, LinfBall

pytest.importorskip("pyautoattack", reason="needs the AutoAttack reference (pip install pyautoattack==0.2.0)")
from pyautoattack.autoattack import AutoAttack as ReferenceAutoAttack  # noqa: E402
from pyautoattack.autopgd_base import APGDAttack, APGDAttack_targeted  # noqa: E402
from pyautoattack.square import SquareAttack  # noqa: E402

try:
    from test_attacks_support import digits, held_out, one_thread, trained_cnn  # noqa: F401
except ImportError:
    from tests.test_attacks_support import digits, held_out, one_thread, trained_cnn  # noqa: F401


def _robust_pct(model, x_adv, y) -> float:
    with torch.no_grad():
        return 100.0 * float((model(x_adv).argmax(1) == y).float().mean())


def _ours_pct(model, res, x, y) -> float:
    with torch.no_grad():
        clean = model(x).argmax(1) == y
    return 100.0 * float((clean & ~res.success).float().mean())


def _threat(norm: str, eps: float):
    return LinfBall(eps) if norm == "Linf" else L2Ball(eps)


def test_square_p_schedule_matches_the_reference():
    ref = SquareAttack(lambda z: z, norm="Linf", eps=0.1, p_init=0.8)
    for n in (100, 1000, 5000, 10000):
        ref.n_queries = n
        for it in range(n):
            assert square_p(it, n, 0.8) == ref.p_selection(it), (n, it)


@pytest.mark.parametrize("s", [1, 2, 3, 5, 7, 9, 12])
def test_square_meta_pattern_matches_the_reference(s):
    ref = SquareAttack(lambda z: z, norm="L2", eps=1.0)
    ref.device = torch.device("cpu")
    ours = meta_pattern(s, dtype=torch.float32)
    theirs = ref.eta(s)  # the reference transposes it with probability 1/2
    assert torch.allclose(ours, theirs, atol=1e-6) or torch.allclose(ours.t(), theirs, atol=1e-6)


@pytest.mark.slow  # about 15 s alone, 30 s on a loaded machine: five seeds of both implementations
@pytest.mark.parametrize("norm,eps", [("Linf", 0.1), ("L2", 0.8)])
def test_square_robust_accuracy_within_one_point_of_the_reference(norm, eps):
    model = trained_cnn()
    x, y = digits()
    n_queries, seeds, chunk = 100, (0, 1, 2, 3, 4), 100
    ours = [_ours_pct(model, Square(model, _threat(norm, eps), n_queries=n_queries, seed=s,
                                    reference_positions=True).run(x, y), x, y) for s in seeds]
    theirs = []
    for s in seeds:
        adv = torch.cat([SquareAttack(model, norm=norm, eps=eps, n_queries=n_queries, seed=1000 * s + i)
                         .perturb(x[i:i + chunk], y[i:i + chunk]) for i in range(0, len(x), chunk)])
        theirs.append(_robust_pct(model, adv, y))
    ours_mean, theirs_mean = sum(ours) / len(ours), sum(theirs) / len(theirs)
    assert abs(ours_mean - theirs_mean) <= 1.0, (ours, theirs)


@pytest.mark.parametrize("norm,eps", [("Linf", 0.1), ("L2", 0.8)])
@pytest.mark.parametrize("loss", ["ce", "dlr"])
def test_apgd_robust_accuracy_within_one_point_of_the_reference(norm, eps, loss):
    model = trained_cnn()
    x, y = digits()
    x, y = x[-600:], y[-600:]
    ours = _ours_pct(model, APGD(model, _threat(norm, eps), steps=50, loss=loss).run(x, y), x, y)
    adv = APGDAttack(model, norm=norm, eps=eps, n_iter=50, loss=loss, seed=0).perturb(x, y)
    theirs = _robust_pct(model, adv, y)
    assert abs(ours - theirs) <= 1.0, (ours, theirs)


@pytest.mark.parametrize("norm,eps", [("Linf", 0.1), ("L2", 0.8)])
def test_apgd_t_robust_accuracy_within_one_point_of_the_reference(norm, eps):
    model = trained_cnn()
    x, y = held_out(297)
    ours = _ours_pct(model, APGD(model, _threat(norm, eps), steps=30, loss="dlr", targeted=True,
                                 n_target_classes=4).run(x, y), x, y)
    adv = APGDAttack_targeted(model, norm=norm, eps=eps, n_iter=30, n_target_classes=4, seed=0).perturb(x, y)
    theirs = _robust_pct(model, adv, y)
    assert abs(ours - theirs) <= 1.0, (ours, theirs)


@pytest.mark.slow  # 20-35 s for both norms on a loaded 2-core machine: both ensembles, twice
@pytest.mark.parametrize("norm,eps", [("Linf", 0.1), ("L2", 0.8)])
def test_standard_ensemble_never_above_the_references_robust_accuracy_by_more_than_one_sample(norm, eps):
    """The standard ensemble (APGD-CE, APGD-T, FAB-T, Square, the reference's settings) on 80 held-out
    digits: our robust samples at most one more than the reference's. Square's budget is cut to 1000
    queries on both sides (the time of a test; Square breaks little after the three gradient attacks)."""
    model = trained_cnn()
    x, y = held_out(80)
    ours = AutoAttack(model, _threat(norm, eps), n_queries=1000).run(x, y)
    assert ours.extras["names"] == ["apgd-ce", "apgd-t", "fab-t", "square"]
    ref = ReferenceAutoAttack(model, norm=norm, eps=eps, seed=0, version="standard")
    ref.verbose = False
    ref.square.n_queries = 1000
    assert ref.attacks_to_run == ours.extras["names"]
    try:
        adv, _ = ref.run_standard_evaluation(x, y, batch_size=500)
    finally:  # the reference's FAB calls backward(): clear the shared model's parameter gradients
        for p in model.parameters():
            p.grad = None
    with torch.no_grad():
        theirs = int((model(adv).argmax(1) == y).sum())
    assert int((~ours.success).sum()) <= theirs + 1, (int((~ours.success).sum()), theirs)
