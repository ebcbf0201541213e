"""Make auto_LiRPA run correctly on torch 2.x: PyPI's 0.3 (the default) and upstream 0.7.x.

This is the only module of robustsuite that patches third-party code. It is applied once, by
``robustsuite.certify.lirpa`` (the single place that imports auto_LiRPA), and is idempotent.
Every patch applies only where the installed release needs it: it checks the installed version
(read from ``auto_LiRPA/__init__.py`` before the import, :func:`lirpa_version`), that what it
provides is missing, or probes the behaviour it fixes. What was applied is recorded in
``APPLIED_PATCHES``; ``LIRPA_COMPAT_SKIP=P8,P11`` disables patches for experiments (the tests
use it to show each patch is needed). The labels follow
``shared/notes/auto-lirpa-0.3-on-torch-2.md``, which has the measured causes and symptoms.

Pre-import (must run before ``import auto_LiRPA``):
  P1  ``torch.onnx.symbolic_helper._set_opset_version`` (removed in torch 1.13).
  P2  ``torch.onnx.utils._optimize_graph`` (moved into the TorchScript exporter package).
  P3  ``torch._C.Node.__getitem__`` (removed; 0.3 reads ONNX node attributes with ``node[name]``).
  P12 import the symbolic modules of opsets 11 up to the export opset (12 for 0.3, the
      exporter's default, 20 on torch 2.14, for 0.7.x): torch >= 2.9 imports only opsets 9/10,
      so conversion silently uses their symbolics (``gather`` -> ``OneHot``: loss fusion breaks).
  P4  numpy 2: ``numpy.lib.arraysetops`` is private (0.3 imports ``isin`` from it).
  G   undo the import's global side effects: root logging handler, ``warnings.simplefilter``,
      TorchScript's profiling executor switched off, jit deprecation warnings.
Post-import:
  P5  ``BoundedModule.register_parameter`` uses the removed ``torch._six``.
  P6  ``parse_module`` leaves the process-wide ONNX exporter state changed (0.3: the opset;
      0.7.x: ``autograd_inlining``).
  P8  ``BoundedModule._named_members`` lacks ``remove_duplicate`` (``parameters()`` raises).
  P9  torch >= 2.14 gives ``clamp`` a zero subgradient at its bounds, so alpha-CROWN never moves
      its slopes and silently returns CROWN (behaviour probe, not a version check).
  P10 0.3 bug: ``alpha_indices`` not reset when a full alpha is created (>90 % unstable neurons).
  P11 ``x.view(x.size(0), -1)`` bakes the trace batch size into the graph: export the batch axis
      as dynamic, then restore the input's concrete type for 0.3's shape check.

Which patches each release needs on torch 2.14.1 / numpy 1.26 (measured one by one: each
applied patch skipped with ``LIRPA_COMPAT_SKIP`` brings its symptom back,
``tests/test_lirpa_compat.py``; 0.7.1 runs the certify soundness subset without the others):

  ====  ==========================  ==============================================================
  P     0.3                         0.7.1
  ====  ==========================  ==============================================================
  P1    yes (ImportError)           no: calls ``_set_opset_version`` only on torch < 2
  P2    no (torch 2.14 re-exports)  no
  P3    yes (Node not subscriptable) no: reads attributes with ``_node_get``
  P12   yes, opsets 11-12 (OneHot)  yes, opsets 11-20 (loss fusion: OneHot)
  P4    only with numpy 2           no: no longer imports ``numpy.lib.arraysetops``
  G     yes                         yes (``simplefilter('once')``, ``basicConfig``, jit executor)
  P5    yes (``torch._six``)        no: checks ``str``
  P6    yes (opset left at 12)      yes (``autograd_inlining`` left False)
  P8    yes (``remove_duplicate``)  no: accepts it
  P9    yes (alpha-CROWN == CROWN)  yes (alpha-CROWN == CROWN); the replacement keeps 0.7.x's
                                    LeakyReLU floor (slopes clamped to [negative_slope, 1])
  P10   yes (shape mismatch)        no: fixed upstream
  P11   yes (batch size baked in)   no: exports the batch axis as dynamic itself
  ====  ==========================  ==============================================================
"""
from __future__ import annotations

import importlib
import importlib.util
import inspect
import logging
import os
import re
import sys
import types
import warnings
from typing import Any

import torch

log = logging.getLogger(__name__)

APPLIED_PATCHES: list[str] = []
#: what a patch replaced, by label (the tests compare a replacement with the original)
ORIGINALS: dict[str, Any] = {}
_STATE: dict[str, Any] = {"pre": False, "post": False, "module": None}
_MARK = "_robustsuite_compat"
_VERSION_CACHE: tuple[int, ...] | None = None


def _skipped(label: str) -> bool:
    return label in {s.strip() for s in os.environ.get("LIRPA_COMPAT_SKIP", "").split(",") if s.strip()}


def _record(label: str) -> None:
    if label not in APPLIED_PATCHES:
        APPLIED_PATCHES.append(label)


def _exporter_globals():
    for name in ("torch.onnx._internal.torchscript_exporter._globals", "torch.onnx._globals"):
        try:
            return importlib.import_module(name).GLOBALS
        except (ImportError, AttributeError):
            continue
    return None


def lirpa_version() -> tuple[int, ...] | None:
    """Version of the auto_LiRPA that ``import auto_LiRPA`` loads, read from its ``__init__.py``
    without importing it (the pre-import patches depend on it); None when absent or unreadable."""
    global _VERSION_CACHE
    if _VERSION_CACHE is not None:
        return _VERSION_CACHE or None
    found: tuple[int, ...] = ()
    try:
        spec = importlib.util.find_spec("auto_LiRPA")
        if spec is not None and spec.origin:
            with open(spec.origin, encoding="utf-8") as f:
                m = re.search(r"^__version__\s*=\s*['\"]([0-9][0-9.]*)", f.read(), re.M)
            if m:
                found = tuple(int(p) for p in m.group(1).strip(".").split("."))
    except (OSError, ValueError, ImportError):
        found = ()
    _VERSION_CACHE = found
    return found or None


def _modern() -> bool:
    """auto_LiRPA >= 0.7 (upstream's torch-2 release line): it handles torch 2's ONNX attribute
    access, the dynamic batch axis, ``_named_members`` and ``torch._six`` itself (measured on 0.7.1)."""
    v = lirpa_version()
    return v is not None and v >= (0, 7)


# ----------------------------------------------------------------------------------------- pre
def _pre_import() -> None:
    # Patch the public modules 0.3 imports from (on torch >= 2.9 they are thin re-export stubs
    # of the TorchScript exporter package, distinct objects from ``torch.onnx.symbolic_helper``
    # as an attribute).
    symbolic_helper = importlib.import_module("torch.onnx.symbolic_helper")
    glb = _exporter_globals()
    # 0.7.x calls _set_opset_version only on torch < 2 and reads attributes with _node_get: P1, P3
    # are for 0.3 only.
    if not _modern() and not hasattr(symbolic_helper, "_set_opset_version") and not _skipped("P1"):
        def _set_opset_version(opset_version: int) -> None:
            glb.export_onnx_opset_version = opset_version
        symbolic_helper._set_opset_version = _set_opset_version
        _record("P1")

    onnx_utils = importlib.import_module("torch.onnx.utils")
    if not hasattr(onnx_utils, "_optimize_graph") and not _skipped("P2"):
        from torch.onnx._internal.torchscript_exporter.utils import _optimize_graph
        onnx_utils._optimize_graph = _optimize_graph
        _record("P2")

    if not _modern() and not hasattr(torch._C.Node, "__getitem__") and not _skipped("P3"):
        node_get = getattr(symbolic_helper, "_node_get", None) or importlib.import_module(
            "torch.onnx._internal.torchscript_exporter.symbolic_helper")._node_get
        torch._C.Node.__getitem__ = lambda self, key: node_get(self, key)
        _record("P3")

    if not _skipped("P12"):
        # 0.3 converts at opset 12; 0.7.x at the exporter's default opset (20 on torch 2.14), so it
        # needs every symbolic module up to that one (torch <= 2.8 imported them all).
        top = 12
        if _modern() and glb is not None:
            top = max(12, int(getattr(glb, "export_onnx_opset_version", 12)))
        for mod in (f"symbolic_opset{v}" for v in range(11, top + 1)):
            full = f"torch.onnx._internal.torchscript_exporter.{mod}"
            if full in sys.modules:
                continue
            try:
                importlib.import_module(full)
                _record("P12")
            except ImportError:  # older torch: registered on import of torch.onnx already
                pass

    try:
        importlib.import_module("numpy.lib.arraysetops")
    except ImportError:
        if not _modern() and not _skipped("P4"):  # 0.7.x no longer imports numpy.lib.arraysetops
            import numpy as np
            shim = types.ModuleType("numpy.lib.arraysetops")
            for name in ("isin", "unique", "intersect1d", "setdiff1d", "union1d", "in1d", "setxor1d"):
                if hasattr(np, name):
                    setattr(shim, name, getattr(np, name))
            sys.modules["numpy.lib.arraysetops"] = shim
            _record("P4")


def _jit_profiling_state() -> tuple[bool | None, bool | None]:
    # torch exposes setters that return the previous value; read by setting and setting back.
    out = []
    for fn in ("_jit_set_profiling_executor", "_jit_set_profiling_mode"):
        setter = getattr(torch._C, fn, None)
        if setter is None:
            out.append(None)
            continue
        old = setter(True)
        setter(old)
        out.append(old)
    return out[0], out[1]


def _import_lirpa(keep_legacy_jit_executor: bool):
    """Import auto_LiRPA and undo its process-wide side effects (patch G)."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    jit_state = _jit_profiling_state()
    # Record instead of filter: 0.3 calls warnings.simplefilter("once") during the import, which
    # would override any filter set here. catch_warnings restores the global filters afterwards.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cpp_log = logging.getLogger("torch.utils.cpp_extension")
        cpp_level = cpp_log.level
        cpp_log.setLevel(logging.ERROR)  # "No CUDA runtime is found" on CPU hosts
        try:
            module = importlib.import_module("auto_LiRPA")
        finally:
            cpp_log.setLevel(cpp_level)
    for w in caught:
        if "jit.script" not in str(w.message) and not issubclass(w.category, DeprecationWarning):
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    if _skipped("G"):
        return module
    root.handlers[:] = handlers
    root.setLevel(level)
    if not keep_legacy_jit_executor:
        for fn, old in zip(("_jit_set_profiling_executor", "_jit_set_profiling_mode"), jit_state):
            if old is not None:
                getattr(torch._C, fn)(old)
    # 0.3's own logger would print INFO lines to stdout through the removed root handler; keep
    # its messages flowing to whatever logging the application configured.
    logging.getLogger("auto_LiRPA").propagate = True
    _record("G")
    return module


# ---------------------------------------------------------------------------------------- post
def _post_import() -> None:
    from auto_LiRPA import bound_general, parse_graph
    from auto_LiRPA.bound_general import BoundedModule
    from auto_LiRPA.operators import BoundRelu

    # P8: torch 2 passes remove_duplicate to _named_members.
    if ("remove_duplicate" not in inspect.signature(BoundedModule._named_members).parameters
            and not _skipped("P8")):
        def _named_members(self, get_members_fn, prefix="", recurse=True, remove_duplicate=True, **kwargs):
            memo = set()
            modules = self.named_modules(prefix=prefix, remove_duplicate=remove_duplicate) if recurse \
                else [(prefix, self)]
            for module_prefix, module in modules:
                for k, v in get_members_fn(module):
                    if v is None or (remove_duplicate and v in memo):
                        continue
                    if remove_duplicate:
                        memo.add(v)
                    name = module_prefix + ("." if module_prefix else "") + k
                    yield self.node_name_map.get(name, name), v
        BoundedModule._named_members = _named_members
        _record("P8")

    # P5: register_parameter references torch._six.
    if ("_six" in BoundedModule.register_parameter.__code__.co_names and not hasattr(torch, "_six")
            and not _skipped("P5")):
        def register_parameter(self, name, param):
            if not isinstance(name, str):
                raise TypeError(f"parameter name should be a string. Got {torch.typename(name)}")
            return torch.nn.Module.register_parameter(self, name, param)
        BoundedModule.register_parameter = register_parameter
        _record("P5")

    # P6: keep the exporter's process-wide state as the application had it (0.3 sets the opset to
    # 12; 0.7.x sets autograd_inlining = False on torch >= 2.1).
    glb = _exporter_globals()
    if glb is not None and not getattr(bound_general.parse_module, _MARK, False) and not _skipped("P6"):
        orig_parse = bound_general.parse_module
        keys = [k for k in ("export_onnx_opset_version", "autograd_inlining") if hasattr(glb, k)]

        def parse_module(*args, **kwargs):
            saved = {k: getattr(glb, k) for k in keys}
            try:
                return orig_parse(*args, **kwargs)
            finally:
                for k, v in saved.items():
                    setattr(glb, k, v)
        setattr(parse_module, _MARK, True)
        bound_general.parse_module = parse_module
        _record("P6")

    # P11: dynamic batch axis (torch 2 constant-folds x.size(0) to the trace batch size).
    opt = parse_graph._optimize_graph
    if (int(torch.__version__.split(".")[0]) >= 2 and not getattr(opt, _MARK, False)
            and not _passes_dynamic_axes(parse_graph)
            and "dynamic_axes" in inspect.signature(opt).parameters and not _skipped("P11")):
        def _optimize_graph(graph, operator_export_type, *args, **kwargs):
            first = next(iter(graph.inputs()))
            concrete = first.type()
            if "dynamic_axes" not in kwargs and "input_names" not in kwargs:
                kwargs["input_names"] = ["robustsuite_input"]
                kwargs["dynamic_axes"] = {"robustsuite_input": {0: "batch"}}
            out = opt(graph, operator_export_type, *args, **kwargs)
            # 0.3 checks the traced input sizes against the dummy input: give the concrete type back.
            next(iter(out.inputs())).setType(concrete)
            return out
        setattr(_optimize_graph, _MARK, True)
        parse_graph._optimize_graph = _optimize_graph
        _record("P11")

    # P9: behaviour probe of clamp's subgradient at its bounds.
    relu = BoundRelu
    if hasattr(relu, "_relu_mask_alpha") and not getattr(relu, _MARK + "_p9", False) \
            and _clamp_kills_boundary_gradient() and not _skipped("P9"):
        ORIGINALS["P9"] = relu._relu_mask_alpha
        relu._relu_mask_alpha = staticmethod(relu_mask_alpha)
        setattr(relu, _MARK + "_p9", True)
        _record("P9")

    # P10: reset alpha_indices when 0.3 chose a full alpha (its reset sits under `if verbosity`).
    init = relu.init_opt_parameters
    if not getattr(init, _MARK, False) and _has_alpha_indices_bug(init) and not _skipped("P10"):
        def init_opt_parameters(self, start_nodes):
            init(self, start_nodes)
            idx = getattr(self, "alpha_indices", None)
            if idx is not None and hasattr(self.inputs[0], "lower"):
                ref = self.inputs[0].lower
                total = ref.numel() // ref.size(0)
                if idx[0].size(0) > self.options.get("minimum_sparsity", 0.9) * total:
                    self.alpha_indices = None
        setattr(init_opt_parameters, _MARK, True)
        relu.init_opt_parameters = init_opt_parameters
        _record("P10")


def relu_mask_alpha(lower, upper, lb_lower_d=None, ub_lower_d=None, leaky_alpha: float = 0.0):
    """P9: ``BoundRelu._relu_mask_alpha`` of 0.3 (``leaky_alpha`` absent, i.e. 0) and of 0.7.x,
    with the same values, but the slope clamp to [leaky_alpha, 1] has gradient 1 on the closed
    interval, as torch < 2.14 gave it; the slopes start exactly at the ends, so a zero
    subgradient there means alpha-CROWN never moves them."""
    lower_mask = (lower >= 0).to(lower.dtype)
    upper_mask = upper <= 0
    zero_coeffs = False if leaky_alpha > 0 else upper_mask.all()
    no_mask = (1.0 - lower_mask) * (1.0 - upper_mask.to(upper.dtype))
    out = []
    for d in (lb_lower_d, ub_lower_d):
        if d is not None:
            d = torch.where((d >= leaky_alpha) & (d <= 1), d, d.detach().clamp(leaky_alpha, 1.0))
            d = d * no_mask + lower_mask
            if leaky_alpha > 0:  # a LeakyReLU that is off has slope leaky_alpha
                d = d + upper_mask.to(d.dtype) * leaky_alpha
        out.append(d)
    return out[0], out[1], zero_coeffs


def _passes_dynamic_axes(parse_graph) -> bool:
    """True when the installed auto_LiRPA exports the batch axis as dynamic itself (0.7.x)."""
    try:
        return "dynamic_axes" in inspect.getsource(parse_graph.parse_module)
    except (OSError, TypeError):
        return False


def _clamp_kills_boundary_gradient() -> bool:
    t = torch.tensor([0.0, 1.0], requires_grad=True)
    (g,) = torch.autograd.grad(t.clamp(0.0, 1.0).sum(), t)
    return bool((g == 0).any())


def _has_alpha_indices_bug(fn) -> bool:
    try:
        src = inspect.getsource(fn)
    except (OSError, TypeError):
        return True
    # The buggy release resets alpha_indices only inside the verbosity branch.
    lines = [ln for ln in src.splitlines() if "self.alpha_indices = None" in ln and "Use full alpha" in ln]
    return any(len(ln) - len(ln.lstrip()) > 16 for ln in lines)


def apply(keep_legacy_jit_executor: bool = False):
    """Apply every needed patch and import auto_LiRPA; return the ``auto_LiRPA`` module. Idempotent."""
    if _STATE["module"] is not None:
        return _STATE["module"]
    if "auto_LiRPA" in sys.modules and not _STATE["pre"]:
        warnings.warn("auto_LiRPA was imported before robustsuite's compatibility patches; "
                      "import it only through robustsuite.certify.lirpa", RuntimeWarning, stacklevel=2)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*jit\.script.*")
        _pre_import()
        _STATE["pre"] = True
        module = _import_lirpa(keep_legacy_jit_executor)
        _post_import()
    _STATE["post"] = True
    _STATE["module"] = module
    log.debug("auto_LiRPA %s with compatibility patches %s", getattr(module, "__version__", "?"),
              APPLIED_PATCHES)
    return module
