"""PGD: projected gradient descent with random start and restarts (L-inf, L2, L1, Box)."""
from __future__ import annotations

from ..errors import InputError
from ..threats import ThreatModel
from .descent import IterativeAttack
from .registry import register_attack

__all__ = ["PGD"]


@register_attack("pgd")
class PGD(IterativeAttack):
    r"""PGD in the paper 'Towards Deep Learning Models Resistant to Adversarial Attacks'
    [https://arxiv.org/abs/1706.06083]; L1 as sparse L1 descent from 'Adversarial Training and
    Robustness for Multiple Perturbations' [https://arxiv.org/abs/1904.13000].

    Distance Measure : the threat set's: Linf, L2, L1, or a per-element Box.

    From a random point of the set (or ``x``), repeat ``steps`` times: ascend the loss along the
    steepest-ascent step of the norm (sign for L-inf/Box, normalized gradient for L2, sparse L1
    descent for L1) and project exactly onto the set intersected with [0, 1]. With ``restarts > 1``
    the worst case per sample is kept (first adversarial restart, else highest loss).

    Arguments:
        model (nn.Module): model returning logits; its mode is left as it is.
        threat (LinfBall | L2Ball | L1Ball | Box): the perturbation set; the norm comes from it.
        steps (int): iterations, >= 0. (Default: 10)
        step_size (float | None): step length in the set's norm (pixel units); for a ``Box`` a
            fraction of each element's half-width. (Default: None = 2.5 * eps / steps, i.e.
            eps / 4 at 10 steps; for a Box 2.5 / steps)
        random_start (bool): start at a random point of the set. (Default: True)
        start_sigma (float | None): with ``random_start``, start at ``x + start_sigma * N(0, 1)``
            projected onto the set (TRADES' start: 0.001) instead of a uniform point of the set.
            (Default: None = uniform)
        restarts (int): independent runs, worst case kept, >= 1. (Default: 1)
        loss (str): 'ce', 'margin' (C&W margin) or 'kl' (``KL(p(x) || p(x'))`` from the clean
            prediction: TRADES' inner maximization; untargeted; the labels only decide success
            between restarts). (Default: 'ce')
        targeted (bool): ``y`` are target labels. (Default: False)
        eot (int): EOT draws averaged per gradient for stochastic models, >= 1. (Default: 1)
        max_batch (int | None): most rows per forward pass under EOT. (Default: None = all)
        l1_fraction (float): L1 only: fraction of coordinates kept in the sparse direction,
            in (0, 1], at least one coordinate. (Default: 0.01)
        seed (int | None): seed of the random start; None uses torch's global RNG. (Default: 0)

    Shape:
        - x: :math:`(N, C, H, W)` in [0, 1].
        - y: :math:`(N)` class indices (targets when targeted).
        - output: :math:`(N, C, H, W)`, inside the threat set and [0, 1].

    Examples::
        >>> atk = PGD(model, LinfBall(8/255), steps=20, step_size=2/255, random_start=True)
        >>> x_adv = atk(x, y)
        >>> res = atk.run(x, y)   # res.x_adv, res.success, res.distance, res.queries, res.steps
        >>> trades = PGD(model, LinfBall(0.031), steps=10, step_size=0.007, loss="kl", start_sigma=0.001)
    """

    losses = ("ce", "margin", "kl")  # 'kl' needs a start off x: only PGD has one

    def __init__(self, model, threat: ThreatModel, *, steps: int = 10, step_size: float | None = None,
                 random_start: bool = True, restarts: int = 1, loss: str = "ce", targeted: bool = False,
                 eot: int = 1, max_batch: int | None = None, l1_fraction: float = 0.01,
                 start_sigma: float | None = None, seed: int | None = 0):
        super().__init__(model, threat, steps=steps, step_size=step_size, random_start=random_start,
                         restarts=restarts, loss=loss, targeted=targeted, eot=eot, max_batch=max_batch,
                         l1_fraction=l1_fraction, start_sigma=start_sigma, seed=seed)
        if self.loss == "kl" and not self.random_start:
            raise InputError("loss: 'kl' needs random_start=True: the KL from the clean prediction has a zero "
                             "gradient at x itself (TRADES starts at x + 0.001 * N(0, 1): start_sigma=0.001)")
