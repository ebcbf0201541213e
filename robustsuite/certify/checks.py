"""Checks that a model can be bounded soundly by auto_LiRPA 0.3, with errors that say why not, and
the per-sample soundness rules every certification table checks."""
from __future__ import annotations

import logging

import torch
from torch import Tensor
from torch import nn

from ..errors import UnsupportedModelError

from .graph_check import SUPPORTED  # noqa: F401  (re-exported: the one list of supported operations)

log = logging.getLogger(__name__)


def is_stochastic(model: nn.Module) -> bool:
    """True when any submodule declares itself random (``is_stochastic = True``, as every noise
    layer of robustsuite.stochastic does)."""
    return any(bool(getattr(m, "is_stochastic", False)) for m in model.modules())


def check_boundable(model: nn.Module, method: str) -> None:
    """Module-level refusals before tracing: stochastic layers and Dropout in training mode.

    ``method`` is kept for callers; the per-operation checks of every method live in
    :func:`robustsuite.certify.graph_check.check_graph`.
    """
    if is_stochastic(model):
        names = [n or type(model).__name__ for n, m in model.named_modules() if getattr(m, "is_stochastic", False)]
        raise UnsupportedModelError(
            f"model: stochastic layers ({', '.join(names[:4])}) cannot be bounded; certified bounds "
            "hold for deterministic models only. Evaluate stochastic models with attacks (EOT) or "
            "randomized smoothing instead.")
    # Layer types and their attributes are checked on the traced graph (graph_check.check_graph),
    # which also sees functional calls; here only what the trace cannot show.
    for name, m in model.named_modules():
        where = name or type(m).__name__
        if isinstance(m, nn.modules.dropout._DropoutNd) and m.training:
            raise UnsupportedModelError(
                f"model layer {where!r}: Dropout in training mode is random; call model.eval() first.")


def check_deterministic(model: nn.Module, x: torch.Tensor) -> None:
    """Behaviour probe: two forward passes on the same input must agree (no hidden noise)."""
    with torch.no_grad():
        a, b = model(x), model(x)
    if not torch.equal(a, b):
        raise UnsupportedModelError(
            "model: two forward passes on the same input differ, so the model is random and cannot "
            "be bounded. Turn its noise off explicitly, or evaluate it with attacks (EOT) or "
            "randomized smoothing.")


def soundness_violations(clean: Tensor, certified: Tensor, robust: Tensor | None = None, *,
                         attacked: Tensor | None = None, what: str = "") -> dict[str, int]:
    """Count (and log as errors) the samples whose certificates cannot be true.

    Args:
        clean: (B,) bool, the clean prediction is correct.
        certified: (B,) bool, certified under some set around the sample.
        robust: (B,) bool, an attack in the attacked set failed (None: no attack ran).
        attacked: (B,) bool, the certificates under the attacked set (default ``certified``).
        what: where the certificates come from, for the log (e.g. ``"ibp at eps 0.1"``).

    Returns:
        ``violations_clean``: certified yet misclassified at the sample itself (always checked);
        ``violations_pgd`` (when ``robust`` is given): certified under the attacked set yet broken
        there; ``violations``: samples breaking either rule.
    """
    wrong = certified & ~clean
    out = {"violations_clean": int(wrong.sum())}
    if out["violations_clean"]:
        log.error("SOUNDNESS VIOLATION: %d samples certified by %s are misclassified without perturbation",
                  out["violations_clean"], what)
    bad = wrong
    if robust is not None:
        broken = (certified if attacked is None else attacked) & ~robust
        bad = bad | broken
        out["violations_pgd"] = int(broken.sum())
        if out["violations_pgd"]:
            log.error("SOUNDNESS VIOLATION: %d samples certified by %s are broken by PGD in the same set",
                      out["violations_pgd"], what)
    out["violations"] = int(bad.sum())
    return out
