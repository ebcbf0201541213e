"""The allowlist of the traced graph: which auto_LiRPA 0.3 nodes a bound method handles soundly.

Checking ``nn.Module`` types misses everything a ``forward`` does with ``torch.nn.functional`` or
tensor methods (``F.avg_pool2d(x, 2, stride=1)`` passed the module check and got false CROWN
certificates). This module checks what auto_LiRPA actually bounds: the nodes of the
``BoundedModule`` (one per ONNX operation of the traced model) and their ONNX attributes.

Rules:

* Nodes that do not depend on the perturbed input (parameters, buffers, shape arithmetic of
  ``x.view(x.size(0), -1)``) are evaluated exactly by auto_LiRPA's forward pass; only the ops in
  :data:`CONSTANT_OPS` may appear there.
* Every node that depends on the perturbed input must be in :data:`ALLOWLIST`, whose predicate
  accepts its attributes under the bound method. Each entry names the test in
  ``tests/test_certify_graph.py`` that proves it sound (random + PGD points, and closed-form exact
  minima for affine graphs) or refused.
* Anything else raises :class:`UnsupportedModelError` naming the node class, the ONNX op, the layer
  it came from (when it has parameters), its attributes, the method, and the fix.

The check runs once per built graph (``Verifier.refresh`` and the certified trainer), never per call.

auto_LiRPA 0.7.x (installed from source; PyPI has 0.3) bounds more operations soundly; under it,
and only under it, the allowlist also accepts (each with a soundness test in
``tests/test_certify_lirpa071.py``, run under 0.7.1 by ``tests/test_lirpa071_subprocess.py``):

* ``softmax`` (``BoundSoftmax``) along a non-batch axis;
* ``LayerNorm`` (its traced pattern: mean, centering, square, mean, + eps, sqrt, reciprocal,
  product of the centered input with the reciprocal; nowhere else is a product of two
  input-dependent tensors, a square, a square root or a reciprocal accepted), except under
  alpha-CROWN, which fails inside 0.7.1 there;
* average pooling with any kernel, stride and padding (with ``count_include_pad=True``; 0.7.1
  still computes ``count_include_pad=False`` with padding as a different function), under
  every method;
* LeakyReLU under every method (alpha-CROWN included);
* a mean over any non-batch axes.

0.7.x's interval pass through ``torch.cat`` fails on per-element boxes (a numpy error), so
concatenation is refused under ``ibp`` and ``crown-ibp`` there. Max pooling stays refused
under alpha-CROWN on both versions (0.3 fails; 0.7.1 was looser than CROWN and, in 2 of ~27
runs, unsound).
"""
from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from typing import Callable, Iterator

import torch

from ..errors import UnsupportedModelError

#: methods, in our canonical names, that propagate linear bounds backwards through a node
#: (CROWN-IBP does so at the output layer, so it is as strict as CROWN there).
BACKWARD_METHODS = ("crown-ibp", "crown", "alpha-crown")

SUPPORTED = ("Conv2d, Linear (with or without bias), ReLU / F.relu, BatchNorm1d/2d (eval), Flatten / "
             "torch.flatten(x, 1) / x.view(x.size(0), -1) / x.reshape(B, ...), additions and subtractions "
             "(residual), multiplication or division by a constant (the Normalize layer, (x - mean) / std), "
             "negation, torch.cat along a non-batch axis, AvgPool2d(k=s, padding=0) and "
             "AdaptiveAvgPool2d(1) / x.mean((2, 3)) (any average pooling under 'ibp'), MaxPool2d(k=s, "
             "padding=0) ('crown-ibp', 'crown'; any kernel/stride/padding under 'ibp'; none under "
             "'alpha-crown'), Dropout (identity in eval mode); with auto_LiRPA >= 0.7 also softmax, LayerNorm, "
             "LeakyReLU and AvgPool2d with any kernel/stride/padding (count_include_pad=True) under every "
             "method (LayerNorm not under 'alpha-crown'), and torch.cat only under 'crown' / 'alpha-crown'")

#: ops that may appear where nothing depends on the perturbed input: auto_LiRPA computes their
#: value exactly with the ordinary forward pass (lower = upper = value), so any deterministic op is
#: sound there; the list keeps it to what shape computation and parameters produce.
CONSTANT_OPS = frozenset({
    "BoundParams", "BoundBuffers", "BoundConstant", "BoundPrimConstant", "BoundShape", "BoundGather",
    "BoundUnsqueeze", "BoundSqueeze", "BoundConcat", "BoundReshape", "BoundTranspose", "BoundCast",
    "BoundConstantOfShape", "BoundSlice", "BoundAdd", "BoundSub", "BoundMul", "BoundDiv", "BoundNeg",
    "BoundReciprocal",  # 0.7.x traces a division by a constant as Mul(x, Reciprocal(constant))
})


def modern() -> bool:
    """The installed auto_LiRPA is 0.7 or newer (the extra operations above are accepted)."""
    from .lirpa_compat import _modern

    return _modern()


def _version() -> str:
    from .lirpa_compat import lirpa_version

    v = lirpa_version()
    return "auto_LiRPA " + (".".join(map(str, v)) if v else "(unknown version)")

#: a hint at the torch code an unsupported ONNX op usually comes from.
_ORIGIN = {
    "BoundAveragePool": "nn.AvgPool2d / F.avg_pool2d", "BoundMaxPool": "nn.MaxPool2d / F.max_pool2d",
    "BoundReshape": "view / reshape", "BoundFlatten": "flatten", "BoundConcat": "torch.cat",
    "BoundMul": "multiplication", "BoundDiv": "division", "BoundReduceMean": "x.mean / LayerNorm statistics",
    "BoundExp": "softmax / log_softmax / exp", "BoundReduceMax": "softmax / max over a dimension",
    "BoundReduceSum": "softmax / sum", "BoundSoftmax": "softmax", "BoundPow": "LayerNorm / x ** p",
    "BoundSqrt": "LayerNorm / GroupNorm / sqrt", "BoundLeakyRelu": "LeakyReLU",
    "BoundSigmoid": "Sigmoid", "BoundTanh": "Tanh", "BoundSlice": "indexing / slicing x[..., a:b]",
    "BoundPad": "padding_mode other than 'zeros' / F.pad", "BoundTranspose": "permute / transpose",
    "BoundMatMul": "matmul with a tensor that is not a Linear weight",
}


@dataclass(frozen=True)
class Rule:
    """One allowlist entry: ``check(node, method, graph)`` returns None (sound) or why not."""

    check: Callable[["object", str, "GraphInfo"], "str | None"]
    reason: str   # why the accepted cases are sound
    test: str     # the test in tests/test_certify_graph.py that proves it


class GraphInfo:
    """Which nodes of a ``BoundedModule`` depend on its perturbed input (input 0)."""

    def __init__(self, bm):
        nodes = list(bm._modules.values())
        self.nodes = nodes
        roots = [bm[name] for name, idx in zip(bm.input_name, bm.input_index) if idx == 0]
        if not roots:  # a graph with one input names it by position only
            roots = [bm[bm.input_name[0]]]
        self.final = getattr(bm, "final_name", None)
        self.perturbed: set[str] = {n.name for n in roots}
        self.roots = {n.name for n in roots}
        # auto_LiRPA keeps nodes in topological order; iterate to a fixed point in case it does not.
        changed = True
        while changed:
            changed = False
            for n in nodes:
                # A shape is known without the input's values: Shape(x) starts a constant subgraph.
                if type(n).__name__ == "BoundShape":
                    continue
                if n.name not in self.perturbed and any(i.name in self.perturbed for i in n.inputs):
                    self.perturbed.add(n.name)
                    changed = True

    def is_perturbed(self, node) -> bool:
        return node.name in self.perturbed


# --------------------------------------------------------------------------------- predicates
def _attr(node, key, default=None):
    return node.attr.get(key, default) if isinstance(node.attr, dict) else default


def _ok(node, method, g):
    return None


def _only_first_perturbed(node, g) -> str | None:
    if any(g.is_perturbed(i) for i in node.inputs[1:]):
        return "its weight/parameter operand depends on the input (not an affine layer)"
    return None


def _conv(node, method, g):
    return _only_first_perturbed(node, g)


def _linear(node, method, g):
    bad = _only_first_perturbed(node, g)
    if bad:
        return bad
    if _attr(node, "transA", 0) != 0 or float(_attr(node, "alpha", 1.0)) != 1.0 or float(_attr(node, "beta", 1.0)) != 1.0:
        return "Gemm with transA/alpha/beta other than (0, 1, 1) is not handled by auto_LiRPA 0.3"
    return None


def _matmul(node, method, g):
    bad = _only_first_perturbed(node, g)
    if bad:
        return bad
    w = node.inputs[1]
    # nn.Linear(bias=False) exports as MatMul(x, Transpose(weight)); a bare constant matrix makes
    # 0.3's CROWN fail with an IndexError.
    if type(w).__name__ == "BoundTranspose":
        w = w.inputs[0]
    if type(w).__name__ not in ("BoundParams", "BoundBuffers"):
        return "matmul with a constant that is not a layer weight (use nn.Linear)"
    if node.name == g.final and method in ("ibp", "crown-ibp"):
        return ("nn.Linear(bias=False) as the output layer fails in auto_LiRPA 0.3's interval pass "
                "(its MatMul takes no specification matrix); use bias=True there")
    return None


def _add_sub(node, method, g):
    shapes = {tuple(i.output_shape) for i in node.inputs if g.is_perturbed(i)}
    if len(shapes) > 1 and not (modern() and _is_centered(node)):  # LayerNorm's x - mean(x) broadcasts
        return f"operands of different shapes {sorted(shapes)} are broadcast (not supported)"
    return None


def _mul(node, method, g):
    if sum(g.is_perturbed(i) for i in node.inputs) > 1:
        if modern() and any(_cls(i) == "BoundReciprocal" and _reciprocal(i, method, g) is None
                            for i in node.inputs):
            return None  # LayerNorm: (x - mean) * 1 / sqrt(var + eps)
        return "product of two input-dependent tensors (x * x is not linear)"
    return None


def _cls(node) -> str:
    return type(node).__name__


def _is_centered(node) -> bool:
    """``a - mean(a)``, as LayerNorm computes it."""
    return (_cls(node) == "BoundSub" and _cls(node.inputs[1]) == "BoundReduceMean"
            and node.inputs[1].inputs[0] is node.inputs[0])


def _sqr(node, method, g):
    if modern() and _is_centered(node.inputs[0]):
        return None  # LayerNorm's variance
    return "x * x / x ** 2 (x * x is not linear; accepted only inside LayerNorm under auto_LiRPA >= 0.7)"


def _sqrt(node, method, g):
    a = node.inputs[0]
    if modern() and _cls(a) == "BoundAdd":
        parts = {_cls(i): i for i in a.inputs}
        mean = parts.get("BoundReduceMean")
        eps = next((i for i in a.inputs if not g.is_perturbed(i)), None)
        val = None if eps is None else _constant(eps)
        if (mean is not None and _cls(mean.inputs[0]) == "BoundSqr" and _sqr(mean.inputs[0], method, g) is None
                and val is not None and bool((torch.as_tensor(val) > 0).all())):
            return None  # sqrt(var + eps), eps > 0: LayerNorm
    return "square root of an input-dependent tensor (accepted only inside LayerNorm under auto_LiRPA >= 0.7)"


def _reciprocal(node, method, g):
    if modern() and _cls(node.inputs[0]) == "BoundSqrt" and _sqrt(node.inputs[0], method, g) is None:
        if method == "alpha-crown":
            return (f"alpha-CROWN through LayerNorm fails inside {_version()} (a shape mismatch in its "
                    "optimized slopes); use method 'crown'")
        return None  # 1 / sqrt(var + eps): LayerNorm
    return "division by an input-dependent tensor"


def _softmax(node, method, g):
    if not modern():
        return f"softmax is not bounded soundly by {_version()} (it is with auto_LiRPA >= 0.7)"
    axis = _attr(node, "axis", -1)
    if axis % len(node.output_shape) == 0:
        return "softmax over the batch axis"
    return None


def _leaky_relu(node, method, g):
    if not modern():
        return f"LeakyReLU is not bounded soundly by {_version()} (it is with auto_LiRPA >= 0.7)"
    return None


def _div(node, method, g):
    if g.is_perturbed(node.inputs[1]):
        return "division by an input-dependent tensor"
    return None


def _bn(node, method, g):
    return _only_first_perturbed(node, g)


def _flatten(node, method, g):
    if _attr(node, "axis", 1) != 1:
        return f"flatten with axis={_attr(node, 'axis')} merges the batch axis (use torch.flatten(x, 1))"
    return None


def _reshape(node, method, g):
    bad = _only_first_perturbed(node, g)
    if bad:
        return "the target shape depends on the input values"
    src, out = node.inputs[0].output_shape, node.output_shape
    if not out or not src or out[0] != src[0]:
        return f"reshape from {list(src)} to {list(out)} does not keep the batch axis (use x.view(x.size(0), -1))"
    return None


def _concat(node, method, g):
    if modern() and method in ("ibp", "crown-ibp"):
        return (f"torch.cat under interval bounds fails inside {_version()} on per-element boxes; use "
                "method 'crown' or 'alpha-crown' (or auto_LiRPA 0.3)")
    axis = _attr(node, "axis", 0)
    rank = len(node.output_shape)
    if axis % rank == 0:
        return "concatenation along the batch axis"
    if not all(g.is_perturbed(i) for i in node.inputs):
        return "concatenation of an input-dependent tensor with a constant"
    return None


def _pool_common(node, kind: str) -> str | None:
    if _attr(node, "ceil_mode", 0):
        return (f"{kind} with ceil_mode=True: {_version()} ignores ceil_mode (its forward pass differs "
                f"from the model's); use ceil_mode=False")
    return None


def _avg_pool(node, method, g):
    bad = _pool_common(node, "AvgPool2d")
    if bad:
        return bad
    k, s, p = list(_attr(node, "kernel_shape")), list(_attr(node, "strides")), list(_attr(node, "pads", [0, 0, 0, 0]))
    if any(p) and not _attr(node, "count_include_pad", 1):
        return (f"AvgPool2d with padding and count_include_pad=False: {_version()} computes it with "
                "count_include_pad=True (a different function); use AvgPool2d(k=s, padding=0)")
    if modern():
        return None  # 0.7.x's backward pass handles any window (tests/test_certify_lirpa071.py)
    if method in BACKWARD_METHODS and (k != s or any(p)):
        return (f"average pooling with kernel {k} != stride {s} or padding {p} gives unsound "
                f"CROWN bounds in auto_LiRPA 0.3; use AvgPool2d(k=s, padding=0) or AdaptiveAvgPool2d(1) "
                f"(or method 'ibp', sound for any average pooling)")
    return None


def _max_pool(node, method, g):
    bad = _pool_common(node, "MaxPool2d")
    if bad:
        return bad
    if any(d != 1 for d in _attr(node, "dilations", [1, 1])):
        return f"MaxPool2d with dilation: {_version()} ignores dilation; use dilation=1"
    if method == "alpha-crown":
        return ("alpha-crown does not support max pooling (auto_LiRPA 0.3 fails; 0.7.1 is looser than CROWN "
                "there and was unsound in 2 of ~27 runs); use 'crown' or 'crown-ibp'")
    k, s, p = list(_attr(node, "kernel_shape")), list(_attr(node, "strides")), list(_attr(node, "pads", [0, 0, 0, 0]))
    if method in BACKWARD_METHODS and (k != s or any(p)):
        return (f"max pooling with kernel {k} != stride {s} or padding {p} is not supported by "
                f"CROWN in auto_LiRPA 0.3; use MaxPool2d(k=s, padding=0) or method 'ibp'")
    return None


def _constant(node):
    """The value of a node that does not depend on the input (None when it has none)."""
    for key in ("value", "forward_value"):
        val = getattr(node, key, None)
        if val is not None:
            return val
    return None


def _axes(node) -> list[int]:
    """A reduction's axes: an attribute up to ONNX opset 17, its second input from opset 18 (0.7.x)."""
    axes = _attr(node, "axes", None)
    if axes is None and len(node.inputs) > 1:
        val = _constant(node.inputs[1])
        axes = [] if val is None else [int(a) for a in torch.as_tensor(val).flatten().tolist()]
    rank = len(node.inputs[0].output_shape)
    return [int(a) % rank for a in (axes or [])]


def _reduce_mean(node, method, g):
    axes = _axes(node)
    if not axes or 0 in axes:
        return "mean over the batch axis"
    if modern():
        return None  # a mean over non-batch axes is affine
    if len(node.inputs[0].output_shape) != 4 or sorted(axes) != [2, 3]:
        return f"mean over axes {_attr(node, 'axes')} (only the spatial mean x.mean((2, 3)) is supported)"
    return None


def _dropout(node, method, g):
    if node.training:
        return "Dropout in training mode is random; call model.eval() first"
    return None


#: node class -> rule for nodes that depend on the perturbed input.
ALLOWLIST: dict[str, Rule] = {
    "BoundInput": Rule(_ok, "the perturbed input itself", "test_accepted_affine_graphs_are_exact"),
    "BoundConv": Rule(_conv, "affine in its input (weights constant): bounds are exact for affine graphs",
                      "test_accepted_affine_graphs_are_exact"),
    "BoundLinear": Rule(_linear, "affine (Gemm with constant weight)", "test_accepted_affine_graphs_are_exact"),
    "BoundMatMul": Rule(_matmul, "affine (nn.Linear without bias)", "test_accepted_affine_graphs_are_exact"),
    "BoundRelu": Rule(_ok, "auto_LiRPA's core relaxation; random + PGD points never violate it",
                      "test_accepted_relu_graphs_contain_random_and_pgd_points"),
    "BoundAdd": Rule(_add_sub, "affine (sum of same-shape or constant operands)", "test_accepted_affine_graphs_are_exact"),
    "BoundSub": Rule(_add_sub, "affine", "test_accepted_affine_graphs_are_exact"),
    "BoundNeg": Rule(_ok, "affine", "test_accepted_affine_graphs_are_exact"),
    "BoundMul": Rule(_mul, "affine when one factor is constant", "test_accepted_affine_graphs_are_exact"),
    "BoundDiv": Rule(_div, "affine when the divisor is constant", "test_accepted_affine_graphs_are_exact"),
    "BoundBatchNormalization": Rule(_bn, "affine in eval mode", "test_accepted_affine_graphs_are_exact"),
    "BoundFlatten": Rule(_flatten, "a permutation-free reshape", "test_accepted_affine_graphs_are_exact"),
    "BoundReshape": Rule(_reshape, "a reshape that keeps the batch axis", "test_accepted_affine_graphs_are_exact"),
    "BoundConcat": Rule(_concat, "stacking of affine pieces", "test_accepted_affine_graphs_are_exact"),
    "BoundAveragePool": Rule(_avg_pool, "affine with nonnegative weights: IBP exact per element for any "
                             "window; CROWN correct only for k = s, no padding",
                             "test_accepted_affine_graphs_are_exact"),
    "BoundGlobalAveragePool": Rule(_ok, "affine", "test_accepted_affine_graphs_are_exact"),
    "BoundReduceMean": Rule(_reduce_mean, "affine (spatial mean)", "test_accepted_affine_graphs_are_exact"),
    "BoundMaxPool": Rule(_max_pool, "monotone (IBP); CROWN relaxation for k = s, no padding",
                         "test_accepted_relu_graphs_contain_random_and_pgd_points"),
    "BoundDropout": Rule(_dropout, "the identity in eval mode", "test_accepted_affine_graphs_are_exact"),
    # auto_LiRPA >= 0.7 only (each rule refuses under 0.3); tests in tests/test_certify_lirpa071.py.
    "BoundSoftmax": Rule(_softmax, "0.7.x's softmax relaxation", "test_lirpa071_nonlinear_layers_contain_random_and_pgd_points"),
    "BoundLeakyRelu": Rule(_leaky_relu, "0.7.x's LeakyReLU relaxation (alpha-CROWN slopes in [alpha, 1])",
                           "test_lirpa071_nonlinear_layers_contain_random_and_pgd_points"),
    "BoundSqr": Rule(_sqr, "LayerNorm's variance only", "test_lirpa071_nonlinear_layers_contain_random_and_pgd_points"),
    "BoundSqrt": Rule(_sqrt, "LayerNorm's sqrt(var + eps) only", "test_lirpa071_nonlinear_layers_contain_random_and_pgd_points"),
    "BoundReciprocal": Rule(_reciprocal, "LayerNorm's 1 / sqrt(var + eps) only",
                            "test_lirpa071_nonlinear_layers_contain_random_and_pgd_points"),
}


# --------------------------------------------------------------------------------- the check
def _layer_of(node) -> str | None:
    """The model layer a node comes from, from the names of its parameters (None for functional ops)."""
    for i in node.inputs:
        name = getattr(i, "ori_name", None)
        if type(i).__name__ in ("BoundParams", "BoundBuffers") and isinstance(name, str) and "." in name:
            return name.rsplit(".", 1)[0]
    return None


def describe(node) -> str:
    """``BoundAveragePool (onnx AveragePool, layer 'features.2') kernel_shape=[2, 2] ...``."""
    cls = type(node).__name__
    attrs = {k: v for k, v in (node.attr.items() if isinstance(node.attr, dict) else ()) if k != "device"}
    where = []
    layer = _layer_of(node)
    if layer:
        where.append(f"layer {layer!r}")
    if cls in _ORIGIN:
        where.append(f"from {_ORIGIN[cls]}")
    text = f"{cls} (onnx {cls[len('Bound'):]}{', ' + ', '.join(where) if where else ''})"
    if attrs:
        text += " " + " ".join(f"{k}={v}" for k, v in attrs.items() if not hasattr(v, "shape"))
    return text


def check_graph(bm, method: str) -> None:
    """Raise :class:`UnsupportedModelError` unless every node of ``bm`` is allowlisted for ``method``.

    Args:
        bm: an auto_LiRPA ``BoundedModule`` (its perturbed input is input 0).
        method: canonical bound method (``ibp``, ``crown-ibp``, ``crown``, ``alpha-crown``).
    """
    g = GraphInfo(bm)
    problems: list[str] = []
    for node in g.nodes:
        cls = type(node).__name__
        if not g.is_perturbed(node):
            if cls not in CONSTANT_OPS and cls != "BoundInput":
                problems.append(f"{describe(node)} on constants is not supported for bounds")
            continue
        if node.name in g.roots:
            continue
        rule = ALLOWLIST.get(cls)
        why = "it is not on the list of operations with sound bounds" if rule is None else rule.check(node, method, g)
        if why:
            problems.append(f"{describe(node)}: {why}")
    if problems:
        # Every offending node is listed (a softmax is several ONNX ops), the first few in full.
        more = f"; also {'; '.join(problems[1:4])}" if len(problems) > 1 else ""
        raise UnsupportedModelError(
            f"model: operation {problems[0]} (cannot be bounded soundly with method {method!r}){more}. "
            f"Supported: {SUPPORTED}.")


class _Collect(logging.Handler):
    """Collects the ONNX op names auto_LiRPA logs as unsupported while it parses a graph."""

    def __init__(self):
        super().__init__(logging.ERROR)
        self.ops: list[str] = []

    def emit(self, record):
        msg = record.getMessage()
        if msg.startswith("Name: "):
            self.ops.append(msg[len("Name: "):].split(", Attr")[0])
        elif "op='" in msg:
            self.ops.append(msg.split("op='", 1)[1].split("'", 1)[0])


@contextlib.contextmanager
def _collect_unsupported() -> Iterator[list[str]]:
    handler = _Collect()
    logger = logging.getLogger("auto_LiRPA")
    logger.addHandler(handler)
    try:
        yield handler.ops
    finally:
        logger.removeHandler(handler)


def build_checked(model, dummy, method: str, **kwargs):
    """``BoundedModule(model, dummy, **kwargs)`` in eval mode, checked by :func:`check_graph`.

    When auto_LiRPA fails while building (an op it cannot parse, or its own forward pass disagreeing
    with the model's, as for ``ceil_mode`` pools), the error names the operation: the graph built so
    far is checked first, then the ops auto_LiRPA logged as unsupported. No raw auto_LiRPA error escapes.
    """
    from .lirpa import BoundedModule

    bm = BoundedModule.__new__(BoundedModule)
    with _collect_unsupported() as ops:
        try:
            bm.__init__(model, dummy, **kwargs)
        except Exception as e:  # noqa: BLE001 - every failure becomes one clear error below
            partial = "_modules" in vars(bm) and hasattr(bm, "input_name") and len(bm._modules) > 0
            if partial:
                try:
                    check_graph(bm, method)
                except UnsupportedModelError as named:
                    raise named from e
                except Exception:  # noqa: BLE001 - a half-built graph may lack shapes
                    pass
            named_ops = f"unsupported operation(s) {', '.join(dict.fromkeys(ops))}; " if ops else ""
            raise UnsupportedModelError(
                f"model: {_version()} cannot trace it for method {method!r} ({named_ops}"
                f"{type(e).__name__}: {e}). Supported: {SUPPORTED}.") from e
    bm.eval()
    check_graph(bm, method)
    return bm
