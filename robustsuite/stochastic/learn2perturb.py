"""Learn2Perturb (Jeddi, Shafiee, Karg, Scharfenberger, Wong; CVPR 2020).

Perturbation-injection modules (learnable noise maps theta, init 0.25, >= theta_min) after the stem
and at every residual block output; alternating back-propagation per batch:

1. from ``noise_start`` on, a theta-only step on the regularizer
   ``g(theta) = -(gamma / tau) * sum sqrt(theta)``, ``tau = H_(e - s + 1)`` (harmonic number of the
   noise epochs so far; the paper's eq. 9 divides by zero in the first noise epoch);
2. one backward pass of the training loss, stepping the weights' optimizer and (from
   ``noise_start``) theta's, then the clamp ``theta >= theta_min``.

The loss is CE(clean) before ``adv_start`` and ``w * CE(clean) + (1 - w) * CE(PGD)`` after it
(``clean_weight`` w = 0.5). Before ``noise_start`` the noise is off and theta frozen. Weights: SGD
with Nesterov momentum and weight decay; theta: its own SGD (Nesterov, momentum 0.9, no weight
decay, ``theta_lr``), saved in every checkpoint.

Config::

    train:
      method: learn2perturb
      noise: {init: 0.25, theta_min: 0.01, shared: false}
      gamma: 1.0e-4
      noise_start: 10
      adv_start: 20
      attack: {norm: linf, eps: 0.0314, steps: 7, step_size: 0.01}
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .adversarial import AdversarialTrainer, build_grouped_optimizer
from .builders import add_noise
from .losses import harmonic_tau, learn2perturb_regularizer
from .noise import PerturbationInjection, clamp_noise_scales, mean_noise_scale, set_noise

__all__ = ["Learn2PerturbTrainer"]


class Learn2PerturbTrainer(AdversarialTrainer):
    """Learn2Perturb training (see the module docstring)."""

    kind = "learn2perturb"

    def prepare_model(self, model, train_set):
        n = self.tcfg.noise
        return add_noise(model, "learn2perturb", init=n.init, theta_min=n.theta_min, shared=n.shared)

    def thetas(self) -> list[torch.nn.Parameter]:
        return [m.theta for m in self.model.modules() if isinstance(m, PerturbationInjection)]

    def build_optimizer(self) -> torch.optim.Optimizer:
        ids = {id(t) for t in self.thetas()}
        weights = [p for p in self.model.parameters() if id(p) not in ids and p.requires_grad]
        self.theta_optimizer = torch.optim.SGD(self.thetas(), lr=self.tcfg.theta_lr or self.tcfg.optim.lr,
                                               momentum=0.9, nesterov=True, weight_decay=0.0)
        return build_grouped_optimizer([{"params": weights}], self.tcfg.optim, self.tcfg.nesterov)

    def parameters(self):
        ids = {id(t) for t in self.thetas()}
        return [p for p in self.model.parameters() if id(p) not in ids]

    def extra_state(self) -> dict:
        return {"theta_optimizer": self.theta_optimizer.state_dict()}

    def load_extra_state(self, state: dict) -> None:
        if "theta_optimizer" in state:
            self.theta_optimizer.load_state_dict(state["theta_optimizer"])

    def _mixed(self, x: Tensor, x_adv: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        logits = self.model(x_adv)
        w = self.tcfg.clean_weight
        return (1 - w) * F.cross_entropy(logits, y) + w * F.cross_entropy(self.model(x), y), logits

    def _clean(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        logits = self.model(x)
        return F.cross_entropy(logits, y), logits

    def train_step(self, x: Tensor, y: Tensor, step: int) -> dict[str, Tensor]:
        t = self.tcfg
        epoch = step // self.steps_per_epoch
        noisy = epoch >= t.noise_start
        set_noise(self.model, noisy)
        stats: dict[str, Tensor] = {}
        if noisy and t.gamma > 0:  # 1. theta-only step on the regularizer
            reg = learn2perturb_regularizer(self.thetas(), t.gamma, harmonic_tau(epoch, t.noise_start))
            self.theta_optimizer.zero_grad(set_to_none=True)
            reg.backward()
            self.theta_optimizer.step()
            stats["reg"] = reg.detach()
        # 2. one backward pass of the training loss for W (and theta)
        if epoch >= t.adv_start:
            x_adv = self.adversarial(x, y)
            loss, logits = self.loss_call(self._mixed, x, x_adv, y)
            stats["adv_acc"] = (logits.detach().argmax(1) == y).float().mean()
        else:
            loss, logits = self.loss_call(self._clean, x, y)
        self.optimizer.zero_grad(set_to_none=True)
        self.theta_optimizer.zero_grad(set_to_none=True)
        self.backward(loss)  # averaged over ranks under torchrun
        if t.optim.grad_clip:
            torch.nn.utils.clip_grad_norm_([p for g in self.optimizer.param_groups for p in g["params"]],
                                           t.optim.grad_clip)
        self.optimizer.step()
        if noisy:
            self.theta_optimizer.step()
            clamp_noise_scales(self.model)
        stats["loss"] = loss.detach()
        return stats

    def validate(self) -> dict[str, float]:
        out = super().validate()
        out["noise_scale"] = mean_noise_scale(self.model)
        return out

    def selectable(self) -> bool:
        # best.pt only once the model is trained as it will be used (noise on, adversarial loss).
        return self.epoch > max(self.tcfg.noise_start, self.tcfg.adv_start) or self.epoch >= self.tcfg.epochs

    def on_resume(self) -> None:
        set_noise(self.model, self.epoch >= self.tcfg.noise_start)

    def fit(self, **kwargs):
        try:
            return super().fit(**kwargs)
        finally:
            if self.epoch >= self.tcfg.epochs:
                set_noise(self.model, True)
