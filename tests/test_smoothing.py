"""Randomized smoothing: the statistics, PREDICT and CERTIFY, batching, inputs, Gaussian training."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.stats import beta, binom, binomtest, norm
from torch import nn

import robustsuite.training.gaussian  # noqa: F401  (registers train.method "gaussian")
from robustsuite.training.config import validate
from robustsuite.errors import ConfigError, InputError, InputTypeError
from robustsuite.eval import (ABSTAIN, Certificate, Smooth, certified_radius, clopper_pearson_lower,
                              smoothing_summary, two_sided_binomial_pvalue)
from robustsuite.training import load_checkpoint
from robustsuite.training.gaussian import GaussianTrainConfig, add_gaussian_noise
from robustsuite.training.run import train


# --------------------------------------------------------------------------- helper models
class Const(nn.Module):
    """Always class ``c`` of ``k``."""

    def __init__(self, c: int = 7, k: int = 10):
        super().__init__()
        self.c, self.k = c, k

    def forward(self, z):
        out = torch.zeros(z.shape[0], self.k)
        out[:, self.c] = 1.0
        return out


class Recorder(nn.Module):
    """Class ``c`` for the first ``switch`` rows it ever sees, class ``d`` afterwards; keeps every input."""

    def __init__(self, switch: int = 0, c: int = 3, d: int = 5, k: int = 10):
        super().__init__()
        self.switch, self.c, self.d, self.k = switch, c, d, k
        self.inputs: list[torch.Tensor] = []
        self.seen = 0

    def forward(self, z):
        self.inputs.append(z.clone())
        idx = torch.arange(self.seen, self.seen + z.shape[0])
        self.seen += z.shape[0]
        cls = torch.where(idx < self.switch, self.c, self.d)
        return nn.functional.one_hot(cls, self.k).float()


class CoinFlip(nn.Module):
    """Class 0 if the first pixel is above 0.5, else class 1: exactly 50/50 around images of 0.5."""

    def forward(self, z):
        above = (z.flatten(1)[:, 0] > 0.5).long()
        return nn.functional.one_hot(1 - above, 10).float()


def _images(b=3, seed=0):
    return torch.rand(b, 1, 8, 8, generator=torch.Generator().manual_seed(seed))


# --------------------------------------------------------------------------- statistics
def test_clopper_pearson_lower_matches_hand_computed_values():
    # n_A = n: P(all n successes | p) = p^n = alpha  =>  p = alpha^(1/n)
    assert clopper_pearson_lower(500, 500, 0.001) == pytest.approx(0.001 ** (1 / 500), rel=1e-12)
    assert clopper_pearson_lower(500, 500, 0.001) == pytest.approx(0.9862795, abs=1e-7)
    # The textbook 95% two-sided Clopper-Pearson interval of 5/10 is [0.1871, 0.8129].
    assert clopper_pearson_lower(5, 10, 0.025) == pytest.approx(0.187086, abs=1e-6)
    # n_A = 0: nothing is known, bound 0.
    assert clopper_pearson_lower(0, 100, 0.001) == 0.0
    # Defining property: P(X >= n_A | p = bound) = alpha.
    for n_a, n in [(1, 3), (37, 50), (9_000, 10_000)]:
        p = clopper_pearson_lower(n_a, n, 0.01)
        assert binom.sf(n_a - 1, n, p) == pytest.approx(0.01, rel=1e-6)
    arr = clopper_pearson_lower(np.array([0, 10, 100]), 100, 0.05)
    assert arr.shape == (3,) and arr[0] == 0.0 and arr[1] < arr[2]


def test_certified_radius_is_sigma_times_inverse_normal_and_zero_below_one_half():
    assert certified_radius(norm.cdf(1.0), 0.25) == pytest.approx(0.25, rel=1e-12)
    assert certified_radius(norm.cdf(2.0), 0.5) == pytest.approx(1.0, rel=1e-12)
    assert certified_radius(0.5, 1.0) == 0.0
    assert certified_radius(0.3, 1.0) == 0.0
    np.testing.assert_allclose(certified_radius(np.array([0.1, 0.5, norm.cdf(1.5)]), 2.0), [0.0, 0.0, 3.0])


def test_two_sided_pvalue_equals_scipy_binomtest():
    for n_a in range(0, 41, 3):
        for n_b in range(0, 41, 4):
            if n_a + n_b == 0:
                assert two_sided_binomial_pvalue(0, 0) == 1.0
                continue
            want = binomtest(n_a, n_a + n_b, 0.5).pvalue
            assert two_sided_binomial_pvalue(n_a, n_b) == pytest.approx(want, rel=1e-9, abs=1e-300)
    got = two_sided_binomial_pvalue(np.array([990, 600, 520]), np.array([10, 400, 480]))
    want = [binomtest(a, a + b, 0.5).pvalue for a, b in [(990, 10), (600, 400), (520, 480)]]
    np.testing.assert_allclose(got, want, rtol=1e-9)


# --------------------------------------------------------------------------- CERTIFY
def test_constant_classifier_gets_radius_sigma_times_phi_inverse_of_alpha_to_the_one_over_n():
    cert = Smooth(Const(), num_classes=10, sigma=0.5).certify(_images(2), 50, 500, 0.001, 250)
    assert isinstance(cert, Certificate) and isinstance(cert, tuple)
    want = 0.5 * norm.ppf(beta.ppf(0.001, 500, 1))
    assert want == pytest.approx(0.5 * norm.ppf(0.001 ** (1 / 500)), rel=1e-9)
    prediction, radius = cert
    assert prediction.tolist() == [7, 7]
    assert radius.shape == (2,) and torch.allclose(radius, torch.full((2,), want, dtype=torch.float64))


def test_certify_counts_the_selected_class_only_in_fresh_estimation_samples():
    # Class 3 on every selection sample, class 5 on every estimation sample: reusing the selection
    # counts would certify class 3; counting afresh finds n_A = 0 and abstains.
    b, n0, n = 3, 20, 100
    model = Recorder(switch=b * n0, c=3, d=5)
    cert = Smooth(model, 10, 0.25, seed=0).certify(_images(b), n0, n, 0.001, 64)
    assert model.seen == b * (n0 + n)
    assert cert.prediction.tolist() == [ABSTAIN] * b and cert.radius.tolist() == [0.0] * b


def test_selection_and_estimation_noise_are_independent_draws():
    b, n0, n = 2, 30, 200
    x = _images(b)
    model = Recorder()
    Smooth(model, 10, 0.5, seed=1).certify(x, n0, n, 0.001, 50)
    rows = torch.cat(model.inputs)
    image = torch.cat([torch.arange(b).repeat_interleave(n0), torch.arange(b).repeat_interleave(n)])
    noise = (rows - x[image]).flatten(1)
    sel, est = noise[: b * n0], noise[b * n0:]
    # No estimation noise vector repeats a selection one; cross-correlation is that of independent draws.
    assert torch.cdist(sel, est).min() > 1.0
    corr = (sel / sel.norm(dim=1, keepdim=True)) @ (est / est.norm(dim=1, keepdim=True)).T
    assert corr.abs().mean() < 0.15
    # N(0, sigma^2) per pixel, not clamped to [0, 1].
    assert noise.std().item() == pytest.approx(0.5, rel=0.05) and abs(noise.mean().item()) < 0.02
    assert rows.min() < 0 and rows.max() > 1


def test_certify_batches_many_images_per_forward_pass():
    b, n0, n, batch = 5, 10, 90, 64
    model = Recorder()
    Smooth(model, 10, 0.25, seed=0).certify(_images(b), n0, n, 0.001, batch)
    assert len(model.inputs) == math.ceil(b * n0 / batch) + math.ceil(b * n / batch)
    assert all(z.shape[0] <= batch for z in model.inputs)


def test_counts_do_not_depend_on_the_batch_size_with_a_fixed_seed():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 10)).eval()
    x = _images(4)
    ref = Smooth(model, 10, 0.5, seed=3).counts(x, 300, 1200)
    for batch in (1, 7, 64, 500):
        assert torch.equal(Smooth(model, 10, 0.5, seed=3).counts(x, 300, batch), ref)
    assert ref.sum(1).tolist() == [300] * 4


def test_seeded_runs_repeat_and_successive_calls_draw_fresh_noise():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 10)).eval()
    x = _images(3)
    a, b = Smooth(model, 10, 1.0, seed=5), Smooth(model, 10, 1.0, seed=5)
    first = a.certify(x, 10, 200, 0.01, 100)
    assert all(torch.equal(u, v) for u, v in zip(first, b.certify(x, 10, 200, 0.01, 100)))
    assert not torch.equal(a.counts(x, 200, 100), a.counts(x, 200, 100))


def test_certify_and_predict_leave_the_model_mode_alone():
    model = nn.Sequential(nn.Flatten(), nn.Dropout(0.1), nn.Linear(64, 10))
    s = Smooth(model, 10, 0.25, seed=0)
    model.train()
    s.certify(_images(2), 5, 20, 0.01, 16)
    assert model.training
    model.eval()
    s.predict(_images(2), 20, 0.01, 16)
    assert not model.training
    assert all(p.grad is None for p in model.parameters())


# --------------------------------------------------------------------------- PREDICT
def test_predict_abstains_on_a_fifty_fifty_model_and_not_on_a_constant_one():
    x = torch.full((4, 1, 8, 8), 0.5)
    assert Smooth(CoinFlip(), 10, 0.25, seed=0).predict(x, 2000, 0.001, 1000).tolist() == [ABSTAIN] * 4
    assert Smooth(Const(2), 10, 0.25, seed=0).predict(x, 50, 0.001, 1000).tolist() == [2] * 4


def test_predict_returns_the_majority_class_when_it_is_clear():
    # Class 0 above 0.5 in the first pixel: images at 0.9 with sigma 0.25 give class 0 about 95% of the time.
    x = torch.cat([torch.full((2, 1, 8, 8), 0.9), torch.full((2, 1, 8, 8), 0.1)])
    assert Smooth(CoinFlip(), 10, 0.25, seed=0).predict(x, 500, 0.001, 256).tolist() == [0, 0, 1, 1]


# --------------------------------------------------------------------------- inputs
@pytest.mark.parametrize("call, err, words", [
    (lambda s, x: s.certify(x * 2, 10, 10, 0.01, 10), InputError, "[0, 1]"),
    (lambda s, x: s.certify(x.masked_fill(x > 0.5, float("nan")), 10, 10, 0.01, 10), InputError, "NaN"),
    (lambda s, x: s.certify(x[0, 0, 0], 10, 10, 0.01, 10), InputError, "batch"),
    (lambda s, x: s.certify(x, 0, 10, 0.01, 10), InputError, "n0"),
    (lambda s, x: s.certify(x, 10, -5, 0.01, 10), InputError, "n:"),
    (lambda s, x: s.certify(x, 10, 10, 0.01, 2.5), InputTypeError, "batch"),
    (lambda s, x: s.certify(x, 10, 10, 0.0, 10), InputError, "alpha"),
    (lambda s, x: s.predict(x, 10, 1.0, 10), InputError, "alpha"),
    (lambda s, x: s.predict(x.long(), 10, 0.01, 10), InputError, "floating"),
])
def test_bad_arguments_raise_errors_that_name_them(call, err, words):
    with pytest.raises(err, match=words.replace("[", r"\[").replace("]", r"\]")):
        call(Smooth(Const(), 10, 0.25, seed=0), _images(2))


@pytest.mark.parametrize("kwargs, err, words", [
    ({"sigma": 0.0}, InputError, "sigma"), ({"sigma": -1.0}, InputError, "sigma"),
    ({"sigma": float("nan")}, InputError, "sigma"), ({"num_classes": 1}, InputError, "num_classes"),
    ({"seed": 1, "generator": torch.Generator()}, InputError, "seed or generator"),
])
def test_bad_constructor_arguments_raise(kwargs, err, words):
    args = {"num_classes": 10, "sigma": 0.25, **kwargs}
    with pytest.raises(err, match=words):
        Smooth(Const(), **args)


def test_model_with_the_wrong_number_of_classes_is_reported():
    with pytest.raises(InputError, match="num_classes"):
        Smooth(Const(k=10), num_classes=5, sigma=0.25).certify(_images(1), 4, 4, 0.01, 4)


# --------------------------------------------------------------------------- summary
def test_summary_matches_a_direct_computation_from_the_records():
    pred = torch.tensor([1, 2, ABSTAIN, 4, 5, 6])
    rad = torch.tensor([0.1, 0.6, 0.0, 0.3, 0.9, 0.2], dtype=torch.float64)
    lab = torch.tensor([1, 2, 3, 0, 5, 6])
    s = smoothing_summary(pred, rad, lab, radii=(0.0, 0.25, 0.5, 1.0))
    assert s.certified_accuracy == pytest.approx((4 / 6, 2 / 6, 2 / 6, 0.0))
    assert s.abstention_rate == pytest.approx(1 / 6)
    assert s.mean_certified_radius == pytest.approx((0.1 + 0.6 + 0.9 + 0.2) / 6)
    assert s.as_dict()["num_samples"] == 6
    with pytest.raises(InputError):
        smoothing_summary(pred, rad[:3], lab)


# --------------------------------------------------------------------------- Gaussian training
def _cfg(**over):
    t = {"method": "gaussian", "sigma": 0.25, "epochs": 3, "batch_size": 64, "optim": {"lr": 2e-3}}
    t.update(over)
    return validate({"name": "g", "seed": 1, "device": "cpu",
                     "data": {"name": "digits", "train_subset": 256, "val_fraction": 0.25},
                     "model": {"name": "cnn_small", "options": {"width": 0.5, "linear": 32}},
                     "train": t})


def test_gaussian_config_validates_through_the_registry_and_rejects_bad_sigma():
    cfg = _cfg()
    assert isinstance(cfg.train, GaussianTrainConfig) and cfg.train.sigma == 0.25
    with pytest.raises(ConfigError, match="train.sigma"):
        _cfg(sigma=-0.1)
    with pytest.raises(ConfigError, match="train.sigma"):
        _cfg(sigma=None)


def test_gaussian_noise_augmentation_is_unclamped_with_std_sigma():
    x = torch.full((64, 1, 8, 8), 0.9)
    z = add_gaussian_noise(x, 0.25, torch.Generator().manual_seed(0))
    assert (z - x).std().item() == pytest.approx(0.25, rel=0.05) and z.max() > 1.0


def test_gaussian_trainer_learns_and_resumes_to_the_same_weights(tmp_path):
    cfg = _cfg()
    full = train(cfg, tmp_path / "full", quiet=True)
    assert full.history[-1]["loss"] < full.history[0]["loss"]
    assert {"noisy_acc", "val_noisy_acc", "val_clean_acc"} <= set(full.history[-1])
    train(cfg, tmp_path / "cut", quiet=True, stop_after=2)
    resumed = train(cfg, tmp_path / "cut", quiet=True)
    a = load_checkpoint(full.last)["model_state"]
    b = load_checkpoint(resumed.last)["model_state"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert load_checkpoint(resumed.best)["kind"] == "gaussian"
