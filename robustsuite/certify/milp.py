"""Exact (complete) verification of ReLU networks by mixed-integer linear programming (HiGHS).

Three pure steps, used by :mod:`robustsuite.certify.complete`:

1. :func:`extract` turns an auto_LiRPA ``BoundedModule`` (already accepted by
   :mod:`robustsuite.certify.graph_check`) into a :class:`Network`: a topologically ordered list of
   affine steps (exact float64 matrices, whatever the layer: Linear, Conv2d, BatchNorm in eval mode,
   average pooling, residual additions, flatten...) and ReLU steps. Nodes the encoding cannot express
   (max pooling, and whatever else is not in :data:`MILP_OPS`) are refused with an error naming them.
2. :func:`encode` builds the MILP of one sample: input variables in the box ``[lo, hi]`` (the threat
   set clipped to [0, 1]), stable ReLUs fixed (active: identity, inactive: 0), one continuous and one
   binary variable per unstable ReLU with the big-M constraints taken from the given pre-activation
   bounds (sound intermediate bounds: CROWN from auto_LiRPA, intersected with interval arithmetic on
   the exact affine expressions). Each affine step is composed into the expressions, so only the
   input and the unstable ReLUs are variables.
3. :func:`solve_margins` minimizes the margins ``z_y - z_j`` one wrong class at a time (most
   negative bound first) and stops at the first class with a candidate counterexample.

Why one MILP per (sample, class) rather than one per sample minimizing ``min_j (z_y - z_j)``: the
per-sample form needs K - 1 more binaries with weak big-M constants (the max over margins), while the
cheap first pass (CROWN) already proves most classes of an undecided sample; only the classes it
leaves open are solved, each a smaller problem, and a sample is falsified by the first that breaks.

Solver settings (:data:`HIGHS_OPTIONS`): primal, dual and MIP feasibility tolerances 1e-9 and
``mip_rel_gap`` 0.5. The relative gap only decides when HiGHS stops: a gap below 1 means the proven
(dual) bound and the best point found have the same sign, which is all the status needs. For the gap
to be relative to the margin itself, the margin's constant term is the cost of one extra variable
fixed at 1 (without it HiGHS measured the gap against the objective minus that constant and stopped
with undecided signs: a test caught it), and the objective is scaled by :data:`OBJ_SCALE` so that
margins of order VERIFY_TOL are not measured against an absolute floor of 1. Soundness never depends
on these settings: the status reads the dual bound and checks the counterexample itself. A class
counts as proven when the dual bound on its margin exceeds :data:`VERIFY_TOL` (1e-4 logits), which
covers the feasibility tolerance times the largest big-M constant (1e-9 x 1e4), the bounds' own
float32 rounding (widened by :data:`BOUND_TOL`) and the float32 model's rounding against this
float64 encoding (about 1e-6 relative on logits of order 10). A counterexample is only a candidate
here: the caller checks it with a float64 forward pass of the model.
"""
from __future__ import annotations

import contextlib
import os
import sys
import time
import warnings
from dataclasses import dataclass, field
from typing import Iterator

import numpy as np

from ..errors import UnsupportedModelError

#: HiGHS options (passed to scipy.optimize.milp; scipy forwards the ones it does not name itself)
HIGHS_OPTIONS = {"primal_feasibility_tolerance": 1e-9, "dual_feasibility_tolerance": 1e-9,
                 "mip_feasibility_tolerance": 1e-9, "mip_rel_gap": 0.5, "presolve": True}
#: a margin counts as proven positive when the solver's dual bound is above this (logit units)
VERIFY_TOL = 1e-4
#: the objective is multiplied by this inside the solver (1 / VERIFY_TOL)
OBJ_SCALE = 1e4
#: pre-activation bounds computed in float32 are widened by this (absolute + relative) before use
BOUND_TOL = 1e-5

#: auto_LiRPA node classes the encoding expresses (every other node depending on the input is refused)
AFFINE_OPS = frozenset({"BoundConv", "BoundLinear", "BoundMatMul", "BoundAdd", "BoundSub", "BoundNeg",
                        "BoundMul", "BoundDiv", "BoundBatchNormalization", "BoundConcat",
                        "BoundAveragePool", "BoundGlobalAveragePool", "BoundReduceMean"})
#: reshapes that keep the batch axis are the identity on the flattened (C order) values
IDENTITY_OPS = frozenset({"BoundFlatten", "BoundReshape", "BoundDropout"})
MILP_OPS = AFFINE_OPS | IDENTITY_OPS | {"BoundRelu", "BoundInput"}


@dataclass
class Step:
    """One step of the network: ``kind`` is ``affine`` (``out = sum_i A_i @ in_i + b``), ``relu``
    or ``identity``; ``inputs`` are names of earlier steps, ``mats`` the (n_out, n_in_i) float64
    matrices of an affine step, ``bias`` its (n_out,) offset."""

    name: str
    kind: str
    inputs: list[str]
    size: int
    mats: list[np.ndarray] = field(default_factory=list)
    bias: np.ndarray | None = None


@dataclass
class Network:
    """The extracted network: ``steps`` in topological order, the first the input (``n_in`` values,
    flattened C order), the last the logits (``num_classes`` values)."""

    steps: list[Step]
    n_in: int
    num_classes: int

    @property
    def relus(self) -> list[Step]:
        return [s for s in self.steps if s.kind == "relu"]


# ------------------------------------------------------------------------------------- extraction
def extract(bm, dummy) -> Network:
    """The :class:`Network` of a ``BoundedModule`` (eval mode), exact in float64.

    Each affine node's matrices come from its own forward pass in float64 on the unit basis of each
    input that depends on the perturbed input (the node is affine there, as the graph check ensures,
    so ``f(e_k) - f(0)`` is column ``k``). ``dummy`` is one input batch of the model's shape, run
    once so that constant nodes hold their values.

    Raises:
        UnsupportedModelError: a node the encoding cannot express, named with its layer.
    """
    import torch

    from .graph_check import GraphInfo, describe

    g = GraphInfo(bm)
    with torch.no_grad():
        bm(dummy)
    steps: list[Step] = []
    for node in g.nodes:
        if not g.is_perturbed(node):
            continue
        cls = type(node).__name__
        if cls not in MILP_OPS:
            raise UnsupportedModelError(
                f"model: operation {describe(node)} cannot be encoded exactly as a MILP; method 'milp' "
                f"supports Linear, Conv2d, BatchNorm (eval), ReLU, Flatten/reshape, residual additions "
                f"and average pooling. Use a bound method ('crown', 'alpha-crown') for this model.")
        size = int(np.prod(node.output_shape[1:]))
        ins = [i for i in node.inputs if g.is_perturbed(i)]
        if node.name in g.roots:
            steps.append(Step(node.name, "input", [], size))
        elif cls == "BoundRelu":
            steps.append(Step(node.name, "relu", [ins[0].name], size))
        elif cls in IDENTITY_OPS:
            steps.append(Step(node.name, "identity", [ins[0].name], size))
        else:
            mats, bias = _affine_maps(node, g)
            steps.append(Step(node.name, "affine", [i.name for i in ins], size, mats, bias))
    if steps[0].kind != "input":
        raise UnsupportedModelError("model: the traced graph does not start at its input")
    return Network(steps, steps[0].size, steps[-1].size)


def _value(node):
    import torch
    v = getattr(node, "forward_value", None)
    if v is None:
        v = getattr(node, "value", None)
    if isinstance(v, torch.Tensor) and v.is_floating_point():
        return v.detach().to(torch.float64)
    return v


def _affine_maps(node, g) -> tuple[list[np.ndarray], np.ndarray]:
    """Matrices (n_out, n_in_i) and bias (n_out,) of an affine node, from float64 forward passes."""
    import torch

    pert = [g.is_perturbed(i) for i in node.inputs]
    shapes = [tuple(i.output_shape[1:]) for i in node.inputs]

    def run(which: int | None) -> torch.Tensor:
        n = int(np.prod(shapes[which])) if which is not None else 0
        batch = n if which is not None else 1
        args = []
        for k, (inp, p) in enumerate(zip(node.inputs, pert)):
            if not p:
                args.append(_value(inp))
            elif k == which:
                args.append(torch.eye(n, dtype=torch.float64).reshape(n, *shapes[k]))
            else:
                args.append(torch.zeros(batch, *shapes[k], dtype=torch.float64))
        with torch.no_grad():
            return node.forward(*args).reshape(batch, -1)

    bias = run(None)[0]
    mats = [(run(k) - bias).T.numpy().copy() for k, p in enumerate(pert) if p]
    return mats, bias.numpy().copy()


# ------------------------------------------------------------------------------------- encoding
@dataclass
class Problem:
    """The MILP of one sample: ``min obj @ v + const`` over ``v`` with ``lb <= v <= ub``,
    ``A v <= b``, ``v[integer]`` in {0, 1}; the first ``n_in`` variables are the input pixels;
    ``logits`` = (M (K, n_vars), c (K,)) gives the logits as affine functions of ``v``."""

    A: "object"  # scipy.sparse.csr_array
    b: np.ndarray
    lb: np.ndarray
    ub: np.ndarray
    integrality: np.ndarray
    n_in: int
    logits: tuple[np.ndarray, np.ndarray]
    unstable: int


def _pad(M: np.ndarray, n: int) -> np.ndarray:
    return M if M.shape[1] == n else np.pad(M, ((0, 0), (0, n - M.shape[1])))


def encode(net: Network, lo: np.ndarray, hi: np.ndarray, pre: dict[str, tuple[np.ndarray, np.ndarray]],
           point: np.ndarray | None = None) -> Problem:
    """Build the MILP of one sample.

    Args:
        net: from :func:`extract`.
        lo, hi: (n_in,) the box of the set (already clipped to [0, 1]), float64.
        pre: ReLU step name -> sound (lower, upper) bounds (n,) of its input over the box; they are
            widened by :data:`BOUND_TOL` and intersected with interval arithmetic on the exact
            expressions, so they only need to be sound, not exact.
        point: fix the input to this (n_in,) point instead of the box (tests: the encoding's logits
            at a point must be the model's); the ReLU bounds still come from ``pre``.
    """
    from scipy import sparse

    n_in = net.n_in
    lbs, ubs, ints = [np.asarray(lo, float)], [np.asarray(hi, float)], [np.zeros(n_in)]
    n_vars = n_in
    expr: dict[str, tuple[np.ndarray, np.ndarray]] = {net.steps[0].name: (np.eye(n_in), np.zeros(n_in))}
    rows, rhs = [], []
    unstable_total = 0
    for s in net.steps[1:]:
        if s.kind == "identity":
            expr[s.name] = expr[s.inputs[0]]
        elif s.kind == "affine":
            M = np.zeros((s.size, n_vars))
            c = s.bias.copy()
            for A, name in zip(s.mats, s.inputs):
                Mi, ci = expr[name]
                M += A @ _pad(Mi, n_vars)
                c += A @ ci
            expr[s.name] = (M, c)
        else:  # relu
            M, c = expr[s.inputs[0]]
            M = _pad(M, n_vars)
            vl, vu = np.concatenate(lbs), np.concatenate(ubs)
            ia_lo = c + np.clip(M, 0, None) @ vl + np.clip(M, None, 0) @ vu
            ia_hi = c + np.clip(M, 0, None) @ vu + np.clip(M, None, 0) @ vl
            l, u = pre.get(s.name, (ia_lo, ia_hi))
            l, u = np.asarray(l, float).reshape(-1), np.asarray(u, float).reshape(-1)
            l = np.maximum(l - BOUND_TOL * (1 + np.abs(l)), ia_lo - 1e-9 * (1 + np.abs(ia_lo)))
            u = np.minimum(u + BOUND_TOL * (1 + np.abs(u)), ia_hi + 1e-9 * (1 + np.abs(ia_hi)))
            active, unstable = l >= 0, (l < 0) & (u > 0)
            k = int(unstable.sum())
            out_M = np.where(active[:, None], M, 0.0)
            out_c = np.where(active, c, 0.0)
            if k:
                iu = np.flatnonzero(unstable)
                Mu, cu, lu, uu = M[iu], c[iu], l[iu], u[iu]
                y0, a0 = n_vars, n_vars + k
                n_vars += 2 * k
                lbs += [np.zeros(k), np.zeros(k)]
                ubs += [uu, np.ones(k)]
                ints += [np.zeros(k), np.ones(k)]
                Mu = _pad(Mu, n_vars)
                ey, ea = np.zeros((k, n_vars)), np.zeros((k, n_vars))
                ey[np.arange(k), y0 + np.arange(k)] = 1.0
                ea[np.arange(k), a0 + np.arange(k)] = 1.0
                rows += [Mu - ey, ey - Mu - lu[:, None] * ea, ey - uu[:, None] * ea]
                rhs += [-cu, cu - lu, np.zeros(k)]
                out_M = _pad(out_M, n_vars)
                out_M[iu] = ey
                out_c[iu] = 0.0
                unstable_total += k
            expr[s.name] = (out_M, out_c)
    M, c = expr[net.steps[-1].name]
    A = sparse.csr_array(np.vstack([_pad(r, n_vars) for r in rows])) if rows else sparse.csr_array((0, n_vars))
    b = np.concatenate(rhs) if rhs else np.zeros(0)
    if point is not None:  # after the interval bounds, which are the box's
        lbs[0] = ubs[0] = np.asarray(point, float)
    return Problem(A, b, np.concatenate(lbs), np.concatenate(ubs), np.concatenate(ints), n_in,
                   (_pad(M, n_vars), c), unstable_total)


# ------------------------------------------------------------------------------------- solving
@dataclass
class MarginResult:
    """Outcome of one (sample, wrong class) MILP: ``proven`` (dual bound > VERIFY_TOL), ``candidate``
    (a point with a negative margin, still to be checked by the caller), or neither (time limit)."""

    j: int
    proven: bool
    dual_bound: float
    value: float
    candidate: np.ndarray | None
    seconds: float


@contextlib.contextmanager
def _quiet_stdout() -> Iterator[None]:
    """HiGHS's MIP solver prints debugging lines straight to file descriptor 1 (not through Python)
    even with its log off; they go to /dev/null for the duration."""
    try:
        sys.stdout.flush()
        saved = os.dup(1)
    except (OSError, ValueError, AttributeError):
        yield
        return
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 1)
            yield
    finally:
        os.dup2(saved, 1)
        os.close(saved)


def solve_margin(problem: Problem, y: int, j: int, time_limit: float) -> MarginResult:
    """Minimize ``z_y - z_j`` over the problem (HiGHS, single thread)."""
    from scipy import sparse
    from scipy.optimize import Bounds, LinearConstraint, milp

    start = time.perf_counter()
    M, c = problem.logits
    # The margin's constant enters as the cost of one extra variable fixed at 1, so that HiGHS's
    # relative gap is relative to the margin itself, and the objective is scaled so that VERIFY_TOL is
    # 1: the gap test of HIGHS_OPTIONS then stops the solver once the sign of the margin is decided.
    obj = np.append((M[y] - M[j]) * OBJ_SCALE, float(c[y] - c[j]) * OBJ_SCALE)
    A = sparse.hstack([problem.A, sparse.csr_array((problem.A.shape[0], 1))]).tocsr()
    cons = [LinearConstraint(A, -np.inf, problem.b)] if A.shape[0] else []
    options = dict(HIGHS_OPTIONS, time_limit=max(float(time_limit), 1e-3))
    with warnings.catch_warnings(), _quiet_stdout():
        # scipy names only some HiGHS options and forwards the rest verbatim with this warning
        warnings.filterwarnings("ignore", message="Unrecognized options detected")
        res = milp(obj, integrality=np.append(problem.integrality, 0),
                   bounds=Bounds(np.append(problem.lb, 1.0), np.append(problem.ub, 1.0)),
                   constraints=cons, options=options)
    secs = time.perf_counter() - start
    value = float(res.fun) / OBJ_SCALE if res.x is not None and res.fun is not None else float("inf")
    if problem.integrality.any():
        dual = getattr(res, "mip_dual_bound", None)
    else:  # a pure LP (no unstable ReLU): its optimum is the bound
        dual = res.fun if res.status == 0 else None
    dual = float(dual) / OBJ_SCALE if dual is not None and np.isfinite(dual) else -float("inf")
    candidate = None
    if res.x is not None and value < 0:
        candidate = np.clip(np.asarray(res.x[: problem.n_in], float), problem.lb[: problem.n_in],
                            problem.ub[: problem.n_in])
    return MarginResult(j, candidate is None and dual > VERIFY_TOL, dual, value, candidate, secs)


def solve_margins(problem: Problem, y: int, classes: list[int], time_limit: float) -> list[MarginResult]:
    """Solve the margins of ``classes`` in order within ``time_limit`` seconds in all; stop at the
    first class with a candidate counterexample, or when the time is spent."""
    out: list[MarginResult] = []
    deadline = time.perf_counter() + float(time_limit)
    for j in classes:
        left = deadline - time.perf_counter()
        if left <= 0:
            break
        r = solve_margin(problem, y, j, left)
        out.append(r)
        if r.candidate is not None:
            break
    return out


def solve_task(task: tuple) -> list[MarginResult]:
    """Pool entry point: ``task = (problem, y, classes, time_limit)``."""
    return solve_margins(*task)
