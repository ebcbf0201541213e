"""ANIS2, PNI and TRADES: each algorithmic piece checked through its trainer against the test's own
re-computation of the source's equations (issue 15, items 1 and 2 for these methods).

* ANIS2 (Tan et al., slides "Proposed Method" and Algorithm 1): the EMA convention
  ``sigma <- (1 - alpha) sigma + alpha STD`` (checked with alpha = 0.9, where the two conventions
  differ), the gamma staircase ``k = r (gamma_max - gamma_init) / T`` with T the training epochs (the
  gamma the noise actually uses at every epoch), the student's start from the teacher's weights.
* PNI (He et al. 2019): the learned scale alpha gets exactly the gradient of the training loss (no
  weight decay) and moves.
* TRADES (Zhang et al. 2019, reference ``yaodongyu/TRADES``): the inner maximization raises the KL
  above its start ``x + 0.001 N(0, 1)`` and matches the reference's ascent; the outer loss is
  ``CE(f(x), y) + beta * KL(p(x) || p(x_adv))`` with gradients through both arguments.
"""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

import robustsuite.stochastic as S
import robustsuite.stochastic.noise as noise_mod
import robustsuite.stochastic.trades as trades_mod
from robustsuite.training.config import validate
from robustsuite.errors import ConfigError
from robustsuite.stochastic.adversarial import PNITrainer
from robustsuite.stochastic.anis2 import ANIS2Trainer
from robustsuite.stochastic.trades import TradesTrainer
from robustsuite.threats import L2Ball, LinfBall
from robustsuite.training.checkpoint import load_checkpoint
from robustsuite.training.run import build_datasets, build_model, train

BASE = {"name": "t", "seed": 0, "device": "cpu",
        "data": {"name": "digits", "train_subset": 64, "val_fraction": 0.25},
        "model": {"name": "resnet_v1", "options": {"depth": 8, "width": 0.25}}}
ATK = {"eps": 0.1, "steps": 1}
TRAINERS = {"anis2": ANIS2Trainer, "pni": PNITrainer, "trades": TradesTrainer}


def make_cfg(method, **extra):
    t = {"method": method, "epochs": 2, "batch_size": 32, "val_attack_steps": 0, "checkpoint_every": 1,
         "attack": ATK, "optim": {"name": "sgd", "lr": 0.05, "momentum": 0.9, "weight_decay": 0.1,
                                  "grad_clip": None}, **extra}
    return validate({**BASE, "train": t})


def make_trainer(method, tmp_path, **extra):
    cfg = make_cfg(method, **extra)
    torch.manual_seed(0)
    tr, va, _ = build_datasets(cfg)
    return TRAINERS[method](build_model(cfg, (1, 8, 8), 10), tr, va, cfg, tmp_path, torch.device("cpu"))


def batch(n=16, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, 8, 8, generator=g), torch.randint(0, 10, (n,), generator=g)


def channel_std(x):
    """The slides' STD_chnwise: per channel over the batch and spatial axes (unbiased)."""
    return x.transpose(0, 1).reshape(x.shape[1], -1).std(dim=1)


def kl(p_logits, q_logits):
    """KL(softmax(p) || softmax(q)), mean over the batch: written out, not through F.kl_div."""
    p = p_logits.softmax(1)
    return (p * (p_logits.log_softmax(1) - q_logits.log_softmax(1))).sum(1).mean()


def sgd_first_step(before, grad, lr, wd):
    """The first step of SGD with momentum (buffer = gradient + wd * p): p - lr * (g + wd * p)."""
    return before - lr * (grad + wd * before)


# --------------------------------------------------------------------------------------------- ANIS2
def record_ema_inputs(model):
    """Forward pre-hooks on every StocReLUEMA recording (name, input) of each forward that updates
    sigma (training mode, tracking on)."""
    seen, hooks = [], []
    for name, m in S.noise_layers(model):
        def hook(mod, inputs, name=name):
            if mod.training and mod.track:
                seen.append((name, inputs[0].detach().clone()))
        hooks.append(m.register_forward_pre_hook(hook))
    return seen, hooks


def test_anis2_ema_follows_the_slides_through_the_trainer(tmp_path):
    alpha = 0.9  # where (1 - a) sigma + a std and a sigma + (1 - a) std differ
    trainer = make_trainer("anis2", tmp_path, alpha=alpha, gamma_init=0.3, gamma_max=0.5, teacher_epochs=1,
                           gamma_step_every=1)  # r = 1: the first step's gamma (0.4) differs from gamma_init
    layers = dict(S.noise_layers(trainer.model))
    assert layers and all(isinstance(m, S.StocReLUEMA) and m.alpha == alpha for m in layers.values())
    assert all(m.gamma == pytest.approx(0.3) for m in layers.values()), "the student starts at gamma_init"
    seen, hooks = record_ema_inputs(trainer.model)
    x1, y1 = batch(16, 1)
    x2, y2 = batch(16, 2)
    trainer.train_step(x1, y1, 0)
    first = dict(seen)
    assert len(seen) == len(layers), "one EMA update per layer and batch (none from the PGD forwards)"
    for name, m in layers.items():  # sigma_1: the first batch's statistic (sigma_0 is left open by the slides)
        assert torch.allclose(m.sigma, channel_std(first[name]), rtol=1e-5, atol=1e-7)
        assert int(m.updates) == 1
    sigma1 = {n: m.sigma.clone() for n, m in layers.items()}
    seen.clear()
    trainer.train_step(x2, y2, 1)
    second = dict(seen)
    assert len(seen) == len(layers)
    for name, m in layers.items():
        std2 = channel_std(second[name])
        slides = (1 - alpha) * sigma1[name] + alpha * std2
        assert torch.allclose(m.sigma, slides, rtol=1e-5, atol=1e-7), f"{name}: not the slides' EMA"
        swapped = alpha * sigma1[name] + (1 - alpha) * std2
        assert not torch.allclose(slides, swapped, rtol=1e-3), "the test must tell the conventions apart"
        assert int(m.updates) == 2
    for h in hooks:
        h.remove()


def test_anis2_alpha_range():
    S.StocReLUEMA(2, alpha=1.0)  # alpha = 1: sigma is the last batch's statistic
    for bad in (0.0, 1.5, -0.1, float("nan")):
        with pytest.raises(ConfigError, match="alpha"):
            S.StocReLUEMA(2, alpha=bad)
    for bad in (0.0, 1.01):
        with pytest.raises(ConfigError, match="alpha"):
            make_cfg("anis2", alpha=bad)
    m = S.StocReLUEMA(1, alpha=1.0).train()
    m(torch.randn(8, 1, 2, 2))
    x = torch.randn(8, 1, 2, 2) * 7
    m(x)
    assert torch.allclose(m.sigma, channel_std(x))


def test_anis2_gamma_staircase_is_what_the_noise_uses_inside_the_trainer(tmp_path, monkeypatch):
    """Every forward of the student (training and validation) must add noise of variance
    gamma * sigma^2 with the slides' staircase gamma for the current epoch; the trained student
    holds gamma_max. The noise draw is replaced by the constant 2 (not 1: scale * d and scale / d
    must differ), so the output is ReLU(x + 2 sqrt(gamma) * sigma) exactly."""
    monkeypatch.setattr(noise_mod, "_draw", lambda x, shared: torch.full_like(x, 2.0))
    g0, g1, r, epochs = 0.1, 0.5, 2, 4
    k = r * (g1 - g0) / epochs  # the slides' step, T = the training epochs
    expected = {e: g0 + k * (e // r) for e in range(epochs + 1)}  # after e completed epochs
    assert expected[epochs] == pytest.approx(g1) and len(set(expected.values())) == 3
    cfg = make_cfg("anis2", epochs=epochs, teacher_epochs=1, gamma_init=g0, gamma_max=g1, gamma_step_every=r)
    torch.manual_seed(0)
    tr, va, _ = build_datasets(cfg)
    trainer = ANIS2Trainer(build_model(cfg, (1, 8, 8), 10), tr, va, cfg, tmp_path, torch.device("cpu"))
    checked: dict[tuple[int, bool], int] = {}

    def pre(mod, inputs):
        mod._spy = (inputs[0].detach().clone(), mod.sigma.clone())

    def post(mod, inputs, out):
        x, sigma = mod._spy
        if float(sigma.min()) <= 0:  # before the first EMA update there is no noise to see
            return
        e = trainer.epoch  # during epoch e; validation after it sees the next epoch's gamma
        scale = (expected[e] ** 0.5) * sigma.view(1, -1, 1, 1)
        assert torch.allclose(out, torch.relu(x + 2.0 * scale), atol=1e-6), \
            f"epoch {e} ({'train' if mod.training else 'eval'}): noise not at gamma {expected[e]}"
        checked[(e, mod.training)] = checked.get((e, mod.training), 0) + 1

    for _, m in S.noise_layers(trainer.model):
        m.register_forward_pre_hook(pre)
        m.register_forward_hook(post)
    trainer.fit()
    assert {e for e, training in checked if training} == set(range(epochs)), checked
    assert {e for e, training in checked if not training} == set(range(1, epochs + 1)), checked
    assert [round(float(h["gamma"]), 6) for h in trainer.history] == [round(expected[e], 6) for e in range(epochs)]
    state = load_checkpoint(tmp_path / "last.pt")["model_state"]
    gammas = [float(v) for n, v in state.items() if n.endswith("gamma_t")]
    assert gammas and all(g == pytest.approx(g1) for g in gammas), "the trained student holds gamma_max"


def test_anis2_gamma_ramp_override_holds_gamma_max():
    cfg = make_cfg("anis2", epochs=6, gamma_init=0.0, gamma_max=0.3, gamma_step_every=1, gamma_ramp_epochs=3)
    trainer = ANIS2Trainer.__new__(ANIS2Trainer)
    trainer.tcfg = cfg.train
    assert [trainer.gamma_at(e) for e in range(7)] == pytest.approx([0, 0.1, 0.2, 0.3, 0.3, 0.3, 0.3])
    trainer.tcfg = make_cfg("anis2", epochs=5, gamma_max=0.5, gamma_step_every=2).train
    # r does not divide T: k = 2 * 0.5 / 5 = 0.2, and the last step stops at 0.4 (Algorithm 1 as written)
    assert [trainer.gamma_at(e) for e in range(6)] == pytest.approx([0, 0, 0.2, 0.2, 0.4, 0.4])


@pytest.mark.parametrize("source", ["trained in fit", "teacher_checkpoint"])
def test_anis2_student_starts_from_the_teacher(source, tmp_path, monkeypatch):
    extra = {"epochs": 1, "teacher_epochs": 1}
    if source == "teacher_checkpoint":
        done = train(make_cfg("pgd_at", epochs=1), tmp_path / "teacher_run", quiet=True)
        extra["teacher_checkpoint"] = str(done.last)
        teacher_state = load_checkpoint(done.last)["model_state"]
    starts = []
    real = ANIS2Trainer.train_step

    def spy(self, x, y, step):
        if not starts:
            starts.append(copy.deepcopy(self.model.state_dict()))
        return real(self, x, y, step)

    monkeypatch.setattr(ANIS2Trainer, "train_step", spy)
    cfg = make_cfg("anis2", **extra)
    torch.manual_seed(0)
    init = build_model(cfg, (1, 8, 8), 10).state_dict()  # the fresh weights a student without its teacher has
    train(cfg, tmp_path / "student", quiet=True)
    if source == "trained in fit":
        teacher_state = load_checkpoint(tmp_path / "student" / "teacher" / "last.pt")["model_state"]
    start = starts[0]
    assert any(not torch.equal(v, init[k]) for k, v in teacher_state.items() if v.is_floating_point()), \
        "the teacher must differ from a fresh model, or the test proves nothing"
    for k, v in teacher_state.items():
        assert torch.equal(start[k], v), f"the student's {k} does not start from the teacher's"
    extra_keys = set(start) - set(teacher_state)
    assert extra_keys and all(k.rsplit(".", 1)[1] in {"sigma", "updates", "gamma_t"} for k in extra_keys)


# ----------------------------------------------------------------------------------------------- PNI
def test_pni_alpha_gets_the_training_gradient_and_moves(tmp_path, monkeypatch):
    """One PNI step: alpha_new = alpha - lr * dL/dalpha (no weight decay on alpha; the weights are
    decayed), with L = CE(f(x_adv), y) re-computed here on a copy with the same noise draws."""
    draws = []

    def record(x, shared):
        n = torch.randn_like(x)
        draws.append(n)
        return n

    monkeypatch.setattr(noise_mod, "_draw", record)
    trainer = make_trainer("pni", tmp_path)
    layers = S.noise_layers(trainer.model)
    assert layers and all(isinstance(m, S.ScalarNoise) for _, m in layers)
    before = copy.deepcopy(trainer.model)
    seen = {}
    real_loss = trainer.mixed_loss

    def spy(x, x_adv, y):
        seen["x_adv"] = x_adv.detach().clone()
        draws.clear()  # keep only the draws of the loss's forward pass
        return real_loss(x, x_adv, y)

    trainer.mixed_loss = spy
    x, y = batch(16, 3)
    stats = trainer.train_step(x, y, 0)
    loss_draws = list(draws)
    assert len(loss_draws) == len(layers)
    def pni_forward(self, h):  # the test's own PNI layer: h + alpha * std(h) * n, std a constant (PNI code: .item())
        std = h.detach().flatten(1).std(dim=1).view(-1, *[1] * (h.dim() - 1))
        return h + self.alpha * std * loss_draws.pop(0)

    monkeypatch.setattr(S.ScalarNoise, "forward", pni_forward)
    loss = F.cross_entropy(before(seen["x_adv"]), y)
    assert float(loss.detach()) == pytest.approx(float(stats["loss"]), rel=1e-5)
    loss.backward()
    lr, wd = 0.05, 0.1
    after = dict(trainer.model.named_parameters())
    for name, p in before.named_parameters():
        is_alpha = name.endswith("alpha")
        want = sgd_first_step(p.detach(), p.grad, lr, 0.0 if is_alpha else wd)
        assert torch.allclose(after[name].detach(), want, rtol=1e-4, atol=1e-6), name
        if is_alpha:
            assert float(p.grad.abs()) > 0, f"{name} gets no gradient"
            assert not torch.equal(after[name].detach(), p.detach()), f"{name} did not move"


def test_pni_noise_shrinks_where_it_only_hurts(tmp_path):
    """The simple case: near-clean training (eps 0.001). The expected loss under the noise is, to
    second order, L(h) + alpha^2 s^2 tr(H) / 2, so where the loss curves upwards (tr(H) > 0) the
    expected gradient on alpha has alpha's sign and |alpha| shrinks (He et al. 2019 report the same
    without adversarial training). Through the PNI trainer; every layer's |alpha| falls from 0.25."""
    trainer = make_trainer("pni", tmp_path, attack={"eps": 0.001, "steps": 1})
    from robustsuite.data import as_tensors
    x, y = as_tensors(trainer.train_set)
    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    for i in range(30):
        idx = torch.randint(0, len(x), (32,), generator=g)
        trainer.train_step(x[idx], y[idx], i)
    alphas = torch.stack([m.alpha.detach().abs() for _, m in S.noise_layers(trainer.model)])
    assert torch.all(alphas < 0.2) and float(alphas.mean()) < 0.12, alphas


def test_pni_noise_scales_with_alpha_and_the_sample_std():
    m = S.ScalarNoise(0.5).train()
    x = torch.randn(4, 3, 5, 5) * torch.tensor([1.0, 2.0, 3.0, 4.0]).view(4, 1, 1, 1)
    torch.manual_seed(0)
    out = m(x)
    torch.manual_seed(0)
    n = torch.randn_like(x)
    std = x.flatten(1).std(dim=1).view(4, 1, 1, 1)
    assert torch.allclose(out, x + 0.5 * std * n)
    out.sum().backward()
    assert torch.allclose(m.alpha.grad, (std * n).sum())


# -------------------------------------------------------------------------------------------- TRADES
def spy_adversary(monkeypatch):
    seen = {}
    real = trades_mod.trades_adversary

    def spy(model, x, settings):
        seen["rng"] = torch.get_rng_state()
        seen["x"] = x.detach().clone()
        out = real(model, x, settings)
        seen["x_adv"] = out.detach().clone()
        return out

    monkeypatch.setattr(trades_mod, "trades_adversary", spy)
    return seen


def reference_ascent(model, x, norm, eps, step, steps, start):
    """The TRADES inner maximization written from the paper's Algorithm 1 / the reference code:
    ascend KL(p(x) || p(x')) by sign (L-inf) or normalized (L2) gradient steps, project after each."""
    ball = LinfBall(eps) if norm == "linf" else L2Ball(eps)
    with torch.no_grad():
        clean = model(x)
    xa = start.clone()
    for _ in range(steps):
        xa.requires_grad_(True)
        (g,) = torch.autograd.grad(kl(clean, model(xa)), xa)
        with torch.no_grad():
            if norm == "linf":
                xa = xa + step * g.sign()
            else:
                xa = xa + step * g / g.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
            xa = ball.project(x, xa)
    return xa.detach()


def trades_loop_before_issue16(model, x, settings):
    """TRADES' adversary as the package wrote it before issue 16 (its own PGD loop), kept verbatim
    as the reference the PGD-with-KL-loss replacement must reproduce bit for bit."""
    from robustsuite.stochastic.adversarial import threat_of
    from robustsuite.stochastic.losses import trades_kl
    threat = threat_of(settings)
    step = settings.step_size or 2.5 * settings.eps / settings.steps
    with torch.no_grad():
        p_clean_logits = model(x)
    x_adv = threat.project(x, x + 0.001 * torch.randn_like(x)).detach()
    for _ in range(settings.steps):
        x_adv.requires_grad_(True)
        loss = trades_kl(model(x_adv), p_clean_logits)
        (grad,) = torch.autograd.grad(loss, x_adv)
        with torch.no_grad():
            if settings.norm == "linf":
                x_adv = x_adv + step * grad.sign()
            else:
                norm = grad.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, *[1] * (x.dim() - 1))
                x_adv = x_adv + step * grad / norm
            x_adv = threat.project(x, x_adv)
    return x_adv.detach()


@pytest.mark.parametrize("norm,eps,step_size,n", [("linf", 0.1, 0.03, 16), ("linf", 0.5, 0.01, 13),
                                                  ("l2", 1.0, None, 13), ("l2", 5.0, 0.05, 16)])
def test_trades_adversary_is_pgd_with_the_kl_loss_bit_for_bit(norm, eps, step_size, n):
    """trades_adversary (PGD, loss='kl', start x + 0.001 N(0, 1)) returns the old loop's points,
    draws the same random numbers in the same order (a dropout model: a forward draws too) and
    moves BatchNorm's statistics the same, so TRADES trains to the same numbers.

    L-inf (both shipped TRADES configs): bit for bit (sign steps and clamp projections are exact).
    L2: equal up to float rounding (<= 1e-6): PGD's one L2 step sums per-sample KLs where the old
    loop averaged them (gradients scaled by B), writes the step as ``x + size * (g / ||g||)`` and
    re-projects its output once more (``Attack.run``'s guarantee), each a last-bit difference."""
    from types import SimpleNamespace

    def net():
        torch.manual_seed(0)
        return torch.nn.Sequential(torch.nn.Conv2d(1, 8, 3, padding=1), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
                                   torch.nn.Dropout(0.2), torch.nn.Flatten(), torch.nn.Linear(8 * 64, 10)).train()

    settings = SimpleNamespace(norm=norm, eps=eps, steps=5, step_size=step_size)
    x = batch(n, seed=n)[0] * 0.5 + 0.25  # inside [0, 1] with room: steps are not all clipped
    out = {}
    for name, fn in (("old", trades_loop_before_issue16), ("new", trades_mod.trades_adversary)):
        model = net()
        torch.manual_seed(5)
        x_adv = fn(model, x, settings)
        out[name] = (x_adv, torch.get_rng_state(), model.state_dict(), model.training)
    (a, rng_a, state_a, train_a), (b, rng_b, state_b, train_b) = out["old"], out["new"]
    same = torch.equal if norm == "linf" else (lambda u, v: torch.allclose(u.float(), v.float(), rtol=0, atol=1e-6))
    assert same(a, b), f"x_adv differs from the old loop by {float((a - b).abs().max())}"
    assert float((a - x).abs().max()) > 0
    assert torch.equal(rng_a, rng_b), "not the same random draws"
    assert all(same(state_a[k], state_b[k]) for k in state_a), "BatchNorm moved differently"
    assert train_a and train_b, "the model's mode is left as it is"


@pytest.mark.parametrize("norm,eps,step", [("linf", 0.1, 0.1 / 3), ("l2", 1.0, 1 / 3), ("linf", 0.1, None)])
def test_trades_inner_maximization_raises_the_kl(norm, eps, step, tmp_path, monkeypatch):
    """... with train.attack.step_size, or by default 2.5 * eps / steps."""
    seen = spy_adversary(monkeypatch)
    trainer = make_trainer("trades", tmp_path, attack={"norm": norm, "eps": eps, "steps": 3, "step_size": step})
    before = copy.deepcopy(trainer.model)
    x, y = batch(16, 4)
    trainer.train_step(x, y, 0)
    torch.set_rng_state(seen["rng"])
    start = x + 0.001 * torch.randn_like(x)  # the reference's start point
    x_adv = seen["x_adv"]
    with torch.no_grad():
        clean = before(x)
        kl_start, kl_adv = float(kl(clean, before(start))), float(kl(clean, before(x_adv)))
    assert kl_adv > kl_start + 1e-4, f"the inner maximization did not raise the KL: {kl_start} -> {kl_adv}"
    ball = LinfBall(eps) if norm == "linf" else L2Ball(eps)
    assert torch.all(ball.distance(x, x_adv) <= eps + 1e-5) and x_adv.min() >= 0 and x_adv.max() <= 1
    want = reference_ascent(before, x, norm, eps, step or 2.5 * eps / 3, 3, ball.project(x, start))
    assert torch.allclose(x_adv, want, atol=1e-5), "x_adv is not the ascent of KL(p(x) || p(x'))"


@pytest.mark.parametrize("beta", [6.0, 1.5])
def test_trades_outer_loss_through_the_trainer(beta, tmp_path, monkeypatch):
    """loss = CE(f(x), y) + beta * KL(p(x) || p(x_adv)): the logged loss and KL, and the parameter
    update (gradients through both distributions), against the test's own computation."""
    seen = spy_adversary(monkeypatch)
    trainer = make_trainer("trades", tmp_path, beta=beta)
    before = copy.deepcopy(trainer.model)
    x, y = batch(16, 5)
    stats = trainer.train_step(x, y, 0)
    x_adv = seen["x_adv"]
    logits, logits_adv = before(x), before(x_adv)
    robust = kl(logits, logits_adv)  # clean first: KLDivLoss(log_softmax(adv), softmax(clean))
    loss = F.cross_entropy(logits, y) + beta * robust
    assert float(robust.detach()) > 1e-4, "the KL term must matter for the test to mean something"
    assert float(stats["kl"]) == pytest.approx(float(robust.detach()), rel=1e-4)
    assert float(stats["loss"]) == pytest.approx(float(loss.detach()), rel=1e-5)
    assert float(stats["adv_acc"]) == pytest.approx(float((logits_adv.argmax(1) == y).float().mean()))
    loss.backward()
    after = dict(trainer.model.named_parameters())
    for name, p in before.named_parameters():
        want = sgd_first_step(p.detach(), p.grad, 0.05, 0.1)
        assert torch.allclose(after[name].detach(), want, rtol=1e-4, atol=1e-6), f"{name}: not the TRADES update"


@pytest.mark.parametrize("w", [0.0, 0.3])
def test_anis2_student_loss_mixes_clean_and_adversarial_with_one_ema_update(tmp_path, monkeypatch, w):
    """With ``clean_weight`` w the student's loss is (1 - w) CE(f(x_adv)) + w CE(f(x)), and only the
    adversarial forward updates sigma (the clean one runs with the EMA paused)."""
    monkeypatch.setattr(noise_mod, "_draw", lambda x, shared: torch.full_like(x, 0.5))
    trainer = make_trainer("anis2", tmp_path, clean_weight=w, teacher_epochs=1)
    x, y = batch()
    x_adv = (x + 0.05 * torch.randn_like(x)).clamp(0, 1)
    ref = copy.deepcopy(trainer.model).train()
    ce_adv = F.cross_entropy(ref(x_adv), y)                      # updates the reference's sigma once
    sigmas = [m.sigma.clone() for _, m in S.noise_layers(ref)]
    with S.ema_paused(ref):
        ce_clean = F.cross_entropy(ref(x), y)
    adv_only = copy.deepcopy(trainer.model).train()
    adv_only(x_adv)
    trainer.model.train()
    loss, _ = trainer._student_loss(x, x_adv, y)
    expected = (1 - w) * ce_adv + w * ce_clean if w > 0 else ce_adv
    assert torch.allclose(loss, expected, atol=1e-6), (float(loss), float(expected))
    for s, (_, m) in zip(sigmas, S.noise_layers(trainer.model)):
        assert torch.equal(m.sigma, s), "the clean forward must not update sigma"
    # no clean forward at all without a clean weight (BatchNorm's running statistics see x_adv only)
    for (name, b), b_ref, b_adv in zip(trainer.model.named_buffers(), ref.buffers(), adv_only.buffers()):
        assert torch.allclose(b.float(), (b_ref if w > 0 else b_adv).float(), atol=1e-6), name
    # the whole step: the logged loss and adversarial accuracy are the mixed loss's
    seen = {}
    inner = trainer._student_loss

    def spy(*args):
        seen["out"] = inner(*args)
        return seen["out"]
    trainer._student_loss = spy
    stats = trainer.train_step(x, y, 0)
    step_loss, logits = seen["out"]
    assert float(stats["loss"]) == pytest.approx(float(step_loss.detach()))
    assert float(stats["adv_acc"]) == pytest.approx(float((logits.argmax(1) == y).float().mean()))


@pytest.mark.parametrize("adversarial", [False, True])
def test_anis2_teacher_is_trained_with_the_teacher_settings(tmp_path, monkeypatch, adversarial):
    """The teacher (trained in fit when no teacher_checkpoint is given) is a deterministic model of the
    student's architecture trained for teacher_epochs with teacher_optim on the student's batches, by
    CE (or PGD-AT with the student's attack when teacher_adversarial), in OUT/teacher, resuming."""
    import robustsuite.stochastic.anis2 as anis2_mod
    made = []

    class Spy:
        def __init__(self, model, train_set, val_set, cfg, out_dir, device, quiet=False):
            made.append((type(self), model, train_set, val_set, cfg, out_dir))

        def fit(self, resume=True):
            made.append(("fit", resume))

    std, adv = type("Std", (Spy,), {}), type("Adv", (Spy,), {})
    real_std = anis2_mod.StandardTrainer
    monkeypatch.setattr(anis2_mod, "StandardTrainer", std)
    monkeypatch.setattr(anis2_mod, "PGDATTrainer", adv)
    trainer = make_trainer("anis2", tmp_path, teacher_epochs=3, batch_size=16, checkpoint_every=2,
                           teacher_adversarial=adversarial, attack={"eps": 0.2, "steps": 2},
                           teacher_optim={"name": "sgd", "lr": 0.02, "momentum": 0.5})
    trainer._train_teacher(trainer.teacher, trainer._teacher_train_set, True)
    cls, model, train_set, val_set, cfg, out_dir = made[0]
    assert cls is (adv if adversarial else std) and made[1] == ("fit", True)
    assert model is trainer.teacher and train_set is trainer._teacher_train_set and val_set is None
    assert out_dir == tmp_path / "teacher" and cfg.seed == trainer.cfg.seed and cfg.data == trainer.cfg.data
    t, s = cfg.train, trainer.tcfg
    assert (t.method, t.epochs, t.batch_size, t.checkpoint_every) == ("pgd_at", 3, 16, 2)
    assert t.optim == s.teacher_optim and t.attack == s.attack and t.val_attack_steps == 0
    # the plain teacher's step: CE on the clean batch, and what it logs
    teacher = real_std(trainer.teacher, trainer._teacher_train_set, None, cfg, tmp_path / "t2", torch.device("cpu"))
    ref = copy.deepcopy(teacher.model).train()
    teacher.model.train()
    x, y = batch(16, 7)
    stats = teacher.train_step(x, y, 0)
    logits = ref(x)
    assert float(stats["loss"]) == pytest.approx(float(F.cross_entropy(logits, y).detach()), rel=1e-6)
    assert float(stats["acc"]) == pytest.approx(float((logits.argmax(1) == y).float().mean()))


@pytest.mark.parametrize("method", ["pni", "learn2perturb", "anis2"])
def test_noise_options_reach_the_layers(tmp_path, method):
    """noise.init and noise.shared (shared for ANIS2) configure the noise layers the trainer inserts."""
    from robustsuite.training.run import trainer_class
    extra = {"shared": True} if method == "anis2" else {"noise": {"init": 0.4, "shared": True}}
    if method == "learn2perturb":
        extra.update(noise_start=1, adv_start=1)
    cfg = make_cfg(method, **extra)
    torch.manual_seed(0)
    tr, va, _ = build_datasets(cfg)
    trainer = trainer_class(method)(build_model(cfg, (1, 8, 8), 10), tr, va, cfg, tmp_path, torch.device("cpu"))
    layers = [m for _, m in S.noise_layers(trainer.model)]
    assert layers and all(m.shared for m in layers)
    if method != "anis2":
        assert all(float(m.noise_scale()) == pytest.approx(0.4) for m in layers)


def test_trades_ascent_leaves_pixels_without_gradient_where_they_start():
    """A sign step moves a coordinate only along its gradient's sign: pixels the model does not see
    (gradient exactly 0) stay at the start point."""
    torch.manual_seed(0)
    lin = torch.nn.Linear(8, 10)

    class Half(torch.nn.Module):  # looks at the first 8 pixels of each image only
        def forward(self, x):
            return lin(x.flatten(1)[:, :8])

    settings = make_cfg("trades", attack={"eps": 0.1, "steps": 2}).train.attack
    x, _ = batch(4, 9)
    torch.manual_seed(3)
    x_adv = trades_mod.trades_adversary(Half(), x, settings)
    torch.manual_seed(3)
    start = LinfBall(0.1).project(x, x + 0.001 * torch.randn_like(x))
    assert torch.equal(x_adv.flatten(1)[:, 8:], start.flatten(1)[:, 8:])
    assert not torch.equal(x_adv.flatten(1)[:, :8], start.flatten(1)[:, :8])
