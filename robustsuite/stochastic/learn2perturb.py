"""Learn2Perturb (Jeddi, Shafiee, Karg, Scharfenberger, Wong; CVPR 2020).

Perturbation-injection modules (learnable noise maps theta, init 0.25, >= theta_min) after the stem
and at every residual block output (supplement A.1). The training objective is the paper's eq. (7),
``L(P(X; W, theta), T) + gamma * g(theta)`` with ``g(theta) = -(1 / tau) * sum sqrt(theta)`` (eq. 8),
``tau = H_(e - s + 1)`` the harmonic number of the noise epochs so far (:func:`harmonic_tau`; eq. 9
as printed divides by zero in the first noise epoch). ``L`` is ``CE(clean)`` before ``adv_start`` and
``w * CE(clean) + (1 - w) * CE(PGD)`` after it (eq. 11, ``alpha = beta = 0.5``: ``clean_weight``).
Before ``noise_start`` the noise is off and theta frozen (Sec. 3.3: "the model parameters are trained
for 20 epochs before activating the perturbation distributions").

Two update rules, ``train.variant``:

``paper`` (default): Algorithm 1 of the paper, per batch::

    W^t     <- W^(t-1)     - lr * grad_W     L(P(X; W^(t-1), theta^(t-1)), T)
    theta^t <- theta^(t-1) - lr * grad_theta L(P(X; W^(t-1), theta^(t-1)), T) - gamma * grad g(theta^(t-1))
    theta^t <- max(theta^t, theta_min)

  One backward pass of ``L`` gives both gradients at the same point (W^(t-1), theta^(t-1)); the
  regularizer's push ``-gamma * grad g = +gamma / (2 tau sqrt(theta))`` is added after the optimizer
  step, at full size: not multiplied by the learning rate and kept out of theta's momentum. The
  ``lr * grad`` parts go through SGD with Nesterov momentum (weight decay on W only), the optimizer
  of supplement A.4 ("SGD optimizer with momentum of 0.9 with Nesterov momentum ... The noise
  injection parameters have weight decay equal to 0"); theta's learning rate is W's (Algorithm 1 has
  one ``lr``) unless ``theta_lr`` is set.

``reference``: the authors' training script (github ArmenJeddi/Learn2Perturb, ``train.py``), per batch:

1. a theta-only SGD step on ``gamma * g(theta)`` (``optimizer2`` on ``loss2``): the push is scaled by
   the learning rate and enters theta's momentum buffer;
2. the loss ``L`` at the moved theta, one backward pass, a step of W's optimizer and of theta's
   (the same momentum buffer as step 1, so theta's momentum mixes both), then the clamp.

Differences from both sources, kept on purpose (both variants):

* the harmonic number ``H_(e - s + 1)``: the script computes ``H_(e - s)``, which is 0 in the first
  noise epoch and raises ZeroDivisionError there; eq. 9 as printed has the same pole;
* the training PGD attacks the true labels (eq. 10 uses ``T``; the script attacks the model's own
  predictions ``pred_target``);
* W's gradient may be norm-clipped (``optim.grad_clip``; neither source clips);
* noise is drawn per sample (``noise.shared: true`` gives the script's one draw per batch).

Both follow the sources in theta's learning rate following W's milestones (the script multiplies
both optimizers' rates by 0.1 at ``lr_schedule``), and in theta's momentum and Nesterov flag being
W's (``optim.momentum``, ``nesterov``; the script builds both optimizers from ``args.momentum``).

Config::

    train:
      method: learn2perturb
      variant: paper            # or reference
      noise: {init: 0.25, theta_min: 0.01, shared: false}
      gamma: 1.0e-4
      noise_start: 20           # default: 20 (paper) / 10 (reference)
      adv_start: 20
      attack: {norm: linf, eps: 0.0314, steps: 7, step_size: 0.01}
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ..training.registry import register_trainer
from .adversarial import AdversarialTrainer, build_grouped_optimizer
from .builders import add_noise
from .config import Learn2PerturbConfig
from .losses import harmonic_tau, learn2perturb_regularizer
from .noise import PerturbationInjection, clamp_noise_scales, set_noise

__all__ = ["Learn2PerturbTrainer"]


@register_trainer("learn2perturb", config=Learn2PerturbConfig)
class Learn2PerturbTrainer(AdversarialTrainer):
    """Learn2Perturb training (see the module docstring for the two variants)."""

    kind = "learn2perturb"

    def prepare_model(self, model, train_set):
        n = self.tcfg.noise
        return add_noise(model, "learn2perturb", init=n.init, theta_min=n.theta_min, shared=n.shared)

    def thetas(self) -> list[torch.nn.Parameter]:
        return [m.theta for m in self.model.modules() if isinstance(m, PerturbationInjection)]

    def build_optimizer(self) -> torch.optim.Optimizer:
        ids = {id(t) for t in self.thetas()}
        weights = [p for p in self.model.parameters() if id(p) not in ids and p.requires_grad]
        o = self.tcfg.optim
        self.theta_optimizer = torch.optim.SGD(self.thetas(), lr=self._theta_base_lr(), momentum=o.momentum,
                                               nesterov=self.tcfg.nesterov and o.momentum > 0, weight_decay=0.0)
        return build_grouped_optimizer([{"params": weights}], o, self.tcfg.nesterov)

    def _theta_base_lr(self) -> float:
        return self.tcfg.theta_lr or self.tcfg.optim.lr

    def _sync_theta_lr(self) -> None:
        # theta's rate follows W's milestones (both sources decay the two together); derived from the
        # restored scheduler, so a resumed run uses the same rate
        scale = self.optimizer.param_groups[0]["lr"] / self.tcfg.optim.lr
        for g in self.theta_optimizer.param_groups:
            g["lr"] = self._theta_base_lr() * scale

    def extra_state(self) -> dict:
        return {"theta_optimizer": self.theta_optimizer.state_dict()}

    def load_extra_state(self, state: dict) -> None:
        if "theta_optimizer" in state:
            self.theta_optimizer.load_state_dict(state["theta_optimizer"])

    def _mixed(self, x: Tensor, x_adv: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        """Eq. (11): ``(1 - w) * CE(P(x_adv), y) + w * CE(P(x), y)``, ``w = clean_weight``."""
        logits = self.model(x_adv)
        w = self.tcfg.clean_weight
        return (1 - w) * F.cross_entropy(logits, y) + w * F.cross_entropy(self.model(x), y), logits

    def _clean(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        logits = self.model(x)
        return F.cross_entropy(logits, y), logits

    def _regularizer(self, epoch: int) -> Tensor:
        """``gamma * g(theta)`` at the current theta (a scalar to minimize; it pushes theta up)."""
        return learn2perturb_regularizer(self.thetas(), self.tcfg.gamma, harmonic_tau(epoch, self.tcfg.noise_start))

    def _loss_backward(self, x: Tensor, y: Tensor, epoch: int, stats: dict[str, Tensor]) -> Tensor:
        """The training loss L at the current (W, theta) and its gradients (W's clipped if configured)."""
        if epoch >= self.tcfg.adv_start:
            x_adv = self.adversarial(x, y)
            loss, logits = self.loss_call(self._mixed, x, x_adv, y)
            stats["adv_acc"] = (logits.detach().argmax(1) == y).float().mean()
        else:
            loss, logits = self.loss_call(self._clean, x, y)
        self.optimizer.zero_grad(set_to_none=True)
        self.theta_optimizer.zero_grad(set_to_none=True)
        self.backward(loss)  # averaged over ranks under torchrun
        if self.tcfg.optim.grad_clip:
            torch.nn.utils.clip_grad_norm_([p for g in self.optimizer.param_groups for p in g["params"]],
                                           self.tcfg.optim.grad_clip)
        return loss

    def train_step(self, x: Tensor, y: Tensor, step: int) -> dict[str, Tensor]:
        epoch = step // self.steps_per_epoch
        noisy = epoch >= self.tcfg.noise_start
        set_noise(self.model, noisy)
        self._sync_theta_lr()
        stats: dict[str, Tensor] = {}
        if self.tcfg.variant == "reference":
            self._reference_step(x, y, epoch, noisy, stats)
        else:
            self._paper_step(x, y, epoch, noisy, stats)
        return stats

    def _paper_step(self, x: Tensor, y: Tensor, epoch: int, noisy: bool, stats: dict[str, Tensor]) -> None:
        """Algorithm 1: both updates from the gradients at (W^(t-1), theta^(t-1)), push at full size."""
        push = None
        if noisy and self.tcfg.gamma > 0:
            # gamma * grad g at theta^(t-1), before any step moves theta
            reg = self._regularizer(epoch)
            push = torch.autograd.grad(reg, self.thetas())
            stats["reg"] = reg.detach()
        stats["loss"] = self._loss_backward(x, y, epoch, stats).detach()
        self.optimizer.step()
        if noisy:
            self.theta_optimizer.step()
            if push is not None:
                with torch.no_grad():
                    for theta, g in zip(self.thetas(), push):  # one per layer
                        theta.sub_(g)
            clamp_noise_scales(self.model)

    def _reference_step(self, x: Tensor, y: Tensor, epoch: int, noisy: bool, stats: dict[str, Tensor]) -> None:
        """The authors' script: a theta-only step on the regularizer, then the joint step on L."""
        if noisy and self.tcfg.gamma > 0:
            reg = self._regularizer(epoch)
            self.theta_optimizer.zero_grad(set_to_none=True)
            reg.backward()
            self.theta_optimizer.step()
            stats["reg"] = reg.detach()
        stats["loss"] = self._loss_backward(x, y, epoch, stats).detach()
        self.optimizer.step()
        if noisy:
            self.theta_optimizer.step()
            clamp_noise_scales(self.model)

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
