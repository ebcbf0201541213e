"""Every certifiable zoo model parses in auto_LiRPA 0.3 and gets finite, ordered, sound bounds.

Small widths and 8x8 inputs keep full CROWN cheap on a CPU. The BoundedModule is built at batch 2
and used at batch 3, so a batch size baked into the graph would fail here.
"""
from __future__ import annotations

import pytest
import torch
from torch import nn

from robustsuite.certify.lirpa import BoundedModule, BoundedTensor, PerturbationLpNorm
from robustsuite.models import available, build, info
from test_models import SMALL

CERTIFIABLE = SMALL  # every zoo model at its small test width is certifiable
EPS = 0.01


def _id(entry) -> str:
    name, options = entry
    return name + "".join(f"-{k}={v}" for k, v in options.items())


pytestmark = pytest.mark.usefixtures("one_thread_seeded")


def _trained_looking(model: nn.Module, in_shape) -> nn.Module:
    """Eval-mode model whose BatchNorm statistics are not the trivial initial ones."""
    model.train()
    with torch.no_grad():
        model(torch.rand(32, *in_shape))
    return model.eval()


def _box_samples(model: nn.Module, x: torch.Tensor, n: int = 200) -> torch.Tensor:
    """Logits at n uniform points of the L-inf ball around each x: (n, B, K)."""
    noise = (torch.rand(n, *x.shape) * 2 - 1) * EPS
    with torch.no_grad():
        return model((x.unsqueeze(0) + noise).flatten(0, 1)).view(n, x.shape[0], -1)


def test_every_certifiable_model_is_covered():
    assert {name for name, _ in CERTIFIABLE} == {n for n in available() if info(n).certifiable}


@pytest.mark.parametrize("entry", CERTIFIABLE, ids=_id)
def test_certifiable_model_parses_and_ibp_and_crown_bounds_are_finite_ordered_and_sound(entry):
    name, options = entry
    in_shape = (1, 8, 8)
    model = _trained_looking(build(name, in_shape, 10, mean=0.13, std=0.31, **options), in_shape)
    bounded = BoundedModule(model, torch.zeros(2, *in_shape))
    x = torch.rand(3, *in_shape)
    torch.testing.assert_close(bounded(x), model(x), rtol=1e-5, atol=1e-5)
    samples = _box_samples(model, x)
    for method in ("IBP", "CROWN"):
        box = BoundedTensor(x, PerturbationLpNorm(norm=float("inf"), eps=EPS))
        lower, upper = bounded.compute_bounds(x=(box,), method=method)
        assert lower.shape == upper.shape == (3, 10)
        assert torch.isfinite(lower).all() and torch.isfinite(upper).all()
        assert (lower <= upper).all()
        assert (lower <= samples.amin(0) + 1e-5).all() and (samples.amax(0) <= upper + 1e-5).all()


@pytest.mark.parametrize("conv_mode", ["patches", "matrix"])
def test_normalize_inside_the_model_bounds_in_every_method_and_conv_mode(conv_mode):
    # auto_LiRPA 0.3 fails on an in-model (x - mean) / std under CROWN in patches mode; the zoo's
    # Normalize is a fixed 1x1 convolution and must bound everywhere.
    in_shape = (3, 8, 8)
    model = build("cnn_small", in_shape, 10, width=0.5, linear=32,
                  mean=(0.49, 0.48, 0.45), std=(0.25, 0.24, 0.26)).eval()
    bounded = BoundedModule(model, torch.zeros(2, *in_shape), bound_opts={"conv_mode": conv_mode})
    x = torch.rand(3, *in_shape)
    samples = _box_samples(model, x)
    for method in ("IBP", "CROWN-IBP", "CROWN"):
        box = BoundedTensor(x, PerturbationLpNorm(norm=float("inf"), eps=EPS))
        lower, upper = bounded.compute_bounds(x=(box,), method=method)
        assert torch.isfinite(lower).all() and torch.isfinite(upper).all()
        assert (lower <= samples.amin(0) + 1e-5).all() and (samples.amax(0) <= upper + 1e-5).all()
