"""The traced-graph allowlist (robustsuite.certify.graph_check): no false certificate on any graph
the verifier accepts, and a clear refusal naming the operation for everything else.

Affine graphs (no ReLU) have a closed-form exact minimum margin over a box: with the margin's
gradient ``a`` at ``x``, ``min = m(x) + sum_i min(a_i (lo_i - x_i), a_i (hi_i - x_i))`` over the
clipped box [lo, hi]. Every accepted affine pattern must give bounds <= that minimum under every
method (and CROWN must be nearly exact, a canary for a wrong backward pass). ReLU and max-pooling
patterns are checked against random, vertex and PGD points.
"""
from __future__ import annotations

import copy
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from robustsuite import Box, LinfBall
from robustsuite.certify import Verifier, margins
from robustsuite.certify.graph_check import ALLOWLIST, modern
from robustsuite.errors import UnsupportedModelError
from test_certify_soundness import _pgd_worst_margin, _sampled_worst_margin

METHODS = ["ibp", "crown-ibp", "crown", "alpha-crown"]
#: auto_LiRPA >= 0.7 bounds average pooling with any window under every method (0.3: IBP only), and
#: its interval pass through torch.cat fails on per-element boxes (tests/test_certify_lirpa071.py)
MODERN = modern()
ANY_POOL = METHODS if MODERN else ["ibp"]
CONCAT = ["crown", "alpha-crown"] if MODERN else METHODS
SHAPE = (2, 8, 8)
K = 10
TOL = 1e-5

pytestmark = pytest.mark.usefixtures("one_thread_seeded")


class Net(nn.Module):
    """A model whose forward is ``fn(self, x)``; ``mods`` are its layers."""

    def __init__(self, fn, *mods):
        super().__init__()
        self.fn = fn
        self.layers = nn.ModuleList(mods)

    def forward(self, x):
        return self.fn(self, x)


def _bn(c):
    bn = nn.BatchNorm2d(c)
    with torch.no_grad():
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.5, 2.0)
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.uniform_(-0.2, 0.2)
    return bn


def _head(features: int) -> nn.Linear:
    return nn.Linear(features, K)


#: accepted affine patterns: name -> (builder, methods that accept it)
AFFINE = {
    "conv_stride_pad_bn_flatten": (lambda: Net(lambda s, x: s.layers[2](s.layers[1](s.layers[0](x)).flatten(1)),
                                              nn.Conv2d(2, 3, 3, stride=2, padding=1), _bn(3), _head(48)), METHODS),
    "conv_dilation_groups": (lambda: Net(lambda s, x: s.layers[1](s.layers[0](x).flatten(1)),
                                         nn.Conv2d(2, 4, 3, dilation=2, groups=2), _head(64)), METHODS),
    "nn_avgpool_k_eq_s": (lambda: Net(lambda s, x: s.layers[1](s.layers[0](x).flatten(1)),
                                      nn.AvgPool2d(2), _head(32)), METHODS),
    "avgpool_k3_on_8x8": (lambda: Net(lambda s, x: s.layers[0](F.avg_pool2d(x, 3).flatten(1)), _head(8)), METHODS),
    "avgpool_no_pad_count_include_pad_false": (
        lambda: Net(lambda s, x: s.layers[0](F.avg_pool2d(x, 2, count_include_pad=False).flatten(1)), _head(32)),
        METHODS),
    "functional_avgpool_k_eq_s": (lambda: Net(lambda s, x: s.layers[0](F.avg_pool2d(x, 2, 2).flatten(1)), _head(32)),
                                  METHODS),
    "functional_avgpool_k2_s1_ibp": (
        lambda: Net(lambda s, x: s.layers[0](F.avg_pool2d(x, 2, stride=1).flatten(1)), _head(98)), ANY_POOL),
    "avgpool_padding_ibp": (
        lambda: Net(lambda s, x: s.layers[0](F.avg_pool2d(x, 3, stride=2, padding=1).flatten(1)), _head(32)), ANY_POOL),
    "adaptive_avgpool": (lambda: Net(lambda s, x: s.layers[0](F.adaptive_avg_pool2d(x, 1).flatten(1)), _head(2)),
                         METHODS),
    "spatial_mean": (lambda: Net(lambda s, x: s.layers[0](x.mean((2, 3))), _head(2)), METHODS),
    "view_batch_minus_one": (lambda: Net(lambda s, x: s.layers[0](x.view(x.size(0), -1)), _head(128)), METHODS),
    "reshape_batch_minus_one": (lambda: Net(lambda s, x: s.layers[0](x.reshape(x.shape[0], -1)), _head(128)),
                                METHODS),
    "torch_flatten": (lambda: Net(lambda s, x: s.layers[0](torch.flatten(x, 1)), _head(128)), METHODS),
    "nn_flatten": (lambda: Net(lambda s, x: s.layers[1](s.layers[0](x)), nn.Flatten(), _head(128)), METHODS),
    "concat_channels": (lambda: Net(lambda s, x: s.layers[1](torch.cat([s.layers[0](x), x], 1).flatten(1)),
                                    nn.Conv2d(2, 2, 3, padding=1), _head(256)), CONCAT),
    "residual_add_sub_neg": (lambda: Net(lambda s, x: s.layers[1]((s.layers[0](x) + x - 0.5 * x + (-x)).flatten(1)),
                                         nn.Conv2d(2, 2, 3, padding=1), _head(128)), METHODS),
    "normalize_sub_div_mul": (lambda: Net(lambda s, x: s.layers[0]((((x - 0.45) / 0.25) * 1.5).flatten(1)), _head(128)),
                              METHODS),
    "linear_without_bias": (lambda: Net(lambda s, x: s.layers[1](s.layers[0](x.flatten(1))),
                                        nn.Linear(128, 16, bias=False), _head(16)), METHODS),
    "linear_without_bias_as_output": (lambda: Net(lambda s, x: s.layers[0](x.flatten(1)), nn.Linear(128, K, bias=False)),
                                      ["crown", "alpha-crown"]),
    "dropout_eval": (lambda: Net(lambda s, x: s.layers[1](s.layers[0](x).flatten(1)), nn.Dropout(0.5), _head(128)),
                     METHODS),
}


def _exact_min_margins(model: nn.Module, x: torch.Tensor, y: torch.Tensor, lo, hi) -> torch.Tensor:
    """Exact minimum (B, K-1) of each margin of an affine model over the box [lo, hi] (float64)."""
    m64 = copy.deepcopy(model).double().eval()
    x64 = x.double().requires_grad_(True)
    m = margins(m64(x64), y)
    exact = torch.empty_like(m)
    for j in range(m.shape[1]):  # one backward per margin index; samples are independent
        (a,) = torch.autograd.grad(m[:, j].sum(), x64, retain_graph=True)
        step = torch.minimum(a * (lo.double() - x64), a * (hi.double() - x64))
        exact[:, j] = m[:, j] + step.flatten(1).sum(1)
    return exact.detach()


def _batch():
    g = torch.Generator().manual_seed(5)
    x = torch.rand(4, *SHAPE, generator=g)
    x[0] = (x[0] > 0.5).float()  # at the edges of [0, 1]: the clip matters
    eps = 0.02 + 0.1 * torch.rand(x.shape, generator=g)
    return x, {"linf": LinfBall(0.08), "box": Box(x - eps, x + 0.5 * eps)}


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("name", list(AFFINE))
def test_accepted_affine_graphs_are_exact(name, method):
    build, methods = AFFINE[name]
    torch.manual_seed(3)
    model = build().eval()
    if method not in methods:
        with pytest.raises(UnsupportedModelError, match=rf"cannot be bounded soundly with method '{method}'"):
            Verifier(model, SHAPE, method=method, device="cpu")
        return
    x, threats = _batch()
    y = model(x).argmax(1)
    v = Verifier(model, SHAPE, method=method, device="cpu", alpha_iterations=3)
    for tname, threat in threats.items():
        lo, hi = threat.bounds(x)
        exact = _exact_min_margins(model, x, y, lo, hi)
        bound = v.margin_bounds(x, y, threat).detach().double()
        gap = (exact - bound).min().item()
        assert gap >= -TOL, f"{name}/{tname}/{method}: bound {-gap:.2e} above the exact minimum"
        if method in ("crown", "alpha-crown"):
            # CROWN is exact on affine graphs: a larger gap means a wrong backward pass.
            assert (exact - bound).max().item() <= 1e-3 * max(1.0, exact.abs().max().item())


def _relu_models():
    return {
        "nn_relu": (Net(lambda s, x: s.layers[2](s.layers[1](s.layers[0](x)).flatten(1)),
                        nn.Conv2d(2, 4, 3, padding=1), nn.ReLU(), _head(256)), METHODS),
        "functional_relu_and_maxpool_k_eq_s": (
            Net(lambda s, x: s.layers[1](F.max_pool2d(F.relu(s.layers[0](x)), 2).flatten(1)),
                nn.Conv2d(2, 4, 3, padding=1), _head(64)), ["ibp", "crown-ibp", "crown"]),
        "nn_maxpool_k_eq_s": (Net(lambda s, x: s.layers[2](s.layers[1](s.layers[0](x)).flatten(1)),
                                  nn.Conv2d(2, 4, 3, padding=1), nn.MaxPool2d(2), _head(64)), ["ibp", "crown-ibp", "crown"]),
        "maxpool_k3_s1_pad1_ibp": (Net(lambda s, x: s.layers[1](F.max_pool2d(s.layers[0](x), 3, 1, 1).flatten(1)),
                                       nn.Conv2d(2, 4, 3, padding=1), _head(256)), ["ibp"]),
    }


@pytest.mark.lirpa071
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("name", list(_relu_models()))
def test_accepted_relu_graphs_contain_random_and_pgd_points(name, method):
    torch.manual_seed(4)
    model, methods = _relu_models()[name]
    model.eval()
    if method not in methods:
        with pytest.raises(UnsupportedModelError, match=r"MaxPool|max pooling"):
            Verifier(model, SHAPE, method=method, device="cpu")
        return
    x, threats = _batch()
    y = model(x).argmax(1)
    v = Verifier(model, SHAPE, method=method, device="cpu", alpha_iterations=3)
    for tname, threat in threats.items():
        ml = v.margin_bounds(x, y, threat).detach()
        lo, hi = threat.bounds(x)
        seen = torch.minimum(_sampled_worst_margin(model, x, y, lo, hi, 128, 64),
                             _pgd_worst_margin(model, x, y, threat, steps=15))
        assert (seen - ml).min().item() >= -TOL, f"{name}/{tname}/{method}"


#: refused patterns: name -> (builder, methods that refuse it, regex the message must match)
REFUSED = {
    # The example: kernel != stride, accepted by the old module check, false CROWN certificates.
    "functional_avgpool_k2_s1": (lambda: Net(lambda s, x: s.layers[0](F.avg_pool2d(x, 2, stride=1).flatten(1)),
                                             _head(98)), [] if MODERN else ["crown-ibp", "crown", "alpha-crown"],
                                 r"avg_pool2d.*kernel \[2, 2\] != stride \[1, 1\].*AvgPool2d\(k=s, padding=0\)"),
    "avgpool_padding": (lambda: Net(lambda s, x: s.layers[1](s.layers[0](x).flatten(1)),
                                    nn.AvgPool2d(2, padding=1), _head(50)), [] if MODERN else ["crown"],
                        r"AvgPool2d\(k=s, padding=0\)"),
    "avgpool_ceil_mode": (lambda: Net(lambda s, x: s.layers[0](F.avg_pool2d(x, 3, ceil_mode=True).flatten(1)),
                                      _head(18)), METHODS, r"AvgPool2d with ceil_mode=True"),
    "maxpool_ceil_mode": (lambda: Net(lambda s, x: s.layers[1](s.layers[0](x).flatten(1)),
                                      nn.MaxPool2d(3, ceil_mode=True), _head(18)), METHODS, r"MaxPool2d with ceil_mode=True"),
    "avgpool_pad_count_include_pad_false": (
        lambda: Net(lambda s, x: s.layers[0](F.avg_pool2d(x, 2, padding=1, count_include_pad=False).flatten(1)),
                    _head(50)), METHODS, r"count_include_pad=False"),
    "maxpool_k3_s1": (lambda: Net(lambda s, x: s.layers[0](F.max_pool2d(x, 3, 1, 1).flatten(1)), _head(128)),
                      ["crown-ibp", "crown", "alpha-crown"], r"MaxPool2d\(k=s, padding=0\)|alpha-crown does not support"),
    "maxpool_alpha_crown": (lambda: Net(lambda s, x: s.layers[0](F.max_pool2d(F.relu(x), 2).flatten(1)), _head(32)),
                            ["alpha-crown"], r"alpha-crown does not support max pooling"),
    "maxpool_dilation": (lambda: Net(lambda s, x: s.layers[0](F.max_pool2d(x, 2, dilation=2).flatten(1)), _head(18)),
                         METHODS, r"dilation"),
    # accepted under 0.7.x (tests/test_certify_lirpa071.py), LayerNorm there except under alpha-CROWN
    "softmax": (lambda: Net(lambda s, x: F.softmax(s.layers[0](x.flatten(1)), 1), _head(128)),
                [] if MODERN else METHODS, r"softmax"),
    "layer_norm": (lambda: Net(lambda s, x: s.layers[1](s.layers[0](x.flatten(1))), nn.LayerNorm(128), _head(128)),
                   ["alpha-crown"] if MODERN else METHODS, r"LayerNorm"),
    "leaky_relu": (lambda: Net(lambda s, x: s.layers[0](F.leaky_relu(x.flatten(1))), _head(128)),
                   [] if MODERN else METHODS, r"LeakyReLU"),
    "x_times_x": (lambda: Net(lambda s, x: s.layers[0]((x * x).flatten(1)), _head(128)), METHODS,
                  r"x \* x is not linear"),
    "division_by_input": (lambda: Net(lambda s, x: s.layers[0]((x / (x + 1)).flatten(1)), _head(128)), METHODS,
                          r"division by an input-dependent"),
    "slicing": (lambda: Net(lambda s, x: s.layers[0]((x - x.flip(3)).flatten(1)), _head(128)), METHODS, r"Slice"),
    "reflect_padding": (lambda: Net(lambda s, x: s.layers[1](s.layers[0](x).flatten(1)),
                                    nn.Conv2d(2, 2, 3, padding=1, padding_mode="reflect"), _head(128)), METHODS,
                        r"Pad"),
    "matmul_constant": (lambda: Net(lambda s, x: x.flatten(1) @ torch.ones(128, K)), METHODS, r"matmul"),
    "tanh": (lambda: Net(lambda s, x: s.layers[0](torch.tanh(x).flatten(1)), _head(128)), METHODS, r"Tanh"),
    "group_norm": (lambda: Net(lambda s, x: s.layers[1](s.layers[0](x).flatten(1)), nn.GroupNorm(1, 2), _head(128)),
                   METHODS, r"InstanceNormalization"),
    "clamp": (lambda: Net(lambda s, x: s.layers[0](x.clamp(0.2, 0.8).flatten(1)), _head(128)), METHODS, r"Clip|HardTanh"),
}


@pytest.mark.parametrize("name", list(REFUSED))
def test_refused_patterns_name_the_operation(name):
    build, methods, pattern = REFUSED[name]
    for method in methods:
        with pytest.raises(UnsupportedModelError, match=pattern) as info:
            Verifier(build().eval(), SHAPE, method=method, device="cpu")
        assert method in str(info.value) or "trace" in str(info.value)


def test_every_allowlist_entry_names_an_existing_test():
    import test_certify_lirpa071

    here = {**globals(), **vars(test_certify_lirpa071)}
    for cls, rule in ALLOWLIST.items():
        assert rule.test in here and callable(here[rule.test]), cls
        assert rule.reason


def test_certified_trainer_refuses_a_graph_the_verifier_refuses():
    from robustsuite.certify.trainer import CertifiedTrainer

    key, refusal = ("x_times_x", r"x \* x") if MODERN else ("functional_avgpool_k2_s1", r"AvgPool2d\(k=s, padding=0\)")
    model = REFUSED[key][0]()
    for fusion in (False, True):
        fake = SimpleNamespace(model=model, device=torch.device("cpu"),
                               tcfg=SimpleNamespace(loss_fusion=fusion, method="crown-ibp"))
        fake.bound_method = lambda: "crown-ibp"
        with pytest.raises(UnsupportedModelError, match=refusal):
            CertifiedTrainer._construct(fake, torch.zeros(2, *SHAPE))
    # a graph auto_LiRPA cannot even trace (ceil_mode) is named too, not a raw auto_LiRPA error
    ceil = REFUSED["avgpool_ceil_mode"][0]()
    fake = SimpleNamespace(model=ceil, device=torch.device("cpu"),
                           tcfg=SimpleNamespace(loss_fusion=False, method="crown-ibp"), bound_method=lambda: "crown-ibp")
    with pytest.raises(UnsupportedModelError, match=r"ceil"):
        CertifiedTrainer._construct(fake, torch.zeros(2, *SHAPE))
    ok = AFFINE["nn_avgpool_k_eq_s"][0]()
    fake = SimpleNamespace(model=ok, device=torch.device("cpu"),
                           tcfg=SimpleNamespace(loss_fusion=False, method="crown-ibp"), bound_method=lambda: "crown-ibp")
    CertifiedTrainer._construct(fake, torch.zeros(2, *SHAPE))
