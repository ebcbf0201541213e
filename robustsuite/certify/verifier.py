"""The verification API: sound output bounds and certificates for a classifier.

Example::

    v = Verifier(model, input_shape=(1, 8, 8), method="crown-ibp", device="auto")
    res = v.verify(x, y, LinfBall(0.1))        # or Box(lower, upper) with per-element tensors
    res.certified                              # (B,) bool
    res.margin_lower                           # (B, K-1) lower bounds of z_y - z_j, j != y
    lo, hi = v.bounds(x, LinfBall(0.1))        # logit bounds, (B, K) each
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch
from torch import Tensor, nn

from ..errors import InputError, InputTypeError, UnsupportedModelError
from ..runtime import resolve_device
from ..threats import ThreatModel, check_images
from .bounds import canonical_method, compute_bounds, spec_matrix, strict_fp32
from .checks import check_boundable, check_deterministic

log = logging.getLogger(__name__)

#: default chunk sizes: full CROWN's memory grows with layer width times output size.
DEFAULT_MAX_BATCH = {"ibp": 1024, "crown-ibp": 256, "crown": 64, "alpha-crown": 32}


@dataclass
class VerificationResult:
    """Certificates for one batch under one threat set and bound method.

    Attributes:
        certified: (B,) bool, clean prediction correct and every margin lower bound > 0.
        margin_lower: (B, K-1) lower bounds of ``z_y - z_j`` for ``j != y`` over the set.
        clean_correct: (B,) bool, the model's clean prediction equals ``y``.
        method: the bound method used.
    """

    certified: Tensor
    margin_lower: Tensor
    clean_correct: Tensor
    method: str
    threat: ThreatModel | None = field(default=None, repr=False)

    @property
    def certified_accuracy(self) -> float:
        """Fraction of the batch that is certified (host sync; call once, after the work)."""
        return float(self.certified.float().mean()) if self.certified.numel() else 0.0


class Verifier:
    """Sound bounds on a deterministic classifier over L-inf/L2/L1 balls and per-pixel boxes.

    Args:
        model: the classifier (normalization inside), mapping (B, *input_shape) in [0, 1] to
            logits (B, K). Parameters are shared with the verifier, so bounds follow later weight
            updates; BatchNorm statistics are copied when the verifier is built (call
            :meth:`refresh` after further training). Bounds use the model's eval-mode function.
        input_shape: (C, H, W) of one input.
        method: ``ibp``, ``crown-ibp`` (IBP intermediate bounds, CROWN at the output), ``crown``
            or ``alpha-crown`` (CROWN with optimized ReLU slopes).
        device: ``auto`` | ``cpu`` | ``cuda``; the model is moved there.
        max_batch: largest chunk bounded at once (default per method); a chunk that runs out of
            memory is halved and retried, so large sets never fail for memory.
        alpha_iterations, alpha_lr: alpha-CROWN optimization settings.
        conv_mode: auto_LiRPA's convolution mode, ``patches`` (fast) or ``matrix``.
    """

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
        self.max_batch = int(max_batch) if max_batch else DEFAULT_MAX_BATCH[self.method]
        if self.max_batch < 1:
            raise InputError(f"max_batch: must be >= 1, got {max_batch}")
        self._bound_opts = {"conv_mode": conv_mode,
                            "optimize_bound_args": {"iteration": int(alpha_iterations), "lr_alpha": float(alpha_lr)}}
        check_boundable(model, self.method)
        self.refresh()

    # ---------------------------------------------------------------------------------- setup
    def refresh(self) -> None:
        """Rebuild the bounded graph (after training changed BatchNorm statistics, or after an error)."""
        from .lirpa import BoundedModule

        param = next(iter(self.model.parameters()), None)
        self.dtype = param.dtype if param is not None else torch.float32
        probe = torch.rand(2, *self.input_shape, device=self.device, dtype=self.dtype)
        was_training = self.model.training
        self.model.eval()
        try:
            check_deterministic(self.model, probe)
            try:
                self._bm = BoundedModule(self.model, torch.zeros_like(probe), bound_opts=self._bound_opts,
                                         device=self.device)
            except NotImplementedError as e:
                raise UnsupportedModelError(
                    f"model: auto_LiRPA cannot parse it ({e}). Supported layers: see "
                    "robustsuite.certify.checks.SUPPORTED.") from e
            except RuntimeError as e:
                if "shape" in str(e).lower() or "size" in str(e).lower():
                    raise InputError(f"input_shape: the model does not accept inputs of shape "
                                     f"{self.input_shape}: {e}") from e
                raise
            self._bm.eval()
            with torch.no_grad():
                self.num_classes = int(self.model(probe).shape[1])
        finally:
            self.model.train(was_training)

    # ---------------------------------------------------------------------------------- checks
    def _check_x(self, x: Tensor) -> Tensor:
        check_images(x, "x")
        if tuple(x.shape[1:]) != self.input_shape:
            raise InputError(f"x: expected shape (B, {', '.join(map(str, self.input_shape))}) for this "
                             f"verifier, got {tuple(x.shape)}")
        return x.to(self.device, self.dtype)

    def _check_y(self, y: Tensor, batch: int) -> Tensor:
        if not isinstance(y, Tensor):
            raise InputTypeError(f"y: expected a torch.Tensor of labels, got {type(y).__name__}")
        if y.dim() != 1 or y.shape[0] != batch:
            raise InputError(f"y: expected shape ({batch},) matching x, got {tuple(y.shape)}")
        if y.is_floating_point() or y.dtype == torch.bool:
            raise InputError(f"y: expected integer class labels, got dtype {y.dtype}")
        if bool(((y < 0) | (y >= self.num_classes)).any()):
            raise InputError(f"y: labels must lie in [0, {self.num_classes - 1}]")
        return y.to(self.device)

    def _check_threat(self, threat: ThreatModel, x: Tensor) -> ThreatModel:
        if not isinstance(threat, ThreatModel):
            raise InputTypeError(f"threat: expected LinfBall, L2Ball, L1Ball or Box, got {type(threat).__name__}")
        threat.check(x)
        if hasattr(threat, "to") and callable(getattr(threat, "to")):
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
        return tuple(torch.cat([o[i] for o in outs]) for i in range(len(outs[0])))

    def bounds(self, x: Tensor, threat: ThreatModel) -> tuple[Tensor, Tensor]:
        """Lower and upper bounds (B, K) of every logit over the threat set around ``x``."""
        x = self._check_x(x)
        threat = self._check_threat(threat, x)

        def one(s: slice):
            t = threat[s] if hasattr(threat, "__getitem__") else threat
            return compute_bounds(self._bm, x[s], t, self.method)
        return self._chunked(x.shape[0], one)

    def margin_bounds(self, x: Tensor, y: Tensor, threat: ThreatModel) -> Tensor:
        """Lower bounds (B, K-1) of the margins ``z_y - z_j``, ``j != y``, over the threat set."""
        x = self._check_x(x)
        y = self._check_y(y, x.shape[0])
        threat = self._check_threat(threat, x)

        def one(s: slice):
            t = threat[s] if hasattr(threat, "__getitem__") else threat
            C = spec_matrix(y[s], self.num_classes).to(x.dtype)
            lb, _ = compute_bounds(self._bm, x[s], t, self.method, C=C, bound_upper=False)
            return (lb,)
        return self._chunked(x.shape[0], one)[0]

    def verify(self, x: Tensor, y: Tensor, threat: ThreatModel) -> VerificationResult:
        """Certify each sample: correct clean prediction and all margin lower bounds > 0."""
        margin_lower = self.margin_bounds(x, y, threat)
        x, y = x.to(self.device), y.to(self.device)
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.no_grad():
                pred = torch.cat([self.model(x[i:i + self.max_batch]).argmax(1)
                                  for i in range(0, x.shape[0], self.max_batch)])
        finally:
            self.model.train(was_training)
        correct = pred == y
        certified = correct & (margin_lower.detach() > 0).all(1)
        return VerificationResult(certified=certified, margin_lower=margin_lower, clean_correct=correct,
                                  method=self.method, threat=threat)
