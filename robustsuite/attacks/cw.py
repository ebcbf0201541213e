"""C&W L2: the Carlini-Wagner minimal-L2 attack with per-sample binary search on c."""
from __future__ import annotations

import torch
from torch import Tensor

from ..threats import ThreatModel
from .base import GradientAttack, Perturbation, check_bool, check_float, check_int
from .losses import margin_gap
from .registry import register_attack

__all__ = ["CW"]

_BETA1, _BETA2, _ADAM_EPS = 0.9, 0.999, 1e-8
_UNBOUNDED = 1e10


@register_attack("cw")
class CW(GradientAttack):
    r"""C&W L2 in the paper 'Towards Evaluating the Robustness of Neural Networks'
    [https://arxiv.org/abs/1608.04644]

    Distance Measure : L2

    With ``x' = (tanh(w) + 1) / 2`` (always in [0, 1]), minimize with Adam

    .. math:: \|x' - x\|_2^2 + c \cdot \max(Z_y(x') - \max_{j \ne y} Z_j(x') + \kappa, 0)

    (targeted: ``max(max_{j != t} Z_j - Z_t + kappa, 0)``), starting from ``x`` at every
    binary-search step. ``c`` is searched per sample: after each of ``search_steps`` runs of
    ``steps`` iterations, a sample that succeeded lowers its upper bound (``c <- (lo + up) / 2``),
    one that failed raises its lower bound and ``c`` is multiplied by 10 while no upper bound is
    known. The smallest successful perturbation per sample over all iterates is kept; samples
    never made adversarial are returned unchanged. Early abort: every ``steps // 10`` iterations a
    sample whose objective did not decrease by 0.01 % stops updating, and the run ends when none is
    left (one host sync per check).

    An iterate counts as successful when the top-1 label is wrong (targeted: the target) and the
    logit margin reaches ``kappa``.

    Threat: ``None`` (default) is the unbounded minimal-perturbation mode: ``success`` means an
    adversarial example was found and ``distance`` is its L2 norm. With ``L2Ball(eps)`` the result
    is projected onto the ball, so ``success`` means adversarial within L2 <= eps.

    Arguments:
        model (nn.Module): model returning logits; its mode is left as it is.
        threat (L2Ball | None): optional L2 budget for success. (Default: None)
        c (float): initial trade-off constant c0 > 0. (Default: 1e-3)
        kappa (float): confidence margin, >= 0 (Learn2Perturb: 0, 0.1, 1, 2, 5). (Default: 0)
        steps (int): Adam iterations per binary-search step, >= 1. (Default: 1000)
        lr (float): Adam learning rate, > 0. (Default: 1e-2)
        search_steps (int): binary-search steps on c, >= 1. (Default: 9)
        abort_early (bool): stop a sample when its objective stalls. (Default: True)
        targeted (bool): ``y`` are target labels. (Default: False)
        eot (int): EOT draws averaged per gradient, >= 1. (Default: 1)
        max_batch (int | None): most rows per forward pass under EOT. (Default: None = all)

    Shape:
        - x: :math:`(N, C, H, W)` in [0, 1].
        - y: :math:`(N)` class indices.
        - output: :math:`(N, C, H, W)` in [0, 1] (and in the L2 ball when one is given).

    Examples::
        >>> atk = CW(model, c=1e-3, kappa=0, steps=1000, search_steps=9)
        >>> res = atk.run(x, y)          # res.distance: L2 of the smallest adversarial found
        >>> CW(model, L2Ball(0.5)).run(x, y).success   # adversarial within L2 <= 0.5
    """

    threats = ("l2", "none")
    losses = ("margin",)

    def __init__(self, model, threat: ThreatModel | None = None, *, c: float = 1e-3, kappa: float = 0.0,
                 steps: int = 1000, lr: float = 1e-2, search_steps: int = 9, abort_early: bool = True,
                 targeted: bool = False, eot: int = 1, max_batch: int | None = None):
        super().__init__(model, threat, loss="margin", targeted=targeted, eot=eot, max_batch=max_batch,
                         seed=None)
        self.c = check_float("c", c, minimum=0.0, strict=True)
        self.kappa = check_float("kappa", kappa, minimum=0.0)
        self.steps = check_int("steps", steps, minimum=1)
        self.lr = check_float("lr", lr, minimum=0.0, strict=True)
        self.search_steps = check_int("search_steps", search_steps, minimum=1)
        self.abort_early = check_bool("abort_early", abort_early)

    def _gap(self, logits: Tensor, y: Tensor) -> Tensor:
        """How far from success: ``Z_y - max_other`` (targeted: ``max_other - Z_t``)."""
        g = margin_gap(logits, y)
        return -g if self.targeted else g

    def _perturb(self, x, y, generator):
        B = x.shape[0]
        col = (-1,) + (1,) * (x.dim() - 1)
        kappa = self.kappa
        f_loss = lambda logits, yy: (self._gap(logits, yy) + kappa).clamp_min(0)  # noqa: E731

        w0 = torch.atanh((2 * x - 1) * (1 - 1e-6))
        c = x.new_full((B,), self.c)
        lower = x.new_zeros(B)
        upper = x.new_full((B,), _UNBOUNDED)
        best_l2 = x.new_full((B,), float("inf"))
        best_x = x.clone()
        check_every = max(1, self.steps // 10)
        total_iters = 0

        for s in range(self.search_steps):
            w = w0.clone()
            m = torch.zeros_like(x)
            v = torch.zeros_like(x)
            active = torch.ones(B, dtype=torch.bool, device=x.device)
            prev = x.new_full((B,), float("inf"))
            found_here = torch.zeros(B, dtype=torch.bool, device=x.device)
            cc = c.view(col)
            for t in range(self.steps):
                tw = torch.tanh(w)
                x_adv = (tw + 1) * 0.5
                f, g_f, logits = self._loss_and_grad(x_adv, y, loss_fn=f_loss,
                                                     check_labels=(s == 0 and t == 0))
                delta = x_adv - x
                l2sq = delta.flatten(1).pow(2).sum(1)
                ok = self._is_success(logits.argmax(1), y) & (self._gap(logits, y) <= -kappa)
                found_here |= ok
                better = ok & (l2sq < best_l2)
                best_l2 = torch.where(better, l2sq, best_l2)
                best_x = torch.where(better.view(col), x_adv, best_x)

                # d/dw of ||x' - x||^2 + c f(x'), through x' = (tanh(w) + 1) / 2
                g = (2 * delta + cc * g_f) * (1 - tw * tw) * 0.5
                m.mul_(_BETA1).add_(g, alpha=1 - _BETA1)
                v.mul_(_BETA2).addcmul_(g, g, value=1 - _BETA2)
                bc1, bc2 = 1 - _BETA1 ** (t + 1), 1 - _BETA2 ** (t + 1)
                upd = (m / bc1) / ((v / bc2).sqrt_().add_(_ADAM_EPS))
                w = w - upd * (self.lr * active.view(col).to(x.dtype))

                if self.abort_early and t % check_every == 0:
                    objective = l2sq + c * f
                    active &= ~(objective > prev * 0.9999)
                    prev = objective
                    if t > 0 and not bool(active.any()):
                        break
            total_iters += t + 1
            upper = torch.where(found_here, torch.minimum(upper, c), upper)
            lower = torch.where(found_here, lower, torch.maximum(lower, c))
            c = torch.where(upper < _UNBOUNDED / 10, (lower + upper) / 2, c * 10)

        return Perturbation(best_x, total_iters * self.eot, total_iters,
                            extras={"best_l2": best_l2.sqrt()})
