"""The model zoo: shapes, rebuilding from a spec, Normalize, noise-layer sites and input errors.

auto_LiRPA parsing of the certifiable models is in ``test_models_lirpa.py``.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from robustsuite.errors import ConfigError, UnknownNameError
from robustsuite.models import (Normalize, PadShortcut, Site, available, block_activations, build,
                                build_from_spec, count_parameters, info, is_certifiable,
                                noise_sites, replace_module, unsupported_layers)

# Small widths keep every forward pass cheap; each entry is (name, options).
SMALL = [
    ("mlp", {"hidden": (32, 16)}),
    ("cnn_small", {"width": 0.5, "linear": 32}),
    ("cnn7", {"width": 0.125, "linear": 32, "bn": True}),
    ("cnn7", {"width": 0.125, "linear": 32, "bn": False}),
    ("resnet_small", {"width": 4}),
    ("resnet_small", {"width": 4, "bn": False}),
    ("resnet_v1", {"depth": 8, "width": 0.25}),
    ("resnet_v1", {"depth": 8, "width": 0.25, "shortcut": "conv"}),
    ("preact_resnet18", {"width": 0.0625}),
    ("wideresnet", {"depth": 10, "width": 1}),
]
SHAPES = [(1, 8, 8), (3, 32, 32)]
RESIDUAL = [("resnet_v1", {"depth": 8, "width": 0.25}), ("preact_resnet18", {"width": 0.0625}),
            ("wideresnet", {"depth": 10, "width": 1}), ("resnet_small", {"width": 4})]


def _id(entry) -> str:
    name, options = entry
    return name + "".join(f"-{k}={v}" for k, v in options.items())


pytestmark = pytest.mark.usefixtures("one_thread_seeded")


def test_every_registered_model_is_covered_by_these_tests():
    assert {name for name, _ in SMALL} == set(available())


@pytest.mark.parametrize("in_shape", SHAPES, ids=str)
@pytest.mark.parametrize("entry", SMALL, ids=_id)
def test_every_model_maps_a_batch_to_finite_logits_of_shape_batch_by_classes(entry, in_shape):
    name, options = entry
    model = build(name, in_shape, 10, **options)
    x = torch.rand(3, *in_shape)
    for mode in (model.train, model.eval):
        mode()
        out = model(x)
        assert out.shape == (3, 10)
        assert torch.isfinite(out).all()


@pytest.mark.parametrize("entry", SMALL, ids=_id)
def test_build_from_spec_with_the_state_dict_reproduces_the_outputs(entry):
    name, options = entry
    in_shape = (3, 8, 8)
    model = build(name, in_shape, 7, mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.3), **options)
    model.train()
    model(torch.rand(16, *in_shape))  # move BN running statistics away from their initial values
    model.eval()
    spec = json.loads(json.dumps(model.spec))  # a spec must survive a JSON (or YAML) round trip
    twin = build_from_spec(spec)
    twin.load_state_dict(model.state_dict())
    twin.eval()
    x = torch.rand(4, *in_shape)
    assert twin.spec == model.spec
    torch.testing.assert_close(twin(x), model(x), rtol=0, atol=0)


def test_spec_records_every_resolved_option_so_defaults_can_change_later():
    model = build("resnet_v1", (3, 32, 32), 10)
    assert model.spec == {"name": "resnet_v1", "in_shape": [3, 32, 32], "num_classes": 10,
                          "options": {"depth": 20, "shortcut": "pad", "width": 1.0,
                                      "mean": [0.0, 0.0, 0.0], "std": [1.0, 1.0, 1.0]}}


def test_spec_is_plain_json_even_when_built_from_numpy_values():
    model = build("mlp", (np.int64(3), 8, 8), np.int64(10), hidden=[np.int64(4)],
                  mean=np.array([0.5, 0.25, 0.0]))
    assert json.loads(json.dumps(model.spec)) == {
        "name": "mlp", "in_shape": [3, 8, 8], "num_classes": 10,
        "options": {"hidden": [4], "mean": [0.5, 0.25, 0.0], "std": [1.0, 1.0, 1.0]}}


@pytest.mark.parametrize("channels", [1, 3])
def test_normalize_equals_x_minus_mean_over_std_per_channel(channels):
    mean = torch.rand(channels)
    std = torch.rand(channels) + 0.1
    layer = Normalize(mean.tolist(), std.tolist())
    x = torch.rand(5, channels, 6, 7)
    expected = (x - mean.view(1, -1, 1, 1)) / std.view(1, -1, 1, 1)
    torch.testing.assert_close(layer(x), expected, rtol=1e-5, atol=1e-5)


def test_normalize_with_a_single_number_applies_it_to_every_channel():
    layer = Normalize(0.5, 0.25, channels=3)
    x = torch.rand(2, 3, 4, 4)
    torch.testing.assert_close(layer(x), (x - 0.5) / 0.25)


def test_normalize_default_is_the_identity_and_holds_no_trainable_parameters():
    model = build("cnn_small", (3, 8, 8), 10)
    x = torch.rand(2, 3, 8, 8)
    assert torch.equal(model.normalize(x), x)
    assert list(model.normalize.parameters()) == []
    assert {"normalize.weight", "normalize.bias"} <= set(model.state_dict())


def test_models_carry_their_normalization_inside():
    mean, std = (0.49, 0.48, 0.45), (0.25, 0.24, 0.26)
    normalized = build("cnn_small", (3, 8, 8), 10, mean=mean, std=std)
    plain = build("cnn_small", (3, 8, 8), 10)
    plain.load_state_dict({k: v for k, v in normalized.state_dict().items()
                           if not k.startswith("normalize.")}, strict=False)
    x = torch.rand(2, 3, 8, 8)
    x_std = (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    torch.testing.assert_close(normalized(x), plain(x_std), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("size", [8, 9])
def test_pad_shortcut_equals_strided_subsampling_with_zero_padded_channels(size):
    layer = PadShortcut(16, 32, 2)
    x = torch.randn(2, 16, size, size)
    expected = F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, 8, 8))  # He et al.'s option A
    assert torch.equal(layer(x), expected)
    assert list(layer.parameters()) == []


def test_resnet_v1_and_wideresnet_have_the_reference_parameter_counts():
    # ResNet-20/56: 0.27M/0.85M (He et al., table 6); WRN-28-10: 36.5M (Zagoruyko and Komodakis).
    assert count_parameters(build("resnet_v1", (3, 32, 32), 10, depth=20)) == 269_722
    assert count_parameters(build("resnet_v1", (3, 32, 32), 10, depth=56)) == 853_018
    assert count_parameters(build("wideresnet", (3, 32, 32), 10, depth=28, width=10)) == 36_479_194


def test_count_parameters_counts_only_trainable_ones_when_asked():
    model = build("mlp", (1, 4, 4), 3, hidden=(5,))
    assert count_parameters(model) == 16 * 5 + 5 + 5 * 3 + 3
    model.fc_out.requires_grad_(False)
    assert count_parameters(model, trainable_only=True) == 16 * 5 + 5


@pytest.mark.parametrize("entry", RESIDUAL, ids=_id)
def test_residual_models_mark_the_stem_and_every_block_output_as_noise_sites(entry):
    name, options = entry
    model = build(name, (3, 8, 8), 10, **options)
    sites = noise_sites(model)
    blocks = [n for n, m in model.named_modules() if hasattr(m, "post_add")]
    assert sites == ["post_stem"] + [f"{b}.post_add" for b in blocks]
    assert noise_sites(model, role="stem") == ["post_stem"]
    acts = block_activations(model)
    assert acts == [f"{b}.{a}" for b in blocks for a in ("act1", "act2")]
    modules = [model.get_submodule(a) for a in acts]
    assert all(isinstance(m, nn.ReLU) for m in modules)
    assert len({id(m) for m in modules}) == len(modules)  # one module per place, so each can be replaced


def test_a_replaced_block_site_sees_the_sum_before_the_final_relu():
    model = build("resnet_v1", (3, 8, 8), 10, depth=8, width=0.25).eval()
    seen = []

    class Record(nn.Module):
        def forward(self, x):
            seen.append(x.detach())
            return x

    old = replace_module(model, "layer2.0.post_add", Record())
    assert isinstance(old, Site)
    model(torch.rand(2, 3, 8, 8))
    assert len(seen) == 1 and seen[0].shape == (2, 8, 4, 4)
    assert (seen[0] < 0).any()  # pre-activation values: the site is before the ReLU


def test_replace_module_rejects_a_name_that_is_not_a_submodule():
    model = build("resnet_small", (1, 8, 8), 10)
    with pytest.raises(ConfigError, match="no_such"):
        replace_module(model, "layer1.0.no_such", nn.Identity())


@pytest.mark.parametrize("entry", SMALL, ids=_id)
def test_every_model_is_certifiable_and_uses_only_layers_auto_lirpa_bounds_soundly(entry):
    # Every entry parses and bounds in auto_LiRPA (test_models_lirpa.py), so every one is marked so.
    name, options = entry
    model = build(name, (3, 8, 8), 10, **options)
    assert info(name).certifiable
    assert unsupported_layers(model) == []
    assert is_certifiable(model) and is_certifiable(model.spec) and is_certifiable(name)


def test_a_noise_layer_at_a_site_or_a_replaced_activation_makes_a_model_uncertifiable():
    class Noise(nn.Identity):  # subclasses Identity on purpose: types are compared exactly
        def forward(self, x):
            return x + torch.randn_like(x)

    model = build("resnet_small", (1, 8, 8), 10)
    replace_module(model, "post_stem", Noise())
    replace_module(model, "layer1.1.act2", nn.ELU())
    assert unsupported_layers(model) == ["post_stem (Noise)", "layer1.1.act2 (ELU)"]
    assert not is_certifiable(model)


def test_models_not_built_by_the_zoo_or_with_unsound_pooling_are_not_certifiable():
    assert not is_certifiable(nn.Sequential(nn.Flatten(), nn.Linear(4, 2)))  # no spec
    assert unsupported_layers(nn.Sequential(nn.AvgPool2d(3, 1, 1), nn.MaxPool2d(3, 2, 1))) == [
        "0 (AvgPool2d)", "1 (MaxPool2d)"]
    assert unsupported_layers(nn.Sequential(nn.MaxPool2d(2), nn.AdaptiveAvgPool2d(1))) == []
    assert unsupported_layers(nn.Sequential(nn.AdaptiveAvgPool2d(2))) == ["0 (AdaptiveAvgPool2d)"]


# ----- errors -----------------------------------------------------------------------------------

def test_unknown_model_name_lists_the_known_names():
    with pytest.raises(UnknownNameError) as err:
        build("resnet99", (3, 32, 32), 10)
    for name in available():
        assert name in str(err.value)


def test_unknown_option_names_the_option_and_the_allowed_ones():
    with pytest.raises(ConfigError) as err:
        build("cnn7", (3, 32, 32), 10, depth=20)
    message = str(err.value)
    assert "'depth'" in message
    for option in ("bn", "width", "linear", "mean", "std"):
        assert option in message


@pytest.mark.parametrize("in_shape", [(8, 8), (1, 8, 8, 1), (0, 8, 8), (1, 8.0, 8), "1x8x8", 8,
                                      (True, 8, 8)], ids=str)
def test_in_shape_that_is_not_three_positive_ints_is_a_config_error(in_shape):
    with pytest.raises(ConfigError, match="in_shape"):
        build("mlp", in_shape, 10)


@pytest.mark.parametrize("num_classes", [1, 0, -3, 2.0, True])
def test_num_classes_below_two_or_not_an_int_is_a_config_error(num_classes):
    with pytest.raises(ConfigError, match="num_classes"):
        build("mlp", (1, 8, 8), num_classes)


@pytest.mark.parametrize("option, value", [("mean", (0.1, 0.2)), ("std", (0.2, 0.2, 0.2, 0.2)),
                                           ("std", (0.2, 0.0, 0.2)), ("std", -1.0),
                                           ("mean", float("nan")), ("mean", "zero")])
def test_mean_or_std_that_does_not_fit_the_channels_is_a_config_error(option, value):
    with pytest.raises(ConfigError, match=option):
        build("cnn_small", (3, 8, 8), 10, **{option: value})


@pytest.mark.parametrize("name, options, field", [
    ("resnet_v1", {"depth": 21}, "depth"),
    ("resnet_v1", {"depth": 2}, "depth"),
    ("resnet_v1", {"shortcut": "zero"}, "shortcut"),
    ("wideresnet", {"depth": 27}, "depth"),
    ("wideresnet", {"width": 2.5}, "width"),
    ("cnn7", {"width": 0}, "width"),
    ("cnn7", {"bn": "yes"}, "bn"),
    ("mlp", {"hidden": (32, 0)}, "hidden"),
    ("resnet_small", {"width": 0.5}, "width"),
])
def test_out_of_range_option_values_are_config_errors_naming_the_option(name, options, field):
    with pytest.raises(ConfigError, match=field):
        build(name, (3, 32, 32), 10, **options)


def test_cnn_small_on_an_input_too_small_for_its_two_strided_convolutions_is_a_config_error():
    with pytest.raises(ConfigError, match="in_shape"):
        build("cnn_small", (1, 3, 3), 10)
    build("cnn_small", (1, 4, 4), 10)


@pytest.mark.parametrize("spec", [
    {"name": "mlp", "in_shape": [1, 8, 8]},
    {"name": "mlp", "in_shape": [1, 8, 8], "num_classes": 10, "weights": None},
    [("name", "mlp")],
], ids=["missing-key", "unknown-key", "not-a-mapping"])
def test_malformed_spec_is_a_config_error(spec):
    with pytest.raises(ConfigError, match="spec"):
        build_from_spec(spec)
