"""Every attack's output lies inside its threat set intersected with [0, 1] (balls and boxes)."""
from __future__ import annotations

import pytest
import torch

from robustsuite.attacks import APGD, EOT, FGSM, PGD, TransferAttack, attack_class, attack_names, make_attack
from robustsuite.threats import Box, L1Ball, L2Ball, LinfBall

try:
    from test_attacks_support import (QUICK_SETTINGS, NoisyInput, digits_cnn, held_out, one_thread,  # noqa: F401
                                      trained_cnn)
except ImportError:  # tests/ imported as a package
    from tests.test_attacks_support import (QUICK_SETTINGS, NoisyInput, digits_cnn, held_out,  # noqa: F401
                                            one_thread, trained_cnn)

N = 32


def _threat(kind: str, x: torch.Tensor):
    if kind == "linf":
        return LinfBall(0.1)
    if kind == "l2":
        return L2Ball(0.8)
    if kind == "l1":
        return L1Ball(3.0)
    if kind == "box":  # per-sample, per-element budgets
        eps = torch.rand(x.shape, generator=torch.Generator().manual_seed(1)) * 0.2
        return Box.around(x, eps)
    if kind == "box_shared":  # one box for the whole batch, not centred on x
        return Box(torch.full((1, 1, 8, 8), 0.2), torch.full((1, 1, 8, 8), 0.7))
    raise AssertionError(kind)


#: variants beyond each registered attack with its QUICK_SETTINGS: name -> (builder, threat kinds)
VARIANTS = {
    "pgd_margin_restarts": (lambda m, t: PGD(m, t, steps=3, restarts=2, loss="margin"), ("linf", "l2", "l1", "box")),
    "eot_pgd": (lambda m, t: EOT(PGD(NoisyInput(m, 0.05), t, steps=3), n=3, max_batch=40), ("linf", "l2", "l1", "box")),
    "transfer": (lambda m, t: TransferAttack(PGD(trained_cnn(seed=1), t, steps=3), target_model=m),
                 ("linf", "l2", "l1", "box")),
}


def _attack(name: str, threat):
    model = trained_cnn()
    if name in VARIANTS:
        return VARIANTS[name][0](model, threat)
    return make_attack(name, model, threat, **QUICK_SETTINGS[name])


def _kinds(threats) -> list[str]:
    """The test threat sets for an attack's supported kinds (a box both per-sample and shared)."""
    out = []
    for kind in threats:
        out += {"box": ["box", "box_shared"], "none": []}.get(kind, [kind])
    return out


# every registered attack on every threat set it declares, read from the registry
CASES = [(a, t) for a in attack_names() for t in _kinds(attack_class(a).threats)]
CASES += [(a, t) for a, (_, kinds) in VARIANTS.items() for t in _kinds(kinds)]


@pytest.mark.parametrize("attack_name,threat_kind", CASES, ids=[f"{a}-{t}" for a, t in CASES])
def test_outputs_inside_threat_set_and_unit_box(attack_name, threat_kind):
    torch.manual_seed(0)
    n = 6 if attack_name == "pixel" else N
    x, y = held_out(n)
    threat = _threat(threat_kind, x)
    atk = _attack(attack_name, threat)
    res = atk.run(x, y)
    assert res.x_adv.shape == x.shape and res.x_adv.dtype == x.dtype
    assert bool(((res.x_adv >= 0) & (res.x_adv <= 1)).all())
    assert bool(threat.contains(x, res.x_adv, atol=1e-5).all()), threat.distance(x, res.x_adv).max()
    assert res.success.shape == (n,) and res.success.dtype == torch.bool
    assert res.distance.shape == (n,) and res.queries.shape == (n,)
    # __call__ goes through the same projection
    assert bool(threat.contains(x, atk(x, y), atol=1e-5).all())


@pytest.mark.parametrize("kind", ["linf", "l2", "l1"])
def test_pgd_uses_its_budget_and_beats_clean_accuracy(kind):
    x, y = held_out(N)
    threat = _threat(kind, x)
    model = trained_cnn()
    res = PGD(model, threat, steps=10).run(x, y)
    with torch.no_grad():
        clean_wrong = (model(x).argmax(1) != y).sum()
    assert int(res.success.sum()) > int(clean_wrong)
    # the success flag is the model's verdict on the returned point
    with torch.no_grad():
        assert torch.equal(res.success, model(res.x_adv).argmax(1) != y)


def test_box_steps_scale_with_each_elements_width():
    """FGSM in a box centred on x moves every element with a nonzero gradient by its own half-width."""
    x, y = held_out(N)
    eps = 0.02 + 0.1 * torch.rand(x.shape, generator=torch.Generator().manual_seed(3))
    x_in = x.clamp(0.2, 0.8)  # away from the [0, 1] faces, so no clipping interferes
    threat = Box.around(x_in, eps)
    model = trained_cnn()
    x_adv = FGSM(model, threat)(x_in, y)
    grad = FGSM(model, threat).gradient(x_in, y)
    moved = (x_adv - x_in).abs()
    nz = grad != 0
    assert torch.allclose(moved[nz], eps[nz], atol=1e-6)
    assert torch.all(moved[~nz] == 0)


def test_box_random_start_stays_in_each_elements_interval():
    x, y = held_out(N)
    eps = torch.rand(x.shape, generator=torch.Generator().manual_seed(4)) * 0.1
    threat = Box.around(x, eps)
    x_adv = PGD(trained_cnn(), threat, steps=0, random_start=True)(x, y)
    assert bool(((x_adv - x).abs() <= eps + 1e-6).all())
    assert float((x_adv - x).abs().max()) > 0


def test_l1_pgd_step_is_sparse_and_avoids_saturated_pixels():
    """One sparse-L1 step with one kept coordinate changes exactly one pixel per sample: the top
    gradient coordinate among those that can move without leaving [0, 1]."""
    x, y = held_out(N)
    atk = PGD(trained_cnn(), L1Ball(0.5), steps=1, step_size=0.5, random_start=False,
              l1_fraction=1 / 64)
    x_adv = atk(x, y)
    changed = ((x_adv - x).abs() > 0).flatten(1).sum(1)
    assert torch.equal(changed, torch.ones_like(changed))


def test_untrained_model_still_gives_outputs_in_the_set():
    torch.manual_seed(0)
    x, y = held_out(N)
    res = APGD(digits_cnn(), L2Ball(0.5), steps=4).run(x, y)
    assert bool(L2Ball(0.5).contains(x, res.x_adv).all())
