"""Stochastic defenses: noise layers, builders, losses, schedules, MNG-AC meta step, trainers, resume."""
from __future__ import annotations

import copy
import glob
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import robustsuite.stochastic as S
from robustsuite import models
from robustsuite.attacks import Attack, per_sample_robust
from robustsuite.certify.checks import is_stochastic
from robustsuite.training.config import load_config, validate
from robustsuite.errors import ConfigError, RobustSuiteError, UnknownNameError
from robustsuite.threats import L2Ball, LinfBall
from robustsuite.training.checkpoint import load_checkpoint
from robustsuite.training.run import train

ROOT = Path(__file__).resolve().parent.parent


def small_model(name="resnet_v1", in_shape=(1, 8, 8), **opts):
    torch.manual_seed(0)
    opts = opts or ({"depth": 8, "width": 0.5} if name == "resnet_v1" else {})
    return models.build(name, in_shape, 10, **opts)


# ------------------------------------------------------------------------------------- noise layers
@pytest.mark.parametrize("layer", [
    lambda: S.PerturbationInjection((3, 4, 4)), lambda: S.ScalarNoise(0.5),
    lambda: S.StocReLUEMA(3, gamma=1.0)])
def test_noise_fresh_per_forward_per_sample_and_on_in_eval(layer):
    m = layer()
    if isinstance(m, S.StocReLUEMA):
        m.train()
        m(torch.randn(8, 3, 4, 4))  # one EMA update gives sigma > 0
    m.eval()
    x = torch.randn(1, 3, 4, 4).expand(4, 3, 4, 4).contiguous() + 2.0
    a, b = m(x), m(x)
    assert m.is_stochastic
    assert not torch.equal(a, b), "noise must be fresh every forward pass (in eval mode too)"
    assert not torch.equal(a[0], a[1]), "noise must be independent per sample by default"
    m.shared = True
    c = m(x)
    assert torch.equal(c[0], c[1]), "shared=True draws one noise tensor for the batch"
    m.shared = False
    m.noise_on = False
    assert torch.equal(m(x), m(x))


def test_set_noise_and_context_switch_model_noise():
    model = S.add_noise(small_model(), "learn2perturb").eval()
    x = torch.rand(4, 1, 8, 8)
    with S.noise_disabled(model):
        assert torch.equal(model(x), model(x))
    assert not torch.equal(model(x), model(x))
    S.set_noise(model, False)
    assert torch.equal(model(x), model(x))
    assert is_stochastic(model)


def test_theta_init_and_floor():
    m = S.PerturbationInjection((2, 3, 3), init=0.25, theta_min=0.01)
    assert torch.all(m.theta == 0.25)
    opt = torch.optim.SGD(m.parameters(), lr=10.0)
    m.theta.sum().backward()
    opt.step()
    assert m.theta.min() < 0.01
    m.clamp_()
    assert torch.all(m.theta == 0.01)
    with pytest.raises(ConfigError):
        S.PerturbationInjection((2,), init=0.001, theta_min=0.01)


def test_ema_updates_only_in_training_mode():
    m = S.StocReLUEMA(2, alpha=0.5, gamma=0.0)
    x1 = torch.randn(16, 2, 3, 3) * torch.tensor([1.0, 3.0]).view(1, 2, 1, 1)
    x2 = torch.randn(16, 2, 3, 3) * 5
    std = lambda x: x.transpose(0, 1).reshape(2, -1).std(dim=1)  # noqa: E731
    m.train()
    m(x1)
    assert torch.allclose(m.sigma, std(x1))
    m(x2)
    assert torch.allclose(m.sigma, 0.5 * std(x1) + 0.5 * std(x2))
    before = m.sigma.clone()
    m.eval()
    m(torch.randn(16, 2, 3, 3) * 100)
    assert torch.equal(m.sigma, before)
    m.train()
    with S.ema_paused(m):
        m(torch.randn(16, 2, 3, 3) * 100)
    assert torch.equal(m.sigma, before)
    out = m(torch.full((2, 2, 1, 1), -1.0))
    assert torch.all(out >= 0)  # a ReLU


def test_gamma_staircase_values():
    vals = [S.gamma_staircase(e, 0.0, 0.2, ramp_epochs=10, step_every=2) for e in range(13)]
    expect = [0, 0, 0.04, 0.04, 0.08, 0.08, 0.12, 0.12, 0.16, 0.16, 0.2, 0.2, 0.2]
    assert vals == pytest.approx(expect)
    assert S.gamma_staircase(3, 0.1, 0.5, ramp_epochs=0, step_every=1) == 0.5
    m = S.StocReLUEMA(3)
    S.set_gamma(m, 0.3)
    assert m.gamma == pytest.approx(0.3) and "gamma_t" in m.state_dict()


def test_harmonic_tau_and_regularizer():
    assert S.harmonic_tau(10, 10) == 1.0  # first noise epoch: no division by zero
    assert S.harmonic_tau(12, 10) == pytest.approx(1 + 1 / 2 + 1 / 3)
    with pytest.raises(ConfigError):
        S.harmonic_tau(9, 10)
    theta = torch.full((4,), 0.25, requires_grad=True)
    reg = S.learn2perturb_regularizer([theta], gamma=1e-4, tau=2.0)
    assert float(reg.detach()) == pytest.approx(-(1e-4 / 2.0) * 4 * 0.5)
    reg.backward()
    assert torch.all(theta.grad < 0)  # descending it pushes theta up


def test_js_divergence_zero_and_direct():
    a = torch.randn(5, 7)
    assert float(S.js_divergence(a, a.clone(), a.clone())) == pytest.approx(0.0, abs=1e-6)
    b, c = torch.randn(5, 7), torch.randn(5, 7)
    ps = [F.softmax(z, 1) for z in (a, b, c)]
    m = ((ps[0] + ps[1] + ps[2]) / 3).clamp(1e-7, 1)
    direct = sum((p * (p.log() - m.log())).sum(1).mean() for p in ps) / 3
    assert float(S.js_divergence(a, b, c)) == pytest.approx(float(direct), rel=1e-5)
    assert float(S.js_divergence(a, b, c)) > 0


def test_cyclic_lr():
    assert S.cyclic_lr(0, 100, 0.21) == 0.0
    assert S.cyclic_lr(40, 100, 0.21) == pytest.approx(0.21)
    assert S.cyclic_lr(100, 100, 0.21) == pytest.approx(0.0)
    assert S.cyclic_lr(70, 100, 0.21) == pytest.approx(0.105)


# ------------------------------------------------------------------------------------- builders
def test_learn2perturb_placement_and_shapes_any_input_size():
    for in_shape in [(1, 8, 8), (3, 12, 10)]:
        model = S.add_noise(small_model(in_shape=in_shape), "learn2perturb")
        names = [n for n, _ in S.noise_layers(model)]
        assert names == ["post_stem", "layer1.0.post_add", "layer2.0.post_add", "layer3.0.post_add"]
        h, w = in_shape[1:]
        assert tuple(model.post_stem.theta.shape) == (8, h, w)
        assert tuple(model.layer3[0].post_add.theta.shape) == (32, math.ceil(math.ceil(h / 2) / 2),
                                                                math.ceil(math.ceil(w / 2) / 2))
        assert model(torch.rand(2, *in_shape)).shape == (2, 10)
    pre = S.add_noise(small_model("preact_resnet18", (3, 8, 8), width=0.125), "learn2perturb")
    assert len(S.noise_layers(pre)) == 1 + 8


def test_anis2_replaces_block_relus_and_pni_is_scalar():
    model = S.add_noise(small_model(), "anis2", gamma=0.1)
    acts = models.block_activations(model)
    assert len(acts) == 6 and all(isinstance(model.get_submodule(a), S.StocReLUEMA) for a in acts)
    assert isinstance(model.stem_act, torch.nn.ReLU)
    assert model.layer2[0].act1.sigma.numel() == 16
    pni = S.add_noise(small_model("resnet_small", (1, 8, 8)), "pni")
    assert all(m.alpha.dim() == 0 for _, m in S.noise_layers(pni)) and len(S.noise_layers(pni)) == 3


def test_rebuild_from_spec_roundtrip():
    for kind in S.KINDS:
        model = S.add_noise(small_model(), kind)
        assert model.spec["stochastic"]["kind"] == kind
        twin = S.build_from_spec(copy.deepcopy(model.spec))
        twin.load_state_dict(model.state_dict())
        x = torch.rand(3, 1, 8, 8)
        model.eval(), twin.eval()
        with S.noise_disabled(model), S.noise_disabled(twin):
            assert torch.equal(model(x), twin(x))
    assert S.base_spec(model.spec) == small_model().spec


def test_builder_errors():
    with pytest.raises(UnknownNameError):
        S.add_noise(small_model(), "dropout")
    with pytest.raises(ConfigError, match="no option"):
        S.add_noise(small_model(), "pni", theta_min=0.1)
    with pytest.raises(ConfigError, match="residual model"):
        S.add_noise(models.build("cnn_small", (1, 8, 8), 10), "learn2perturb")
    with pytest.raises(ConfigError, match="already"):
        S.add_noise(S.add_noise(small_model(), "pni"), "learn2perturb")


# ------------------------------------------------------------------------------------- MNG-AC meta step
def test_mng_ac_meta_step_changes_only_the_generator():
    torch.manual_seed(0)
    model = small_model().train()
    gen = S.NoiseGenerator(1, hidden=4, use_image=True)
    opt = torch.optim.Adam(gen.parameters(), lr=1e-2)
    from robustsuite.stochastic.mng_ac import meta_generator_step
    x, y = torch.rand(8, 1, 8, 8), torch.randint(0, 10, (8,))
    x_adv = LinfBall(0.1).project(x, x + 0.1 * torch.randn_like(x))
    state = copy.deepcopy(model.state_dict())
    gstate = copy.deepcopy(gen.state_dict())
    meta_generator_step(model, gen, opt, x, x_adv, y, L2Ball(0.5), lr=0.1)
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k]), f"the look-ahead modified the classifier's {k}"
    assert all(p.grad is None for p in model.parameters())
    assert any(not torch.equal(v, gstate[k]) for k, v in gen.state_dict().items())
    x_aug = gen(x, L2Ball(0.5))
    assert torch.all((x_aug - x).flatten(1).norm(dim=1) <= 0.5 + 1e-4) and x_aug.min() >= 0 and x_aug.max() <= 1


# ------------------------------------------------------------------------------------- trainers
BASE = {"name": "t", "seed": 0, "device": "cpu",
        "data": {"name": "digits", "train_subset": 64, "val_fraction": 0.25},
        "model": {"name": "resnet_v1", "options": {"depth": 8, "width": 0.25}}}
ATK = {"eps": 0.1, "steps": 1}
TRAINS = {
    "pgd_at": {"attack": ATK, "clean_weight": 0.2},
    "pni": {"attack": ATK},
    "learn2perturb": {"attack": ATK, "noise_start": 1, "adv_start": 1},
    "trades": {"attack": ATK},
    "anis2": {"attack": ATK, "teacher_epochs": 1, "gamma_init": 0.05, "gamma_step_every": 1},
    "mng_ac": {"attacks": [{"norm": "linf", **ATK}, {"norm": "l1", "eps": 2.0, "steps": 1},
                           {"norm": "l2", "eps": 0.5, "steps": 1}]},
}


def run_cfg(method, **extra):
    t = {"method": method, "epochs": 2, "batch_size": 32, "val_attack_steps": 1, "checkpoint_every": 1,
         "optim": {"name": "sgd", "lr": 0.05}, **TRAINS[method], **extra}
    return validate({**BASE, "train": t})


@pytest.mark.parametrize("method", list(TRAINS))
def test_trainer_resumes_to_the_same_result(method, tmp_path):
    cfg = run_cfg(method)
    full = train(cfg, tmp_path / "full", quiet=True)
    train(cfg, tmp_path / "part", quiet=True, stop_after=1)
    part = train(cfg, tmp_path / "part", quiet=True)
    a, b = load_checkpoint(full.last), load_checkpoint(tmp_path / "part" / "last.pt")
    assert a["epoch"] == b["epoch"] == 2
    for k, v in a["model_state"].items():
        assert torch.equal(v, b["model_state"][k]), f"{method}: {k} differs after resume"
    assert a["model_spec"] == b["model_spec"]
    assert [h.get("loss") for h in full.history] == [h.get("loss") for h in part.history]
    if method == "mng_ac":
        for k, v in a["extra"]["generator"].items():
            assert torch.equal(v, b["extra"]["generator"][k])
            assert torch.equal(v, a["generator_state"][k])  # the checkpoint holds the trained generator
    if method in S.KINDS:
        assert a["model_spec"]["stochastic"]["kind"] == method
        model = S.build_from_spec(a["model_spec"])
        model.load_state_dict(a["model_state"])
        assert is_stochastic(model)
    if method == "learn2perturb":
        thetas = [v for k, v in a["model_state"].items() if k.endswith("theta")]
        assert thetas and all(float(t.min()) >= 0.01 for t in thetas)
        assert "theta_optimizer" in a["extra"]
    if method == "anis2":
        assert Path(a["teacher_checkpoint"]).is_file()
        gammas = [v for k, v in a["model_state"].items() if k.endswith("gamma_t")]
        # the slides' staircase ends training at gamma_max (0.2 by default)
        assert gammas and all(float(g) == pytest.approx(0.2) for g in gammas)


def test_learn2perturb_noise_delay_and_theta_updates(tmp_path):
    cfg = run_cfg("learn2perturb", epochs=2, noise_start=1, adv_start=2, theta_lr=0.5)
    from robustsuite.training.run import build_datasets, build_model
    from robustsuite.stochastic.learn2perturb import Learn2PerturbTrainer
    torch.manual_seed(0)
    tr, va, _ = build_datasets(cfg)
    trainer = Learn2PerturbTrainer(build_model(cfg, (1, 8, 8), 10), tr, va, cfg, tmp_path, torch.device("cpu"))
    x, y = torch.rand(8, 1, 8, 8), torch.randint(0, 10, (8,))
    theta0 = trainer.model.post_stem.theta.detach().clone()
    trainer.train_step(x, y, 0)  # epoch 0: no noise, theta frozen
    assert torch.equal(trainer.model.post_stem.theta, theta0)
    assert not trainer.model.post_stem.noise_on
    stats = trainer.train_step(x, y, trainer.steps_per_epoch)  # epoch 1: noise on, theta learned
    assert trainer.model.post_stem.noise_on and "reg" in stats and "adv_acc" not in stats
    assert not torch.equal(trainer.model.post_stem.theta, theta0)
    assert float(trainer.model.post_stem.theta.detach().min()) >= 0.01
    assert all(g["weight_decay"] == 0 for g in trainer.theta_optimizer.param_groups)


def test_bad_configs_give_clear_errors():
    cases = [
        ("learn2perturb", {"noise": {"init": 0.001, "theta_min": 0.01}}, "theta_min"),
        ("learn2perturb", {"noise_start": 5}, "noise_start"),
        ("trades", {"attack": {"norm": "l1", "eps": 1.0}}, "TRADES"),
        ("anis2", {"gamma_init": 0.5, "gamma_max": 0.1}, "gamma_max"),
        ("mng_ac", {"attacks": [{"norm": "l2", "eps": 1.0}, {"norm": "l2", "eps": 0.5}]}, "each norm"),
        ("pgd_at", {"attack": {"norm": "l7", "eps": 0.1}}, "attack.norm"),
        ("pgd_at", {"attack": {"eps": -1}}, "attack.eps"),
        ("pni", {"noise": {"sigma": 1}}, "unknown key"),
    ]
    for method, extra, needle in cases:
        with pytest.raises(ConfigError, match=needle):
            run_cfg(method, **extra)
    with pytest.raises(ConfigError, match="attack"):
        validate({**BASE, "train": {"method": "pgd_at"}})
    cfg = run_cfg("pgd_at")
    bad = cfg.model_copy(update={"model": cfg.model.model_copy(update={"name": "cnn_small", "options": {}})})
    with pytest.raises(RobustSuiteError, match="residual model"):
        train(bad.model_copy(update={"train": run_cfg("pni").train}), "/nonexistent/never", quiet=True)


def test_anis2_teacher_checkpoint_must_match(tmp_path):
    cfg = run_cfg("pgd_at", epochs=1)
    done = train(cfg, tmp_path / "teacher", quiet=True)
    good = run_cfg("anis2", teacher_checkpoint=str(done.last), epochs=1)
    r = train(good, tmp_path / "student", quiet=True)
    assert load_checkpoint(r.last)["teacher_checkpoint"] == str(done.last)
    other = validate({**BASE, "model": {"name": "resnet_v1", "options": {"depth": 8, "width": 0.5}},
                      "train": good.train.model_dump()})
    with pytest.raises(ConfigError, match="same deterministic architecture"):
        train(other, tmp_path / "student2", quiet=True)
    # a stochastic checkpoint of the same base architecture is no teacher either
    from robustsuite.training.checkpoint import save_checkpoint
    ckpt = {k: v for k, v in load_checkpoint(done.last).items() if k not in ("format", "version")}
    ckpt["model_spec"] = {**ckpt["model_spec"], "stochastic": {"kind": "pni", "init": 0.25, "shared": False}}
    save_checkpoint(tmp_path / "noisy.pt", **ckpt)
    noisy = run_cfg("anis2", teacher_checkpoint=str(tmp_path / "noisy.pt"), epochs=1)
    with pytest.raises(ConfigError, match="same deterministic architecture"):
        train(noisy, tmp_path / "student3", quiet=True)


def test_shipped_configs_validate():
    files = [f for m in S.TRAIN_CONFIGS for f in glob.glob(str(ROOT / "configs" / f"*_{m}.yaml"))]
    assert len(files) == 12
    for f in files:
        cfg = load_config(f)
        assert cfg.train.method in S.TRAIN_CONFIGS


@pytest.mark.parametrize("method", ["learn2perturb", "mng_ac"])
def test_cli_trains_digits_config(method, tmp_path, capsys):
    from robustsuite.cli import main
    sets = ["data.train_subset=64", "model.options.width=0.25", "train.epochs=3", "train.val_attack_steps=1"]
    sets += ["train.attacks=[{norm: linf, eps: 0.1, steps: 1}, {norm: l2, eps: 0.5, steps: 1}]"] \
        if method == "mng_ac" else ["train.attack.steps=1", "train.noise_start=1", "train.adv_start=2"]
    argv = ["train", str(ROOT / "configs" / f"digits_{method}.yaml"), "--out", str(tmp_path), "--quiet",
            "--device", "cpu"] + [a for s in sets for a in ("--set", s)]
    assert main(argv) == 0
    assert (tmp_path / "best.pt").is_file() and "trained" in capsys.readouterr().out


def test_expected_and_multi_norm_accuracy_on_a_deterministic_model():
    from robustsuite.attacks import PGD
    model = small_model().eval()
    x, y = torch.rand(6, 1, 8, 8), torch.arange(6)
    acc = S.expected_accuracy(model, x, y, draws=3)
    assert torch.equal(acc, (model(x).argmax(1) == y).float())
    res = S.multi_norm_accuracy(model, x, y, {"a": PGD(model, LinfBall(0.0), steps=1),
                                              "b": PGD(model, L2Ball(0.0), steps=1)})
    assert res["union"] == res["a"] == res["b"] == pytest.approx(float(acc.mean()))
    assert res["average"] == pytest.approx(res["a"])


# ------------------------------------------------------------------------------------- the shared base
# (robustsuite.stochastic.adversarial: PGD-AT's loss, the grouped optimizer, the training and validation
# PGDs, best.pt's selection score), each through a trainer, against the test's own recomputation.
def base_trainer(tmp_path, method="pgd_at", **extra):
    from robustsuite.training.run import build_datasets, build_model, trainer_class
    cfg = run_cfg(method, **extra)
    torch.manual_seed(0)
    tr, va, _ = build_datasets(cfg)
    return trainer_class(method)(build_model(cfg, (1, 8, 8), 10), tr, va, cfg, tmp_path, torch.device("cpu"),
                                 quiet=True)


OPTIMS = {"sgd-nesterov": ({"name": "sgd", "momentum": 0.9}, True),
          "sgd-momentum": ({"name": "sgd", "momentum": 0.9}, False),
          "sgd-plain": ({"name": "sgd", "momentum": 0.0}, True),   # Nesterov needs momentum: plain SGD
          "adam": ({"name": "adam"}, False)}


@pytest.mark.parametrize("optim", list(OPTIMS))
def test_pgd_at_step_mixes_clean_and_adversarial_and_steps_the_configured_optimizer(tmp_path, optim):
    """loss = (1 - w) CE(f(x_adv)) + w CE(f(x)) with w = clean_weight (0.3 here), the logged loss and
    adversarial accuracy, and one step of exactly the configured optimizer (lr, momentum, weight decay,
    Nesterov only with momentum)."""
    o, nesterov = OPTIMS[optim]
    opt_cfg = {**o, "lr": 0.05, "weight_decay": 0.1, "grad_clip": None}
    tr = base_trainer(tmp_path, clean_weight=0.3, nesterov=nesterov, optim=opt_cfg)
    x, y = torch.rand(16, 1, 8, 8, generator=torch.Generator().manual_seed(1)), torch.arange(16) % 10
    x_adv = (x + 0.1 * torch.randn(x.shape, generator=torch.Generator().manual_seed(2))).clamp(0, 1)
    calls = []
    tr.adversarial = lambda xx, yy: calls.append((xx, yy)) or x_adv
    ref = copy.deepcopy(tr.model).train()
    tr.model.train()
    stats = tr.train_step(x, y, 0)
    assert len(calls) == 1 and calls[0][0] is x and calls[0][1] is y
    logits_adv = ref(x_adv)
    loss = 0.7 * F.cross_entropy(logits_adv, y) + 0.3 * F.cross_entropy(ref(x), y)
    assert float(stats["loss"]) == pytest.approx(float(loss.detach()), rel=1e-6)
    assert float(stats["adv_acc"]) == pytest.approx(float((logits_adv.argmax(1) == y).float().mean()))
    loss.backward()
    if o["name"] == "adam":
        opt = torch.optim.Adam(ref.parameters(), lr=0.05, weight_decay=0.1)
    else:
        opt = torch.optim.SGD(ref.parameters(), lr=0.05, momentum=o["momentum"], weight_decay=0.1,
                              nesterov=nesterov and o["momentum"] > 0)
    opt.step()
    for (name, p), p_ref in zip(tr.model.named_parameters(), ref.parameters()):
        assert torch.allclose(p, p_ref, atol=1e-6), f"{optim}: {name} is not the configured optimizer's step"


@pytest.mark.parametrize("decay", [False, True])
def test_pni_noise_scales_get_weight_decay_only_when_asked(tmp_path, decay):
    tr = base_trainer(tmp_path, "pni", noise_weight_decay=decay, optim={"name": "sgd", "lr": 0.05, "weight_decay": 0.1})
    alphas = [m.alpha for _, m in S.noise_layers(tr.model)]
    groups = tr.optimizer.param_groups
    assert len(groups) == 2 and [p for p in groups[1]["params"]] == alphas
    ids = {id(a) for a in alphas}
    assert [p for p in groups[0]["params"]] == [p for p in tr.model.parameters() if id(p) not in ids]
    assert groups[0]["weight_decay"] == 0.1 and groups[1]["weight_decay"] == (0.1 if decay else 0.0)


class FakePGD(Attack):
    """Stands in for robustsuite.attacks.PGD in the trainers: records how it is built and what it
    attacks; ``run`` reports success on the samples of ``mask``."""

    made: list = []
    seen: list = []
    mask = torch.tensor([True, False, False, False, False, True, True, False])
    labels_are_targets = False

    def __init__(self, model, threat, **kw):  # no checks: it only records
        self.threat = threat
        FakePGD.made.append((threat, kw))

    def _perturb(self, x, y):  # pragma: no cover - run() is overridden
        raise NotImplementedError

    def __call__(self, x, y):
        return x

    def run(self, x, y):
        from robustsuite.attacks import AttackResult
        FakePGD.seen.append((x, y))
        part = FakePGD.mask[:len(y)]
        zeros = torch.zeros(len(y))
        return AttackResult(x_adv=x, success=part, distance=zeros, queries=zeros.long(), steps=0,
                            pred=torch.where(part, (y + 1) % 10, y))


@pytest.mark.parametrize("val_steps", [2, 1, 0])
def test_validation_selects_best_pt_on_the_pgd_accuracy_of_val_subset(tmp_path, monkeypatch, val_steps):
    """The training PGD is train.attack's (its steps, step size, random start; global RNG); the
    validation PGD attacks the first val_subset held-out samples with val_attack_steps steps (the
    default step size unless the steps are the training ones), seeded by the run's seed; the
    selection score is robust accuracy + 1e-3 clean accuracy (clean accuracy alone without steps)."""
    import robustsuite.stochastic.adversarial as adv_mod
    from robustsuite.data import as_tensors
    monkeypatch.setattr(adv_mod, "PGD", FakePGD)
    FakePGD.made, FakePGD.seen = [], []
    atk = {"eps": 0.1, "steps": 1, "step_size": 0.03, "random_start": False}
    tr = base_trainer(tmp_path, "pni", attack=atk, val_subset=8, val_attack_steps=val_steps)
    threat, kw = FakePGD.made[0]
    assert isinstance(threat, LinfBall) and threat.eps == 0.1
    assert kw == {"steps": 1, "step_size": 0.03, "random_start": False, "eot": 1, "seed": None}
    x, y = as_tensors(tr.val_set, limit=8)
    correct = torch.tensor([True, True, False, True, True, False, True, False])

    class Fixed(torch.nn.Module):  # the noisy model inside (its noise scales), predictions fixed
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, xx):
            assert torch.equal(xx, x), "validation must see the first val_subset held-out samples"
            order.append(len(FakePGD.seen))  # attacks run so far
            return F.one_hot(torch.where(correct, y, (y + 1) % 10), 10).float()

    order = []
    tr.model = Fixed(tr.model)
    out = tr.validate()
    clean = float(correct.float().mean())
    assert out["clean_acc"] == pytest.approx(clean)
    assert out["noise_scale"] == pytest.approx(0.25)
    if val_steps == 0:
        assert len(FakePGD.made) == 1 and "pgd_acc" not in out and out["select"] == pytest.approx(clean)
        return
    assert len(FakePGD.seen) == 1 and torch.equal(FakePGD.seen[0][0], x) and torch.equal(FakePGD.seen[0][1], y)
    _, kw = FakePGD.made[1]
    assert kw == {"steps": val_steps, "step_size": 0.03 if val_steps == 1 else None, "random_start": False,
                  "eot": 1, "seed": 0}
    robust = float((correct & ~FakePGD.mask).float().mean())  # 3 / 8
    assert 0 < robust < clean, "the mask must matter for the test to mean something"
    assert robust != float((~correct & ~FakePGD.mask).float().mean())
    assert out["pgd_acc"] == pytest.approx(robust)
    assert out["select"] == pytest.approx(robust + 1e-3 * clean)
    # clean accuracy, the attack, then the clean pass of the robust mask (clean="after": a noisy
    # model's draws come in the order the package has always used, so its numbers stay the same)
    assert order == [0, 1]


def test_training_pgd_keeps_the_l1_fraction_and_validation_without_val_set(tmp_path, monkeypatch):
    import robustsuite.stochastic.adversarial as adv_mod
    monkeypatch.setattr(adv_mod, "PGD", FakePGD)
    FakePGD.made = []
    tr = base_trainer(tmp_path, attack={"norm": "l1", "eps": 2.0, "steps": 3, "l1_fraction": 0.2})
    threat, kw = FakePGD.made[0]
    assert type(threat).__name__ == "L1Ball" and kw["l1_fraction"] == 0.2 and kw["steps"] == 3
    tr.val_set = []
    assert tr.validate() == {"noise_scale": 0.0}


# ------------------------------------------------------------------------------------- evaluation helpers
class MaskAttack(Attack):
    """run(x, y) reports success where ``mask`` (over the whole set) is True, chunk by chunk: a stand-in
    attack (it never moves x) whose outcome the test decides."""

    labels_are_targets = False
    threat = None

    def __init__(self, mask):  # no model or threat: run() is the whole attack
        self.mask, self.start, self.sizes = mask, 0, []

    def _perturb(self, x, y):  # pragma: no cover - run() is overridden
        raise NotImplementedError

    def run(self, x, y):
        from robustsuite.attacks import AttackResult
        part = self.mask[self.start:self.start + len(y)]
        self.start += len(y)
        self.sizes.append(len(y))
        zeros = torch.zeros(len(y))
        return AttackResult(x_adv=x, success=part, distance=zeros, queries=zeros.long(), steps=0,
                            pred=torch.where(part, (y + 1) % 10, y))


def test_per_sample_and_multi_norm_accuracy_in_chunks():
    """robust = clean-correct and not attacked successfully, per sample, over chunks of batch_size;
    the union is robust to every attack, the average the mean of the per-attack accuracies."""
    y = torch.arange(7) % 10
    correct = torch.tensor([1, 1, 0, 1, 1, 1, 0], dtype=torch.bool)
    pred = torch.where(correct, y, (y + 1) % 10)

    class Model(torch.nn.Module):
        def forward(self, x):  # x carries its sample index / 10 in pixel 0 (images stay in [0, 1])
            return F.one_hot(pred[(x[:, 0, 0, 0] * 10).round().long()], 10).float()

    x = (torch.arange(7).float() / 10).view(7, 1, 1, 1).expand(7, 1, 2, 2).contiguous()
    a = torch.tensor([1, 0, 0, 0, 1, 0, 0], dtype=torch.bool)
    b = torch.tensor([0, 1, 0, 0, 1, 0, 1], dtype=torch.bool)
    atk = MaskAttack(a)
    r = per_sample_robust(Model(), x, y, atk, batch_size=3, clean="after").robust  # as the trainers call it
    assert atk.sizes == [3, 3, 1] and torch.equal(r, correct & ~a)
    res = S.multi_norm_accuracy(Model(), x, y, {"a": MaskAttack(a), "b": MaskAttack(b)}, batch_size=3)
    assert res["a"] == pytest.approx(3 / 7) and res["b"] == pytest.approx(3 / 7)
    assert res["union"] == pytest.approx(float((correct & ~a & ~b).float().mean()))  # 2 / 7
    assert res["average"] == pytest.approx(3 / 7)
    atk = MaskAttack(a)
    S.multi_norm_accuracy(Model(), x, y, {"a": atk}, batch_size=2)
    assert atk.sizes == [2, 2, 2, 1]
    # each chunk's clean pass runs after its attack (clean="after": one fresh noise draw each, in the
    # order the trainers' validation uses)
    events = []

    class Logged(Model):
        def forward(self, x):
            events.append("model")
            return super().forward(x)

    class LoggedAttack(MaskAttack):
        def run(self, x, y):
            events.append("attack")
            return super().run(x, y)
    S.multi_norm_accuracy(Logged(), x, y, {"a": LoggedAttack(a)}, batch_size=4)
    assert events == ["attack", "model", "attack", "model"]


def test_expected_accuracy_is_the_fraction_of_draws_default_20():
    y = torch.tensor([0, 1, 2])

    class Noisy(torch.nn.Module):  # right on 3 of every 4 calls (a stand-in for a noise draw)
        calls = 0

        def forward(self, x):
            Noisy.calls += 1
            yb = y[x[:, 0, 0, 0].long()]
            return F.one_hot(yb if Noisy.calls % 4 else (yb + 1) % 10, 10).float()

    x = torch.arange(3).float().view(3, 1, 1, 1).expand(3, 1, 2, 2).contiguous()
    assert torch.allclose(S.expected_accuracy(Noisy(), x, y), torch.full((3,), 0.75))  # 15 of 20
    Noisy.calls = 0
    assert torch.allclose(S.expected_accuracy(Noisy(), x, y, draws=2, batch_size=2), torch.tensor([1.0, 1.0, 0.5]))


@pytest.mark.filterwarnings("ignore:Detected call of")  # the scheduler alone, without optimizer steps
def test_lr_milestones_scale_by_the_configured_gamma(tmp_path):
    tr = base_trainer(tmp_path, optim={"name": "sgd", "lr": 0.08, "milestones": [1, 2], "gamma": 0.5})
    lrs = []
    for _ in range(3):
        lrs.append(tr.optimizer.param_groups[0]["lr"])
        tr.scheduler.step()
    assert lrs == pytest.approx([0.08, 0.04, 0.02])
