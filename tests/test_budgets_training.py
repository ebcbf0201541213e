"""Learned budgets: joint training, checkpoints, soundness under learned boxes, evaluation, CLI, plots."""
from __future__ import annotations

import json
import math

import pytest
import torch

from robustsuite import Box, ConfigError
from robustsuite.budgets import (BudgetGenerator, BudgetModel, budget_settings, certify_budgets,
                                 load_budget_model)
from robustsuite.certify import Verifier
from robustsuite.certify.bounds import margins
from robustsuite.training.config import validate
from robustsuite.models import build
from robustsuite.training import load_checkpoint
from robustsuite.training.run import train


def _cfg(method="budgets", data="digits", **train_overrides):
    t = {"method": method, "eps": 0.1, "epochs": 3, "batch_size": 64, "beta_final": 0.5,
         "schedule": {"start_epoch": 1, "ramp_epochs": 1}, "optim": {"lr": 1e-3}}
    if method == "budgets":
        t["generator"] = {"width": 8, "depth": 2, "optim": {"lr": 1e-2}}
    t.update(train_overrides)
    return validate({"name": "t", "seed": 3, "device": "cpu",
                     "data": {"name": data, "train_subset": 192, "val_fraction": 0.25},
                     "model": {"name": "cnn_small", "options": {"width": 0.5, "linear": 32}}, "train": t})


# --------------------------------------------------------------------------- config
def test_config_validates_the_budgets_method_with_its_defaults():
    cfg = _cfg(rho=2.0)
    assert cfg.train.method == "budgets" and cfg.train.rho_test == 2.0 and cfg.train.generator.coordinates
    assert cfg.resolved()["train"]["generator"]["width"] == 8


@pytest.mark.parametrize("bad, match", [
    ({"rho": 0.5}, "train.rho"), ({"generator": {"depth": 0}}, "train.generator.depth"),
    ({"generator": {"colour": 1}}, "unknown key"), ({"loss_fusion": True}, "loss_fusion"),
    ({"bound": "crown"}, "train.bound"),
])
def test_config_rejects_bad_budget_settings_naming_the_key(bad, match):
    with pytest.raises(ConfigError, match=match):
        _cfg(**bad)


# --------------------------------------------------------------------------- the trainer
def test_rho_one_joint_training_reproduces_the_uniform_crown_ibp_run(tmp_path):
    uni = train(_cfg("crown-ibp"), tmp_path / "uniform", quiet=True)
    joint = train(_cfg(rho=1.0), tmp_path / "joint", quiet=True)
    keys = ("loss", "natural_ce", "robust_ce", "eps", "val_clean_acc", "val_certified_acc")
    for a, b in zip(uni.history, joint.history):
        assert {k: a.get(k) for k in keys} == {k: b.get(k) for k in keys}
    a, b = load_checkpoint(uni.last)["model_state"], load_checkpoint(joint.last)["model_state"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_joint_training_learns_budgets_and_the_checkpoint_rebuilds_the_pair(tmp_path):
    res = train(_cfg(rho=4.0), tmp_path, quiet=True)
    ckpt = load_checkpoint(res.last)
    assert ckpt["kind"] == "budgets" and budget_settings(ckpt)["rho"] == 4.0
    assert ckpt["generator_state"]["head.weight"].abs().sum() > 0  # the generator learned
    bm = load_budget_model(res.last)
    x = torch.rand(4, 1, 8, 8)
    b = bm.budgets(x, 0.1, 4.0)
    assert (b.log().flatten(1).mean(1) - math.log(0.1)).abs().max() < 1e-5
    assert b.std() > 0  # no longer uniform
    ref = BudgetGenerator((1, 8, 8), width=8, depth=2)
    ref.load_state_dict(ckpt["generator_state"])
    assert torch.equal(ref(x), bm.generator(x))


def test_generator_stays_frozen_during_its_warm_up(tmp_path):
    res = train(_cfg(rho=4.0, epochs=2, generator={"width": 8, "depth": 2, "warmup_epochs": 2}), tmp_path, quiet=True)
    assert load_checkpoint(res.last)["generator_state"]["head.weight"].abs().sum() == 0


def test_resumed_joint_training_reaches_the_same_classifier_and_generator(tmp_path):
    cfg = _cfg(rho=4.0)
    full = train(cfg, tmp_path / "full", quiet=True)
    train(cfg, tmp_path / "cut", quiet=True, stop_after=2)
    resumed = train(cfg, tmp_path / "cut", quiet=True)
    a, b = load_checkpoint(full.last), load_checkpoint(resumed.last)
    for key in ("model_state", "generator_state"):
        assert all(torch.equal(a[key][k], b[key][k]) for k in a[key]), key
    assert [r["loss"] for r in full.history] == [r["loss"] for r in resumed.history]


# --------------------------------------------------------------------------- soundness
def _trained_like_pair(seed=0):
    torch.manual_seed(seed)
    clf = build("cnn_small", (1, 8, 8), 10, width=0.5, linear=32).eval()
    gen = BudgetGenerator((1, 8, 8), width=8, depth=2)
    torch.nn.init.normal_(gen.head.weight, std=2.0)  # strongly non-uniform budgets
    return BudgetModel(clf, gen).eval()


def _box_pgd(model, x, y, lo, hi, steps=30):
    """Plain box-projected signed-gradient descent on the smallest margin, from a random start."""
    g = torch.Generator().manual_seed(0)
    xa = lo + torch.rand(x.shape, generator=g) * (hi - lo)
    step = (hi - lo) / 8
    for _ in range(steps):
        xa.requires_grad_(True)
        m = margins(model(xa), y).min(1).values.sum()
        (grad,) = torch.autograd.grad(m, xa)
        xa = torch.min(torch.max(xa.detach() - step * grad.sign(), lo), hi)
    return xa


@pytest.mark.parametrize("method", ["ibp", "crown-ibp", "crown"])
def test_certificates_under_learned_boxes_are_sound_for_random_and_pgd_points(method):
    bm = _trained_like_pair()
    x, y = torch.rand(16, 1, 8, 8), torch.randint(0, 10, (16,))
    with torch.no_grad():
        box = bm.box(x, 0.05, 4.0)
    assert (box.upper - box.lower).flatten(1).std(1).min() > 0
    lb = Verifier(bm.classifier, (1, 8, 8), method=method, device="cpu").margin_bounds(x, y, box)
    lo, hi = box.bounds(x)
    with torch.no_grad():
        for _ in range(20):
            pts = lo + torch.rand_like(x) * (hi - lo)
            assert (margins(bm(pts), y) >= lb - 1e-5).all()
    xa = _box_pgd(bm.classifier, x, y, lo, hi)
    assert bool(box.contains(x, xa).all())
    with torch.no_grad():
        assert (margins(bm(xa), y) >= lb - 1e-5).all()


# --------------------------------------------------------------------------- evaluation
def test_certify_budgets_reports_equal_volume_radii_and_consistent_records():
    bm = _trained_like_pair(1)
    x, y = torch.rand(24, 1, 8, 8), torch.randint(0, 10, (24,))
    rep = certify_budgets(bm, x, y, eps=0.05, rho=4.0, methods=["ibp"], pgd_steps=5, device="cpu")
    r = rep["radius"]
    assert r["nominal_log_learned"] == pytest.approx(math.log(0.05), abs=1e-5)
    assert r["nominal_log_uniform"] == pytest.approx(math.log(0.05), abs=1e-6)
    assert r["effective_log_learned"] <= r["nominal_log_learned"] + 1e-6
    row = rep["rows"][0]
    recs = rep["records"]
    assert len(recs) == 24 and row["violations"] == 0
    assert row["certified_learned"] == pytest.approx(sum(q["certified_learned"]["ibp"] for q in recs) / 24)
    assert rep["clean_acc"] == pytest.approx(sum(q["pred"] == q["label"] for q in recs) / 24)
    uni = certify_budgets(bm, x, y, eps=0.05, rho=1.0, methods=["ibp"], pgd_steps=0, device="cpu", records=False)
    assert uni["rows"][0]["certified_learned"] == uni["rows"][0]["certified_uniform"]
    assert uni["radius"]["effective_log_learned"] == pytest.approx(uni["radius"]["effective_log_uniform"])


@pytest.mark.parametrize("kind", ["contextual", "fixed"])
def test_cli_trains_and_verifies_a_budget_checkpoint_and_writes_pictures(tmp_path, capsys, kind):
    import yaml

    from robustsuite.cli import main

    from pathlib import Path

    cfg = yaml.safe_load((Path(__file__).resolve().parent.parent / "configs" / "digits_distractor_budgets.yaml").read_text())
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg))
    rc = main(["train", str(path), "--out", str(tmp_path / "run"), "--device", "cpu", "--quiet",
               "--set", "train.epochs=2", "--set", "data.train_subset=128", "--set", "data.test_subset=16",
               "--set", "train.schedule.start_epoch=1", "--set", "train.schedule.ramp_epochs=1",
               "--set", "model.options={width: 0.5, linear: 32}", "--set", "train.generator.width=8",
               "--set", f"train.generator.kind={kind}"])
    assert rc == 0
    assert load_checkpoint(tmp_path / "run" / "best.pt")["generator_spec"]["kind"] == kind
    out = tmp_path / "verify.json"
    rc = main(["verify", str(tmp_path / "run" / "best.pt"), "--subset", "16", "--method", "ibp",
               "--pgd-steps", "5", "--device", "cpu", "--out", str(out)])
    assert rc == 0
    assert "cert learned" in capsys.readouterr().out
    rep = json.loads(out.read_text())["reports"][0]
    assert rep["rho"] == 4.0 and rep["n"] == 16 and rep["rows"][0]["method"] == "ibp"
    for name in ("verify_heatmaps.png", "verify_log_budgets.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_certified_accuracy_plot_is_written_as_png(tmp_path):
    from robustsuite.budgets.plots import plot_certified_vs_eps

    p = plot_certified_vs_eps({"learned (own budgets)": ([0.1, 0.2], [0.9, 0.8]),
                               "uniform": ([0.1, 0.2], [0.8, 0.5])}, path=tmp_path / "c.png",
                              errors={"uniform": [0.01, 0.02]})
    assert p.read_bytes()[:4] == b"\x89PNG"
