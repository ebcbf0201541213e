"""Bound computation on a ``BoundedModule``: specification matrices, perturbations, methods.

Pure functions shared by the verifier and the certified trainers. Everything here works on whole
batches; the threat set is always intersected with [0, 1] (for L2/L1 balls auto_LiRPA bounds the
unclipped ball, a superset, which is sound and only slightly looser).
"""
from __future__ import annotations

import contextlib
from typing import Iterator

import torch
from torch import Tensor

from ..errors import InputError, unknown
from ..threats import Box, L1Ball, L2Ball, LinfBall, ThreatModel

#: our method names -> (auto_LiRPA method, needs the optimized alpha pass)
METHODS: dict[str, str] = {
    "ibp": "IBP",
    "crown-ibp": "CROWN-IBP",
    "crown": "CROWN",
    "alpha-crown": "CROWN-Optimized",
}
_ALIASES = {"crownibp": "crown-ibp", "crown_ibp": "crown-ibp", "alpha_crown": "alpha-crown",
            "alphacrown": "alpha-crown", "crown-optimized": "alpha-crown"}


def canonical_method(method: str) -> str:
    """Normalize a bound-method name (``ibp``, ``crown-ibp``, ``crown``, ``alpha-crown``)."""
    if not isinstance(method, str):
        raise unknown("method", method, METHODS)
    key = method.strip().lower()
    key = _ALIASES.get(key, key)
    if key not in METHODS:
        raise unknown("method", method, METHODS)
    return key


def spec_matrix(y: Tensor, num_classes: int) -> Tensor:
    """Margin specification C (B, K-1, K) with rows ``e_y - e_j`` for every ``j != y``.

    ``C @ logits`` gives the margins ``z_y - z_j``; bounding ``C f`` directly is tighter than
    combining logit bounds, and is what certification needs.
    """
    B = y.shape[0]
    eye = torch.eye(num_classes, device=y.device)
    C = eye[y].unsqueeze(1) - eye.unsqueeze(0)  # (B, K, K), row y is zero
    keep = torch.arange(num_classes, device=y.device).unsqueeze(0) != y.unsqueeze(1)
    return C[keep].view(B, num_classes - 1, num_classes)


def margins(logits: Tensor, y: Tensor) -> Tensor:
    """Margins ``z_y - z_j`` for ``j != y``, shape (B, K-1), in the order of :func:`spec_matrix`."""
    C = spec_matrix(y, logits.shape[1]).to(logits.dtype)
    return torch.einsum("bmk,bk->bm", C, logits)


def perturbation(x: Tensor, threat: ThreatModel):
    """The auto_LiRPA perturbation of ``threat`` around ``x`` and the center to bound at.

    L-inf balls and boxes become element-wise intervals clipped to [0, 1] (gradients flow to a
    ``Box``'s tensors); L2/L1 balls become auto_LiRPA's Lp balls (without the [0, 1] clip).
    """
    from .lirpa import PerturbationLpNorm

    if isinstance(threat, (LinfBall, Box)):
        lo, hi = threat.bounds(x)
        center = torch.min(torch.max(x, lo.detach()), hi.detach())
        return PerturbationLpNorm(norm=float("inf"), eps=None, x_L=lo, x_U=hi), center
    if isinstance(threat, L2Ball):
        return PerturbationLpNorm(norm=2, eps=threat.eps), x
    if isinstance(threat, L1Ball):
        return PerturbationLpNorm(norm=1, eps=threat.eps), x
    raise InputError(f"threat: {type(threat).__name__} cannot be bounded; use LinfBall, L2Ball, "
                     "L1Ball or Box")


@contextlib.contextmanager
def strict_fp32() -> Iterator[None]:
    """Turn TF32 off for the duration (certified bounds need full fp32), then restore the user's setting."""
    if not torch.cuda.is_available():
        yield
        return
    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def compute_bounds(bm, x: Tensor, threat: ThreatModel, method: str, *, C: Tensor | None = None,
                   bound_upper: bool = True) -> tuple[Tensor, Tensor | None]:
    """Lower/upper bounds of ``C f(x')`` (or of the logits when ``C`` is None) over the threat set.

    ``method`` is a canonical name. alpha-CROWN optimizes the ReLU slopes on a detached copy of
    the set (auto_LiRPA 0.3 cannot optimize through a set with autograd history), then recomputes
    CROWN with those slopes on the real set, so gradients reach a ``Box``'s tensors.
    """
    from .lirpa import BoundedTensor

    ptb, center = perturbation(x, threat)
    bx = BoundedTensor(center, ptb)
    lirpa_method = METHODS[method]
    if method == "alpha-crown" and not getattr(bm, "optimizable_activations", True):
        # Nothing to optimize (no ReLU or max pooling): alpha-CROWN is CROWN, and 0.3's optimizer
        # fails on an empty parameter list.
        method, lirpa_method = "crown", "CROWN"
    if method == "alpha-crown":
        needs_grad = any(t is not None and t.requires_grad for t in (ptb.x_L, ptb.x_U))
        if needs_grad:
            from .lirpa import PerturbationLpNorm
            detached = PerturbationLpNorm(norm=ptb.norm, eps=ptb.eps, x_L=ptb.x_L.detach(),
                                          x_U=ptb.x_U.detach())
            bm.compute_bounds(x=(BoundedTensor(center.detach(), detached),), C=C,
                              method="CROWN-Optimized", bound_upper=bound_upper)
            return bm.compute_bounds(x=(bx,), C=C, method="CROWN", reuse_alpha=True,
                                     bound_upper=bound_upper)
    return bm.compute_bounds(x=(bx,), C=C, method=lirpa_method, bound_upper=bound_upper)
