"""Attack losses: per-sample objectives that an attack *maximizes*.

Every loss takes logits ``(B, K)``, labels ``(B,)`` (true labels, or target labels when
``targeted=True``) and returns a ``(B,)`` tensor. Attacks ascend the loss, so targeted variants
are signed to increase towards the target:

* ``"ce"``: cross-entropy ``CE(z, y)``; targeted ``-CE(z, t)``.
* ``"margin"``: the C&W margin ``max_{j != y} z_j - z_y``; targeted ``z_t - max_{j != t} z_j``.
  Positive exactly when the sample is misclassified (resp. classified as the target).
* ``"dlr"``: the difference-of-logits ratio of Croce & Hein (2020),
  ``-(z_y - max_{j != y} z_j) / (z_(1) - z_(3))``; needs at least 3 classes; untargeted only.
  Its targeted form (APGD-T, :func:`dlr_targeted_loss`) needs the true label *and* a target, so
  it is not in :data:`LOSSES`; ``APGD(loss="dlr", targeted=True)`` picks the targets itself.
* ``"kl"``: ``KL(p_ref || p)`` with ``p = softmax(z)`` and ``p_ref`` the softmax of *reference
  logits* passed in place of the labels: the clean point's logits, which the attack computes
  itself (:data:`REFERENCE_LOSSES`). TRADES' inner maximization (Zhang et al. 2019); untargeted.
"""
from __future__ import annotations

from typing import Callable

import torch.nn.functional as F
from torch import Tensor

from ..errors import InputError, unknown

__all__ = ["LOSSES", "REFERENCE_LOSSES", "LossFn", "ce_loss", "margin_loss", "dlr_loss", "dlr_targeted_loss",
           "kl_loss", "get_loss", "margin_gap"]

LossFn = Callable[[Tensor, Tensor, bool], Tensor]


def margin_gap(logits: Tensor, y: Tensor) -> Tensor:
    """``z_y - max_{j != y} z_j`` per sample (B,): negative exactly when ``y`` is not the top class."""
    z_y = logits.gather(1, y.unsqueeze(1)).squeeze(1)
    other = logits.scatter(1, y.unsqueeze(1), float("-inf")).amax(1)
    return z_y - other


def ce_loss(logits: Tensor, y: Tensor, targeted: bool = False) -> Tensor:
    """Cross-entropy per sample; negated when ``targeted`` (ascending it moves towards ``y``)."""
    loss = F.cross_entropy(logits, y, reduction="none")
    return -loss if targeted else loss


def margin_loss(logits: Tensor, y: Tensor, targeted: bool = False) -> Tensor:
    """C&W margin per sample: ``max_{j != y} z_j - z_y`` (targeted: ``z_t - max_{j != t} z_j``)."""
    gap = margin_gap(logits, y)
    return gap if targeted else -gap


def dlr_loss(logits: Tensor, y: Tensor, targeted: bool = False) -> Tensor:
    """Difference-of-logits ratio (Croce & Hein 2020), untargeted; scale-invariant in the logits."""
    if targeted:
        raise InputError("loss: 'dlr' is untargeted only; use 'ce' or 'margin' with targeted=True")
    if logits.shape[1] < 3:
        raise InputError(f"loss: 'dlr' needs at least 3 classes, the model gives {logits.shape[1]}")
    top = logits.topk(3, dim=1).values
    return margin_loss(logits, y) / (top[:, 0] - top[:, 2] + 1e-12)


def dlr_targeted_loss(logits: Tensor, y: Tensor, target: Tensor) -> Tensor:
    """Targeted DLR (Croce & Hein 2020, APGD-T), to maximize: ``-(z_y - z_t) / (z_(1) - (z_(3) +
    z_(4)) / 2)`` with ``y`` the true labels, ``t`` the targets (B,) and ``z_(k)`` the k-th largest
    logit. Positive once the target's logit exceeds the true class's; scale-invariant; needs at
    least 4 classes."""
    if logits.shape[1] < 4:
        raise InputError(f"loss: targeted 'dlr' needs at least 4 classes, the model gives {logits.shape[1]}")
    top = logits.topk(4, dim=1).values
    z_y = logits.gather(1, y.unsqueeze(1)).squeeze(1)
    z_t = logits.gather(1, target.unsqueeze(1)).squeeze(1)
    return (z_t - z_y) / (top[:, 0] - (top[:, 2] + top[:, 3]) / 2 + 1e-12)


def kl_loss(logits: Tensor, reference: Tensor, targeted: bool = False) -> Tensor:
    """``KL(softmax(reference) || softmax(logits))`` per sample (B,), ``reference`` the clean
    point's logits (B, K): TRADES' inner objective, written as its reference code writes it
    (``KLDivLoss(log_softmax(adv), softmax(clean))``, summed over the classes). Zero at the clean
    point; untargeted only."""
    if targeted:
        raise InputError("loss: 'kl' is untargeted only (it moves away from the clean prediction); "
                         "use 'ce' or 'margin' with targeted=True")
    return F.kl_div(F.log_softmax(logits, dim=1), F.softmax(reference, dim=1), reduction="none").sum(1)


LOSSES: dict[str, LossFn] = {"ce": ce_loss, "margin": margin_loss, "dlr": dlr_loss, "kl": kl_loss}

#: losses compared with the clean point's logits (B, K), which the attack computes, not with labels
REFERENCE_LOSSES = frozenset({"kl"})


def get_loss(name: str) -> LossFn:
    """The loss function called ``name`` (``ce``, ``margin``, ``dlr``, ``kl``); unknown names raise."""
    if not isinstance(name, str) or name.lower() not in LOSSES:
        raise unknown("loss", name, LOSSES)
    return LOSSES[name.lower()]
