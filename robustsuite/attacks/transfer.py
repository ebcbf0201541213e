"""Transfer attack: craft on a source model, evaluate on the target model."""
from __future__ import annotations

import copy

from ..errors import InputTypeError
from .base import Attack, Perturbation
from .registry import register_attack

__all__ = ["TransferAttack"]


@register_attack("transfer")
class TransferAttack(Attack):
    r"""Transfer attack: adversarial examples crafted with any attack on a *source* model (e.g. a
    deterministic teacher or a PGD-AT model), then evaluated on the *target* model, which is
    queried only once, for the final success check. See 'Delving into Transferable Adversarial
    Examples and Black-box Attacks' [https://arxiv.org/abs/1611.02770].

    Distance Measure : the source attack's threat set.

    ``success`` is the target model's misclassification (targeted: the target label);
    ``queries`` are the source attack's queries *to the source model*;
    ``extras['source_success']`` is the success on the source model.

    Arguments:
        source_attack (Attack): the attack crafting on the source model (its threat and settings
            are used as they are).
        target_model (nn.Module): the model evaluated; its mode is left as it is.

    Shape:
        - x: :math:`(N, C, H, W)` in [0, 1].
        - y: :math:`(N)` class indices.
        - output: :math:`(N, C, H, W)`, inside the source attack's threat set and [0, 1].

    Examples::
        >>> atk = TransferAttack(PGD(teacher, LinfBall(8/255), steps=20), target_model=student)
        >>> res = atk.run(x, y)   # res.success: fooled the student
    """

    threats = ("linf", "l2", "l1", "box", "none")
    by_name = False  # built around a source attack: TransferAttack(make_attack(...), target_model)

    def __init__(self, source_attack: Attack, target_model):
        if not isinstance(source_attack, Attack):
            raise InputTypeError(f"source_attack: expected a robustsuite attack, got {type(source_attack).__name__}")
        super().__init__(target_model, source_attack.threat, targeted=source_attack.targeted, seed=None)
        self.source_attack = source_attack

    def with_threat(self, threat):
        new = super().with_threat(threat)
        new.source_attack = self.source_attack.with_threat(threat)
        return new

    def _distance(self, x, x_adv):
        return self.source_attack._distance(x, x_adv)

    def project(self, x, x_adv):
        return self.source_attack.project(x, x_adv)

    def _perturb(self, x, y, generator):
        res = self.source_attack.run(x, y)
        return Perturbation(res.x_adv, res.queries, res.steps,
                            extras={"source_success": res.success, "source": copy.copy(res.extras)})
