"""FGSM: the fast gradient sign method (one steepest-ascent step of the full budget)."""
from __future__ import annotations

from ..threats import ThreatModel
from .descent import IterativeAttack
from .registry import register_attack

__all__ = ["FGSM"]


@register_attack("fgsm")
class FGSM(IterativeAttack):
    r"""FGSM in the paper 'Explaining and Harnessing Adversarial Examples'
    [https://arxiv.org/abs/1412.6572]

    Distance Measure : Linf (also L2 = fast gradient method, L1 = one sparse-L1 step, and Box).

    One step of size eps from ``x`` along the sign of the loss gradient (the normalized gradient
    for L2), projected onto the set intersected with [0, 1]. For a ``Box`` the step is each
    element's half-width. No randomness.

    Arguments:
        model (nn.Module): model returning logits; its mode is left as it is.
        threat (LinfBall | L2Ball | L1Ball | Box): the perturbation set.
        loss (str): 'ce' or 'margin'. (Default: 'ce')
        targeted (bool): ``y`` are target labels (step towards them). (Default: False)
        eot (int): EOT draws averaged for the gradient, >= 1. (Default: 1)
        max_batch (int | None): most rows per forward pass under EOT. (Default: None = all)
        l1_fraction (float): L1 only, fraction of coordinates of the sparse step. (Default: 0.01)

    Shape:
        - x: :math:`(N, C, H, W)` in [0, 1].
        - y: :math:`(N)` class indices.
        - output: :math:`(N, C, H, W)`, inside the threat set and [0, 1].

    Examples::
        >>> atk = FGSM(model, LinfBall(8/255))
        >>> x_adv = atk(x, y)
    """

    def __init__(self, model, threat: ThreatModel, *, loss: str = "ce", targeted: bool = False,
                 eot: int = 1, max_batch: int | None = None, l1_fraction: float = 0.01):
        super().__init__(model, threat, steps=1, step_size=None, random_start=False, restarts=1,
                         loss=loss, targeted=targeted, eot=eot, max_batch=max_batch,
                         l1_fraction=l1_fraction, seed=None)

    def _default_step_fraction(self) -> float:
        return 1.0
