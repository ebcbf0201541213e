"""EOT: expectation over transformation / randomness for any gradient attack."""
from __future__ import annotations

import copy

from ..errors import InputTypeError
from .base import Attack, GradientAttack, check_int, check_optional_int

__all__ = ["EOT"]


class EOT(Attack):
    r"""EOT in the paper 'Obfuscated Gradients Give a False Sense of Security'
    [https://arxiv.org/abs/1802.00420]

    Distance Measure : the wrapped attack's.

    Makes any gradient attack (FGSM, BIM, PGD, MIM, APGD, C&W) use, at every step, the gradient
    averaged over ``n`` independent draws of a stochastic model's randomness: each sample is
    replicated ``n`` times inside one batch (``repeat_interleave``), so every replica draws its own
    noise in a single forward pass, and loss, gradient and logits are averaged back to ``(B, ...)``
    (see ``attacks.gradients``). ``max_batch`` bounds the rows of one forward pass; larger
    replications run in chunks with the gradient accumulated. The model's mode is never changed:
    its noise stays on. The variance of the gradient estimate falls as 1/n.

    Same as passing ``eot=n, max_batch=...`` to the attack; this wrapper leaves the attack given
    untouched (it works on a copy).

    Arguments:
        attack (GradientAttack): the attack to wrap.
        n (int): draws per gradient, >= 1. (Default: 80, for parity with Learn2Perturb/PNI evaluations)
        max_batch (int | None): most rows per forward pass. (Default: None = B * n at once)

    Shape:
        - x: :math:`(N, C, H, W)` in [0, 1].
        - y: :math:`(N)` class indices.
        - output: :math:`(N, C, H, W)`, inside the wrapped attack's threat set and [0, 1].

    Examples::
        >>> atk = EOT(PGD(noisy_model, LinfBall(8/255), steps=20), n=80, max_batch=4096)
        >>> res = atk.run(x, y)
    """

    threats = ("linf", "l2", "l1", "box", "none")

    def __init__(self, attack: GradientAttack, *, n: int = 80, max_batch: int | None = None):
        if not isinstance(attack, GradientAttack):
            raise InputTypeError("attack: EOT averages gradients, so it wraps a gradient attack "
                                 f"(FGSM, BIM, PGD, MIM, APGD, CW); got {type(attack).__name__}")
        super().__init__(attack.model, attack.threat, targeted=attack.targeted, seed=attack.seed)
        self.n = check_int("n", n, minimum=1)
        self.max_batch = check_optional_int("max_batch", max_batch, minimum=1)
        self.attack = copy.copy(attack)
        self.attack.eot = self.n
        self.attack.max_batch = self.max_batch

    def with_threat(self, threat):
        new = super().with_threat(threat)
        new.attack = self.attack.with_threat(threat)
        return new

    def gradient(self, x, y):
        """The EOT-averaged input gradient of the wrapped attack's loss at ``x``."""
        return self.attack.gradient(x, y)

    def project(self, x, x_adv):
        return self.attack.project(x, x_adv)

    def _distance(self, x, x_adv):
        return self.attack._distance(x, x_adv)

    def _perturb(self, x, y, generator):
        return self.attack._perturb(x, y, generator)
