"""BIM: the basic iterative method (iterated FGSM from x, projected; no random start)."""
from __future__ import annotations

import math

from ..errors import InputError
from ..threats import LinfBall, ThreatModel
from .descent import IterativeAttack
from .registry import register_attack

__all__ = ["BIM"]


@register_attack("bim")
class BIM(IterativeAttack):
    r"""BIM in the paper 'Adversarial Examples in the Physical World'
    [https://arxiv.org/abs/1607.02533]

    Distance Measure : Linf (also L2, L1 and Box through the same hooks as PGD).

    ``steps`` signed-gradient steps of size ``step_size`` from ``x`` (no random start), each
    projected onto the set intersected with [0, 1].

    Arguments:
        model (nn.Module): model returning logits; its mode is left as it is.
        threat (LinfBall | L2Ball | L1Ball | Box): the perturbation set.
        steps (int): iterations, >= 0. (Default: 10)
        step_size (float | None): alpha, in the set's norm; for a Box a fraction of each
            element's half-width. (Default: None = eps / 4; for a Box 0.25)
        loss (str): 'ce' or 'margin'. (Default: 'ce')
        targeted (bool): ``y`` are target labels. (Default: False)
        eot (int): EOT draws averaged per gradient, >= 1. (Default: 1)
        max_batch (int | None): most rows per forward pass under EOT. (Default: None = all)
        l1_fraction (float): L1 only, fraction of coordinates of the sparse step. (Default: 0.01)

    The paper's schedule (alpha = 1/255, min(255 eps + 4, 1.25 * 255 eps) steps, L-inf) is
    :meth:`BIM.paper`.

    Shape:
        - x: :math:`(N, C, H, W)` in [0, 1].
        - y: :math:`(N)` class indices.
        - output: :math:`(N, C, H, W)`, inside the threat set and [0, 1].

    Examples::
        >>> atk = BIM(model, LinfBall(8/255), steps=10)
        >>> x_adv = atk(x, y)
        >>> atk = BIM.paper(model, LinfBall(8/255))   # alpha 1/255, 10 steps
    """

    def __init__(self, model, threat: ThreatModel, *, steps: int = 10, step_size: float | None = None,
                 loss: str = "ce", targeted: bool = False, eot: int = 1, max_batch: int | None = None,
                 l1_fraction: float = 0.01):
        super().__init__(model, threat, steps=steps, step_size=step_size, random_start=False,
                         restarts=1, loss=loss, targeted=targeted, eot=eot, max_batch=max_batch,
                         l1_fraction=l1_fraction, seed=None)

    def _default_step_fraction(self) -> float:
        return 0.25

    @classmethod
    def paper(cls, model, threat: LinfBall, **settings) -> "BIM":
        """BIM with the paper's schedule: alpha = 1/255, min(255 eps + 4, 1.25 * 255 eps) steps."""
        if not isinstance(threat, LinfBall):
            raise InputError(f"BIM.paper: the paper's schedule is for LinfBall, got {type(threat).__name__}")
        steps = int(math.floor(min(255 * threat.eps + 4, 1.25 * 255 * threat.eps)))
        return cls(model, threat, steps=steps, step_size=1 / 255, **settings)
