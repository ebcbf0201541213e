"""Learn2Perturb through its trainer: each piece of the algorithm is checked against an independent
re-computation written here from the paper's equations (Algorithm 1, eqs. 7-9, 11; supplement A.4) or
from the authors' script (``variant: reference``), so removing or altering a piece fails a test.

Every check runs real ``train_step`` calls of :class:`Learn2PerturbTrainer` on a tiny ResNet and a
fixed batch; the random draws of the noise layers are replayed by reseeding torch's RNG.
"""
from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F

import robustsuite.stochastic.learn2perturb as l2p_mod
from robustsuite.training.config import validate
from robustsuite.errors import ConfigError
from robustsuite.stochastic import PerturbationInjection, set_noise
from robustsuite.stochastic.learn2perturb import Learn2PerturbTrainer
from robustsuite.training.checkpoint import load_checkpoint
from robustsuite.training.run import build_datasets, build_model, train

BASE = {"name": "l2p", "seed": 0, "device": "cpu",
        "data": {"name": "digits", "train_subset": 64, "val_fraction": 0.25},
        "model": {"name": "resnet_v1", "options": {"depth": 8, "width": 0.25}}}


def cfg_of(**train):
    t = {"method": "learn2perturb", "epochs": 4, "batch_size": 8,  # 6 steps per epoch "val_attack_steps": 1,
         "attack": {"eps": 0.1, "steps": 1}, "noise_start": 1, "adv_start": 3,
         "optim": {"name": "sgd", "lr": 0.05, "momentum": 0.0, "weight_decay": 0.0, "grad_clip": None}}
    for k, v in train.items():
        t[k] = {**t[k], **v} if isinstance(v, dict) and isinstance(t.get(k), dict) else v
    return validate({**BASE, "train": t})


def make_trainer(tmp_path, **train) -> Learn2PerturbTrainer:
    cfg = cfg_of(**train)
    torch.manual_seed(0)
    tr, va, _ = build_datasets(cfg)
    t = Learn2PerturbTrainer(build_model(cfg, (1, 8, 8), 10), tr, va, cfg, tmp_path, torch.device("cpu"),
                             quiet=True)
    t.model.train()
    return t


def batch():
    g = torch.Generator().manual_seed(1)
    return torch.rand(16, 1, 8, 8, generator=g), torch.randint(0, 10, (16,), generator=g)


def is_theta(name: str) -> bool:
    return name.endswith("theta")


def named(model):
    return dict(model.named_parameters())


def assert_params_equal(model, ref, what: str) -> None:
    for k, v in named(model).items():
        torch.testing.assert_close(v.detach(), ref[k], rtol=1e-5, atol=1e-7, msg=lambda m: f"{what}: {k}: {m}")


def tau(epoch: int, start: int) -> float:
    """The harmonic number H_(e - s + 1), written out."""
    return sum(1.0 / i for i in range(1, epoch - start + 2))


def sgd_dir(grad, buf, m: float, nesterov: bool):
    """torch.optim.SGD's step direction (dampening 0) and the new momentum buffer."""
    if m == 0:
        return grad, None
    buf = grad.clone() if buf is None else m * buf + grad
    return (grad + m * buf if nesterov else buf), buf


# ------------------------------------------------------------------------------------- the paper's Algorithm 1
@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_paper_variant_is_algorithm_1(tmp_path, momentum):
    """Three batches in the noise phase (epoch 2 = second noise epoch, tau = 1.5; the clean-loss phase
    before adv_start keeps the forward pass replayable): W and theta both move by the gradient of L at
    the same point (W^(t-1), theta^(t-1)), theta additionally by +gamma / (2 tau sqrt(theta^(t-1))) at
    full size (not times lr, not in the momentum), then the floor theta_min. With momentum: SGD with
    Nesterov momentum (A.4), weight decay on W only."""
    gamma, lr, theta_lr, wd = 0.002, 0.05, 1.0, 1e-3
    tr = make_trainer(tmp_path, gamma=gamma, theta_lr=theta_lr, noise={"theta_min": 0.25},
                      optim={"momentum": momentum, "weight_decay": wd})
    assert tr.tcfg.variant == "paper"
    x, y = batch()
    epoch = 2
    ref_model = copy.deepcopy(tr.model)
    set_noise(ref_model, True)
    p = {k: v.detach().clone() for k, v in named(ref_model).items()}
    bufs: dict[str, torch.Tensor | None] = {k: None for k in p}
    for i in range(3):
        torch.manual_seed(10 + i)
        stats = tr.train_step(x, y, epoch * tr.steps_per_epoch + i)
        # independent re-computation
        with torch.no_grad():
            for k, v in named(ref_model).items():
                v.copy_(p[k])
        torch.manual_seed(10 + i)
        loss = F.cross_entropy(ref_model(x), y)
        names = list(p)
        grads = dict(zip(names, torch.autograd.grad(loss, [named(ref_model)[k] for k in names])))
        assert float(stats["loss"]) == pytest.approx(float(loss.detach()), rel=1e-6)
        reg = -(gamma / tau(epoch, 1)) * sum(float(p[k].sqrt().sum()) for k in names if is_theta(k))
        assert float(stats["reg"]) == pytest.approx(reg, rel=1e-6)
        for k in names:
            g = grads[k] if is_theta(k) else grads[k] + wd * p[k]
            d, bufs[k] = sgd_dir(g, bufs[k], momentum, True)
            if is_theta(k):
                push = gamma / (2 * tau(epoch, 1) * p[k].sqrt())      # -gamma * grad g(theta^(t-1))
                p[k] = torch.clamp(p[k] - theta_lr * d + push, min=0.25)
            else:
                p[k] = p[k] - lr * d
        assert_params_equal(tr.model, p, f"paper step {i}")
    # not vacuous: the loss gradient moved theta down in places (the floor, at init, caught them)
    # and the push up in others
    thetas = torch.cat([p[k].flatten() for k in p if is_theta(k)])
    assert bool((thetas > 0.25).any()) and bool((thetas == 0.25).any())


def test_paper_push_is_up_and_not_scaled_by_the_learning_rate(tmp_path):
    """With theta's learning rate ~0 theta moves by the regularizer's push alone: up, by exactly
    gamma / (2 tau sqrt(theta)) whatever the rate (the reference variant would move it by lr * that)."""
    for theta_lr in (1e-9, 1e-7):
        tr = make_trainer(tmp_path, gamma=0.01, theta_lr=theta_lr, noise={"init": 0.16})
        x, y = batch()
        torch.manual_seed(0)
        tr.train_step(x, y, tr.steps_per_epoch)  # epoch 1 = noise start: tau = 1
        for t in tr.thetas():
            torch.testing.assert_close(t.detach(), torch.full_like(t, 0.16 + 0.01 / (2 * 0.4)), rtol=0, atol=1e-6)


# ------------------------------------------------------------------------------------- the authors' script
@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_reference_variant_is_the_two_step_script(tmp_path, momentum):
    """Per batch: (1) theta-only SGD step on gamma * g(theta) (the push times lr, into theta's
    momentum buffer); (2) the loss at the moved theta, one backward pass, W's and theta's optimizer
    steps (theta's momentum buffer now mixes both gradients), then the floor."""
    gamma, lr, theta_lr = 0.002, 0.05, 1.0
    tr = make_trainer(tmp_path, variant="reference", gamma=gamma, theta_lr=theta_lr, noise={"theta_min": 0.25},
                      optim={"momentum": momentum})
    x, y = batch()
    epoch = 2
    ref_model = copy.deepcopy(tr.model)
    set_noise(ref_model, True)
    p = {k: v.detach().clone() for k, v in named(ref_model).items()}
    bufs: dict[str, torch.Tensor | None] = {k: None for k in p}
    names = list(p)
    for i in range(2):
        torch.manual_seed(20 + i)
        tr.train_step(x, y, epoch * tr.steps_per_epoch + i)
        for k in names:  # step 1: the regularizer alone, d/dtheta of -(gamma/tau) sqrt(theta)
            if is_theta(k):
                d, bufs[k] = sgd_dir(-gamma / (2 * tau(epoch, 1) * p[k].sqrt()), bufs[k], momentum, True)
                p[k] = p[k] - theta_lr * d
        with torch.no_grad():
            for k, v in named(ref_model).items():
                v.copy_(p[k])
        torch.manual_seed(20 + i)
        loss = F.cross_entropy(ref_model(x), y)  # at the moved theta
        grads = dict(zip(names, torch.autograd.grad(loss, [named(ref_model)[k] for k in names])))
        for k in names:  # step 2: the loss, for W and theta
            d, bufs[k] = sgd_dir(grads[k], bufs[k], momentum, True)
            p[k] = p[k] - (theta_lr if is_theta(k) else lr) * d
            if is_theta(k):
                p[k] = p[k].clamp(min=0.25)
        assert_params_equal(tr.model, p, f"reference step {i}")
    thetas = torch.cat([p[k].flatten() for k in p if is_theta(k)])
    assert bool((thetas > 0.25).any()) and bool((thetas == 0.25).any())  # the floor was hit


def test_variants_differ_and_default_noise_start_follows_the_source():
    def section(**t):
        return validate({**BASE, "train": {"method": "learn2perturb", "epochs": 30, "attack": {"eps": 0.1}, **t}}).train
    paper, ref = section(), section(variant="reference")
    assert (paper.variant, paper.noise_start) == ("paper", 20)      # Sec. 3.3: 20 epochs before the noise
    assert (ref.variant, ref.noise_start) == ("reference", 10)      # the script's noise_add_delay
    assert paper.clean_weight == 0.5 and paper.gamma == 1e-4 and paper.adv_start == 20
    assert (paper.noise.init, paper.noise.theta_min, paper.noise.shared) == (0.25, 0.01, False)  # Sec. 3, A.4
    with pytest.raises(ConfigError, match="variant"):
        cfg_of(variant="authors")
    with pytest.raises(ConfigError, match=r"noise_start \(20, the paper variant's default\) must be < epochs"):
        section(epochs=15)                     # paper default 20 >= 15 epochs


# ------------------------------------------------------------------------------------- the loss (eq. 11)
@pytest.mark.parametrize("variant", ["paper", "reference"])
@pytest.mark.parametrize("w", [0.5, 0.3])
def test_loss_mixes_clean_and_adversarial(tmp_path, monkeypatch, variant, w):
    """From adv_start on, L = (1 - w) CE(f(x_adv), y) + w CE(f(x), y) (w = clean_weight, 0.5 by
    default: eq. 11 with alpha = beta = 0.5), x_adv crafted on the true labels, and W steps along its
    gradient. Noise is off here (epoch 0 < noise_start), so the loss is deterministic."""
    extra = {} if w == 0.5 else {"clean_weight": w}
    tr = make_trainer(tmp_path, variant=variant, adv_start=0, noise_start=1, **extra)
    assert tr.tcfg.clean_weight == w
    x, y = batch()
    x_adv = (x + 0.1 * torch.sign(torch.randn_like(x))).clamp(0, 1)
    calls = []

    def fake_attack(xx, yy):
        calls.append((xx, yy))
        return x_adv

    monkeypatch.setattr(tr, "adversarial", fake_attack)
    ref = copy.deepcopy(tr.model)
    set_noise(ref, False)
    stats = tr.train_step(x, y, 0)
    assert len(calls) == 1 and torch.equal(calls[0][0], x) and torch.equal(calls[0][1], y)
    loss = (1 - w) * F.cross_entropy(ref(x_adv), y) + w * F.cross_entropy(ref(x), y)
    assert float(stats["loss"]) == pytest.approx(float(loss.detach()), rel=1e-6)
    assert "adv_acc" in stats and "reg" not in stats
    with torch.no_grad():
        assert float(stats["adv_acc"]) == pytest.approx(float((ref(x_adv).argmax(1) == y).float().mean()))
    params = [v for k, v in named(ref).items() if not is_theta(k)]
    grads = torch.autograd.grad(loss, params)
    expect = {k: v.detach() - 0.05 * g for (k, v), g in zip([kv for kv in named(ref).items() if not is_theta(kv[0])],
                                                            grads)}
    expect.update({k: v.detach() for k, v in named(ref).items() if is_theta(k)})  # theta frozen before noise
    assert_params_equal(tr.model, expect, "mixed-loss step")


def test_clean_loss_before_adv_start(tmp_path, monkeypatch):
    tr = make_trainer(tmp_path, adv_start=2, noise_start=1)
    monkeypatch.setattr(tr, "adversarial", lambda *a: pytest.fail("no attack before adv_start"))
    x, y = batch()
    ref = copy.deepcopy(tr.model)
    set_noise(ref, False)
    stats = tr.train_step(x, y, 0)
    assert float(stats["loss"]) == pytest.approx(float(F.cross_entropy(ref(x), y).detach()), rel=1e-6)
    assert "adv_acc" not in stats


# ------------------------------------------------------------------------------------- delay and tau schedule
@pytest.mark.parametrize("variant", ["paper", "reference"])
def test_noise_delay_and_harmonic_tau_inside_the_trainer(tmp_path, monkeypatch, variant):
    """Before noise_start: noise off in every layer, theta untouched (no regularizer, no theta step),
    the model deterministic. From noise_start: noise on, theta learned, and the regularizer called
    with tau = H_1, H_2, H_3 in the noise epochs s, s + 1, s + 2."""
    seen = []
    real = l2p_mod.learn2perturb_regularizer

    def spy(thetas, gamma, tau_):
        seen.append((gamma, tau_))
        return real(thetas, gamma, tau_)

    monkeypatch.setattr(l2p_mod, "learn2perturb_regularizer", spy)
    tr = make_trainer(tmp_path, variant=variant, noise_start=2, adv_start=9, epochs=10, gamma=0.01)
    x, y = batch()
    layers = [m for m in tr.model.modules() if isinstance(m, PerturbationInjection)]
    theta0 = [t.detach().clone() for t in tr.thetas()]
    w0 = tr.model.fc.weight.detach().clone() if hasattr(tr.model, "fc") else None
    spe = tr.steps_per_epoch
    for epoch in (0, 1):
        tr.train_step(x, y, epoch * spe)
        assert not any(m.noise_on for m in layers)
        assert all(torch.equal(a, b) for a, b in zip(tr.thetas(), theta0))
        assert not tr.theta_optimizer.state
        with torch.no_grad():
            assert torch.equal(tr.model(x), tr.model(x))
    assert seen == []
    if w0 is not None:
        assert not torch.equal(tr.model.fc.weight, w0)  # W trains during the delay
    for epoch in (2, 3, 4):
        stats = tr.train_step(x, y, epoch * spe)
        assert all(m.noise_on for m in layers)
        assert float(stats["reg"]) < 0  # gamma * g(theta), logged in both variants
    assert [g for g, _ in seen] == [0.01] * 3
    assert [t for _, t in seen] == pytest.approx([1.0, 1.5, 1 + 1 / 2 + 1 / 3])
    assert not all(torch.equal(a, b) for a, b in zip(tr.thetas(), theta0))


def test_theta_lr_follows_the_milestones_and_weights_momentum(tmp_path):
    tr = make_trainer(tmp_path, theta_lr=0.2, optim={"milestones": [1], "gamma": 0.1, "momentum": 0.8})
    g = tr.theta_optimizer.param_groups[0]
    assert g["momentum"] == 0.8 and g["nesterov"] and g["weight_decay"] == 0
    x, y = batch()
    tr.train_step(x, y, tr.steps_per_epoch)
    assert g["lr"] == pytest.approx(0.2)
    tr.scheduler.step()
    tr.scheduler.step()
    tr.train_step(x, y, 2 * tr.steps_per_epoch)
    assert tr.optimizer.param_groups[0]["lr"] == pytest.approx(0.005)
    assert g["lr"] == pytest.approx(0.02)
    tr0 = make_trainer(tmp_path, optim={"momentum": 0.0})  # no Nesterov without momentum (SGD would refuse)
    assert not tr0.theta_optimizer.param_groups[0]["nesterov"]


# ------------------------------------------------------------------------------------- resume, both variants
@pytest.mark.parametrize("variant", ["reference"])  # the paper default is in tests/test_resume_exact.py
def test_reference_variant_resumes_exactly(tmp_path, variant):
    cfg = cfg_of(variant=variant, epochs=3, noise_start=1, adv_start=1, gamma=0.01,
                 optim={"momentum": 0.9, "milestones": [2]})
    full = train(cfg, tmp_path / "full", quiet=True)
    train(cfg, tmp_path / "part", quiet=True, stop_after=2)
    train(cfg, tmp_path / "part", quiet=True)
    a, b = load_checkpoint(full.last), load_checkpoint(tmp_path / "part" / "last.pt")
    for k, v in a["model_state"].items():
        assert torch.equal(v, b["model_state"][k]), k
    sa, sb = a["extra"]["theta_optimizer"]["state"], b["extra"]["theta_optimizer"]["state"]
    assert sa.keys() == sb.keys() and all(torch.equal(sa[i]["momentum_buffer"], sb[i]["momentum_buffer"]) for i in sa)
    assert math.isclose(a["extra"]["theta_optimizer"]["param_groups"][0]["lr"], 0.005)


# ------------------------------------------------------------------------------------- the layer (eqs. 4-6)
@pytest.mark.parametrize("shared", [False, True])
def test_perturbation_injection_is_x_plus_theta_times_standard_normal(shared):
    """P = f(X) + theta * N(0, 1) (eqs. 4-5): theta scales the standard deviation, elementwise; one
    draw per sample, or one for the batch with ``shared``; nothing without noise."""
    layer = PerturbationInjection((2, 3, 3), init=0.25, shared=shared)
    with torch.no_grad():
        layer.theta.copy_(torch.linspace(0.1, 2.0, 18).view(2, 3, 3))
    x = torch.rand(4, 2, 3, 3)
    torch.manual_seed(7)
    out = layer(x)
    torch.manual_seed(7)
    z = torch.randn((1, 2, 3, 3)) if shared else torch.randn_like(x)
    torch.testing.assert_close(out, x + layer.theta.detach() * z, rtol=0, atol=1e-6)
    layer.noise_on = False
    assert torch.equal(layer(x), x)


def test_best_pt_only_once_noise_and_adversarial_loss_are_on(tmp_path):
    """best.pt may be chosen only after the first epoch trained with noise on and the adversarial loss
    (epoch > max(noise_start, adv_start)), or at the end when adv_start is past the last epoch; the
    validation reports the mean noise scale theta."""
    tr = make_trainer(tmp_path, epochs=6, noise_start=1, adv_start=3)
    ok = []
    for e in range(7):
        tr.epoch = e
        ok.append(tr.selectable())
    assert ok == [False, False, False, False, True, True, True]
    late = make_trainer(tmp_path / "late", epochs=4, noise_start=1, adv_start=10)
    late.epoch = 3
    assert not late.selectable()
    late.epoch = 4
    assert late.selectable()
    with torch.no_grad():
        tr.thetas()[0].fill_(0.5)
    n = len(tr.thetas())
    tr.val_set = []
    assert tr.validate()["noise_scale"] == pytest.approx((0.5 + 0.25 * (n - 1)) / n)
