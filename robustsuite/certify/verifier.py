"""The verification API: sound output bounds and certificates for a classifier.

Example::

    v = Verifier(model, input_shape=(1, 8, 8), method="crown-ibp", device="auto")
    res = v.verify(x, y, LinfBall(0.1))        # or Box(lower, upper) with per-element tensors
    res.certified                              # (B,) bool
    res.margin_lower                           # (B, K-1) lower bounds of z_y - z_j, j != y
    lo, hi = v.bounds(x, LinfBall(0.1))        # logit bounds, (B, K) each
"""
from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass, field
from typing import Callable, Iterator, Sequence

import torch
from torch import Tensor, nn

from ..errors import InputError, InputTypeError, UnsupportedModelError
from ..runtime import resolve_device
from ..threats import Box, ThreatModel, check_image_tensor, check_images, image_range_problem
from .bounds import canonical_method, compute_bounds, spec_matrix, strict_fp32
from .checks import check_boundable, check_deterministic
from .graph_check import SUPPORTED, build_checked
from .graph_check import _version as lirpa_version_text

log = logging.getLogger(__name__)

#: default chunk sizes per device type and method (``max_batch``). CPU: measured by
#: ``benchmarks/bench_verifier.py`` (``results/verifier.json``; 1 thread, the demo's digits CNN
#: and CNN-7+BN on 8x8 inputs): IBP is fastest in one large chunk; CROWN-IBP is flat from 64 to
#: 256 per chunk and best at 128 (CNN-7); full CROWN is fastest in chunks of 4 on both models
#: (digits CNN: 2.0x faster per sample than 64; CNN-7: 2.0x than 16, 1.6x than 8), alpha-CROWN
#: too (1.8x faster than 16, 1.3x than 8), with the same bounds (their cost grows faster than
#: linearly with the chunk: every intermediate layer is bounded for the whole chunk). CUDA: not
#: measured in this release (no GPU was available); the earlier defaults, which keep full CROWN's
#: memory (layer width times output size per sample) in bounds. Other devices use the CUDA row.
DEFAULT_MAX_BATCH = {
    "cpu": {"ibp": 1024, "crown-ibp": 128, "crown": 4, "alpha-crown": 4},
    "cuda": {"ibp": 1024, "crown-ibp": 256, "crown": 64, "alpha-crown": 32},
}


def default_max_batch(device: torch.device, method: str) -> int:
    """The default chunk size for ``method`` (canonical name) on ``device`` (see ``DEFAULT_MAX_BATCH``)."""
    return DEFAULT_MAX_BATCH["cpu" if device.type == "cpu" else "cuda"][method]


#: samples on which every call compares the bounded graph's clean logits with ``model(x)`` (the
#: first call after each build compares a whole chunk)
CHECK_SAMPLES = 4

#: largest number of classes for which the margin specifications of every label are kept in a
#: table (K^3 entries: 4 MB at K = 100); above it each call builds them with :func:`spec_matrix`
SPEC_TABLE_CLASSES = 100

#: dtype conversions that are exact (every value of the source is a value of the target)
_EXACT = {(torch.float16, torch.float32), (torch.bfloat16, torch.float32), (torch.float16, torch.float64),
          (torch.bfloat16, torch.float64), (torch.float32, torch.float64)}


def _check_dtype(given: torch.dtype, model_dtype: torch.dtype, name: str) -> None:
    """Refuse a tensor the model's dtype cannot represent exactly: rounding it would change the set
    being certified (a float64 box rounded to float32 can lose its edges)."""
    if given != model_dtype and (given, model_dtype) not in _EXACT:
        raise InputError(f"{name}: dtype {given} but the model computes in {model_dtype}; rounding would "
                         f"change the set being certified. Pass {name} as {model_dtype} (e.g. x.to("
                         f"{model_dtype})) or convert the model (model.to({given})).")


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """Evaluate ``model`` in eval mode, then give every submodule back the mode it had.

    Only the submodules in training mode are switched (``nn.Module.eval`` sets an attribute on
    every module twice per call, about 1 ms per verify call on a small CNN)."""
    training = [m for m in model.modules() if m.training]
    for m in training:
        m.training = False
    try:
        yield
    finally:
        for m in training:
            m.training = True


#: attribute types that hold no state beyond their identity (the summary keeps every attribute
#: value alive, so an identity stands for the value)
_IMMUTABLE = frozenset({type(None), bool, int, float, complex, str, bytes})


def _walk(model: nn.Module) -> tuple[list, list[Tensor], list]:
    """:func:`model_state`, every buffer of ``model`` in module order (a buffer shared by two
    modules appears twice), and the objects the summary refers to by identity.

    Identities only stand for objects while those are alive (CPython reuses the address of a
    freed object), so whoever keeps a summary to compare with later keeps the third item with it.
    Per module the summary holds: its class and identity; the names and identities of all its
    attributes (C-level passes; a reassigned scalar is a new object); the version counter of every
    tensor attribute and the size of every other sized one (hook dicts, lists); then for its
    parameters, buffers and submodules, each under its own name, their count, names, identities
    and (tensors) version counters. It is one flat list, every variable-length run preceded by its
    length (or fixed by identities compared before it), so two different states cannot flatten to
    the same list; a flat list allocates few objects (nested tuples per attribute cost twice the
    time, partly in the garbage collector: about 57 us against 37 us per call on the digits CNN)."""
    items: list = []
    bufs: list[Tensor] = []
    refs: list = []
    for m in model.modules():
        d = vars(m)
        vals = d.values()
        refs.append(m)
        refs.extend(vals)
        items += (type(m), id(m), len(d))
        items.extend(d)
        items.extend(map(id, vals))
        for v in vals:
            if type(v) in _IMMUTABLE:
                continue
            if isinstance(v, Tensor):
                items.append(v._version)
                continue
            try:
                items.append(len(v))
            except Exception:  # noqa: BLE001 - any object may sit in a module's __dict__
                items.append(None)
        for key in ("_parameters", "_buffers", "_modules"):
            held = d[key]
            items += (key, len(held))
            if held:
                vs = held.values()
                refs.extend(vs)
                items.extend(held)
                items.extend(map(id, vs))
                if key != "_modules":
                    items.extend([t._version for t in vs if t is not None])
                    if key == "_buffers":
                        bufs.extend(t for t in vs if t is not None)
    return items, bufs, refs


def model_state(model: nn.Module) -> list:
    """A cheap summary (tens of microseconds for a small CNN) of everything in ``model`` that a
    traced graph could have frozen: every submodule's identity and class; its parameters, buffers
    and tensor attributes by identity and in-place version counter (``load_state_dict``, optimizer
    steps and ``copy_`` bump it); scalar attributes (``eps``, ``momentum``, a scale, the training
    flag) by the identity of their value object, which a new value changes (the first summary
    keeps its objects alive); other attributes (hooks, replaced methods) by identity and size.
    Two summaries compare exactly only while the objects of the first are alive (see
    :func:`_walk`); reassigning an equal scalar can read as a change (one extra graph check).

    Version counters miss writes through ``.data``, numpy views and BatchNorm's own running
    statistics update in a train-mode forward, so buffers are also compared by value every call
    (see ``Verifier._sync``)."""
    return _walk(model)[0]


def _flat_by_dtype(tensors: Sequence[Tensor]) -> dict[torch.dtype, Tensor]:
    """The tensors flattened and concatenated per dtype (one exact comparison per dtype instead of
    one per tensor; no dtype promotion, so the comparison stays exact)."""
    groups: dict[torch.dtype, list[Tensor]] = {}
    for t in tensors:
        groups.setdefault(t.dtype, []).append(t.detach().reshape(-1))
    return {dt: torch.cat(ts) for dt, ts in groups.items()}


@dataclass
class VerificationResult:
    """Certificates for one batch under one threat set and bound method.

    Attributes:
        certified: (B,) bool, clean prediction correct and every margin lower bound > 0.
        margin_lower: (B, K-1) lower bounds of ``z_y - z_j`` for ``j != y`` over the set.
        clean_correct: (B,) bool, the model's clean prediction equals ``y``.
        method: the bound method used (``milp``: complete verification).
        status: ``milp`` only: (B) strings ``verified`` / ``falsified`` / ``unknown``; None otherwise.
        counterexample: ``milp`` only: (B, C, H, W), a misclassified point of the set for the falsified
            samples (checked in float64), NaN elsewhere; None otherwise.
        seconds: ``milp`` only: (B,) MILP seconds spent per sample; None otherwise.
    """

    certified: Tensor
    margin_lower: Tensor
    clean_correct: Tensor
    method: str
    threat: ThreatModel | None = field(default=None, repr=False)
    status: list[str] | None = None
    counterexample: Tensor | None = field(default=None, repr=False)
    seconds: Tensor | None = field(default=None, repr=False)

    @property
    def certified_accuracy(self) -> float:
        """Fraction of the batch that is certified (host sync; call once, after the work)."""
        return float(self.certified.float().mean()) if self.certified.numel() else 0.0


class Verifier:
    """Sound bounds on a deterministic classifier over L-inf/L2/L1 balls and per-pixel boxes.

    Args:
        model: the classifier (normalization inside), mapping (B, *input_shape) in [0, 1] to
            logits (B, K). Parameters are shared with the verifier, so bounds follow later weight
            updates; the bounded graph holds its own copy of BatchNorm statistics, so every call
            checks the model's buffers (and the graph's clean logits against ``model(x)``) and
            rebuilds the graph when the model changed (``load_state_dict``, further training).
            Bounds use the model's eval-mode function. Only graphs whose every operation is on the
            allowlist of :mod:`robustsuite.certify.graph_check` are accepted.
        input_shape: (C, H, W) of one input.
        method: ``ibp``, ``crown-ibp`` (IBP intermediate bounds, CROWN at the output), ``crown``
            or ``alpha-crown`` (CROWN with optimized ReLU slopes); ``milp`` builds a
            :class:`~robustsuite.certify.complete.CompleteVerifier` (exact verification, keyword
            ``time_limit`` and others there).
        device: ``auto`` | ``cpu`` | ``cuda``; the model is moved there.
        max_batch: largest chunk bounded at once (default per device and method,
            :data:`DEFAULT_MAX_BATCH`, chosen from a measurement; chunking never changes the
            bounds, only the time and memory); a chunk that runs out of memory is halved and
            retried, so large sets never fail for memory.
        alpha_iterations, alpha_lr: alpha-CROWN optimization settings.
        conv_mode: auto_LiRPA's convolution mode, ``patches`` (fast) or ``matrix``.
    """

    def __new__(cls, *args, **kwargs):
        # method="milp" is complete verification (attack -> bound -> MILP): its own class
        method = kwargs.get("method", args[2] if len(args) > 2 else None)
        if cls is Verifier and isinstance(method, str) and method.strip().lower() == "milp":
            from .complete import CompleteVerifier
            return super().__new__(CompleteVerifier)
        return super().__new__(cls)

    def __init__(self, model: nn.Module, input_shape: Sequence[int], method: str = "crown-ibp",
                 device: str | torch.device = "auto", *, max_batch: int | None = None,
                 alpha_iterations: int = 20, alpha_lr: float = 0.5, conv_mode: str = "patches"):
        if not isinstance(model, nn.Module):
            raise InputTypeError(f"model: expected a torch.nn.Module, got {type(model).__name__}")
        shape = tuple(int(s) for s in input_shape)
        if len(shape) != 3 or min(shape) < 1:
            raise InputError(f"input_shape: expected (C, H, W) with positive sizes, got {tuple(input_shape)}")
        if conv_mode not in ("patches", "matrix"):
            raise InputError(f"conv_mode: expected 'patches' or 'matrix', got {conv_mode!r}")
        if int(alpha_iterations) < 1 or not float(alpha_lr) > 0:
            raise InputError("alpha_iterations must be >= 1 and alpha_lr > 0")
        self.method = canonical_method(method)
        self.device = resolve_device(device)
        self.input_shape = shape
        self.model = model.to(self.device)
        self.max_batch = int(max_batch) if max_batch else default_max_batch(self.device, self.method)
        if self.max_batch < 1:
            raise InputError(f"max_batch: must be >= 1, got {max_batch}")
        self._bound_opts = {"conv_mode": conv_mode,
                            "optimize_bound_args": {"iteration": int(alpha_iterations), "lr_alpha": float(alpha_lr)}}
        check_boundable(model, self.method)
        self.refresh()

    # ---------------------------------------------------------------------------------- setup
    def refresh(self) -> None:
        """Rebuild the bounded graph from the model as it is now (BatchNorm statistics, replaced
        parameters). Calls do this by themselves when the model changed (see :meth:`_sync`).

        Order of checks: the input shape (one forward on zeros), the determinism probe, the
        auto_LiRPA trace, then the traced graph against the allowlist of
        :mod:`robustsuite.certify.graph_check`.
        """
        param = next(iter(self.model.parameters()), None)
        self.dtype = param.dtype if param is not None else torch.float32
        zeros = torch.zeros(2, *self.input_shape, device=self.device, dtype=self.dtype)
        with eval_mode(self.model):
            self.num_classes = self._check_input_shape(zeros)
            K = self.num_classes
            # row y of the table is spec_matrix([y]): one gather per call instead of spec_matrix's
            # seven ops and its boolean-mask host sync
            self._spec_table = (spec_matrix(torch.arange(K, device=self.device), K).to(self.dtype)
                                if K <= SPEC_TABLE_CLASSES else None)
            check_deterministic(self.model, torch.rand_like(zeros))
            bm = build_checked(self.model, zeros, self.method, bound_opts=self._bound_opts, device=self.device)
            self._bm = bm
            self._params = list(self.model.parameters())
            _, bufs, _ = _walk(self.model)
            self._buffer_layout = [(b.dtype, b.shape, b.device) for b in bufs]
            self._buffers = {dt: t.clone() for dt, t in _flat_by_dtype(bufs).items()}
            # the next call compares the graph with the model on a whole chunk
            self._checked, self._checked_refs = None, None

    def _check_input_shape(self, zeros: Tensor) -> int:
        """Run the model once on zeros of ``input_shape``; return the number of classes."""
        try:
            with torch.no_grad():
                out = self.model(zeros)
        except (RuntimeError, ValueError, IndexError) as e:
            raise InputError(f"input_shape: the model does not accept inputs of shape (B, "
                             f"{', '.join(map(str, self.input_shape))}) ({e}); pass the (C, H, W) "
                             "of one input the model takes") from e
        if not isinstance(out, Tensor) or out.dim() != 2 or out.shape[1] < 2:
            got = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
            raise UnsupportedModelError(f"model: expected logits of shape (B, K) with K >= 2 classes, got {got}")
        return int(out.shape[1])

    def _stale(self) -> bool:
        """True when the model's parameters were replaced or its buffers changed since the build
        (``load_state_dict`` copies parameters in place, which the bounded graph shares, but the
        graph holds its own copy of the BatchNorm statistics)."""
        params = list(self.model.parameters())
        if len(params) != len(self._params) or any(a is not b for a, b in zip(params, self._params)):
            return True
        return self._buffers_differ(_walk(self.model)[1])

    def _buffers_differ(self, bufs: list[Tensor]) -> bool:
        """Exact comparison of ``bufs`` (from :func:`_walk`) with the build's copies: the layout
        (count, dtypes, shapes, devices), then the values with one ``ne().any()`` per dtype and
        one host sync. A NaN buffer always differs (a rebuild per call, never a stale graph)."""
        if [(b.dtype, b.shape, b.device) for b in bufs] != self._buffer_layout:
            return True
        if not bufs:
            return False
        flat = _flat_by_dtype(bufs)
        diffs = [torch.ne(flat[dt], ref).any() for dt, ref in self._buffers.items()]
        return bool(diffs[0] if len(diffs) == 1 else torch.stack(diffs).any())

    def _sync(self, x: Tensor, chunk_logits: bool = False) -> Tensor:
        """Make sure the bounded graph computes ``model`` (eval mode) at ``x``; rebuild it if not.
        Returns ``model(x[:n])`` in eval mode (n, K), with n = ``max_batch`` (or B) when
        ``chunk_logits``, which :meth:`verify` reuses as the clean logits of those samples.

        Two checks: the model's buffers (by value, exact) and parameter objects against the
        build's, every call, and the bounded graph's clean logits against ``model(x)`` (relative
        tolerance 1e-4): on the whole first chunk of ``x`` at the first call after a (re)build,
        later on the first :data:`CHECK_SAMPLES` samples whenever :func:`model_state` differs
        from the state at the last passing comparison (a weight update, a loaded state dict, a
        changed attribute or submodule). A BoundedModule forward costs about 1 ms plus its batch
        share, the largest fixed cost of a call, so it is skipped while nothing changed. While
        the state is unchanged the parameters are the build's objects (the state holds their
        identities, and the build's list keeps them alive, so no other object can take their
        ids): only the buffer values are compared then, from the same pass over the modules. A
        mismatch that survives a rebuild means auto_LiRPA computes a different function, so
        nothing is certified. Changes no module attribute shows (a patched class, a global the
        forward reads) need :meth:`refresh`.
        """
        state, bufs, refs = _walk(self.model)
        same = state == self._checked
        if self._buffers_differ(bufs) if same else self._stale():
            log.info("the model changed since the bounded graph was built; rebuilding it")
            self.refresh()
            state, _, refs = _walk(self.model)
            same = False
        for attempt in range(2):
            k = self.max_batch if self._checked is None else CHECK_SAMPLES
            if same:
                k = 0  # nothing the graph could depend on changed since the last passing comparison
            xs = x[: max(self.max_batch if chunk_logits else 0, k)]
            if xs.shape[0] == 0:
                return x.new_zeros(0, self.num_classes)
            with eval_mode(self.model), torch.no_grad(), strict_fp32():
                want = self.model(xs)
                if k == 0:
                    return want
                got = self._bm(xs[:k])
            # One host sync for both numbers.
            diff, scale = torch.stack([(got - want[:k]).abs().max(), want[:k].abs().max()]).tolist()
            if diff <= 1e-4 * max(1.0, scale):
                self._checked, self._checked_refs = state, refs  # the refs keep the ids meaningful
                return want
            if attempt == 0:
                log.warning("the bounded graph's logits differ from model(x) by %.3g; rebuilding it", diff)
                self.refresh()
                state, _, refs = _walk(self.model)
                same = False
        raise UnsupportedModelError(
            f"model: auto_LiRPA's traced graph computes different logits than model(x) (max difference "
            f"{diff:.3g}), so its bounds would not be about this model. The forward pass must be a "
            f"fixed function of x made of supported operations. Supported: {SUPPORTED}.")

    # ---------------------------------------------------------------------------------- checks
    def _check_x(self, x: Tensor) -> Tensor:
        check_images(x, "x")
        self._check_x_layout(x)
        return x.to(self.device, self.dtype)

    def _check_x_layout(self, x: Tensor) -> None:
        """Shape and dtype of an image batch for this verifier (the values are checked by the caller)."""
        if tuple(x.shape[1:]) != self.input_shape:
            raise InputError(f"x: expected shape (B, {', '.join(map(str, self.input_shape))}) for this "
                             f"verifier, got {tuple(x.shape)}")
        _check_dtype(x.dtype, self.dtype, "x")

    def _check_y_tensor(self, y: Tensor, batch: int) -> None:
        if not isinstance(y, Tensor):
            raise InputTypeError(f"y: expected a torch.Tensor of labels, got {type(y).__name__}")
        if y.dim() != 1 or y.shape[0] != batch:
            raise InputError(f"y: expected shape ({batch},) matching x, got {tuple(y.shape)}")
        if y.is_floating_point() or y.dtype == torch.bool:
            raise InputError(f"y: expected integer class labels, got dtype {y.dtype}")

    @property
    def _label_problem(self) -> str:
        return f"y: labels must lie in [0, {self.num_classes - 1}]"

    def _check_xy(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        """:meth:`_check_x` and the label checks with one reduction and one host sync for both
        value checks (x finite and in [0, 1], labels in [0, K-1]); the structure (types, shapes,
        dtypes) is checked first, then the values, x before y. Labels are compared in float64,
        which keeps their order against 0 and K - 1 (a label past 2^53 rounds to a value still
        >= K)."""
        check_image_tensor(x, "x")
        self._check_x_layout(x)
        self._check_y_tensor(y, x.shape[0])
        if x.device == y.device:
            xlo, xhi, ylo, yhi = torch.cat([torch.stack(torch.aminmax(x.detach())).double(),
                                            torch.stack(torch.aminmax(y)).double()]).tolist()
        else:  # a sync per tensor (they live on different devices)
            xlo, xhi = torch.stack(torch.aminmax(x.detach())).tolist()
            ylo, yhi = torch.stack(torch.aminmax(y)).tolist()
        problem = image_range_problem(xlo, xhi, "x")
        if problem:
            raise InputError(problem)
        if ylo < 0 or yhi > self.num_classes - 1:
            raise InputError(self._label_problem)
        return x.to(self.device, self.dtype), y.to(self.device, torch.long)

    def _check_threat(self, threat: ThreatModel, x: Tensor) -> ThreatModel:
        if not isinstance(threat, ThreatModel):
            raise InputTypeError(f"threat: expected LinfBall, L2Ball, L1Ball or Box, got {type(threat).__name__}")
        if type(threat).check is not ThreatModel.check:
            threat.check(x)  # the base check is check_images, which every caller has just run on x
        if isinstance(threat, Box):
            _check_dtype(threat.lower.dtype, self.dtype, "Box.lower")
            _check_dtype(threat.upper.dtype, self.dtype, "Box.upper")
            threat = threat.to(self.device, self.dtype)
        elif hasattr(threat, "to") and callable(getattr(threat, "to")):
            threat = threat.to(self.device)
        return threat

    # ---------------------------------------------------------------------------------- bounds
    def _chunked(self, n: int, fn: Callable[[slice], tuple]) -> tuple:
        """Run ``fn`` over chunks of the batch; halve the chunk on out-of-memory and retry."""
        outs, start = [], 0
        while start < n:
            size = min(self.max_batch, n - start)
            try:
                with strict_fp32():
                    outs.append(fn(slice(start, start + size)))
                start += size
            except (torch.cuda.OutOfMemoryError, RuntimeError) as e:
                if "out of memory" not in str(e).lower() and "can't allocate" not in str(e).lower():
                    self.refresh()  # a failure inside auto_LiRPA can leave stale state behind
                    raise
                if size == 1:
                    raise
                self.max_batch = max(1, size // 2)
                log.warning("bounds ran out of memory at chunk %d; retrying with %d", size, self.max_batch)
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
                self.refresh()
        if len(outs) == 1:
            return outs[0]  # one chunk: nothing to concatenate (torch.cat would copy)
        return tuple(torch.cat([o[i] for o in outs]) for i in range(len(outs[0])))

    def bounds(self, x: Tensor, threat: ThreatModel) -> tuple[Tensor, Tensor]:
        """Lower and upper bounds (B, K) of every logit over the threat set around ``x``."""
        x = self._check_x(x)
        threat = self._check_threat(threat, x)
        self._sync(x)

        def one(s: slice):
            t = threat[s] if hasattr(threat, "__getitem__") else threat
            return self._compute(x[s], t)
        return self._chunked(x.shape[0], one)

    def _compute(self, x: Tensor, threat: ThreatModel, **kw) -> tuple:
        """:func:`compute_bounds` on the bounded graph. auto_LiRPA's alpha-CROWN fails an internal
        assertion on some models (0.3: ``alpha_lookup_idx``; 0.7.1: LayerNorm); plain CROWN bounds are valid there (alpha
        only tightens them), so the chunk is bounded with CROWN on a rebuilt graph, with a warning."""
        try:
            return compute_bounds(self._bm, x, threat, self.method, **kw)
        except AssertionError:
            if self.method != "alpha-crown":
                self.refresh()
                raise
            log.warning("alpha-CROWN failed inside %s on this chunk; using CROWN bounds for it", lirpa_version_text())
            self.refresh()
            return compute_bounds(self._bm, x, threat, "crown", **kw)

    def _spec(self, y: Tensor) -> Tensor:
        """The margin specification (B, K-1, K) of labels ``y`` (B,), as :func:`spec_matrix` in the
        model's dtype."""
        if self._spec_table is not None:
            return self._spec_table[y]
        return spec_matrix(y, self.num_classes).to(self.dtype)

    def margin_bounds(self, x: Tensor, y: Tensor, threat: ThreatModel) -> Tensor:
        """Lower bounds (B, K-1) of the margins ``z_y - z_j``, ``j != y``, over the threat set."""
        return self._margins(x, y, threat)[0]

    def _margins(self, x: Tensor, y: Tensor, threat: ThreatModel, chunk_logits: bool = False
                 ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Checked inputs, then (margin lower bounds (B, K-1), clean logits of the first chunk, x, y)."""
        x, y = self._check_xy(x, y)
        threat = self._check_threat(threat, x)
        clean = self._sync(x, chunk_logits)

        def one(s: slice):
            t = threat[s] if hasattr(threat, "__getitem__") else threat
            C = self._spec(y[s])
            lb, _ = self._compute(x[s], t, C=C, bound_upper=False)
            return (lb,)
        return self._chunked(x.shape[0], one)[0], clean, x, y

    def verify(self, x: Tensor, y: Tensor, threat: ThreatModel) -> VerificationResult:
        """Certify each sample: correct clean prediction and all margin lower bounds > 0."""
        margin_lower, clean, x, y = self._margins(x, y, threat, chunk_logits=True)
        preds = [clean.argmax(1)]  # the first chunk's logits come from the graph check
        if clean.shape[0] < x.shape[0]:
            with eval_mode(self.model), torch.no_grad():
                preds += [self.model(x[i:i + self.max_batch]).argmax(1)
                          for i in range(clean.shape[0], x.shape[0], self.max_batch)]
        pred = preds[0] if len(preds) == 1 else torch.cat(preds)
        correct = pred == y
        certified = correct & (margin_lower.detach() > 0).all(1)
        return VerificationResult(certified=certified, margin_lower=margin_lower, clean_correct=correct,
                                  method=self.method, threat=threat)
