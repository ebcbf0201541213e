"""The auto_LiRPA 0.3 compatibility layer: each patch is needed (skipping it brings the failure
back, in a fresh process) and, applied, makes the behaviour it fixes work."""
from __future__ import annotations

import inspect
import logging
import os
import subprocess
import sys
import textwrap
import warnings

import pytest
import torch
from torch import nn

from robustsuite.certify import lirpa
from robustsuite.certify.lirpa import BoundedModule, BoundedTensor, CrossEntropyWrapper, PerturbationLpNorm
from robustsuite.certify import lirpa_compat

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODERN = lirpa_compat._modern()  # auto_LiRPA >= 0.7 (tests/test_lirpa071_subprocess.py runs this file under 0.7.1)



def _pythonpath() -> str:
    """This checkout first, then whatever PYTHONPATH selected the auto_LiRPA under test."""
    return os.pathsep.join([ROOT] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p])


class ViewNet(nn.Module):
    """Flattens with x.view(x.size(0), -1): torch 2 bakes the trace batch size in without P11."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3)
        self.fc = nn.Linear(4 * 6 * 6, 10)

    def forward(self, x):
        return self.fc(torch.relu(self.conv(x)).view(x.size(0), -1))


def _mlp(width=32, seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(),
                         nn.Linear(width, 10)).eval()


def _box(x, eps):
    return BoundedTensor(x, PerturbationLpNorm(norm=float("inf"), eps=None, x_L=(x - eps).clamp(0, 1),
                                               x_U=(x + eps).clamp(0, 1)))


def _run_without(patch: str, body: str) -> subprocess.CompletedProcess:
    """Run ``body`` in a fresh interpreter with one patch disabled."""
    env = dict(os.environ, LIRPA_COMPAT_SKIP=patch, PYTHONPATH=_pythonpath(), OMP_NUM_THREADS="1")
    code = "import torch\nfrom robustsuite.certify.lirpa import *\n" + textwrap.dedent(body)
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=240)


# --------------------------------------------------------------------- applied behaviour
@pytest.mark.lirpa071
def test_patches_applied_are_recorded_and_apply_is_idempotent():
    before = list(lirpa.APPLIED_PATCHES)
    assert lirpa_compat.apply() is lirpa.auto_LiRPA
    assert lirpa.APPLIED_PATCHES == before
    # The table in lirpa_compat's docstring (torch 2.14, numpy 1.26).
    needed = {"P12", "G", "P6"} if MODERN else {"P1", "P3", "P12", "G", "P5", "P6", "P8", "P10", "P11"}
    for label in needed:
        assert label in before, f"{label} is needed by auto_LiRPA {lirpa.VERSION} but was not applied"
    if MODERN:
        assert not set(before) & {"P1", "P3", "P4", "P5", "P8", "P10", "P11"}, before
    if lirpa_compat._clamp_kills_boundary_gradient():
        assert "P9" in before


@pytest.mark.lirpa071
def test_p9_replacement_has_the_original_values_and_gradient_one_at_the_ends():
    if "P9" not in lirpa.APPLIED_PATCHES:
        pytest.skip(f"P9 is not needed on torch {torch.__version__}")
    original = lirpa_compat.ORIGINALS["P9"]
    leaky = [0.0, 0.1] if "leaky_alpha" in inspect.signature(original).parameters else [0.0]
    g = torch.Generator().manual_seed(0)
    lower, upper = torch.randn(4, 6, generator=g), torch.randn(4, 6, generator=g)
    lower, upper = torch.minimum(lower, upper), torch.maximum(lower, upper)
    for a in leaky:
        d = torch.rand(2, 4, 6, generator=g) * 1.4 - 0.2
        d[0, 0, :3] = torch.tensor([a, 1.0, 0.5])
        kw = {"leaky_alpha": a} if a else {}
        want = original(lower, upper, d.clone(), d.clone(), **kw)
        got = lirpa_compat.relu_mask_alpha(lower, upper, d.clone(), d.clone(), **kw)
        for w, o in zip(want[:2], got[:2]):
            torch.testing.assert_close(o, w, rtol=0, atol=0)
        assert bool(want[2]) == bool(got[2])
        t = torch.tensor([a, 1.0], requires_grad=True)
        lo, up = torch.tensor([-1.0, -1.0]), torch.tensor([1.0, 1.0])
        out, _, _ = lirpa_compat.relu_mask_alpha(lo, up, t, None, **kw)
        (grad,) = torch.autograd.grad(out.sum(), t)
        assert torch.equal(grad, torch.ones(2)), grad


@pytest.mark.lirpa071
def test_bounded_module_parameters_work():  # P8
    bm = BoundedModule(_mlp(), torch.zeros(2, 1, 8, 8))
    params = list(bm.parameters())
    assert len(params) == 6
    torch.optim.Adam(bm.parameters(), lr=1e-3)


@pytest.mark.lirpa071
def test_bounds_at_a_batch_size_other_than_the_trace():  # P11
    torch.manual_seed(0)
    model = ViewNet().eval()
    bm = BoundedModule(model, torch.zeros(2, 1, 8, 8))
    x = torch.rand(5, 1, 8, 8)
    lb, ub = bm.compute_bounds(x=(_box(x, 0.02),), method="CROWN")
    assert lb.shape == (5, 10) and (lb <= model(x) + 1e-5).all() and (model(x) <= ub + 1e-5).all()


@pytest.mark.lirpa071
def test_loss_fusion_wrapper_parses_and_bounds():  # P12
    model = _mlp()
    bm = BoundedModule(CrossEntropyWrapper(model), (torch.zeros(2, 1, 8, 8), torch.zeros(2, dtype=torch.long)),
                       bound_opts={"loss_fusion": True})
    x, y = torch.rand(3, 1, 8, 8), torch.tensor([1, 2, 3])
    _, ub = bm.compute_bounds(x=(_box(x, 0.01), y), method="IBP", bound_lower=False)
    assert ub.shape == (3, 1) and torch.isfinite(ub).all()


@pytest.mark.lirpa071
def test_alpha_crown_strictly_tighter_than_crown():  # P9 on torch >= 2.14, P10
    model = _mlp(width=64, seed=3)
    torch.manual_seed(1)
    x = torch.rand(4, 1, 8, 8)
    from robustsuite.certify import Verifier
    from robustsuite import LinfBall
    y = model(x).argmax(1)
    crown = Verifier(model, (1, 8, 8), method="crown", device="cpu").margin_bounds(x, y, LinfBall(0.03))
    alpha = Verifier(model, (1, 8, 8), method="alpha-crown", device="cpu").margin_bounds(x, y, LinfBall(0.03))
    assert (alpha >= crown - 1e-6).all()
    assert (alpha - crown).sum() > 1e-3, "alpha-CROWN returned plain CROWN bounds"


def test_alpha_crown_with_almost_all_neurons_unstable():  # P10
    model = _mlp(width=16, seed=5)
    bm = BoundedModule(model, torch.zeros(2, 1, 8, 8))
    x = torch.rand(3, 1, 8, 8)
    lb, _ = bm.compute_bounds(x=(_box(x, 0.5),), method="CROWN-Optimized", bound_upper=False)
    assert torch.isfinite(lb).all()


def test_import_leaves_logging_warnings_and_jit_executor_alone():  # G
    body = """
        import logging, sys, warnings, torch
        handlers, filters = list(logging.getLogger().handlers), list(warnings.filters)
        state = torch._C._jit_set_profiling_executor(True); torch._C._jit_set_profiling_executor(state)
        import robustsuite.certify.lirpa
        assert logging.getLogger().handlers == handlers, "root logging handlers changed"
        assert warnings.filters == filters, "global warning filters changed"
        now = torch._C._jit_set_profiling_executor(True); torch._C._jit_set_profiling_executor(now)
        assert now == state, "TorchScript profiling executor changed"
    """
    env = dict(os.environ, PYTHONPATH=_pythonpath(), OMP_NUM_THREADS="1")
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(body)], env=env, capture_output=True, text=True,
                         timeout=240)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "jit.script" not in out.stderr and out.stdout == ""


@pytest.mark.lirpa071
def test_parsing_leaves_the_exporter_opset_alone():  # P6
    glb = lirpa_compat._exporter_globals()
    before = glb.export_onnx_opset_version, getattr(glb, "autograd_inlining", None)
    BoundedModule(_mlp(), torch.zeros(2, 1, 8, 8))
    assert (glb.export_onnx_opset_version, getattr(glb, "autograd_inlining", None)) == before


def test_ibp_matches_hand_written_interval_arithmetic():
    """IBP of the verifier equals an independent center/radius interval propagation (float64)."""
    from robustsuite.certify import Verifier
    from robustsuite import Box

    model = _mlp(width=24, seed=11).double()
    torch.manual_seed(2)
    x = torch.rand(4, 1, 8, 8, dtype=torch.float64)
    eps = 0.05 * torch.rand_like(x)
    lo, hi = (x - eps).clamp(0, 1), (x + eps).clamp(0, 1)
    c, r = ((lo + hi) / 2).flatten(1), ((hi - lo) / 2).flatten(1)
    for layer in model:
        if isinstance(layer, nn.Linear):
            c, r = c @ layer.weight.T + layer.bias, r @ layer.weight.abs().T
        elif isinstance(layer, nn.ReLU):
            l, u = (c - r).clamp_min(0), (c + r).clamp_min(0)
            c, r = (l + u) / 2, (u - l) / 2
    ref_lo, ref_hi = c - r, c + r
    v = Verifier(model, (1, 8, 8), method="ibp", device="cpu")
    got_lo, got_hi = v.bounds(x, Box(x - eps, x + eps))
    assert torch.allclose(got_lo.double(), ref_lo, atol=1e-10)
    assert torch.allclose(got_hi.double(), ref_hi, atol=1e-10)


# --------------------------------------------------------------------- each patch is needed
@pytest.mark.parametrize("patch,body,symptom", [
    ("P8", "bm = BoundedModule(torch.nn.Linear(4, 2), torch.zeros(1, 4)); list(bm.parameters())",
     "remove_duplicate"),
    ("P11", """
        import torch.nn as nn
        class V(nn.Module):
            def __init__(s): super().__init__(); s.c = nn.Conv2d(1, 4, 3); s.l = nn.Linear(144, 10)
            def forward(s, x): return s.l(torch.relu(s.c(x)).view(x.size(0), -1))
        bm = BoundedModule(V(), torch.zeros(2, 1, 8, 8))
        bm(torch.zeros(5, 1, 8, 8))
     """, "shapes cannot be multiplied"),
    ("P12", """
        m = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3))
        BoundedModule(CrossEntropyWrapper(m), (torch.zeros(2, 1, 4, 4), torch.zeros(2, dtype=torch.long)))
     """, "OneHot"),
    ("P3", "BoundedModule(torch.nn.Sequential(torch.nn.Linear(4, 2)), torch.zeros(1, 4))",
     "not subscriptable"),
    ("P9", """
        torch.manual_seed(3)
        m = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 10))
        bm = BoundedModule(m, torch.zeros(2, 1, 8, 8))
        x = torch.rand(4, 1, 8, 8)
        ptb = PerturbationLpNorm(norm=float("inf"), eps=None, x_L=(x - 0.03).clamp(0, 1), x_U=(x + 0.03).clamp(0, 1))
        crown, _ = bm.compute_bounds(x=(BoundedTensor(x, ptb),), method="CROWN", bound_upper=False)
        alpha, _ = bm.compute_bounds(x=(BoundedTensor(x, ptb),), method="CROWN-Optimized", bound_upper=False)
        assert (alpha - crown).sum() > 1e-3, "alpha-CROWN returned plain CROWN bounds"
     """, "alpha-CROWN returned plain CROWN bounds"),
    ("P6", """
        from robustsuite.certify import lirpa_compat
        glb = lirpa_compat._exporter_globals()
        before = glb.export_onnx_opset_version, getattr(glb, "autograd_inlining", None)
        BoundedModule(torch.nn.Sequential(torch.nn.Linear(4, 2)), torch.zeros(1, 4))
        after = glb.export_onnx_opset_version, getattr(glb, "autograd_inlining", None)
        assert after == before, f"exporter state changed: {before} -> {after}"
     """, "exporter state changed"),
])
def test_skipping_a_patch_brings_its_failure_back(patch, body, symptom):
    if patch not in lirpa.APPLIED_PATCHES:
        pytest.skip(f"{patch} is not needed by auto_LiRPA {lirpa.VERSION} on torch {torch.__version__}")
    ok = _run_without("", body)
    assert ok.returncode == 0, ok.stderr[-2000:]
    broken = _run_without(patch, body)
    assert broken.returncode != 0 and symptom in broken.stderr, broken.stderr[-2000:]
