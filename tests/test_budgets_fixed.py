"""The input-independent baseline of learned budgets: one learned mask for every image (issue #19)."""
from __future__ import annotations

import math

import pytest
import torch

from robustsuite import ConfigError
from robustsuite.budgets import (BudgetGenerator, BudgetModel, FixedBudgetGenerator, budget_spread,
                                 certify_budgets, generator_from_spec, load_budget_model, mean_mask_generator)
from robustsuite.budgets.plots import plot_budget_context
from robustsuite.training.config import validate
from robustsuite.errors import InputError
from robustsuite.models import build
from robustsuite.training import load_checkpoint
from robustsuite.training.run import train


def _cfg(kind="fixed", method="budgets", **train_overrides):
    t = {"method": method, "eps": 0.1, "epochs": 3, "batch_size": 64, "beta_final": 0.5,
         "schedule": {"start_epoch": 1, "ramp_epochs": 1}, "optim": {"lr": 1e-3}}
    if method == "budgets":
        t["generator"] = {"kind": kind, "width": 8, "depth": 2, "optim": {"lr": 1e-2}}
    t.update(train_overrides)
    return validate({"name": "t", "seed": 3, "device": "cpu",
                     "data": {"name": "digits", "train_subset": 192, "val_fraction": 0.25},
                     "model": {"name": "cnn_small", "options": {"width": 0.5, "linear": 32}}, "train": t})


def _pair(gen):
    torch.manual_seed(0)
    return BudgetModel(build("cnn_small", (1, 8, 8), 10, width=0.5, linear=32), gen).eval()


def test_fixed_mask_is_the_same_for_every_image_and_holds_volume_and_range():
    gen = FixedBudgetGenerator((1, 8, 8))
    with torch.no_grad():
        gen.scores.normal_(std=3.0)
    bm = _pair(gen)
    x = torch.rand(5, 1, 8, 8)
    b = bm.budgets(x, 0.1, 4.0)
    assert torch.equal(b, b[:1].expand_as(b))                       # one mask for all images
    assert b.std() > 0                                               # and not uniform
    assert (b.log().flatten(1).mean(1) - math.log(0.1)).abs().max() < 1e-5  # volume e^d
    assert b.min() >= 0.1 / 4 * (1 - 1e-5) and b.max() <= 0.4 * (1 + 1e-5)  # range [e/rho, rho e]
    assert torch.equal(bm.budgets(x, 0.1, 1.0), torch.full_like(x, 0.1))  # rho = 1 is uniform exactly
    with pytest.raises(InputError, match="fixed budget mask has shape"):
        gen(torch.rand(2, 1, 6, 6))


def test_config_selects_the_generator_kind_and_refuses_others():
    assert _cfg().train.generator.kind == "fixed"
    assert _cfg(kind="contextual").train.generator.kind == "contextual"
    assert validate({"name": "t", "data": {"name": "digits"}, "model": {"name": "cnn_small"},
                     "train": {"method": "budgets", "eps": 0.1}}).train.generator.kind == "contextual"
    with pytest.raises(ConfigError, match="train.generator.kind"):
        _cfg(kind="learned")


def test_specs_rebuild_each_kind_and_old_specs_mean_contextual():
    assert isinstance(generator_from_spec({"kind": "fixed", "in_shape": [1, 8, 8]}), FixedBudgetGenerator)
    old = generator_from_spec({"in_shape": [1, 8, 8], "width": 8, "depth": 1, "coordinates": True})
    assert isinstance(old, BudgetGenerator) and old.spec["kind"] == "contextual"
    with pytest.raises(ConfigError, match="unknown kind"):
        generator_from_spec({"kind": "other", "in_shape": [1, 8, 8]})


def test_rho_one_fixed_training_reproduces_the_uniform_crown_ibp_run(tmp_path):
    uni = train(_cfg(method="crown-ibp"), tmp_path / "uniform", quiet=True)
    fixed = train(_cfg(rho=1.0), tmp_path / "fixed", quiet=True)
    a, b = load_checkpoint(uni.last)["model_state"], load_checkpoint(fixed.last)["model_state"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert [r["loss"] for r in uni.history] == [r["loss"] for r in fixed.history]


def test_fixed_mask_trains_jointly_and_certifies_through_the_budget_api(tmp_path):
    res = train(_cfg(rho=4.0), tmp_path, quiet=True)
    ckpt = load_checkpoint(res.last)
    assert ckpt["generator_spec"]["kind"] == "fixed"
    assert ckpt["generator_state"]["scores"].abs().sum() > 0      # the mask learned (it starts at 0)
    bm = load_budget_model(res.last)
    assert isinstance(bm.generator, FixedBudgetGenerator)
    x, y = torch.rand(12, 1, 8, 8), torch.randint(0, 10, (12,))
    b = bm.budgets(x, 0.1, 4.0)
    assert torch.equal(b, b[:1].expand_as(b))
    rep = certify_budgets(bm, x, y, eps=0.1, rho=4.0, methods=["ibp"], pgd_steps=3, device="cpu")
    assert rep["rows"][0]["violations"] == 0
    assert budget_spread(b, rho=4.0)["mean_pixel_std"] == 0.0


def test_fixed_mask_model_runs_through_the_evaluator(tmp_path):
    from robustsuite.eval import evaluate  # the unified evaluator takes budget models as they are

    gen = FixedBudgetGenerator((1, 8, 8))
    with torch.no_grad():
        gen.scores.normal_(std=2.0)
    bm = _pair(gen)
    x, y = torch.rand(8, 1, 8, 8), torch.randint(0, 10, (8,))
    suite = {"certify": [{"method": "ibp", "eps": 0.05, "budgets": "learned", "rho": 4}],
             "attacks": [{"name": "pgd", "eps": 0.05, "budgets": "learned", "rho": 4, "steps": 3}]}
    rep = evaluate({"fixed": bm}, (x, y), suite, device="cpu")
    assert rep.not_applicable["fixed"] == {} and rep.ok
    rep.save(tmp_path)
    assert (tmp_path / "plots" / "budgets_fixed.png").is_file()


def test_mean_mask_of_a_contextual_model_is_the_geometric_mean_of_its_budgets():
    gen = BudgetGenerator((1, 8, 8), width=8, depth=2)
    torch.nn.init.normal_(gen.head.weight, std=2.0)
    bm = _pair(gen)
    x = torch.rand(40, 1, 8, 8)
    with torch.no_grad():
        b = bm.budgets(x, 0.1, 4.0)
        mean = mean_mask_generator(bm, x, 0.1, 4.0, batch=16)     # several chunks
        bm_mean = BudgetModel(bm.classifier, mean)
        bmean = bm_mean.budgets(x[:3], 0.1, 4.0)
    geo = b.log().mean(0).exp()
    assert torch.allclose(bmean[0], geo, rtol=1e-4)               # no further projection needed
    assert torch.equal(bmean, bmean[:1].expand_as(bmean))
    s = budget_spread(b, rho=4.0)
    assert s["mean_pixel_std"] > 0 and 0 < s["context_share"] <= 1 and s["range"] == pytest.approx(2 * math.log(4))
    # the mean mask of a fixed model is that model's mask
    fixed = _pair(FixedBudgetGenerator.from_log_budgets(geo.log()))
    again = mean_mask_generator(fixed, x, 0.1, 4.0)
    assert torch.allclose(BudgetModel(fixed.classifier, again).budgets(x[:1], 0.1, 4.0)[0], geo, rtol=1e-4)


def test_budget_spread_measures_per_pixel_variation_across_images():
    base = torch.full((4, 1, 2, 2), 0.1)
    assert budget_spread(base, rho=4.0)["mean_pixel_std"] == 0.0
    var = base.clone()
    var[0, 0, 0, 0], var[1, 0, 0, 0] = 0.2, 0.05                   # one pixel varies
    s = budget_spread(var, rho=4.0)
    assert s["max_pixel_std"] > 0 and s["mean_pixel_std"] == pytest.approx(s["max_pixel_std"] / 4)
    with pytest.raises(InputError, match="N >= 2"):
        budget_spread(base[:1], rho=4.0)


def test_context_plot_is_written(tmp_path):
    x = torch.rand(6, 1, 8, 8)
    b = 0.1 * torch.exp(0.3 * torch.randn(6, 1, 8, 8))
    p = plot_budget_context(x, b, eps=0.1, rho=4.0, path=tmp_path / "ctx.png", n=3,
                            mask=torch.zeros(1, 8, 8, dtype=torch.bool).index_fill_(2, torch.arange(4, 8), True))
    assert p.is_file() and p.stat().st_size > 1000
