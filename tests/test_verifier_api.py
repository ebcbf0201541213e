"""The Verifier's interface: shapes, methods, chunking, gradients to boxes, and clear errors."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from robustsuite import Box, L1Ball, LinfBall
from robustsuite.certify import Verifier
from robustsuite.errors import InputError, InputTypeError, UnknownNameError, UnsupportedModelError
from robustsuite.models import build

SHAPE = (1, 8, 8)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build("cnn_small", SHAPE, 10, width=0.5, linear=32).eval()


@pytest.fixture(scope="module")
def batch(model):
    torch.manual_seed(1)
    x = torch.rand(10, *SHAPE)
    return x, model(x).argmax(1)


def test_result_shapes_and_certified_definition(model, batch):
    x, y = batch
    res = Verifier(model, SHAPE, method="crown", device="cpu").verify(x, y, LinfBall(0.001))
    assert res.certified.shape == (10,) and res.margin_lower.shape == (10, 9)
    assert torch.equal(res.certified, res.clean_correct & (res.margin_lower > 0).all(1))
    assert res.certified.all(), "a tiny ball around correctly classified points must be certified"
    lo, hi = Verifier(model, SHAPE, method="ibp", device="cpu").bounds(x, LinfBall(0.01))
    assert lo.shape == hi.shape == (10, 10) and (lo <= hi).all()


def test_wrong_labels_are_never_certified(model, batch):
    x, y = batch
    res = Verifier(model, SHAPE, method="ibp", device="cpu").verify(x, (y + 1) % 10, LinfBall(0.0))
    assert not res.certified.any()


def test_tighter_methods_give_tighter_margins(model, batch):
    x, y = batch
    m = {k: Verifier(model, SHAPE, method=k, device="cpu").margin_bounds(x, y, LinfBall(0.02)).detach()
         for k in ("ibp", "crown", "alpha-crown")}
    assert (m["crown"].sum() >= m["ibp"].sum()) and (m["alpha-crown"] >= m["crown"] - 1e-5).all()


def test_chunking_gives_the_same_bounds_as_one_batch(model, batch):
    x, y = batch
    whole = Verifier(model, SHAPE, method="crown", device="cpu").margin_bounds(x, y, LinfBall(0.02))
    chunked = Verifier(model, SHAPE, method="crown", device="cpu", max_batch=3).margin_bounds(x, y, LinfBall(0.02))
    assert torch.allclose(whole, chunked, atol=1e-6)


def test_out_of_memory_halves_the_chunk_and_retries(model, batch, monkeypatch):
    import robustsuite.certify.verifier as vmod

    x, y = batch
    real = vmod.compute_bounds
    calls = []

    def flaky(bm, xs, *a, **k):
        calls.append(xs.shape[0])
        if xs.shape[0] > 4:
            raise RuntimeError("CUDA out of memory. Tried to allocate 30 GiB")
        return real(bm, xs, *a, **k)
    monkeypatch.setattr(vmod, "compute_bounds", flaky)
    v = Verifier(model, SHAPE, method="crown", device="cpu", max_batch=10)
    out = v.margin_bounds(x, y, LinfBall(0.02))
    assert out.shape == (10, 9) and v.max_batch <= 4 and calls[0] == 10


@pytest.mark.parametrize("method", ["ibp", "crown-ibp", "crown", "alpha-crown"])
def test_gradients_flow_to_per_pixel_box_tensors(model, batch, method):
    x, y = batch
    eps = torch.full_like(x, 0.01, requires_grad=True)
    m = Verifier(model, SHAPE, method=method, device="cpu").margin_bounds(x, y, Box(x - eps, x + eps))
    m.sum().backward()
    assert eps.grad is not None and torch.isfinite(eps.grad).all() and eps.grad.abs().sum() > 0


def test_boxes_are_clipped_to_the_unit_interval(model):
    x = torch.zeros(2, *SHAPE)
    y = torch.tensor([0, 1])
    v = Verifier(model, SHAPE, method="ibp", device="cpu")
    clipped = v.margin_bounds(x, y, Box(x - 0.5, x + 0.05))
    same = v.margin_bounds(x, y, Box(x, x + 0.05))
    assert torch.allclose(clipped, same)


def test_unknown_method_lists_the_known_ones(model):
    with pytest.raises(UnknownNameError, match="alpha-crown"):
        Verifier(model, SHAPE, method="beta-crown")


@pytest.mark.parametrize("bad,err", [
    (torch.rand(3, 1, 8, 8) + 1.0, "\\[0, 1\\]"),
    (torch.full((3, 1, 8, 8), float("nan")), "NaN"),
    (torch.rand(3, 1, 9, 9), "shape"),
    (torch.randint(0, 2, (3, 1, 8, 8)), "floating"),
])
def test_bad_inputs_raise_clear_errors(model, bad, err):
    v = Verifier(model, SHAPE, method="ibp", device="cpu")
    with pytest.raises(InputError, match=err):
        v.verify(bad, torch.zeros(3, dtype=torch.long), LinfBall(0.1))


def test_bad_labels_and_threats(model):
    v = Verifier(model, SHAPE, method="ibp", device="cpu")
    x = torch.rand(3, *SHAPE)
    with pytest.raises(InputError, match="y: expected shape"):
        v.verify(x, torch.zeros(4, dtype=torch.long), LinfBall(0.1))
    with pytest.raises(InputError, match="labels must lie"):
        v.verify(x, torch.full((3,), 10), LinfBall(0.1))
    with pytest.raises(InputTypeError, match="threat"):
        v.verify(x, torch.zeros(3, dtype=torch.long), 0.1)
    with pytest.raises(InputError, match="eps"):
        LinfBall(-0.1)
    with pytest.raises(InputError, match="lower must be <= upper"):
        Box(x + 0.1, x)
    v.verify(x, torch.zeros(3, dtype=torch.long), L1Ball(0.5))


class Noisy(nn.Module):
    is_stochastic = True

    def forward(self, x):
        return x + 0.1 * torch.randn_like(x)


class HiddenNoise(nn.Module):
    def forward(self, x):
        return x + 0.1 * torch.randn_like(x)


@pytest.mark.parametrize("layer", [Noisy(), HiddenNoise()])
def test_stochastic_models_are_refused(layer):
    model = nn.Sequential(layer, nn.Flatten(), nn.Linear(64, 10))
    with pytest.raises(UnsupportedModelError, match="random|stochastic"):
        Verifier(model, SHAPE, method="ibp")


def test_unsound_layers_are_refused_with_the_supported_list():
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.AvgPool2d(3, 1, 1), nn.Flatten(), nn.Linear(256, 10))
    with pytest.raises(UnsupportedModelError, match="AvgPool2d.*unsound"):
        Verifier(model, SHAPE, method="crown")


def test_bad_input_shape_is_refused(model):
    with pytest.raises(InputError, match="input_shape"):
        Verifier(model, (8, 8), method="ibp")
