"""MIM: the momentum iterative method (MI-FGSM)."""
from __future__ import annotations

import torch

from ..threats import ThreatModel
from .base import check_float
from .descent import IterativeAttack
from .registry import register_attack

__all__ = ["MIM"]


@register_attack("mim")
class MIM(IterativeAttack):
    r"""MIM (MI-FGSM) in the paper 'Boosting Adversarial Attacks with Momentum'
    [https://arxiv.org/abs/1710.06081]

    Distance Measure : Linf (also L2, L1 and Box through the same hooks as PGD).

    ``g <- decay * g + grad / ||grad||_1`` (L1 norm per sample), then a steepest-ascent step of
    size ``step_size`` along ``g`` (its sign for L-inf/Box), projected onto the set and [0, 1].
    Starts at ``x``.

    Arguments:
        model (nn.Module): model returning logits; its mode is left as it is.
        threat (LinfBall | L2Ball | L1Ball | Box): the perturbation set.
        steps (int): iterations, >= 0. (Default: 10)
        step_size (float | None): alpha, in the set's norm; for a Box a fraction of each
            element's half-width. (Default: None = eps / 10; for a Box 0.1)
        decay (float): momentum mu, >= 0. (Default: 1.0)
        loss (str): 'ce' or 'margin'. (Default: 'ce')
        targeted (bool): ``y`` are target labels. (Default: False)
        eot (int): EOT draws averaged per gradient, >= 1. (Default: 1)
        max_batch (int | None): most rows per forward pass under EOT. (Default: None = all)
        l1_fraction (float): L1 only, fraction of coordinates of the sparse step. (Default: 0.01)

    Shape:
        - x: :math:`(N, C, H, W)` in [0, 1].
        - y: :math:`(N)` class indices.
        - output: :math:`(N, C, H, W)`, inside the threat set and [0, 1].

    Examples::
        >>> atk = MIM(model, LinfBall(8/255), steps=10, decay=1.0)
        >>> x_adv = atk(x, y)
    """

    def __init__(self, model, threat: ThreatModel, *, steps: int = 10, step_size: float | None = None,
                 decay: float = 1.0, loss: str = "ce", targeted: bool = False, eot: int = 1,
                 max_batch: int | None = None, l1_fraction: float = 0.01):
        super().__init__(model, threat, steps=steps, step_size=step_size, random_start=False,
                         restarts=1, loss=loss, targeted=targeted, eot=eot, max_batch=max_batch,
                         l1_fraction=l1_fraction, seed=None)
        self.decay = check_float("decay", decay, minimum=0.0)

    def _default_step_fraction(self) -> float:
        return 0.1

    def _init_state(self, x):
        return torch.zeros_like(x)

    def _direction(self, grad, g):
        l1 = grad.abs().flatten(1).sum(1).clamp_min_(1e-12).view(-1, *([1] * (grad.dim() - 1)))
        g = g.mul_(self.decay).add_(grad / l1)
        return g, g
