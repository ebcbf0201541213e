"""MNG-AC: meta noise generator with adversarial consistency (Madaan, Shin, Hwang; ICML 2021).

Per batch:

1. draw one norm uniformly from ``attacks`` (stochastic adversarial training) and craft ``x_adv``
   with its PGD;
2. ``x_aug`` from the :class:`NoiseGenerator`, projected onto that norm's ball and [0, 1];
3. a one-step look-ahead classifier ``theta' = theta - lr * grad CE(f_theta(x_aug))``, kept
   differentiable in the generator (:func:`torch.func.functional_call`; BatchNorm statistics of
   the look-ahead go to copies, so the classifier is untouched);
4. a generator step on ``CE(f_theta'(x_adv))`` (gradients only for the generator);
5. ``x_aug`` regenerated without gradient;
6. a classifier step on ``CE(f(x_adv)) + js_weight * JS(p_clean, p_adv, p_aug)``.

The classifier's learning rate follows the cyclic schedule 0 -> ``lr_max`` -> 0 over training
(set per batch); the generator has its own Adam, saved in every checkpoint.

Config::

    train:
      method: mng_ac
      attacks:
        - {norm: linf, eps: 0.0314, steps: 10, step_size: 0.0078}
        - {norm: l1, eps: 7.84, steps: 20}
        - {norm: l2, eps: 0.502, steps: 10}
      generator: {input: noise, hidden: 16, lr: 1.0e-4}
      js_weight: 12
      lr_max: 0.21
      optim: {name: sgd, momentum: 0.9, weight_decay: 5.0e-4}
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.func import functional_call

from ..training.distributed import all_reduce_grads, broadcast_object
from .adversarial import AdversarialTrainer, make_pgd, threat_of
from .generator import NoiseGenerator
from .losses import js_divergence
from .schedules import cyclic_lr

__all__ = ["MNGACTrainer", "meta_generator_step"]


def meta_generator_step(model, generator: NoiseGenerator, gen_optimizer: torch.optim.Optimizer,
                        x: Tensor, x_adv: Tensor, y: Tensor, threat, lr: float, weight: float = 1.0) -> Tensor:
    """Steps 2-4: update only ``generator`` through a differentiable one-step look-ahead of
    ``model``; the model's parameters, gradients and buffers are left as they were. Returns the
    meta loss ``CE(f_theta'(x_adv), y)`` (detached).

    ``weight`` scales the generator's gradient (this rank's share of the global batch under torchrun,
    where the gradients are then averaged over ranks so every rank takes the same step)."""
    params = {n: p for n, p in model.named_parameters()}
    buffers = {n: b.clone() for n, b in model.named_buffers()}
    x_aug = generator(x, threat)
    loss_aug = F.cross_entropy(functional_call(model, {**params, **buffers}, (x_aug,)), y)
    grads = torch.autograd.grad(loss_aug, list(params.values()), create_graph=True, allow_unused=True)
    ahead = {n: p if g is None else p - lr * g for (n, p), g in zip(params.items(), grads)}
    buffers = {n: b.clone() for n, b in model.named_buffers()}
    meta = F.cross_entropy(functional_call(model, {**ahead, **buffers}, (x_adv,)), y)
    gen_params = [p for p in generator.parameters() if p.requires_grad]
    gen_grads = torch.autograd.grad(meta, gen_params, allow_unused=True)
    gen_optimizer.zero_grad(set_to_none=True)
    for p, g in zip(gen_params, gen_grads):
        p.grad = None if g is None else g.detach() * weight
    all_reduce_grads(gen_params)  # no-op in one process
    gen_optimizer.step()
    return meta.detach()


class MNGACTrainer(AdversarialTrainer):
    """MNG-AC training (see the module docstring); ``self.generator`` is the meta noise generator."""

    kind = "mng_ac"

    def __init__(self, model, train_set, val_set, cfg, out_dir, device, *, quiet: bool = False):
        super().__init__(model, train_set, val_set, cfg, out_dir, device, quiet=quiet)
        t = self.tcfg
        in_ch = int(model.spec["in_shape"][0])
        self.generator = NoiseGenerator(in_ch, t.generator.hidden, t.generator.input == "image").to(device)
        self.gen_optimizer = torch.optim.Adam(self.generator.parameters(), lr=t.generator.lr)
        self.attacks = [make_pgd(self.model, a) for a in t.attacks]
        self.threats = [threat_of(a) for a in t.attacks]
        self.total_steps = t.epochs * self.steps_per_epoch

    def extra_state(self) -> dict:
        return {"generator": self.generator.state_dict(), "gen_optimizer": self.gen_optimizer.state_dict()}

    def load_extra_state(self, state: dict) -> None:
        if "generator" in state:
            self.generator.load_state_dict(state["generator"])
            self.gen_optimizer.load_state_dict(state["gen_optimizer"])

    def _model_entry(self) -> dict:
        return {**super()._model_entry(), "generator_state": self.generator.state_dict()}

    def _loss(self, x: Tensor, x_adv: Tensor, x_aug: Tensor, y: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        logits_clean, logits_adv, logits_aug = self.model(torch.cat([x, x_adv, x_aug])).split(x.shape[0])
        ce = F.cross_entropy(logits_adv, y)
        js = js_divergence(logits_clean, logits_adv, logits_aug)
        return ce + self.tcfg.js_weight * js, ce, js, logits_adv

    def train_step(self, x: Tensor, y: Tensor, step: int) -> dict[str, Tensor]:
        t = self.tcfg
        lr = cyclic_lr(step + 1, self.total_steps, t.lr_max, t.cyclic_peak)
        for g in self.optimizer.param_groups:
            g["lr"] = lr
        k = broadcast_object(int(torch.randint(len(self.attacks), (1,))))  # the global batch's norm: rank 0's draw
        x_adv = self.attacks[k](x, y)
        self.generator.train()
        meta = meta_generator_step(self.model, self.generator, self.gen_optimizer, x, x_adv, y,
                                   self.threats[k], t.lookahead_lr or lr, weight=self.loss_weight)
        with torch.no_grad():
            x_aug = self.generator(x, self.threats[k])
        loss, ce, js, logits_adv = self.loss_call(self._loss, x, x_adv, x_aug, y)
        self.clip_and_step(loss)
        return {"loss": loss.detach(), "ce_adv": ce.detach(), "js": js.detach(), "meta": meta,
                "adv_acc": (logits_adv.detach().argmax(1) == y).float().mean()}
