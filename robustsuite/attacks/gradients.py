"""The loss-gradient oracle every gradient attack calls, with EOT averaging and memory chunking.

``loss_and_grad`` returns the per-sample loss, its gradient with respect to the *input only*
(``torch.autograd.grad``; nothing is accumulated on the model's parameters) and the logits.

EOT (expectation over transformation / randomness, Athalye et al. 2018): with ``n > 1`` each
sample is replicated ``n`` times inside one batch (``repeat_interleave``), so a stochastic model
draws independent randomness per replica in a single forward pass; loss, gradient and logits are
averaged back to ``(B, ...)``. Replication happens inside the autograd graph (an ``index_select``
of the input leaf), so the backward pass sums the replicas' gradients into the sample's gradient.
``max_batch`` bounds the rows per forward pass: the ``B * n`` rows are processed in chunks and
the gradients accumulated, so memory stays bounded for any ``n``. The model's mode is never
touched: a stochastic model keeps its noise on.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from ..errors import InputError

__all__ = ["loss_and_grad", "loss_and_logits", "check_label_range"]

Model = Callable[[Tensor], Tensor]
LossOfLogits = Callable[[Tensor, Tensor], Tensor]


def check_label_range(logits: Tensor, y: Tensor, name: str = "y") -> None:
    """Raise a clear error when labels do not index the model's classes (one host sync)."""
    if logits.dim() != 2:
        raise InputError(f"model output: expected logits of shape (B, K), got {tuple(logits.shape)}")
    k = logits.shape[1]
    if int(y.max()) >= k:
        raise InputError(f"{name}: labels must lie in [0, {k - 1}] for a model with {k} classes, "
                         f"got max {int(y.max())}")


def loss_and_grad(model: Model, x: Tensor, y: Tensor, loss_fn: LossOfLogits, *, n: int = 1,
                  max_batch: int | None = None, check_labels: bool = False
                  ) -> tuple[Tensor, Tensor, Tensor]:
    """Per-sample loss (B,), its input gradient (B, ...) and the logits (B, K), EOT-averaged.

    Args:
        model: callable returning logits ``(B*, K)``; its mode and parameters are left alone.
        x: inputs ``(B, ...)``; not modified; need not require grad.
        y: labels ``(B,)`` passed to ``loss_fn``.
        loss_fn: ``loss_fn(logits, y) -> (B,)``; the gradient is that of its sum.
        n: EOT draws per sample (>= 1). With ``n = 1`` and no chunking this is one plain
            forward + backward.
        max_batch: most rows per forward pass (None: all ``B * n`` rows at once).
        check_labels: check once that ``y`` indexes the logits (costs one host sync).
    """
    B = x.shape[0]
    total = B * n
    chunk = total if max_batch is None else max(1, int(max_batch))
    with torch.enable_grad():
        leaf = x.detach().requires_grad_(True)
        if n == 1 and chunk >= B:
            logits = model(leaf)
            if check_labels:
                check_label_range(logits, y)
            loss = loss_fn(logits, y)
            (grad,) = torch.autograd.grad(loss.sum(), leaf)
            return loss.detach(), grad, logits.detach()
        grad = torch.zeros_like(x)
        loss_sum = x.new_zeros(B)
        logit_sum: Tensor | None = None
        for start in range(0, total, chunk):
            rows = torch.arange(start, min(total, start + chunk), device=x.device) // n
            logits = model(leaf.index_select(0, rows))
            yr = y.index_select(0, rows)
            if check_labels and start == 0:
                check_label_range(logits, yr)
            loss = loss_fn(logits, yr)
            (g,) = torch.autograd.grad(loss.sum(), leaf)
            grad += g
            loss_sum.index_add_(0, rows, loss.detach())
            if logit_sum is None:
                logit_sum = logits.new_zeros(B, logits.shape[1])
            logit_sum.index_add_(0, rows, logits.detach())
    inv = 1.0 / n
    return loss_sum.mul_(inv), grad.mul_(inv), logit_sum.mul_(inv)


def loss_and_logits(model: Model, x: Tensor, y: Tensor, loss_fn: LossOfLogits, *, n: int = 1,
                    max_batch: int | None = None) -> tuple[Tensor, Tensor]:
    """Per-sample loss (B,) and logits (B, K) without gradients, averaged over ``n`` EOT draws."""
    B = x.shape[0]
    total = B * n
    chunk = total if max_batch is None else max(1, int(max_batch))
    with torch.no_grad():
        if n == 1 and chunk >= B:
            logits = model(x)
            return loss_fn(logits, y), logits
        loss_sum = x.new_zeros(B)
        logit_sum: Tensor | None = None
        for start in range(0, total, chunk):
            rows = torch.arange(start, min(total, start + chunk), device=x.device) // n
            logits = model(x.index_select(0, rows))
            loss_sum.index_add_(0, rows, loss_fn(logits, y.index_select(0, rows)))
            if logit_sum is None:
                logit_sum = logits.new_zeros(B, logits.shape[1])
            logit_sum.index_add_(0, rows, logits)
    inv = 1.0 / n
    return loss_sum.mul_(inv), logit_sum.mul_(inv)
