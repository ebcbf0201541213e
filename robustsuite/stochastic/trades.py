"""TRADES (Zhang, Yu, Jiao, Xing, El Ghaoui, Jordan; ICML 2019).

Loss ``CE(f(x), y) + beta * KL(p(x) || p(x_adv))`` where ``x_adv`` maximizes the KL term by PGD in
the L-inf (sign steps) or L2 (normalized steps) ball of ``train.attack``, starting from
``x + 0.001 * N(0, 1)`` as in the reference code, projected onto the ball and [0, 1]. The reference
puts the model in eval mode while crafting; here the mode is left as it is (training), like every
attack of the package, so noise layers stay on.

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

from .adversarial import AdversarialTrainer, threat_of
from .losses import trades_kl

__all__ = ["TradesTrainer", "trades_adversary"]


def trades_adversary(model, x: Tensor, settings) -> Tensor:
    """``x_adv`` maximizing ``KL(p(x) || p(x_adv))`` in the ball of ``settings`` (linf or l2)."""
    threat = threat_of(settings)
    step = settings.step_size or 2.5 * settings.eps / settings.steps
    with torch.no_grad():
        p_clean_logits = model(x)
    x_adv = threat.project(x, x + 0.001 * torch.randn_like(x)).detach()
    for _ in range(settings.steps):
        x_adv.requires_grad_(True)
        loss = trades_kl(model(x_adv), p_clean_logits)
        (grad,) = torch.autograd.grad(loss, x_adv)
        with torch.no_grad():
            if settings.norm == "linf":
                x_adv = x_adv + step * grad.sign()
            else:
                norm = grad.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, *[1] * (x.dim() - 1))
                x_adv = x_adv + step * grad / norm
            x_adv = threat.project(x, x_adv)
    return x_adv.detach()


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
