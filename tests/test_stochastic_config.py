"""Validation boundaries and documented defaults of robustsuite.stochastic's layers, schedules and
builders: a value just inside and just outside each bound, so a moved bound fails a test (mutation
survivors of issue 15 that only change which bad input is refused, or an API default)."""
from __future__ import annotations

import copy
import math

import pytest
import torch

import robustsuite.stochastic as S
from robustsuite import models
from robustsuite.errors import ConfigError, RobustSuiteError


def small_model():
    torch.manual_seed(0)
    return models.build("resnet_v1", (1, 8, 8), 10, depth=8, width=0.5)


# ------------------------------------------------------------------------------------- noise layers
def test_noise_layer_defaults_are_the_papers():
    pi = S.PerturbationInjection((2, 3))
    assert torch.all(pi.theta == 0.25) and pi.theta_min == 0.01 and not pi.shared  # Learn2Perturb
    assert float(S.ScalarNoise().alpha.detach()) == 0.25 and not S.ScalarNoise().shared    # PNI
    ema = S.StocReLUEMA(3)
    assert ema.alpha == 0.5 and ema.gamma == 0.0 and not ema.shared               # ANIS2 slides
    assert ema.updates.dtype == torch.long and int(ema.updates) == 0


@pytest.mark.parametrize("make,field", [
    (lambda v: S.PerturbationInjection((2,), init=v), "init"),
    (lambda v: S.ScalarNoise(init=v), "init"),
    (lambda v: S.StocReLUEMA(2, gamma=v), "gamma"),
    (lambda v: S.PerturbationInjection((2,), init=0.5, theta_min=v), "theta_min"),
])
@pytest.mark.parametrize("bad", [True, -1e-3, math.nan, math.inf, "0.1"])
def test_noise_scales_refuse_bad_numbers_naming_the_field(make, field, bad):
    with pytest.raises(ConfigError, match=rf"^{field}: expected a finite number"):
        make(bad)


def test_zero_is_allowed_where_documented():
    assert S.PerturbationInjection((2,), init=0.5, theta_min=0.0).theta_min == 0.0
    assert float(S.ScalarNoise(init=0.0).alpha.detach()) == 0.0
    assert S.StocReLUEMA(2, gamma=0.0).gamma == 0.0
    with pytest.raises(ConfigError, match=r"^init: expected a finite number > 0"):
        S.PerturbationInjection((2,), init=0.0, theta_min=0.0)
    with pytest.raises(ConfigError, match=r"^alpha: expected a finite number > 0"):
        S.StocReLUEMA(2, alpha=0.0)
    with pytest.raises(ConfigError, match=r"^gamma: expected a finite number >= 0"):
        S.set_gamma(S.StocReLUEMA(2), -0.1)
    with pytest.raises(ConfigError, match="shared"):
        S.ScalarNoise(shared=1)


@pytest.mark.parametrize("channels", [0, -1, True, 2.0])
def test_stoc_relu_channels_must_be_a_positive_integer(channels):
    with pytest.raises(ConfigError, match="channels"):
        S.StocReLUEMA(channels)
    assert S.StocReLUEMA(1).sigma.numel() == 1


def test_stoc_relu_noise_scale_is_sqrt_gamma_times_mean_sigma():
    m = S.StocReLUEMA(2, gamma=0.25)
    m.sigma.copy_(torch.tensor([1.0, 3.0]))
    assert float(m.noise_scale()) == pytest.approx(0.5 * 2.0)
    model = S.add_noise(small_model(), "anis2", gamma=0.25)
    for _, layer in S.noise_layers(model):
        layer.sigma.fill_(2.0)
    assert S.mean_noise_scale(model) == pytest.approx(1.0)
    assert S.mean_noise_scale(small_model()) == 0.0


# ------------------------------------------------------------------------------------- schedules
def test_schedule_bounds():
    assert S.gamma_staircase(0, 0.0, 0.2, ramp_epochs=0, step_every=1) == 0.2
    for ramp, every in [(-1, 1), (1, 0), (-1, 0)]:
        with pytest.raises(ConfigError, match="gamma schedule"):
            S.gamma_staircase(0, 0.0, 0.2, ramp_epochs=ramp, step_every=every)
    assert S.cyclic_lr(1, 1, 0.2, peak=0.5) == 0.0             # total_steps 1 is allowed
    assert S.cyclic_lr(1, 2, 0.2, peak=0.999) == pytest.approx(0.2 * 0.5 / 0.999)
    assert S.cyclic_lr(1, 2, 0.2, peak=1e-3) == pytest.approx(0.2 * 0.5 / 0.999)
    for total, peak in [(0, 0.4), (10, 0.0), (10, 1.0), (10, 1.5), (10, -0.1)]:
        with pytest.raises(ConfigError, match="cyclic lr"):
            S.cyclic_lr(1, total, 0.2, peak=peak)


# ------------------------------------------------------------------------------------- losses
def test_js_divergence_takes_two_or_more_and_the_regularizer_takes_a_model():
    a, b = torch.randn(4, 5), torch.randn(4, 5)
    pa, pb = a.softmax(1), b.softmax(1)
    m = (pa + pb) / 2
    two = ((pa * (pa / m).log()).sum(1).mean() + (pb * (pb / m).log()).sum(1).mean()) / 2
    assert float(S.js_divergence(a, b)) == pytest.approx(float(two), rel=1e-5)
    with pytest.raises(ConfigError, match="at least two"):
        S.js_divergence(a)
    model = S.add_noise(small_model(), "learn2perturb")
    n = sum(m.theta.numel() for _, m in S.noise_layers(model))
    assert float(S.learn2perturb_regularizer(model, gamma=0.1, tau=2.0).detach()) == pytest.approx(-(0.1 / 2.0) * n * 0.5)
    with pytest.raises(ConfigError, match="no PerturbationInjection"):
        S.learn2perturb_regularizer(small_model(), gamma=0.1, tau=1.0)


# ------------------------------------------------------------------------------------- builders
def test_builders_refuse_models_without_a_zoo_spec():
    with pytest.raises(ConfigError, match="zoo model"):
        S.add_noise(torch.nn.Linear(2, 2), "pni")
    model = small_model()
    model.spec = {"name": "resnet_v1"}  # no in_shape: the insertion shapes cannot be found
    with pytest.raises(ConfigError, match="zoo model"):
        S.add_noise(model, "pni")
    with pytest.raises(RobustSuiteError):
        S.build_from_spec({**small_model().spec, "stochastic": {}})  # no kind


def test_specs_are_copies_and_plain_specs_rebuild_plain_models():
    model = small_model()
    before = model.spec
    S.add_noise(model, "pni")
    model.spec["options"]["depth"] = 99
    assert before["options"]["depth"] == 8, "the stochastic spec must not share the zoo spec's entries"
    base = S.base_spec(model.spec)
    base["options"]["depth"] = 7
    assert model.spec["options"]["depth"] == 99
    plain = small_model().spec
    assert not S.is_stochastic_spec(plain) and S.is_stochastic_spec(model.spec)
    assert not S.is_stochastic_spec([("stochastic", 1)])
    rebuilt = S.build_from_spec(plain)
    assert not S.noise_layers(rebuilt) and rebuilt.spec == plain


@pytest.mark.parametrize("kind,opts,attr", [("learn2perturb", {"theta_min": 0.02, "init": 0.3}, "theta_min"),
                                            ("anis2", {"alpha": 0.8}, "alpha"),
                                            ("pni", {"init": 0.4}, None)])
def test_rebuild_keeps_the_noise_options(kind, opts, attr):
    model = S.build_stochastic(kind, small_model().spec, **opts)
    twin = S.build_from_spec(copy.deepcopy(model.spec))
    for (_, a), (_, b) in zip(S.noise_layers(model), S.noise_layers(twin)):
        if attr:
            assert getattr(a, attr) == getattr(b, attr) == opts[attr]
        else:
            assert float(a.alpha.detach()) == float(b.alpha.detach()) == pytest.approx(opts["init"])


# ------------------------------------------------------------------------------------- MNG-AC generator
def test_generator_arguments():
    g = S.NoiseGenerator(1)
    assert not g.use_image and g.projection == "exact"  # the reference code's generator by default
    assert S.NoiseGenerator(1, hidden=1).net[0].out_channels == 1
    for ch, hid in [(0, 4), (1, 0), (0, 0)]:
        with pytest.raises(ConfigError, match="channels and hidden"):
            S.NoiseGenerator(ch, hidden=hid)
    with pytest.raises(ConfigError, match="projection"):
        S.NoiseGenerator(1, projection="clip")


def test_grouped_optimizer_defaults_to_plain_momentum():
    from robustsuite.training.config import OptimConfig
    from robustsuite.stochastic.adversarial import build_grouped_optimizer
    p = torch.nn.Parameter(torch.zeros(2))
    opt = build_grouped_optimizer([{"params": [p]}, {"params": []}], OptimConfig(name="sgd", lr=0.1))
    assert len(opt.param_groups) == 1 and opt.param_groups[0]["nesterov"] is False
    assert opt.param_groups[0]["momentum"] == 0.9


# ------------------------------------------------------------------------------- the noise registry
@pytest.fixture
def clean_noise_registry():
    """A kind registered by a test is gone afterwards (the tests share a process)."""
    from robustsuite.stochastic import noise as noise_mod
    kinds, defaults = dict(noise_mod._KINDS), dict(noise_mod.KINDS)
    yield noise_mod
    for table, before in ((noise_mod._KINDS, kinds), (noise_mod.KINDS, defaults)):
        table.clear()
        table.update(before)


@pytest.mark.parametrize("sites", ["noise_sites", "block_activations"])
def test_register_noise_records_the_kind_and_add_noise_uses_its_sites(clean_noise_registry, sites):
    """The built-in kinds register at import time (before mutmut's mutant is active), so the registry's
    own code is exercised here, by registering a kind the way a user would."""
    noise_mod = clean_noise_registry

    @noise_mod.register_noise("toy_gain", sites=sites)
    class ToyGain(noise_mod.NoiseLayer):
        def __init__(self, gain: float = 2.0, shared: bool = False) -> None:
            super().__init__(shared)
            self.gain = gain

        def forward(self, x):
            return x * self.gain

        def noise_scale(self):
            return torch.tensor(0.0)

    assert noise_mod.noise_kind("toy_gain") == noise_mod.NoiseKind("toy_gain", ToyGain, sites,
                                                                   {"gain": 2.0, "shared": False})
    assert S.KINDS["toy_gain"] == {"gain": 2.0, "shared": False}
    model = small_model()
    expected = models.block_activations(model) if sites == "block_activations" else models.noise_sites(model)
    noisy = S.add_noise(model, "toy_gain", gain=3.0)
    layers = S.noise_layers(noisy)
    assert [n for n, _ in layers] == expected and all(m.gain == 3.0 for _, m in layers)


@pytest.mark.parametrize("sites", ["NOISE_SITES", "Block_activations", "activations", None])
def test_register_noise_refuses_unknown_sites(clean_noise_registry, sites):
    with pytest.raises(ValueError, match=r"register_noise\('toy_bad'\): sites must be 'noise_sites' or "
                                         r"'block_activations'"):
        clean_noise_registry.register_noise("toy_bad", sites=sites)
    assert "toy_bad" not in S.KINDS


def test_unknown_noise_kind_names_the_field_the_value_and_the_kinds():
    from robustsuite.errors import UnknownNameError
    with pytest.raises(UnknownNameError, match=r"^stochastic\.kind: unknown value 'nois'; choose one of: anis2, "
                                               r"learn2perturb, pni"):
        S.add_noise(small_model(), "nois")
