"""CROWN-IBP certified training: schedules, the loss, natural fallback, resume, checkpoints."""
from __future__ import annotations

import math

import pytest
import torch

from robustsuite import LinfBall
from robustsuite.certify import Verifier
from robustsuite.certify.trainer import margin_lower_bounds, robust_ce_from_margins
from robustsuite.training.config import validate
from robustsuite.training import eps_at, load_checkpoint, mix_factor, model_from_checkpoint
from robustsuite.training.run import train


def _cfg(**train_overrides):
    train_cfg = {"method": "crown-ibp", "eps": 0.1, "epochs": 3, "batch_size": 64,
                 "schedule": {"start_epoch": 1, "ramp_epochs": 1}, "optim": {"lr": 1e-3}}
    train_cfg.update(train_overrides)
    return validate({"name": "t", "seed": 3, "device": "cpu",
                     "data": {"name": "digits", "train_subset": 192, "val_fraction": 0.25},
                     "model": {"name": "cnn_small", "options": {"width": 0.5, "linear": 32}},
                     "train": train_cfg})


# --------------------------------------------------------------------------- schedules
def test_eps_schedule_is_zero_then_ramps_monotonically_to_target():
    kw = dict(eps_max=0.3, start_step=10, ramp_steps=100)
    vals = [eps_at(s, **kw) for s in range(150)]
    assert vals[:10] == [0.0] * 10
    assert all(b >= a for a, b in zip(vals, vals[1:]))
    assert vals[110] == pytest.approx(0.3) and vals[149] == pytest.approx(0.3)
    assert eps_at(60, kind="linear", **kw) == pytest.approx(0.15)


def test_smoothed_schedule_has_continuous_value_and_slope_at_the_midpoint():
    kw = dict(eps_max=1.0, start_step=0, ramp_steps=10_000, mid=0.25)
    h = 1
    left = eps_at(2500 - h, **kw) - eps_at(2500 - 2 * h, **kw)
    right = eps_at(2500 + 2 * h, **kw) - eps_at(2500 + h, **kw)
    assert right == pytest.approx(left, rel=1e-2)
    assert eps_at(9999, **kw) == pytest.approx(1.0, abs=1e-3)


def test_beta_and_kappa_move_from_one_to_their_final_values():
    assert mix_factor(0.0, 0.4, 0.0) == 1.0
    assert mix_factor(0.4, 0.4, 0.0) == pytest.approx(0.0)
    assert mix_factor(0.4, 0.4, 0.5) == pytest.approx(0.5)
    assert mix_factor(0.2, 0.4, 0.5) == pytest.approx(0.75)


# --------------------------------------------------------------------------- the loss
@pytest.mark.lirpa071  # also run under auto_LiRPA 0.7.1 (tests/test_lirpa071_subprocess.py)
def test_robust_loss_upper_bounds_the_cross_entropy_inside_the_ball():
    torch.manual_seed(0)
    from robustsuite.models import build
    from robustsuite.certify.lirpa import BoundedModule

    model = build("cnn_small", (1, 8, 8), 10, width=0.5, linear=32).eval()
    x = torch.rand(8, 1, 8, 8)
    y = torch.randint(0, 10, (8,))
    bm = BoundedModule(model, torch.zeros(2, 1, 8, 8))
    lo, hi = (x - 0.03).clamp(0, 1), (x + 0.03).clamp(0, 1)
    for beta in (0.0, 0.5, 1.0):
        bound = robust_ce_from_margins(margin_lower_bounds(bm, x, y, lo, hi, beta, 10)).detach()
        with torch.no_grad():
            for _ in range(20):
                ce = torch.nn.functional.cross_entropy(model(lo + torch.rand_like(x) * (hi - lo)), y, reduction="none")
                assert (ce <= bound + 1e-5).all()


def test_mixed_bounds_interpolate_ibp_and_crown_ibp():
    torch.manual_seed(1)
    from robustsuite.models import build
    from robustsuite.certify.lirpa import BoundedModule

    model = build("mlp", (1, 8, 8), 10, hidden=(32,)).eval()
    bm = BoundedModule(model, torch.zeros(2, 1, 8, 8))
    x, y = torch.rand(4, 1, 8, 8), torch.randint(0, 10, (4,))
    lo, hi = (x - 0.02).clamp(0, 1), (x + 0.02).clamp(0, 1)
    ibp = margin_lower_bounds(bm, x, y, lo, hi, 0.0, 10)
    crown = margin_lower_bounds(bm, x, y, lo, hi, 1.0, 10)
    half = margin_lower_bounds(bm, x, y, lo, hi, 0.5, 10)
    assert torch.allclose(half, 0.5 * ibp + 0.5 * crown, atol=1e-5)
    v_ibp = Verifier(model, (1, 8, 8), method="ibp", device="cpu").margin_bounds(x, y, LinfBall(0.02))
    assert torch.allclose(ibp, v_ibp, atol=1e-5)


def test_gradients_reach_weights_and_budget_tensors_through_the_bounds():
    torch.manual_seed(2)
    from robustsuite.models import build
    from robustsuite.certify.lirpa import BoundedModule

    model = build("cnn_small", (1, 8, 8), 10, width=0.5, linear=32)
    bm = BoundedModule(model, torch.zeros(2, 1, 8, 8))
    bm.train()
    x, y = torch.rand(4, 1, 8, 8), torch.randint(0, 10, (4,))
    eps = torch.full_like(x, 0.02, requires_grad=True)
    bm(x)
    m = margin_lower_bounds(bm, x, y, x - eps, x + eps, 0.5, 10)
    robust_ce_from_margins(m).mean().backward()
    assert eps.grad is not None and eps.grad.abs().sum() > 0
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


# --------------------------------------------------------------------------- the trainer
def test_natural_training_without_bounds_while_eps_is_zero(tmp_path):
    cfg = _cfg(epochs=1, schedule={"start_epoch": 1, "ramp_epochs": 1})
    res = train(cfg, tmp_path, quiet=True)
    assert "robust_ce" not in res.history[0] and res.history[0]["eps"] == 0.0


def test_resume_reaches_the_same_weights_as_an_uninterrupted_run(tmp_path):
    cfg = _cfg()
    full = train(cfg, tmp_path / "full", quiet=True)
    train(cfg, tmp_path / "cut", quiet=True, stop_after=2)
    assert load_checkpoint(tmp_path / "cut" / "last.pt")["epoch"] == 2
    resumed = train(cfg, tmp_path / "cut", quiet=True)
    a = load_checkpoint(full.last)["model_state"]
    b = load_checkpoint(resumed.last)["model_state"]
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert [r["loss"] for r in full.history] == [r["loss"] for r in resumed.history]


def test_finished_run_is_not_trained_again(tmp_path):
    cfg = _cfg(epochs=1)
    train(cfg, tmp_path, quiet=True)
    stamp = (tmp_path / "last.pt").stat().st_mtime_ns
    res = train(cfg, tmp_path, quiet=True)
    assert (tmp_path / "last.pt").stat().st_mtime_ns == stamp and len(res.history) == 1


def test_checkpoint_reloads_and_certifies_the_same_samples(tmp_path):
    cfg = _cfg(method="ibp")
    res = train(cfg, tmp_path, quiet=True)
    ckpt = load_checkpoint(res.best)
    assert ckpt["config"]["train"]["method"] == "ibp" and (tmp_path / "config.yaml").is_file()
    from robustsuite import data
    x, y = data.as_tensors(data.load("digits", "test"), limit=64)
    model = model_from_checkpoint(ckpt)
    again = model_from_checkpoint(res.best)
    for eps in (0.01, 0.05):
        a = Verifier(model, (1, 8, 8), method="crown-ibp", device="cpu").verify(x, y, LinfBall(eps))
        b = Verifier(again, (1, 8, 8), method="crown-ibp", device="cpu").verify(x, y, LinfBall(eps))
        assert torch.equal(a.certified, b.certified) and torch.equal(a.margin_lower, b.margin_lower)


def test_batchnorm_statistics_reach_the_saved_model(tmp_path):
    cfg = _cfg(epochs=2)
    cfg = validate({**cfg.resolved(), "model": {"name": "cnn7", "options": {"bn": True, "width": 0.125, "linear": 16}}})
    res = train(cfg, tmp_path, quiet=True)
    state = load_checkpoint(res.last)["model_state"]
    means = [v for k, v in state.items() if k.endswith("running_mean")]
    assert means and all(m.abs().sum() > 0 for m in means), "BN running statistics were never copied back"


@pytest.mark.lirpa071  # also run under auto_LiRPA 0.7.1 (tests/test_lirpa071_subprocess.py)
def test_loss_fusion_trains_and_its_loss_bounds_the_cross_entropy(tmp_path):
    cfg = _cfg(loss_fusion=True, epochs=2)
    res = train(cfg, tmp_path, quiet=True)
    assert all(math.isfinite(r["loss"]) for r in res.history)
    assert "robust_ce" in res.history[-1]
    # The fused robust CE (an upper bound) is at least the clean CE at the same step.
    assert res.history[-1]["robust_ce"] >= res.history[-1]["natural_ce"] - 1e-6


def test_gradient_clipping_bounds_the_update(tmp_path):
    from robustsuite.runtime import seed_everything
    from robustsuite.training.run import build_model

    cfg = _cfg(epochs=1, optim={"name": "sgd", "lr": 0.1, "momentum": 0.0, "grad_clip": 1e-4})
    seed_everything(cfg.seed)
    start = build_model(cfg, (1, 8, 8), 10).state_dict()
    res = train(cfg, tmp_path, quiet=True)
    end = load_checkpoint(res.last)["model_state"]
    steps = math.ceil(144 / 64)
    moved = torch.sqrt(sum(((end[k] - start[k]) ** 2).sum() for k in start if k.endswith(("weight", "bias"))
                           and not k.startswith("normalize")))
    assert 0 < moved <= 0.1 * 1e-4 * steps * (1 + 1e-3)


def test_unknown_train_method_is_a_config_error():
    with pytest.raises(ValueError, match="train.method"):
        validate({"train": {"method": "crown-magic", "eps": 0.1}})
