"""TRADES (Zhang, Yu, Jiao, Xing, El Ghaoui, Jordan; ICML 2019).

Loss (the paper's eq. (5) with the reference code's surrogate, ``yaodongyu/TRADES`` ``trades.py``)::

    CE(f(x), y) + beta * KL(p(x) || p(x_adv)),   KL(p || q) = sum_k p_k (log p_k - log q_k),

averaged over the batch. The reference writes it as ``nn.KLDivLoss(reduction='sum')(log_softmax(
f(x_adv)), softmax(f(x))) / batch_size``; ``KLDivLoss(input=log q, target=p)`` is
``sum p (log p - log q)``, so the clean distribution is the *first* argument of the KL in math
notation (the paper's ``L(f(X), f(X')/lambda)`` names the clean output first too). Gradients flow
through both ``f(x)`` and ``f(x_adv)`` (the clean distribution is not detached), as in the
reference. See :func:`~robustsuite.stochastic.losses.trades_kl`.

``x_adv`` maximizes the same KL term by PGD in the L-inf (sign steps, the paper's Algorithm 1) or
L2 (normalized gradient steps) ball of ``train.attack``, starting from ``x + 0.001 * N(0, 1)``,
projected onto the ball and [0, 1] after every step: the package's
:class:`~robustsuite.attacks.PGD` with ``loss="kl"`` and ``start_sigma=0.001``
(:func:`trades_adversary`), not a loop of its own.

Differences from the reference code, written down: the reference switches the model to eval mode
while crafting ``x_adv`` (BatchNorm on running statistics); here the mode is left as it is
(training), like every training attack of the package, so noise layers stay on and BatchNorm uses
the batch's statistics. The start point is projected onto the ball and [0, 1] (the reference
clips only after the first step). The reference runs ``f(x)`` a second time inside the robust
term (the same logits in a deterministic model; its BatchNorm running statistics move three times
per batch, here twice). Its L2 branch steps with SGD at lr ``2 eps / steps``, clamps to [0, 1] and
then renormalizes delta to eps; here ``train.attack.step_size`` (default ``2.5 eps / steps``) and
the threat's projection.

Config::

    train:
      method: trades
      beta: 6.0
      attack: {norm: linf, eps: 0.031, steps: 10, step_size: 0.007}
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ..attacks import PGD
from ..training.registry import register_trainer
from .adversarial import AdversarialTrainer, threat_of
from .config import TradesConfig
from .losses import trades_kl

__all__ = ["TradesTrainer", "trades_adversary"]

_START_SIGMA = 0.001  # the reference's x + 0.001 * N(0, 1)


def trades_adversary(model, x: Tensor, settings, y: Tensor | None = None) -> Tensor:
    """``x_adv`` (same shape as ``x``, (B, C, H, W) in [0, 1]) maximizing ``KL(p(x) || p(x_adv))`` in
    the ball of ``settings`` (linf or l2) by ``settings.steps`` ascent steps from the start
    ``x + 0.001 * N(0, 1)``: :class:`~robustsuite.attacks.PGD` with ``loss="kl"``.

    Model calls and random draws, in order (what the trained numbers depend on): one forward on
    ``x`` without gradients (the clean distribution), the start's noise (one draw from torch's
    global RNG), then one forward and backward per step. The model's mode is left as it is. The
    step is ``settings.step_size`` or ``2.5 * eps / steps``. ``y`` (B,) is not used by the loss
    (only a restart comparison would use it; TRADES has one run); None passes placeholders.

    Against the package's own loop before issue 16: L-inf bit for bit (so L-inf TRADES trains to
    the same numbers); L2 equal up to float rounding per step (PGD sums per-sample KLs where the
    loop averaged them, and re-projects its output once more), which training can amplify.
    """
    step = settings.step_size or 2.5 * settings.eps / settings.steps
    atk = PGD(model, threat_of(settings), steps=settings.steps, step_size=step, random_start=True,
              start_sigma=_START_SIGMA, loss="kl", seed=None)
    if y is None:
        y = torch.zeros(x.shape[0], dtype=torch.long, device=x.device)
    return atk(x, y).detach()


@register_trainer("trades", config=TradesConfig)
class TradesTrainer(AdversarialTrainer):
    """TRADES training (see the module docstring); ``clean_weight`` is not used."""

    kind = "trades"

    def _trades_loss(self, x: Tensor, x_adv: Tensor, y: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        logits = self.model(x)
        logits_adv = self.model(x_adv)
        robust = trades_kl(logits_adv, logits)
        return F.cross_entropy(logits, y) + self.tcfg.beta * robust, robust, logits_adv

    def train_step(self, x: Tensor, y: Tensor, step: int) -> dict[str, Tensor]:
        x_adv = trades_adversary(self.model, x, self.tcfg.attack)
        loss, robust, logits_adv = self.loss_call(self._trades_loss, x, x_adv, y)
        self.clip_and_step(loss)
        return {"loss": loss.detach(), "kl": robust.detach(),
                "adv_acc": (logits_adv.detach().argmax(1) == y).float().mean()}
