"""EOT: gradient averaging over a stochastic model's randomness, batched and chunked, mode untouched."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from robustsuite.attacks import APGD, CW, EOT, FGSM, PGD, BoundaryAttack, attack_class, attack_names, make_attack
from robustsuite.attacks.gradients import loss_and_grad
from robustsuite.attacks.losses import ce_loss
from robustsuite.errors import InputTypeError
from robustsuite.threats import L2Ball, LinfBall

try:
    from test_attacks_support import QUICK_SETTINGS, NoisyInput, held_out, trained_cnn, one_thread  # noqa: F401
except ImportError:
    from tests.test_attacks_support import QUICK_SETTINGS, NoisyInput, held_out, trained_cnn, one_thread  # noqa: F401


def _gradient_variance(model, x, y, n: int, trials: int) -> float:
    """Variance over ``trials`` independent EOT estimates (batched as copies of the samples)."""
    xr, yr = x.repeat(trials, 1, 1, 1), y.repeat(trials)
    g = PGD(model, LinfBall(0.1), eot=n, max_batch=8192).gradient(xr, yr)
    return float(g.view(trials, x.shape[0], -1).var(0).mean())


def test_eot_gradient_variance_falls_as_one_over_n():
    torch.manual_seed(0)
    noisy = NoisyInput(trained_cnn(), sigma=0.3)
    x, y = held_out(2)
    v1, v4, v16 = (_gradient_variance(noisy, x, y, n, trials=400) for n in (1, 4, 16))
    # 1/n: each ratio is 4 in expectation (seeded runs give 3.7 to 4.3)
    assert 3.0 < v1 / v4 < 5.3, (v1, v4)
    assert 3.0 < v4 / v16 < 5.3, (v4, v16)


def test_eot_chunked_gradient_equals_the_plain_gradient_on_a_deterministic_model():
    model = trained_cnn()
    x, y = held_out(10)
    plain = PGD(model, LinfBall(0.1)).gradient(x, y)
    chunked = PGD(model, LinfBall(0.1), eot=5, max_batch=7).gradient(x, y)
    assert torch.allclose(plain, chunked, atol=1e-6)
    loss_p, _, logits_p = loss_and_grad(model, x, y, lambda z, t: ce_loss(z, t))
    loss_c, _, logits_c = loss_and_grad(model, x, y, lambda z, t: ce_loss(z, t), n=3, max_batch=4)
    assert torch.allclose(loss_p, loss_c, atol=1e-5) and torch.allclose(logits_p, logits_c, atol=1e-5)


def test_eot_wrapper_equals_the_eot_setting_and_leaves_the_attack_untouched():
    noisy = NoisyInput(trained_cnn(), sigma=0.2)
    x, y = held_out(32)
    base = PGD(noisy, LinfBall(0.1), steps=4)
    torch.manual_seed(5)
    a = EOT(base, n=4, max_batch=50).run(x, y)
    torch.manual_seed(5)
    b = PGD(noisy, LinfBall(0.1), steps=4, eot=4, max_batch=50).run(x, y)
    assert torch.equal(a.x_adv, b.x_adv)
    assert base.eot == 1 and base.max_batch is None
    assert int(a.queries[0]) == 4 * 4


def test_eot_attack_is_stronger_than_the_plain_attack_on_a_noisy_model():
    noisy = NoisyInput(trained_cnn(), sigma=0.4)
    x, y = held_out(128)

    def expected_accuracy(x_adv):
        torch.manual_seed(123)
        with torch.no_grad():
            return float(torch.stack([(noisy(x_adv).argmax(1) == y).float() for _ in range(64)]).mean())

    torch.manual_seed(1)
    plain = PGD(noisy, LinfBall(0.08), steps=10).run(x, y).x_adv
    torch.manual_seed(1)
    eot = EOT(PGD(noisy, LinfBall(0.08), steps=10), n=16).run(x, y).x_adv
    assert expected_accuracy(eot) < expected_accuracy(plain) - 0.01


class _DropoutNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = trained_cnn()
        self.drop = nn.Dropout(0.3)

    def forward(self, x):
        return self.body[6:](self.drop(self.body[:6](x)))


def _registered(name):
    """A registered attack with its quick settings, on a set it supports, with EOT where it takes it."""
    cls = attack_class(name)
    threat = next(t for t in (LinfBall(0.1), L2Ball(0.5), None)
                  if (t.norm if t is not None else "none") in cls.threats)
    extra = {"eot": 2} if cls.eot_kind() else {}
    return lambda m: make_attack(name, m, threat, **{**QUICK_SETTINGS[name], **extra})


MODE_CASES = {
    "eot_pgd": lambda m: EOT(PGD(m, LinfBall(0.1), steps=2), n=3),
    "apgd_l2": lambda m: APGD(m, L2Ball(0.5), steps=3, eot=2),
    "fgsm_chunked": lambda m: FGSM(m, LinfBall(0.1), eot=2, max_batch=5),
    "cw": lambda m: CW(m, steps=3, search_steps=1, eot=2),
    "boundary": lambda m: BoundaryAttack(m, max_queries=60),
    **{f"registered_{n}": _registered(n) for n in attack_names()},  # every registered attack
}


@pytest.mark.parametrize("make", list(MODE_CASES.values()), ids=list(MODE_CASES))
def test_attacks_never_switch_the_model_mode_nor_leave_gradients(make):
    model = _DropoutNet().train()
    flags = [p.requires_grad for p in model.parameters()]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x, y = held_out(16)
    make(model).run(x, y)
    assert model.training and all(m.training for m in model.modules())
    assert [p.requires_grad for p in model.parameters()] == flags
    assert all(p.grad is None for p in model.parameters())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_stochastic_model_keeps_its_noise_on_under_attack():
    model = _DropoutNet().train()
    x, y = held_out(16)
    atk = PGD(model, LinfBall(0.1))
    torch.manual_seed(0)
    g1 = atk.gradient(x, y)
    g2 = atk.gradient(x, y)
    assert not torch.allclose(g1, g2)  # dropout still draws fresh masks


def test_eot_refuses_attacks_without_gradients():
    with pytest.raises(InputTypeError, match="gradient attack"):
        EOT(BoundaryAttack(trained_cnn()), n=4)
