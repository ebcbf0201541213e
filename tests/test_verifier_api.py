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


# --- issue 14 item 10: checks in the right order, dtypes, stale bounded graphs, boxes ------------

def test_float64_inputs_are_refused_the_same_way_by_verify_and_bounds(model, batch):
    x, y = batch
    v = Verifier(model, SHAPE, method="ibp", device="cpu")
    for call in (lambda: v.verify(x.double(), y, LinfBall(0.01)), lambda: v.bounds(x.double(), LinfBall(0.01)),
                 lambda: v.verify(x, y, Box(x.double() - 0.01, x.double() + 0.01))):
        with pytest.raises(InputError, match="dtype torch.float64 but the model computes in torch.float32"):
            call()
    # Widening is exact, so a float64 model takes float32 inputs.
    v64 = Verifier(build("cnn_small", SHAPE, 10, width=0.5, linear=32).double().eval(), SHAPE, method="ibp", device="cpu")
    assert v64.verify(x, y, LinfBall(0.01)).margin_lower.dtype == torch.float64


def test_wrong_input_shape_is_named_before_the_determinism_probe():
    mlp = build("mlp", SHAPE, 10, hidden=(16,)).eval()
    with pytest.raises(InputError, match=r"input_shape: the model does not accept inputs of shape \(B, 1, 9, 9\)"):
        Verifier(mlp, (1, 9, 9), method="ibp")


def test_ceil_mode_pool_is_not_reported_as_a_wrong_input_shape():
    model = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.MaxPool2d(3, ceil_mode=True), nn.Flatten(), nn.Linear(18, 10))
    with pytest.raises(UnsupportedModelError, match="ceil_mode=True") as info:
        Verifier(model.eval(), SHAPE, method="ibp")
    assert "input_shape" not in str(info.value)


def _bn_model():
    torch.manual_seed(0)
    return build("cnn7", SHAPE, 10, width=0.125, linear=16, bn=True).eval()


def _new_bn_state(model):
    state = {k: v.clone() for k, v in model.state_dict().items()}
    g = torch.Generator().manual_seed(9)
    for k, v in state.items():
        if k.endswith("running_mean"):
            state[k] = torch.rand(v.shape, generator=g) - 0.5
        elif k.endswith("running_var"):
            state[k] = 0.2 + torch.rand(v.shape, generator=g)
    return state


@pytest.mark.parametrize("detector", ["buffers", "clean_logits"])
def test_verifier_follows_load_state_dict_of_new_batchnorm_statistics(detector, monkeypatch):
    model = _bn_model()
    x = torch.rand(6, *SHAPE)
    y = model(x).argmax(1)
    v = Verifier(model, SHAPE, method="crown", device="cpu")
    before = v.margin_bounds(x, y, LinfBall(0.0))
    if detector == "clean_logits":  # the per-call logit comparison alone must catch it too
        monkeypatch.setattr(Verifier, "_stale", lambda self: False)
    model.load_state_dict(_new_bn_state(model))
    after = v.verify(x, y, LinfBall(0.0)).margin_lower
    fresh = Verifier(model, SHAPE, method="crown", device="cpu").margin_bounds(x, y, LinfBall(0.0))
    assert not torch.allclose(before, fresh, atol=1e-3)
    torch.testing.assert_close(after, fresh, rtol=1e-5, atol=1e-5)


def test_a_graph_that_computes_another_function_is_refused(monkeypatch):
    model = _bn_model()
    x = torch.rand(3, *SHAPE)
    v = Verifier(model, SHAPE, method="ibp", device="cpu")
    monkeypatch.setattr(Verifier, "refresh", lambda self: None)  # a rebuild that cannot fix it
    with torch.no_grad():
        for b in model.buffers():
            if b.is_floating_point():
                b.add_(0.5)
    with pytest.raises(UnsupportedModelError, match="different logits than model"):
        v.bounds(x, LinfBall(0.01))


def test_boxes_disjoint_from_the_unit_interval_or_missing_x_are_refused(model):
    x = torch.rand(3, *SHAPE) * 0.5
    with pytest.raises(InputError, match=r"disjoint from the image domain \[0, 1\]"):
        Box(x + 1.5, x + 2.0)
    with pytest.raises(InputError, match=r"disjoint from the image domain"):
        Box(x - 2.0, x - 1.5)
    v = Verifier(model, SHAPE, method="ibp", device="cpu")
    y = torch.zeros(3, dtype=torch.long)
    shifted = Box(x + 0.3, x + 0.4)  # inside [0, 1] but not around x
    with pytest.raises(InputError, match="x lies outside the box"):
        v.verify(x, y, shifted)
    with pytest.raises(InputError, match="x lies outside the box"):
        v.bounds(x, shifted)
    v.verify(x, y, Box(x - 0.05, x + 0.05))


def test_alpha_crown_failing_inside_auto_lirpa_falls_back_to_crown(model, batch, monkeypatch):
    import robustsuite.certify.verifier as vmod

    x, y = batch
    crown = Verifier(model, SHAPE, method="crown", device="cpu").margin_bounds(x, y, LinfBall(0.02))
    real = vmod.compute_bounds

    def failing(bm, xs, t, method, **k):
        assert method != "alpha-crown"  # what auto_LiRPA 0.3 raises on some models (alpha_lookup_idx)
        return real(bm, xs, t, method, **k)
    monkeypatch.setattr(vmod, "compute_bounds", failing)
    out = Verifier(model, SHAPE, method="alpha-crown", device="cpu").margin_bounds(x, y, LinfBall(0.02))
    torch.testing.assert_close(out, crown)


# --- issue 18 item 6: chunk sizes per device and method, the cheaper per-call checks ------------

@pytest.mark.parametrize("method", ["ibp", "crown-ibp", "crown", "alpha-crown"])
def test_chunking_never_changes_the_bounds(model, batch, method):
    x, y = batch
    whole = Verifier(model, SHAPE, method=method, device="cpu", max_batch=64, alpha_iterations=5)
    parts = Verifier(model, SHAPE, method=method, device="cpu", max_batch=3, alpha_iterations=5)
    a, b = whole.margin_bounds(x, y, LinfBall(0.02)), parts.margin_bounds(x, y, LinfBall(0.02))
    if method != "alpha-crown":
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
    else:  # the slopes are optimized per chunk (auto_LiRPA stops on the chunk's total): both valid
        crown = Verifier(model, SHAPE, method="crown", device="cpu").margin_bounds(x, y, LinfBall(0.02))
        assert (a >= crown - 1e-6).all() and (b >= crown - 1e-6).all()


def test_default_chunks_follow_the_device_and_method(model):
    from robustsuite.certify.verifier import DEFAULT_MAX_BATCH

    for method, size in DEFAULT_MAX_BATCH["cpu"].items():
        assert Verifier(model, SHAPE, method=method, device="cpu").max_batch == size
    # measured on a CPU: full CROWN and alpha-CROWN are fastest in small chunks
    assert DEFAULT_MAX_BATCH["cpu"]["crown"] <= 8 and DEFAULT_MAX_BATCH["cpu"]["alpha-crown"] <= 8


class _Scaled(nn.Module):
    """Logits times a Python float: a traced graph freezes it as a constant."""

    def __init__(self, net, scale=1.0):
        super().__init__()
        self.net, self.scale = net, scale

    def forward(self, x):
        return self.net(x) * self.scale


def test_a_replaced_weight_after_construction_is_noticed(batch):
    x, y = batch
    torch.manual_seed(3)
    net = build("cnn_small", SHAPE, 10, width=0.5, linear=32).eval()
    v = Verifier(net, SHAPE, method="crown", device="cpu")
    v.verify(x, y, LinfBall(0.01))
    last = [m for m in net.modules() if isinstance(m, nn.Linear)][-1]
    last.weight = nn.Parameter(torch.randn_like(last.weight))  # a new object: not shared with the graph
    with torch.no_grad():
        last.bias.add_(0.3)  # in place: shared
    after = v.verify(x, y, LinfBall(0.01))
    fresh = Verifier(net, SHAPE, method="crown", device="cpu").verify(x, y, LinfBall(0.01))
    torch.testing.assert_close(after.margin_lower, fresh.margin_lower)
    assert torch.equal(after.clean_correct, fresh.clean_correct)


def test_a_changed_attribute_is_noticed_by_the_graph_check(batch, monkeypatch):
    x, y = batch
    torch.manual_seed(3)
    net = _Scaled(build("cnn_small", SHAPE, 10, width=0.5, linear=32)).eval()
    v = Verifier(net, SHAPE, method="crown-ibp", device="cpu")
    v.verify(x, y, LinfBall(0.01))
    v.verify(x, y, LinfBall(0.01))
    net.scale = 3.0  # no parameter or buffer changes: only the logit comparison can see it
    monkeypatch.setattr(Verifier, "_stale", lambda self: False)
    after = v.margin_bounds(x, y, LinfBall(0.01))
    monkeypatch.undo()
    fresh = Verifier(net, SHAPE, method="crown-ibp", device="cpu").margin_bounds(x, y, LinfBall(0.01))
    torch.testing.assert_close(after, fresh)


def test_the_graph_forward_runs_only_when_the_model_may_have_changed(model, batch):
    """The bounded graph's forward (the largest fixed cost of a call) is compared with model(x) at
    the first call after a build and after any change of the model's state, not at every call."""
    x, y = batch
    v = Verifier(model, SHAPE, method="crown-ibp", device="cpu")
    calls = []
    real = v._bm.forward

    def counting(*a, **k):
        calls.append(a[0].shape[0])
        return real(*a, **k)
    v._bm.forward = counting
    first = v.verify(x, y, LinfBall(0.01))
    assert calls == [10]  # the whole first chunk
    v.verify(x, y, LinfBall(0.01))
    v.margin_bounds(x, y, LinfBall(0.01))
    assert calls == [10], "the graph was compared again although nothing changed"
    p = next(model.parameters())
    with torch.no_grad():
        p.mul_(1.0)  # an in-place update (as an optimizer step): compared again, on a few samples
    again = v.verify(x, y, LinfBall(0.01))
    assert len(calls) == 2 and calls[1] <= 4
    torch.testing.assert_close(again.margin_lower, first.margin_lower)


@pytest.mark.parametrize("how", ["data", "numpy", "train_forward"])
def test_buffer_writes_that_leave_version_counters_alone_are_noticed(how):
    """Writes through ``.data`` or a numpy view do not bump a tensor's version counter, so the
    state summary cannot see them: the per-call exact buffer comparison must (and does so on the
    fast path, where the state is unchanged since the last check)."""
    model = _bn_model()
    x = torch.rand(6, *SHAPE)
    y = model(x).argmax(1)
    v = Verifier(model, SHAPE, method="crown", device="cpu")
    v.verify(x, y, LinfBall(0.0))
    before = v.verify(x, y, LinfBall(0.0)).margin_lower
    new = _new_bn_state(model)
    if how == "train_forward":  # BatchNorm's running-statistics update (num_batches_tracked moves)
        model.train()
        with torch.no_grad():
            model(torch.rand(32, *SHAPE) * 3)
        model.eval()
    else:
        for name, b in model.named_buffers():
            if name.endswith(("running_mean", "running_var")):
                if how == "data":
                    b.data.copy_(new[name])
                else:
                    b.numpy()[...] = new[name].numpy()
        from robustsuite.certify.verifier import model_state
        assert model_state(model) == v._checked  # the summary saw nothing: the fast path runs
    after = v.verify(x, y, LinfBall(0.0)).margin_lower
    fresh = Verifier(model, SHAPE, method="crown", device="cpu").verify(x, y, LinfBall(0.0)).margin_lower
    assert not torch.allclose(before, fresh, atol=1e-3)
    torch.testing.assert_close(after, fresh, rtol=1e-5, atol=1e-5)


def test_a_threat_with_its_own_check_is_still_checked(model, batch):
    x, y = batch

    class Picky(LinfBall):
        def check(self, x, name="x"):
            raise InputError("picky")
    with pytest.raises(InputError, match="picky"):
        Verifier(model, SHAPE, method="ibp", device="cpu").verify(x, y, Picky(0.01))


def test_the_margin_specification_table_is_spec_matrix(model, monkeypatch):
    from robustsuite.certify import verifier as vmod
    from robustsuite.certify.bounds import spec_matrix
    y = torch.tensor([0, 9, 3, 3, 7])
    v = Verifier(model, SHAPE, method="ibp", device="cpu")
    assert v._spec_table is not None
    assert torch.equal(v._spec(y), spec_matrix(y, 10))
    monkeypatch.setattr(vmod, "SPEC_TABLE_CLASSES", 9)  # above the limit: built per call, same rows
    v = Verifier(model, SHAPE, method="ibp", device="cpu")
    assert v._spec_table is None and torch.equal(v._spec(y), spec_matrix(y, 10))


def test_the_state_summary_sees_hooks_moved_tensors_and_replaced_attributes():
    from robustsuite.certify.verifier import _walk, model_state
    lin = nn.Linear(3, 2)
    net = nn.Sequential(lin, nn.ReLU())
    state, _, refs = _walk(net)
    assert model_state(net) == state
    h = lin.register_forward_hook(lambda *a: None)
    assert model_state(net) != state
    h.remove()
    assert model_state(net) == state
    w = lin._parameters.pop("bias")  # the same tensor, same name and version, now a buffer
    lin.register_buffer("bias", w)
    assert model_state(net) != state
    state, _, refs = _walk(net)
    lin.alpha = 0.5
    s2, _, refs2 = _walk(net)
    lin.alpha = 0.25  # a new float object: the summary kept the old one alive, so the id differs
    assert model_state(net) != s2
    with torch.no_grad():
        lin.weight.mul_(2)
    assert model_state(net) != state


@pytest.mark.parametrize("bad", ["nan", "inf", "-inf", "below", "above"])
def test_fused_input_check_refuses_bad_images(model, batch, bad):
    x, y = batch
    x = x.clone()
    x[3, 0, 2, 5] = {"nan": float("nan"), "inf": float("inf"), "-inf": float("-inf"),
                     "below": -1e-6, "above": 1 + 1e-6}[bad]
    v = Verifier(model, SHAPE, method="ibp", device="cpu")
    match = "NaN or inf" if "inf" in bad or bad == "nan" else r"\[0, 1\]"
    for call in (lambda: v.verify(x, y, LinfBall(0.01)), lambda: v.margin_bounds(x, y, LinfBall(0.01))):
        with pytest.raises(InputError, match=match):
            call()


@pytest.mark.parametrize("label", [-1, 10, 2 ** 60, -(2 ** 60)])
@pytest.mark.parametrize("dtype", [torch.int64, torch.int32])
def test_fused_input_check_refuses_bad_labels(model, batch, label, dtype):
    x, y = batch
    if dtype == torch.int32 and abs(label) > 2 ** 31:
        pytest.skip("not representable")
    y = y.to(dtype).clone()
    y[7] = label
    with pytest.raises(InputError, match=r"labels must lie in \[0, 9\]"):
        Verifier(model, SHAPE, method="ibp", device="cpu").verify(x, y, LinfBall(0.01))
    v = Verifier(model, SHAPE, method="ibp", device="cpu")
    y = y.clamp(0, 9)
    want = v.verify(x, y.long(), LinfBall(0.01))
    for small in (y.to(torch.uint8), y.to(dtype)):  # uint8 once indexed the specifications as a mask
        got = v.verify(x, small, LinfBall(0.01))
        assert torch.equal(got.certified, want.certified)
        assert torch.equal(got.margin_lower, want.margin_lower)
