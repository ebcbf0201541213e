"""Attack behaviour: reproducibility, restarts, targeted mode, C&W search, APGD, registry, accuracy."""
from __future__ import annotations

import copy

import pytest
import torch

from robustsuite.attacks import (APGD, ATTACKS, BIM, CW, FGSM, MIM, PGD, AttackResult, GradientAttack,
                                 RestartAttack, TransferAttack, attack_names, attack_settings, make_attack,
                                 register_attack, robust_accuracy)
from robustsuite.attacks.apgd import apgd_checkpoints
from robustsuite.attacks.losses import margin_gap
from robustsuite.errors import InputError, InputTypeError
from robustsuite.threats import Box, L1Ball, L2Ball, LinfBall

try:
    from test_attacks_support import QUICK_SETTINGS, held_out, trained_cnn, one_thread  # noqa: F401
except ImportError:
    from tests.test_attacks_support import QUICK_SETTINGS, held_out, trained_cnn, one_thread  # noqa: F401


def test_seeded_attacks_are_reproducible_and_the_seed_matters():
    x, y = held_out(32)
    model = trained_cnn()
    a = PGD(model, L2Ball(0.5), steps=3, seed=7).run(x, y).x_adv
    b = PGD(model, L2Ball(0.5), steps=3, seed=7).run(x, y).x_adv
    c = PGD(model, L2Ball(0.5), steps=3, seed=8).run(x, y).x_adv
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_call_returns_the_same_points_as_run():
    x, y = held_out(32)
    atk = PGD(trained_cnn(), L1Ball(2.0), steps=4)
    assert torch.equal(atk(x, y), atk.run(x, y).x_adv)


@pytest.mark.parametrize("threat", [LinfBall(0.06), L2Ball(0.5)], ids=["linf", "l2"])
def test_restarts_keep_the_worst_case_per_sample(threat):
    """The first restart repeats the single run (same seed), later ones can only add successes."""
    x, y = held_out(128)
    model = trained_cnn()
    one = PGD(model, threat, steps=5, restarts=1, seed=3).run(x, y)
    many = PGD(model, threat, steps=5, restarts=4, seed=3).run(x, y)
    assert bool((many.success | ~one.success).all())
    assert int(many.success.sum()) >= int(one.success.sum())
    assert many.steps == 20 and int(many.queries[0]) == 4 * 5 + 4


def test_targeted_pgd_reaches_the_targets():
    x, y = held_out(64)
    target = (y + 3) % 10
    res = PGD(trained_cnn(), L2Ball(2.0), steps=20, targeted=True).run(x, target)
    assert float(res.success.float().mean()) > 0.8
    assert torch.equal(res.success, res.pred == target)


@pytest.mark.parametrize("cls", [FGSM, BIM, MIM], ids=["fgsm", "bim", "mim"])
def test_targeted_signed_attacks_move_towards_the_target(cls):
    x, y = held_out(64)
    model = trained_cnn()
    target = (y + 1) % 10
    res = cls(model, LinfBall(0.2), targeted=True).run(x, target)
    with torch.no_grad():
        before = margin_gap(model(x), target)
        after = margin_gap(model(res.x_adv), target)
    assert float((after > before).float().mean()) > 0.9  # the target logit gained on the others


def test_step_size_defaults_follow_the_documented_rules():
    m = trained_cnn()
    assert PGD(m, LinfBall(0.1), steps=10).resolved_step_size() == pytest.approx(0.025)
    assert PGD(m, LinfBall(0.1), steps=20).resolved_step_size() == pytest.approx(0.0125)
    assert BIM(m, LinfBall(0.1), steps=20).resolved_step_size() == pytest.approx(0.025)
    assert MIM(m, LinfBall(0.1)).resolved_step_size() == pytest.approx(0.01)
    assert FGSM(m, L2Ball(0.5)).resolved_step_size() == pytest.approx(0.5)
    box = Box.around(torch.zeros(1, 1, 8, 8), 0.1)
    assert PGD(m, box, steps=10).resolved_step_size() == pytest.approx(0.25)  # of the half-width
    paper = BIM.paper(m, LinfBall(8 / 255))
    assert paper.steps == 10 and paper.step_size == pytest.approx(1 / 255)


def test_cw_binary_search_keeps_the_smallest_success():
    """The first search step is the single-c run; later steps can only add or shrink successes."""
    x, y = held_out(64)
    model = trained_cnn()
    single = CW(model, c=0.5, steps=50, search_steps=1).run(x, y)
    search = CW(model, c=0.5, steps=50, search_steps=4).run(x, y)
    assert bool((search.success | ~single.success).all())
    both = single.success
    assert bool((search.distance[both] <= single.distance[both] + 1e-6).all())
    assert float(search.distance[both].mean()) < float(single.distance[both].mean())


class _Rows(torch.nn.Module):
    """Counts the rows a model is asked for."""

    def __init__(self, inner):
        super().__init__()
        self.inner, self.rows = inner, 0

    def forward(self, x):
        self.rows += x.shape[0]
        return self.inner(x)


def test_cw_early_abort_costs_no_distance_and_drops_stalled_samples():
    """With c = 1 the per-sample rule of before (stop when the current objective stalls) froze
    samples whose best adversarial was still shrinking: median L2 0.617 against 0.550 without
    abort. The abort keeps the no-abort median and forwards only the samples still running."""
    x, y = held_out(32)
    model = trained_cnn()
    free = CW(model, c=1.0, steps=1000, search_steps=1, abort_early=False).run(x, y)
    counted = _Rows(model)
    early = CW(counted, c=1.0, steps=1000, search_steps=1).run(x, y)
    assert torch.equal(early.success, free.success)
    ok = free.success
    assert float(early.distance[ok].median()) <= float(free.distance[ok].median()) * 1.005
    assert counted.rows == int(early.queries.sum()) + x.shape[0]   # + run's final success check
    assert int(early.queries.sum()) < 1000 * x.shape[0]


def test_cw_early_abort_ends_a_search_step_when_every_sample_stalls():
    """c far too small to succeed: the objective stalls at once for every sample, and each search
    step ends at its second check instead of running all its iterations."""
    x, y = held_out(16)
    res = CW(trained_cnn(), c=1e-6, steps=1000, search_steps=2).run(x, y)
    assert not bool(res.success.any())
    assert res.steps <= 2 * 201
    assert bool((res.queries <= 2 * 201).all())


def test_cw_confidence_margin_holds_at_the_returned_points():
    x, y = held_out(32)
    model = trained_cnn()
    res = CW(model, c=1.0, kappa=2.0, steps=60, search_steps=3).run(x, y)
    with torch.no_grad():
        gap = -margin_gap(model(res.x_adv), y)  # max_other - z_y
    assert int(res.success.sum()) > 0
    assert bool((gap[res.success] >= 2.0 - 1e-3).all())


def test_targeted_cw_reaches_the_targets():
    x, y = held_out(32)
    target = (y + 5) % 10
    res = CW(trained_cnn(), c=1.0, lr=0.05, steps=60, search_steps=3, targeted=True).run(x, target)
    assert int(res.success.sum()) > 16
    assert torch.equal(res.success, res.pred == target)


def test_apgd_checkpoints_follow_the_paper():
    assert apgd_checkpoints(100) == [22, 41, 57, 70, 80, 87, 93, 99]
    assert apgd_checkpoints(1) == [1]


@pytest.mark.parametrize("threat", [LinfBall(0.08), L2Ball(0.5)], ids=["linf", "l2"])
def test_apgd_is_at_least_as_strong_as_pgd_with_the_same_steps(threat):
    x, y = held_out(128)
    model = trained_cnn()
    pgd = PGD(model, threat, steps=20).run(x, y)
    apgd = APGD(model, threat, steps=20).run(x, y)
    assert int(apgd.success.sum()) >= int(pgd.success.sum())
    assert apgd.steps == 20 and int(apgd.queries[0]) == 21


def test_keep_worst_case_keeps_the_first_success_else_the_highest_loss():
    """The one restart rule (RestartAttack, used by the PGD family and APGD): a sample keeps the
    first restart that succeeded, later successes never replace it; until then the highest loss."""
    x = [torch.full((3, 1, 1, 1), float(r)) for r in range(3)]         # restart r's points are all r
    ok = [torch.tensor([False, True, False]), torch.tensor([False, True, True]), torch.tensor([True, False, False])]
    loss = [torch.tensor([1.0, 1.0, 5.0]), torch.tensor([2.0, 0.0, 0.0]), torch.tensor([0.0, 9.0, 9.0])]
    best_x, best_ok, best_loss = RestartAttack.keep_worst_case(zip(x, ok, loss))
    # sample 0: higher loss in restart 1, success in restart 2; sample 1: success in restart 0;
    # sample 2: success in restart 1, restart 2's higher loss does not replace it
    assert best_x.flatten().tolist() == [2.0, 0.0, 1.0]
    assert best_ok.tolist() == [True, True, True] and best_loss.tolist() == [0.0, 1.0, 0.0]
    # one run: returned as it is (its success and loss need not be computed)
    assert RestartAttack.keep_worst_case(iter([(x[1], None, None)]))[0] is x[1]
    for cls in (FGSM, BIM, PGD, MIM, APGD):
        assert issubclass(cls, RestartAttack) and "keep_worst_case" not in vars(cls)


def test_make_attack_builds_every_registered_attack():
    model = trained_cnn()
    for name in attack_names():
        cls = ATTACKS[name]
        threat = None if "none" in cls.threats else LinfBall(0.1)
        atk = make_attack(name, model, threat, **QUICK_SETTINGS[name])
        assert type(atk) is cls and cls.name == name
        assert "targeted" in attack_settings(name)
    assert make_attack("PGD", model, LinfBall(0.1), steps=3, restarts=2).restarts == 2
    # an attack built around another one is registered (the suite and the masking check read it)
    # but not built by name: the error says how to build it
    assert ATTACKS["transfer"] is TransferAttack and "transfer" not in attack_names()
    with pytest.raises(InputError, match="built around another attack"):
        make_attack("transfer", model, LinfBall(0.1))


def test_every_registered_attack_has_a_quick_entry():
    """The test tables read the registry; the one line an attack adds to them is its QUICK_SETTINGS."""
    missing = sorted(set(attack_names()) - set(QUICK_SETTINGS))
    assert not missing, f"add the attack(s) {missing} to QUICK_SETTINGS in tests/test_attacks_support.py"
    assert set(QUICK_SETTINGS) <= set(attack_names()), "QUICK_SETTINGS names an attack that is not registered"


def test_the_registry_declares_what_other_parts_read():
    """What EOT, the masking check and the suite need, read from the classes (the tables they replaced)."""
    assert attack_names(gradient=True) == ["apgd", "autoattack", "bim", "cw", "fab", "fgsm", "mim", "pgd"]
    assert attack_names(gradient=False, by_name=False) == ["boundary", "pixel", "square", "transfer"]
    assert {n: ATTACKS[n].eot_kind() for n in attack_names(eot=True, gradient=False)} == {
        "boundary": "vote", "square": "vote"}
    assert attack_names(eot=False, by_name=False) == ["fab", "pixel", "transfer"]  # FAB: no EOT mode yet
    assert ATTACKS["square"].query_budgets == ("n_queries",) and ATTACKS["boundary"].query_budgets == ("max_queries",)
    for name in attack_names(gradient=True, eot=True):
        # AutoAttack is an ensemble, not a GradientAttack: its eot setting reaches its APGD components
        assert issubclass(ATTACKS[name], GradientAttack) or name == "autoattack"
        assert ATTACKS[name].eot_kind() == "gradient"
    assert ATTACKS["pgd"].default_settings()["steps"] == 10


def test_register_attack_rejects_bad_names_and_taken_names():
    with pytest.raises(InputError, match="lowercase"):
        register_attack("My-Attack")
    with pytest.raises(InputError, match="taken by"):
        register_attack("pgd")(type("OtherPGD", (PGD,), {}))
    with pytest.raises(InputTypeError, match="subclass"):
        register_attack("notanattack")(int)
    assert register_attack("pgd")(PGD) is PGD and ATTACKS["pgd"] is PGD  # the same class again: a no-op


def test_robust_accuracy_reports_consistent_numbers_and_records():
    x, y = held_out(100)
    model = trained_cnn()
    out = robust_accuracy(model, x, y, PGD(model, LinfBall(0.08), steps=5), batch_size=32,
                          return_records=True)
    assert out["n"] == 100 and len(out["records"]) == 100
    assert 0 <= out["robust_accuracy"] < out["clean_accuracy"] <= 1
    assert out["robust_accuracy"] == pytest.approx(out["clean_accuracy"] * (1 - out["asr"]))
    assert out["robust_accuracy"] == pytest.approx(
        sum(r["clean_correct"] and not r["success"] for r in out["records"]) / 100)


def test_robust_accuracy_slices_a_per_sample_box_with_the_batches():
    x, y = held_out(50)
    model = trained_cnn()
    eps = torch.rand(x.shape, generator=torch.Generator().manual_seed(0)) * 0.15
    atk = PGD(model, Box.around(x, eps), steps=5, random_start=False)
    whole = atk.run(x, y)
    out = robust_accuracy(model, x, y, atk, batch_size=16, return_records=True)
    assert [r["success"] for r in out["records"]] == whole.success.tolist()


def test_box_with_learnable_budgets_gets_no_gradient_from_the_attack():
    x, y = held_out(16)
    eps = torch.full(x.shape, 0.05, requires_grad=True)
    res = PGD(trained_cnn(), Box.around(x, eps), steps=3).run(x, y)
    assert isinstance(res, AttackResult) and not res.x_adv.requires_grad
    assert eps.grad is None


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_attacks_run_on_the_inputs_device():
    cuda_model = copy.deepcopy(trained_cnn()).cuda()
    x, y = held_out(16)
    for atk in (PGD(cuda_model, L2Ball(0.5)), APGD(cuda_model, LinfBall(0.1), steps=5),
                CW(cuda_model, steps=5, search_steps=1)):
        res = atk.run(x.cuda(), y.cuda())
        assert res.x_adv.is_cuda and res.success.is_cuda
