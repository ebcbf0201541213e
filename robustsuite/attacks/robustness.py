"""Robust accuracy: the one routine that batches the data, runs an attack and records every sample.

:func:`per_sample_robust` is what every part that measures an attack's effect calls (the CLI's
``robustsuite attack`` through :func:`robust_accuracy`, ``verify``'s PGD column, the learned-budget
PGD check, the stochastic trainers' validation and multi-norm accuracy, the evaluator's attack
items), so batching, device moves, per-sample threat slicing and the robust rule live in one place::

    rec = per_sample_robust(model, x, y, PGD(model, LinfBall(8 / 255)), batch_size=256)
    rec.robust          # (N,) bool on the CPU: clean-correct and the attack failed
    rec.summary()       # {"clean_accuracy", "robust_accuracy", "asr", "n"}

Where the attack depends on the batch (a learned budget's per-sample ``Box``, a transfer attack
built per batch, a seed per batch) pass a factory ``(xb, yb, rows) -> Attack`` instead: it is called
once per batch, in order, with the batch on the device and ``rows`` the batch's slice of ``x``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Literal, Union

import torch
from torch import Tensor

from ..errors import InputError, InputTypeError
from ..threats import Box, check_images
from .base import Attack, AttackResult

__all__ = ["PerSampleRecord", "AttackFactory", "per_sample_robust", "robust_accuracy"]

#: builds the attack of one batch: ``(xb (B, C, H, W), yb (B,), rows: slice of x) -> Attack``
AttackFactory = Callable[[Tensor, Tensor, slice], Attack]


@dataclass(frozen=True)
class PerSampleRecord:
    """What :func:`per_sample_robust` measured, one entry per sample, every tensor on the CPU.

    Attributes:
        label: (N,) long, the true labels.
        success: (N,) bool, the attack's returned point is misclassified (untargeted success).
        adv_pred: (N,) long, the top-1 label at the returned point (the forward pass that
            decided ``success``).
        distance: (N,) float64, the perturbation's size in the threat set's norm.
        queries: (N,) long, model queries the attack spent per sample.
        clean_pred: (N,) long, the top-1 label on the clean input; None when the routine ran with
            ``clean="none"`` (no clean forward pass).
    """

    label: Tensor
    success: Tensor
    adv_pred: Tensor
    distance: Tensor
    queries: Tensor
    clean_pred: Tensor | None

    @property
    def n(self) -> int:
        return int(self.label.shape[0])

    @property
    def clean_correct(self) -> Tensor:
        """(N,) bool: classified correctly without perturbation."""
        if self.clean_pred is None:
            raise InputError("clean_correct: the routine ran with clean='none' (no clean forward pass); "
                             "run it with clean='before' or 'after'")
        return self.clean_pred == self.label

    @property
    def robust(self) -> Tensor:
        """(N,) bool: clean-correct *and* the attack failed; a misclassified sample is never robust."""
        return self.clean_correct & ~self.success

    def summary(self) -> dict[str, Any]:
        """``{"clean_accuracy", "robust_accuracy", "asr", "n"}``: ``asr`` (attack success rate) is
        over the clean-correct samples (0.0 when there are none). An empty record raises (the
        accuracy of no samples is undefined)."""
        if self.n == 0:
            raise InputError("x: no samples, so no accuracy to report; pass at least one sample")
        clean, robust = self.clean_correct, self.robust
        n_clean = int(clean.sum())
        return {
            "clean_accuracy": float(clean.float().mean()),
            "robust_accuracy": float(robust.float().mean()),
            "asr": float((clean & self.success).sum()) / n_clean if n_clean else 0.0,
            "n": self.n,
        }

    def records(self) -> list[dict[str, Any]]:
        """One dict per sample: index, label, clean_pred, clean_correct, success, distance, queries
        (plain Python values; one transfer per column, no per-element tensor indexing)."""
        clean = self.clean_correct  # raises without a clean pass
        cols = zip(self.label.tolist(), self.clean_pred.tolist(), clean.tolist(), self.success.tolist(),
                   self.distance.tolist(), self.queries.tolist())
        return [{"index": i, "label": int(label), "clean_pred": int(pred), "clean_correct": bool(clean),
                 "success": bool(succ), "distance": float(d), "queries": int(q)}
                for i, (label, pred, clean, succ, d, q) in enumerate(cols)]


def _model_device(model: Any, fallback: torch.device) -> torch.device:
    if isinstance(model, torch.nn.Module):
        for p in model.parameters():
            return p.device
        for b in model.buffers():
            return b.device
    return fallback


def _checked(atk: Any) -> Attack:
    if not isinstance(atk, Attack):
        raise InputTypeError(f"attack: expected a robustsuite attack (or a factory returning one), "
                             f"got {type(atk).__name__}")
    if atk.labels_are_targets:
        raise InputError("attack: robust accuracy needs the true labels, so an untargeted attack "
                         "(targeted=False) or one that picks its own targets (APGD with loss='dlr')")
    return atk


def per_sample_robust(model: Callable[[Tensor], Tensor], x: Tensor, y: Tensor,
                      attack: Union[Attack, AttackFactory], *, batch_size: int = 256,
                      device: str | torch.device | None = None,
                      clean: Literal["before", "after", "none"] = "before",
                      on_batch: Callable[[AttackResult, slice], None] | None = None) -> PerSampleRecord:
    """Run an untargeted attack on ``(x, y)`` in batches and record every sample.

    Args:
        model: the classifier (logits ``(B, K)``); its mode is not changed.
        x: (N, C, H, W) images in [0, 1] on any device; y: (N,) true labels. N = 0 gives an empty
            record (no model call).
        attack: an :class:`Attack` run on every batch (a per-sample ``Box`` threat with a batch
            axis of N is sliced with the data), or a factory ``(xb, yb, rows) -> Attack`` called
            once per batch, in order, after ``xb``/``yb`` moved to the device.
        batch_size: samples per batch (>= 1); results do not depend on it for a deterministic
            model and attack.
        device: where batches run (default: the model's parameters' device, else ``x``'s).
        clean: when the clean forward pass runs per batch: ``"before"`` the attack, ``"after"`` it,
            or ``"none"`` (then ``clean_pred`` is None and only ``success`` is known). For a
            stochastic model the order decides which noise draws each pass sees.
        on_batch: called with each batch's :class:`AttackResult` and its slice of ``x``, in order
            (e.g. to collect an attack's per-sample ``extras``, as the evaluator does for AutoAttack's
            ``broken_by``).

    Returns:
        A :class:`PerSampleRecord` with (N,) CPU tensors.
    """
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise InputError(f"batch_size: must be an integer >= 1, got {batch_size!r}")
    if clean not in ("before", "after", "none"):
        raise InputError(f"clean: expected 'before', 'after' or 'none', got {clean!r}")
    if not isinstance(x, Tensor) or x.dim() != 4:
        raise InputError(f"x: expected a (N, C, H, W) image tensor, got "
                         f"{tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__}")
    n = x.shape[0]
    if n:
        check_images(x, "x", ndim=4)
    if not isinstance(y, Tensor) or y.dim() != 1 or y.shape[0] != n:
        raise InputError(f"y: expected a (N,) label tensor matching x's {n} samples, "
                         f"got {tuple(y.shape) if isinstance(y, Tensor) else type(y).__name__}")
    if isinstance(attack, Attack):
        _checked(attack)
    elif not callable(attack):
        raise InputTypeError(f"attack: expected a robustsuite attack or a factory (xb, yb, rows) -> Attack, "
                             f"got {type(attack).__name__}")
    dev = torch.device(device) if device is not None else _model_device(model, x.device)
    factory: AttackFactory
    if isinstance(attack, Attack):
        fixed = attack
        per_sample_box = isinstance(fixed.threat, Box) and fixed.threat.lower.dim() == 4 \
            and fixed.threat.lower.shape[0] == n and n > 1
        factory = (lambda xb, yb, rows: fixed.with_threat(fixed.threat[rows].to(dev))) if per_sample_box \
            else (lambda xb, yb, rows: fixed)
    else:
        factory = lambda xb, yb, rows: _checked(attack(xb, yb, rows))  # noqa: E731

    def clean_pred(xb: Tensor) -> Tensor:
        with torch.no_grad():
            return model(xb).argmax(1)

    preds: list[Tensor] = []
    success: list[Tensor] = []
    adv: list[Tensor] = []
    dist: list[Tensor] = []
    queries: list[Tensor] = []
    for start in range(0, n, batch_size):
        rows = slice(start, min(n, start + batch_size))
        xb, yb = x[rows].to(dev), y[rows].to(dev)
        atk = factory(xb, yb, rows)
        pred = clean_pred(xb) if clean == "before" else None
        res = atk.run(xb, yb)
        if on_batch is not None:
            on_batch(res, rows)
        if clean == "after":
            pred = clean_pred(xb)
        if pred is not None:  # moved after the attack: no host sync before it starts
            preds.append(pred.cpu())
        success.append(res.success.cpu())
        adv.append(res.pred.cpu())
        dist.append(res.distance.detach().double().cpu())
        queries.append(res.queries.cpu())

    def cat(parts: list[Tensor], dtype: torch.dtype) -> Tensor:
        return torch.cat(parts) if parts else torch.zeros(0, dtype=dtype)

    return PerSampleRecord(label=y.detach().cpu().long(), success=cat(success, torch.bool),
                           adv_pred=cat(adv, torch.long), distance=cat(dist, torch.float64),
                           queries=cat(queries, torch.long),
                           clean_pred=None if clean == "none" else cat(preds, torch.long))


def robust_accuracy(model: Callable[[Tensor], Tensor], x: Tensor, y: Tensor, attack: Attack, *,
                    batch_size: int = 256, device: str | torch.device | None = None,
                    return_records: bool = False) -> dict[str, Any]:
    """Clean and robust accuracy of ``model`` on ``(x, y)`` under an untargeted ``attack``: the
    summary of :func:`per_sample_robust` (clean pass before the attack).

    A sample counts as robust when the model classifies it correctly *and* the attack fails.
    Returns ``{"clean_accuracy", "robust_accuracy", "asr", "n"}`` where ``asr`` (attack success
    rate) is over the clean-correct samples (0.0 when there are none). With ``return_records``
    also ``"records"``: per-sample dicts (index, label, clean_pred, clean_correct, success,
    distance, queries).
    """
    if not isinstance(attack, Attack):
        raise InputTypeError(f"attack: expected a robustsuite attack, got {type(attack).__name__}")
    rec = per_sample_robust(model, x, y, attack, batch_size=batch_size, device=device)
    out = rec.summary()
    if return_records:
        out["records"] = rec.records()
    return out
