"""MNG-AC through its trainer: every algorithmic piece is checked against an independent
recomputation written here (the paper's equations / the authors' code), so removing or altering one
fails a test. Tiny models on 8x8 digits, one or a few steps each."""
from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call

import robustsuite.stochastic.mng_ac as mng
from robustsuite.training.config import validate
from robustsuite.stochastic.config import MNGACConfig
from robustsuite.stochastic.losses import js_divergence as S_js
from robustsuite.stochastic.noise_generator import NoiseGenerator, fit_perturbation, rescale_l2
from robustsuite.threats import L1Ball, L2Ball, LinfBall
from robustsuite.training.run import build_datasets, build_model

RESNET = {"name": "resnet_v1", "options": {"depth": 8, "width": 0.25}}
CNN = {"name": "cnn_small", "options": {"width": 0.25, "linear": 16}}
LINF = {"norm": "linf", "eps": 0.1, "steps": 1}
L1 = {"norm": "l1", "eps": 2.0, "steps": 1}
L2 = {"norm": "l2", "eps": 0.5, "steps": 1}
OPTIM = {"name": "sgd", "lr": 0.05, "momentum": 0.9, "weight_decay": 5e-4, "grad_clip": None}


def make_trainer(tmp_path, model=RESNET, **train):
    t = {"method": "mng_ac", "epochs": 2, "batch_size": 8, "val_attack_steps": 1, "val_subset": 8,
         "attacks": [LINF, L1, L2], "lr_max": 0.2, "optim": OPTIM, **train}
    cfg = validate({"name": "t", "seed": 0, "device": "cpu", "model": model, "train": t,
                    "data": {"name": "digits", "train_subset": 32, "val_fraction": 0.25}})
    torch.manual_seed(0)
    tr, va, _ = build_datasets(cfg)
    return mng.MNGACTrainer(build_model(cfg, (1, 8, 8), 10), tr, va, cfg, tmp_path, torch.device("cpu"), quiet=True)


def batch(n=8, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, 8, 8, generator=g), torch.randint(0, 10, (n,), generator=g)


def first_lr(trainer) -> float:
    """The cyclic lr of the first step, written out: 0 -> lr_max at 40 % of the steps."""
    t = trainer.tcfg
    return t.lr_max * (1 / (t.epochs * trainer.steps_per_epoch)) / t.cyclic_peak


def spy_loss(trainer) -> dict:
    """Record the classifier loss's inputs (x, x_adv, x_aug) of the step."""
    seen: dict = {}
    inner = trainer._loss

    def spy(x, x_adv, x_aug, y):
        seen.update(x=x.clone(), x_adv=x_adv.clone(), x_aug=x_aug.clone())
        return inner(x, x_adv, x_aug, y)
    trainer._loss = spy
    return seen


def js_by_hand(*logits):
    """Three-way Jensen-Shannon divergence as the reference writes it (mixture clamped to [1e-7, 1])."""
    p = [F.softmax(z, 1) for z in logits]
    m = torch.clamp(sum(p) / len(p), 1e-7, 1)
    return sum((q * (q.clamp_min(1e-30).log() - m.log())).sum(1).mean() for q in p) / len(p)


def test_js_divergence_stays_finite_on_saturated_logits():
    """The mixture is clamped to [1e-7, 1]: a class every distribution gives probability 0 (float
    underflow) must not turn the consistency term into NaN."""
    a = torch.tensor([[0.0, -200.0, 0.0]])
    b = torch.tensor([[0.0, -300.0, 1.0]])
    js = S_js(a, b, a + 0.5)
    assert bool(torch.isfinite(js)) and float(js) > 0


# ------------------------------------------------------------------------------------------ config
def test_variant_sets_the_generator_defaults_and_overrides_stay():
    paper, ref = MNGACConfig(), MNGACConfig(variant="reference")
    assert paper.variant == "paper" and (paper.generator.input, paper.generator.projection) == ("image", "exact")
    assert (ref.generator.input, ref.generator.projection) == ("noise", "reference")
    mixed = MNGACConfig(variant="reference", generator={"input": "image"})
    assert (mixed.generator.input, mixed.generator.projection) == ("image", "reference")
    g = paper.generator
    assert (g.hidden, g.lr_scale, g.momentum, g.weight_decay) == (20, 1.0, 0.9, 5e-4)
    assert paper.js_weight == 12 and paper.lr_max == 0.21
    assert (paper.optim.name, paper.optim.momentum, paper.optim.weight_decay, paper.optim.grad_clip) == \
        ("sgd", 0.9, 5e-4, None)
    # the reference's training PGDs (attack_pgd in train_MNG.py), in pixel units of [0, 1] images
    assert [(a.norm, a.eps, a.steps, a.step_size) for a in paper.attacks] == \
        [("linf", 8 / 255, 10, 1 / 255), ("l1", 2000 / 255, 20, 1.0), ("l2", 128 / 255, 10, 30 / 255)]
    assert paper.attacks[1].l1_fraction == 0.01 and paper.attack == paper.attacks[0]
    # an L1 attack steps on the top 1 % of coordinates unless told otherwise
    assert MNGACConfig(attacks=[L1]).attacks[0].l1_fraction == 0.01
    assert MNGACConfig(attacks=[{**L1, "l1_fraction": 0.05}]).attacks[0].l1_fraction == 0.05
    with pytest.raises(Exception, match="variant"):
        MNGACConfig(variant="code")
    with pytest.raises(Exception, match="lr"):
        MNGACConfig(generator={"lr": 1e-4})  # the old Adam setting is refused, not silently reinterpreted


def test_trainer_builds_what_the_config_says(tmp_path):
    tr = make_trainer(tmp_path)
    assert tr.generator.use_image and tr.generator.projection == "exact"
    assert [getattr(a, "l1_fraction", None) for a in tr.attacks][1] == 0.01
    opt = tr.gen_optimizer
    assert isinstance(opt, torch.optim.SGD)
    assert opt.param_groups[0]["momentum"] == 0.9 and opt.param_groups[0]["weight_decay"] == 5e-4
    ref = make_trainer(tmp_path / "r", variant="reference")
    assert not ref.generator.use_image and ref.generator.projection == "reference"


# ------------------------------------------------------------------------------------------ generator
def test_generator_is_the_reference_architecture():
    torch.manual_seed(0)
    for use_image in (False, True):
        gen = NoiseGenerator(3, use_image=use_image)
        convs = [m for m in gen.net if isinstance(m, torch.nn.Conv2d)]
        assert [c.kernel_size for c in convs] == [(1, 1), (3, 3), (1, 1), (1, 1)]
        assert [c.out_channels for c in convs] == [20, 20, 20, 3]
        assert all(float(c.bias.detach().abs().max()) == 0 for c in convs)
        x = torch.rand(2, 3, 6, 6)
        z = gen.draw_noise(x)
        assert z.shape == (2, 3, 8, 8)
        h = torch.cat([z, F.pad(x, (1, 1, 1, 1))], 1) if use_image else z
        for i, c in enumerate(convs):
            h = F.conv2d(h, c.weight, c.bias)  # no padding: the 3x3 takes H+2 back to H
            h = F.leaky_relu(h, 0.01) if i < 3 else h + z[:, :, 1:-1, 1:-1]
        assert torch.allclose(gen.perturbation(x, z), h, atol=1e-6)
        # the image matters only for the paper's generator
        assert torch.equal(gen.perturbation(x, z), gen.perturbation(torch.rand_like(x), z)) != use_image


def test_generator_init_follows_the_reference():
    torch.manual_seed(0)
    gen = NoiseGenerator(3, hidden=20)
    for c in [m for m in gen.net if isinstance(m, torch.nn.Conv2d)]:
        std = math.sqrt(2 / (c.kernel_size[0] * c.kernel_size[1] * c.out_channels))
        assert float(c.weight.detach().std()) == pytest.approx(std, rel=0.3)


def test_l2_rescale_reaches_exactly_eps_after_the_clip():
    torch.manual_seed(0)
    x = torch.rand(6, 1, 8, 8)
    x[0] = 1.0  # a saturated image: half the directions have no room
    for scale in (1e-3, 0.1, 10.0):  # scaled up as well as down
        delta = scale * torch.randn_like(x)
        delta.requires_grad_(True)
        out = rescale_l2(x, delta, 0.5)
        d = out - x
        norms = d.flatten(1).norm(dim=1)
        reachable = torch.where(delta >= 0, 1 - x, x).flatten(1).where(delta.flatten(1) != 0, 0).norm(dim=1) > 0.5
        assert torch.allclose(norms[reachable], torch.full_like(norms[reachable], 0.5), atol=1e-4)
        assert float(out.detach().min()) >= 0 and float(out.detach().max()) <= 1
        # the same direction: the pixels that are not clipped move by eta * delta, one eta per image
        free = (out > 0) & (out < 1) & (delta.abs() > 1e-6)
        for i in range(x.shape[0]):
            ratios = (d[i][free[i]] / delta[i][free[i]]).detach()
            assert float(ratios.max() - ratios.min()) <= 1e-3 * float(ratios.abs().max())
        out.sum().backward()
        assert delta.grad is not None and bool(torch.isfinite(delta.grad).all())
    # the projection does not scale a small perturbation up
    small = 1e-3 * torch.randn_like(x)
    assert float(fit_perturbation(x, small, L2Ball(0.5), "exact").sub(x).flatten(1).norm(dim=1).max()) < 0.1
    # L-inf: clamp then clip is the projection; L1: projected onto the ball, then clipped
    big = torch.randn_like(x)
    assert torch.allclose(fit_perturbation(x, big, LinfBall(0.1), "reference"), LinfBall(0.1).project(x, x + big))
    l1 = fit_perturbation(x, big, L1Ball(2.0), "reference")
    assert bool(L1Ball(2.0).contains(x, l1).all())


# ------------------------------------------------------------------------------------------ the step
def test_classifier_step_is_ce_adv_plus_12_js_on_three_separate_passes(tmp_path):
    """The loss logged and the update taken are CE(f(x_adv)) + 12 * JS(clean, adv, aug), with
    BatchNorm running statistics updated by three passes (clean, aug, adv) and by nothing else (the
    training attack and the look-ahead leave them)."""
    tr = make_trainer(tmp_path)
    assert tr.tcfg.js_weight == 12
    ref = copy.deepcopy(tr.model)
    seen = spy_loss(tr)
    x, y = batch()
    stats = tr.train_step(x, y, 0)
    ref.train()
    logits = {k: ref(seen[k]) for k in ("x", "x_aug", "x_adv")}  # the reference's order
    ce = F.cross_entropy(logits["x_adv"], y)
    js = js_by_hand(logits["x"], logits["x_adv"], logits["x_aug"])
    loss = ce + 12 * js
    assert float(js.detach()) > 1e-4  # the test can see the term
    assert float(stats["loss"]) == pytest.approx(float(loss.detach()), rel=1e-5)
    assert float(stats["js"]) == pytest.approx(float(js.detach()), rel=1e-4)
    for (name, b), b_ref in zip(tr.model.named_buffers(), ref.buffers()):
        assert torch.allclose(b.float(), b_ref.float(), atol=1e-6), f"BatchNorm buffer {name}"
    loss.backward()
    lr = first_lr(tr)
    for (name, p), p_ref in zip(tr.model.named_parameters(), ref.parameters()):
        expected = p_ref - lr * (p_ref.grad + 5e-4 * p_ref)  # SGD's first step (momentum buffer = gradient)
        assert torch.allclose(p, expected, atol=1e-6), f"classifier update of {name}"


@pytest.mark.parametrize("share", [1.0, 0.5])
def test_meta_step_matches_a_torch_func_recomputation(tmp_path, share):
    """The generator's update is -lr * (w * d/d phi CE(f_theta'(x_adv)) + wd * phi) with the look-ahead
    theta' = theta - lr * grad_theta CE(f_theta(x_aug(phi))), recomputed with torch.func; w is this
    rank's share of the global batch (1 in one process; set here as torchrun would)."""
    tr = make_trainer(tmp_path, model=CNN, attacks=[L2])
    tr.loss_weight = share
    z = torch.randn(8, 1, 10, 10, generator=torch.Generator().manual_seed(3))
    tr.generator.draw_noise = lambda x: z  # the same noise in the step and here
    model0, gen0 = copy.deepcopy(tr.model), copy.deepcopy(tr.generator)
    seen = spy_loss(tr)
    x, y = batch()
    tr.train_step(x, y, 0)
    lr, threat = first_lr(tr), L2Ball(0.5)
    theta = {n: p.detach() for n, p in model0.named_parameters()}
    phi = {n: p.detach() for n, p in gen0.named_parameters()}

    def meta_loss(phi_):
        x_aug = functional_call(gen0, phi_, (x, threat))
        g = torch.func.grad(lambda th: F.cross_entropy(functional_call(model0, th, (x_aug,)), y))(theta)
        ahead = {n: theta[n] - lr * g[n] for n in theta}
        return F.cross_entropy(functional_call(model0, ahead, (seen["x_adv"],)), y)

    grad = torch.func.grad(meta_loss)(phi)
    assert max(float(g.abs().max()) for g in grad.values()) > 1e-6  # the look-ahead carries a signal
    for n, p in tr.generator.named_parameters():
        expected = phi[n] - lr * (share * grad[n] + 5e-4 * phi[n])
        assert torch.allclose(p, expected, atol=1e-7, rtol=1e-5), f"generator update of {n}"
    # the classifier loss saw x_aug regenerated by the updated generator (no gradient)
    assert torch.allclose(seen["x_aug"], tr.generator(x, threat), atol=1e-6)


def test_a_norm_is_drawn_per_batch_and_used_by_attack_and_generator(tmp_path):
    tr = make_trainer(tmp_path, model=CNN)
    drawn: list = []
    gen_threats: list = []
    for i, atk in enumerate(tr.attacks):
        def fake(x, y, i=i):
            drawn.append(i)
            return x.clone()
        tr.attacks[i] = fake
    inner = tr.generator.forward
    tr.generator.forward = lambda x, threat: gen_threats.append(threat) or inner(x, threat)
    x, y = batch()
    for step in range(12):  # one epoch's worth of batches
        tr.train_step(x, y, step % tr.steps_per_epoch)
    assert len(drawn) == 12 and set(drawn) == {0, 1, 2}
    assert gen_threats == [tr.threats[k] for k in drawn for _ in range(2)]  # meta step and regeneration
    assert [type(t) for t in tr.threats] == [LinfBall, L1Ball, L2Ball]


def test_reference_variant_rescales_the_l2_augmentation_to_eps(tmp_path):
    for variant in ("paper", "reference"):
        tr = make_trainer(tmp_path / variant, model=CNN, attacks=[L2], variant=variant)
        last = [m for m in tr.generator.net if isinstance(m, torch.nn.Conv2d)][-1]
        with torch.no_grad():  # delta = the residual noise alone, far inside the ball
            last.weight.zero_()
            last.bias.zero_()
        tr.generator.draw_noise = lambda x: 1e-3 * torch.randn(x.shape[0], 1, 10, 10)
        seen = spy_loss(tr)
        tr.train_step(*batch(), 0)
        norms = (seen["x_aug"] - seen["x"]).flatten(1).norm(dim=1)
        if variant == "reference":
            assert torch.allclose(norms, torch.full_like(norms, 0.5), atol=1e-4)
        else:
            assert float(norms.max()) < 0.1


def fixed_predictions(tr, correct):
    """Wrap the trainer's model so it is right exactly on the validation samples of ``correct``."""
    x, y = tr._val_tensors()

    class Fixed(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, xx):
            return F.one_hot(torch.where(correct, y, (y + 1) % 10), 10).float()
    tr.model = Fixed(tr.model)


@pytest.mark.parametrize("steps", [1, 2])
def test_best_pt_is_selected_on_union_accuracy(tmp_path, monkeypatch, steps):
    tr = make_trainer(tmp_path, model=CNN, attacks=[LINF, L2], val_attack_steps=steps)
    fixed_predictions(tr, torch.tensor([1, 1, 1, 1, 1, 1, 0, 0], dtype=torch.bool))   # clean 0.75
    masks = iter([torch.tensor([1, 1, 1, 1, 0, 0, 0, 0], dtype=torch.bool),    # L-inf: 0.5
                  torch.tensor([0, 0, 0, 1, 1, 1, 1, 0], dtype=torch.bool)])   # L2: 0.5, union 0.125
    calls = []

    def fake(model, x, y, attack, batch_size=256, **options):
        from types import SimpleNamespace  # a stand-in PerSampleRecord
        calls.append((type(attack.threat), attack.steps, attack.seed, batch_size, options.get("clean")))
        assert x.shape[0] == 8 and y.shape[0] == 8
        return SimpleNamespace(robust=next(masks))
    monkeypatch.setattr(mng, "per_sample_robust", fake)
    out = tr.validate()
    # every norm attacked with val_attack_steps, seeded by the run, the whole subset in one batch, the
    # clean pass after the attack (a noisy model's draws in the order of the other trainers' validation)
    assert calls == [(LinfBall, steps, 0, 8, "after"), (L2Ball, steps, 0, 8, "after")]
    assert out["clean_acc"] == 0.75
    assert out["pgd_linf_acc"] == 0.5 and out["pgd_l2_acc"] == 0.5 and out["union_acc"] == 0.125
    assert out["select"] == pytest.approx(0.125 + 1e-3 * 0.75)


def test_validation_without_steps_or_samples(tmp_path, monkeypatch):
    tr = make_trainer(tmp_path, model=CNN, attacks=[LINF], val_attack_steps=0)
    fixed_predictions(tr, torch.tensor([1, 0, 1, 0, 1, 0, 0, 0], dtype=torch.bool))
    monkeypatch.setattr(mng, "per_sample_robust", lambda *a, **k: pytest.fail("no attack without steps"))
    assert tr.validate() == {"clean_acc": 0.375, "select": 0.375}
    tr.val_set = []
    assert tr.validate() == {}
    tr.val_set = None
    assert tr.validate() == {}


def test_learning_rates_follow_the_cyclic_schedule_and_the_step_logs_its_terms(tmp_path):
    """Per batch the classifier's lr is cyclic_lr(step + 1) with the configured peak and the
    generator's is lr_scale times it; the logged loss, CE, JS, meta loss and adversarial accuracy
    are the step's own."""
    tr = make_trainer(tmp_path, model=CNN, attacks=[LINF], cyclic_peak=0.25, generator={"lr_scale": 0.5})
    seen = {}
    inner = tr._loss

    def spy(*args):
        seen["out"] = inner(*args)
        return seen["out"]
    tr._loss = spy
    metas = []
    real_meta = mng.meta_generator_step

    def meta_spy(*args, **kw):
        metas.append(real_meta(*args, **kw))
        return metas[-1]
    mng.meta_generator_step, restore = meta_spy, mng.meta_generator_step
    try:
        x, y = batch()
        for step in (0, 3):
            stats = tr.train_step(x, y, step)
            t = (step + 1) / tr.total_steps
            lr = 0.2 * t / 0.25 if t <= 0.25 else 0.2 * (1 - t) / 0.75
            assert tr.optimizer.param_groups[0]["lr"] == pytest.approx(lr)
            assert tr.gen_optimizer.param_groups[0]["lr"] == pytest.approx(0.5 * lr)
    finally:
        mng.meta_generator_step = restore
    loss, ce, js, logits_adv = seen["out"]
    assert float(stats["loss"]) == pytest.approx(float(loss.detach()))
    assert float(stats["ce_adv"]) == pytest.approx(float(ce.detach()))
    assert float(stats["js"]) == pytest.approx(float(js.detach()))
    assert float(stats["meta"]) == pytest.approx(float(metas[-1]))
    assert float(stats["adv_acc"]) == pytest.approx(float((logits_adv.argmax(1) == y).float().mean()))


def test_meta_step_weight_defaults_to_one():
    torch.manual_seed(0)
    from robustsuite import models
    model = models.build("cnn_small", (1, 8, 8), 10, width=0.25, linear=16)
    x, y = torch.rand(4, 1, 8, 8), torch.arange(4)
    x_adv = (x + 0.05).clamp(0, 1)
    out = []
    for kw in ({}, {"weight": 1.0}):
        torch.manual_seed(1)
        gen = NoiseGenerator(1, hidden=4)
        opt = torch.optim.SGD(gen.parameters(), lr=0.1)
        torch.manual_seed(2)
        mng.meta_generator_step(model, gen, opt, x, x_adv, y, L2Ball(0.5), lr=0.1, **kw)
        out.append([p.detach().clone() for p in gen.parameters()])
    assert all(torch.equal(a, b) for a, b in zip(*out))


def test_reference_fit_of_l1_and_an_unreachable_l2_radius():
    """The reference L1 fit is x + (delta projected onto the L1 ball), clipped: inside the ball delta is
    kept as it is; and an L2 radius no rescaling can reach saturates every moving pixel."""
    torch.manual_seed(0)
    x = 0.25 + 0.5 * torch.rand(2, 1, 4, 4)
    small = 0.01 * torch.randn_like(x)  # L1 norm 0.16 * ~0.8 < 2
    assert torch.allclose(fit_perturbation(x, small, L1Ball(2.0), "reference"), x + small)
    big = torch.randn_like(x)
    out = fit_perturbation(x, big, L1Ball(2.0), "reference")
    assert bool(((out - x) * big >= 0).all()), "the fit moves along delta, not against it"
    assert torch.allclose(fit_perturbation(x, small, L2Ball(0.5)), fit_perturbation(x, small, L2Ball(0.5), "exact"))
    # sample 0 can reach eps; sample 1 (every pixel 0.01 from the face it moves to) cannot
    x2 = torch.stack([torch.full((1, 4, 4), 0.5), torch.full((1, 4, 4), 0.99)])
    delta = torch.rand_like(x2) + 0.5
    delta[1, 0, 0, 0] = 1e-4  # a pixel that moves slowly: it saturates only when all do
    out = rescale_l2(x2, delta, 0.5)
    assert float((out[0] - x2[0]).norm()) == pytest.approx(0.5, abs=1e-4)
    assert torch.allclose(out[1], torch.ones_like(out[1]))
