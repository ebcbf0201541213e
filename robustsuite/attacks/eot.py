"""EOT: expectation over transformation / randomness, for gradient and for query-based attacks.

Gradient attacks average the loss gradient over ``n`` draws (:class:`EOT`, ``eot=n``). Score- and
decision-based attacks (Square, the boundary attack) instead ask a *voting oracle*: every query
evaluates the model ``n`` times (:func:`eot_logits`), the label is the majority vote of the
draws' top-1 labels (:func:`majority_vote`) and scores are averaged over the draws.
"""
from __future__ import annotations

import copy
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import InputTypeError
from .base import Attack, GradientAttack, check_int, check_optional_int
from .registry import attack_names

__all__ = ["EOT", "eot_logits", "majority_vote", "vote_labels", "outputs_vary", "VARY_TOLERANCE"]

#: two outputs differ when their L2-normalized rows differ by more than this anywhere (AutoAttack's
#: threshold: tolerant of the last bits a GPU kernel may change between calls, not of noise layers)
VARY_TOLERANCE = 1e-6


def outputs_vary(model: Callable[[Tensor], Tensor], x: Tensor) -> bool:
    """The determinism probe: two forward passes on ``x`` (B, C, H, W) differ (other predicted
    classes, or L2-normalized output rows more than :data:`VARY_TOLERANCE` apart). Used by the
    evaluator's model checks (:mod:`robustsuite.eval.checks`) and AutoAttack's versions."""
    with torch.no_grad():
        a, b = model(x), model(x)
    if not torch.equal(a.argmax(1), b.argmax(1)):
        return True
    na = a / (a.norm(dim=1, keepdim=True) + 1e-10)
    nb = b / (b.norm(dim=1, keepdim=True) + 1e-10)
    return bool(((na - nb).abs() > VARY_TOLERANCE).any())


def eot_logits(model: Callable[[Tensor], Tensor], x: Tensor, n: int, max_batch: int | None = None
               ) -> Tensor:
    """Logits ``(B, n, K)`` of ``n`` independent forward passes per sample (no gradients).

    The ``B * n`` rows are one replicated batch (``repeat_interleave``), so a stochastic model
    draws fresh randomness per row; ``max_batch`` bounds the rows per model call.
    """
    B = x.shape[0]
    with torch.no_grad():
        if n == 1 and (max_batch is None or max_batch >= B):
            return model(x).unsqueeze(1)
        rows = x.repeat_interleave(n, dim=0) if n > 1 else x
        chunk = rows.shape[0] if max_batch is None else max(1, int(max_batch))
        out = torch.cat([model(rows[i:i + chunk]) for i in range(0, rows.shape[0], chunk)])
    return out.view(B, n, -1)


def majority_vote(logits: Tensor) -> Tensor:
    """The majority label ``(B,)`` of per-draw logits ``(B, n, K)``.

    Each draw votes for its top-1 class; ties between classes with the same number of votes go
    to the class with the larger mean softmax probability (deterministic; with one draw this is
    the plain argmax).
    """
    if logits.shape[1] == 1:
        return logits[:, 0].argmax(1)
    K = logits.shape[-1]
    votes = F.one_hot(logits.argmax(-1), K).sum(1).to(logits.dtype)       # (B, K)
    # mean probability < 1 never outweighs a vote: it only orders classes with equal votes
    return (votes + logits.softmax(-1).mean(1) * 0.5).argmax(1)


def vote_labels(model: Callable[[Tensor], Tensor], x: Tensor, n: int = 1,
                max_batch: int | None = None) -> Tensor:
    """Majority-vote labels ``(B,)`` of ``n`` draws of ``model`` on ``x`` (n = 1: the argmax)."""
    if n == 1 and (max_batch is None or max_batch >= x.shape[0]):
        with torch.no_grad():  # one plain pass: the label oracle of every step of a decision-based walk
            return model(x).argmax(1)
    return majority_vote(eot_logits(model, x, n, max_batch))


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
            vote = attack_names(eot=True, gradient=False)
            raise InputTypeError(
                f"attack: EOT averages gradients, so it wraps a gradient attack ({', '.join(attack_names(gradient=True))}); "
                f"got {type(attack).__name__}" + (f"; {', '.join(vote)} take eot=n (a majority-vote oracle) instead"
                                                  if vote else ""))
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

    @property
    def labels_are_targets(self) -> bool:
        return self.attack.labels_are_targets

    def gradient(self, x, y):
        """The EOT-averaged input gradient of the wrapped attack's loss at ``x``."""
        return self.attack.gradient(x, y)

    def project(self, x, x_adv):
        return self.attack.project(x, x_adv)

    def _distance(self, x, x_adv):
        return self.attack._distance(x, x_adv)

    def _perturb(self, x, y, generator):
        return self.attack._perturb(x, y, generator)
