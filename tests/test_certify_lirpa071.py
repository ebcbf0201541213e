"""Operations accepted only under auto_LiRPA >= 0.7 (softmax, LayerNorm, LeakyReLU, average pooling
with any window): sound there, refused under 0.3.

Under 0.7.x every accepted pattern's margin lower bounds must lie below the margins at random
points, vertices (corners) and PGD points of the set (PGD minimises each margin separately);
under 0.3 each pattern must be refused with an error naming the operation. The tests marked
``lirpa071`` are the subset ``tests/test_lirpa071_subprocess.py`` runs under 0.7.1.
"""
from __future__ import annotations

import os

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from robustsuite.certify import Verifier
from robustsuite.certify.graph_check import modern
from robustsuite.errors import UnsupportedModelError
from test_certify_graph import SHAPE, Net, _batch, _head
from test_certify_soundness import _pgd_worst_margin, _sampled_worst_margin

METHODS = ["ibp", "crown-ibp", "crown", "alpha-crown"]
TOL = 1e-5

pytestmark = [pytest.mark.usefixtures("one_thread_seeded"), pytest.mark.lirpa071]


def _nonlinear():
    """name -> (model, regex of the refusal under 0.3)."""
    return {
        "softmax_output": (Net(lambda s, x: F.softmax(s.layers[0](x.flatten(1)), 1), _head(128)), r"softmax"),
        "softmax_hidden": (Net(lambda s, x: s.layers[1](F.softmax(s.layers[0](x.flatten(1)), 1)),
                               nn.Linear(128, 16), _head(16)), r"softmax"),
        "layer_norm": (Net(lambda s, x: s.layers[1](s.layers[0](x.flatten(1))), nn.LayerNorm(128), _head(128)),
                       r"LayerNorm|ReduceMean|mean"),
        "layer_norm_relu": (Net(lambda s, x: s.layers[3](s.layers[2](s.layers[1](s.layers[0](x.flatten(1))))),
                                nn.Linear(128, 32), nn.LayerNorm(32), nn.ReLU(), _head(32)),
                            r"LayerNorm|ReduceMean|mean"),
        "leaky_relu": (Net(lambda s, x: s.layers[1](F.leaky_relu(s.layers[0](x), 0.1).flatten(1)),
                           nn.Conv2d(2, 4, 3, padding=1), _head(256)), r"LeakyReLU"),
        "avgpool_k3_s1_p1_relu": (Net(lambda s, x: s.layers[1](F.avg_pool2d(F.relu(s.layers[0](x)), 3, 1, 1).flatten(1)),
                                      nn.Conv2d(2, 4, 3, padding=1), _head(256)), r"AvgPool2d\(k=s, padding=0\)"),
        "avgpool_k3_s2_p1": (Net(lambda s, x: s.layers[0](F.avg_pool2d(x, 3, 2, 1).flatten(1)), _head(32)),
                             r"AvgPool2d\(k=s, padding=0\)"),
        "avgpool_k2_s1": (Net(lambda s, x: s.layers[0](F.avg_pool2d(x, 2, stride=1).flatten(1)), _head(98)),
                          r"AvgPool2d\(k=s, padding=0\)"),
    }


#: methods under which 0.3 accepts the pattern (IBP bounds any average pooling soundly)
_OK_ON_03 = {"avgpool_k3_s1_p1_relu": ["ibp"], "avgpool_k3_s2_p1": ["ibp"], "avgpool_k2_s1": ["ibp"]}
#: refused under 0.7.1 too: its alpha-CROWN fails through LayerNorm (an internal shape mismatch)
_REFUSED_ON_071 = {("layer_norm", "alpha-crown"), ("layer_norm_relu", "alpha-crown")}


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("name", list(_nonlinear()))
def test_lirpa071_nonlinear_layers_contain_random_and_pgd_points(name, method):
    torch.manual_seed(4)
    model, refusal = _nonlinear()[name]
    model.eval()
    if (not modern() and method not in _OK_ON_03.get(name, [])) or (modern() and (name, method) in _REFUSED_ON_071):
        if modern():
            refusal = r"alpha-CROWN through LayerNorm fails"
        with pytest.raises(UnsupportedModelError, match=refusal):
            Verifier(model, SHAPE, method=method, device="cpu")
        return
    x, threats = _batch()
    y = model(x).argmax(1)
    v = Verifier(model, SHAPE, method=method, device="cpu", alpha_iterations=5)
    for tname, threat in threats.items():
        ml = v.margin_bounds(x, y, threat).detach()
        assert torch.isfinite(ml).all(), f"{name}/{tname}/{method}: non-finite bounds"
        lo, hi = threat.bounds(x)
        seen = torch.minimum(_sampled_worst_margin(model, x, y, lo, hi, 128, 64),
                             _pgd_worst_margin(model, x, y, threat, steps=15))
        gap = (seen - ml).min().item()
        assert gap >= -TOL, f"{name}/{tname}/{method}: a point has margin {-gap:.2e} below the bound"


@pytest.mark.parametrize("name,model,pattern", [
    ("maxpool_alpha_crown", lambda: Net(lambda s, x: s.layers[0](F.max_pool2d(F.relu(x), 2).flatten(1)), _head(32)),
     r"alpha-crown does not support max pooling"),
    ("avgpool_pad_count_include_pad_false",
     lambda: Net(lambda s, x: s.layers[0](F.avg_pool2d(x, 2, padding=1, count_include_pad=False).flatten(1)), _head(50)),
     r"count_include_pad=False"),
    ("x_times_x", lambda: Net(lambda s, x: s.layers[0]((x * x).flatten(1)), _head(128)), r"x \* x is not linear"),
    ("division_by_input", lambda: Net(lambda s, x: s.layers[0]((x / (x + 1)).flatten(1)), _head(128)),
     r"division by an input-dependent"),
    ("softmax_over_batch", lambda: Net(lambda s, x: s.layers[0](F.softmax(x.flatten(1), 0)), _head(128)),
     r"softmax over the batch axis|softmax"),
])
def test_still_refused_on_every_version(name, model, pattern):
    method = "alpha-crown"
    with pytest.raises(UnsupportedModelError, match=pattern):
        Verifier(model().eval(), SHAPE, method=method, device="cpu")


def test_expected_auto_lirpa_version_is_the_one_imported():
    """The subprocess run sets ROBUSTSUITE_EXPECT_LIRPA: the subset must really run on that version."""
    from robustsuite.certify.lirpa import VERSION

    want = os.environ.get("ROBUSTSUITE_EXPECT_LIRPA")
    if want:
        assert VERSION == want
