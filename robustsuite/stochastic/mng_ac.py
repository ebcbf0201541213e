"""MNG-AC: meta noise generator with adversarial consistency (Madaan, Shin, Hwang; ICML 2021).

Sources: the paper's slides (``mng-ac-slides.txt``: "Stochastic Adversarial Training", "Meta-Noise
Generator with Adversarial Consistency", Steps 1 and 2) and the authors' code (divyam3897/MNG_AC,
``train_MNG.py``). The default (``variant: paper``) follows the paper where it says something and
the code where it is silent; ``variant: reference`` selects the code where the two differ.

Per batch (``train_step``):

1. the classifier's and the generator's learning rates follow the cyclic schedule
   0 -> ``lr_max`` -> 0 (:func:`cyclic_lr`, set per batch; the code's ``lr_schedule``);
2. one norm drawn uniformly from ``attacks`` for this batch ("SAT samples from a distribution of
   attacks during each episode of training"), and ``x_adv`` from its PGD. The attack's forward
   passes leave the classifier's BatchNorm running statistics as they were: the code attacks a
   deep copy of the model (``meta_model = copy.deepcopy(model)``);
3. ``x_aug`` from the :class:`NoiseGenerator`, fitted to that norm's set;
4. a one-step look-ahead classifier ``theta' = theta - lr * grad CE(f_theta(x_aug))``, kept
   differentiable in the generator (:func:`torch.func.functional_call`; BatchNorm statistics of
   the look-ahead go to copies, so the classifier is untouched) ("Step 1: meta-learn the noise
   generator");
5. a generator step on ``CE(f_theta'(x_adv))`` (gradients only for the generator);
6. ``x_aug`` regenerated without gradient;
7. a classifier step on ``CE(f(x_adv)) + js_weight * JS(p_clean, p_adv, p_aug)`` ("Step 2: update
   the classifier with the stochastic adversarial loss and adversarial consistency
   regularization"), with clean, augmented and adversarial batches in **three forward passes** (the
   code's order), so each is normalized with its own BatchNorm statistics and the running
   statistics take three updates, not one on a mixed batch.

Where the sources differ, or our choices are the code's because the slides are silent:

=========================  =================================  =================================
item                       ``paper`` (default)                ``reference`` (authors' code)
=========================  =================================  =================================
generator input            noise and image ("input-dependent  Gaussian noise only
                           noise")
generator output fit       projection onto ball and [0, 1]    L2 rescaled to exactly eps after
                                                              the clip; L1 projected then clipped
=========================  =================================  =================================

The same in both (the slides are silent; the code's choice): the generator's architecture
(1x1 / 3x3 / 1x1 / 1x1 convolutions, 20 channels, leaky ReLU, noise residual; see
:mod:`.noise_generator`); its optimizer, SGD with momentum 0.9 and weight decay 5e-4 on the classifier's
cyclic learning rate; the look-ahead's learning rate, the classifier's current one; JS weight 12;
the three forward passes; the training L1 attack's top 1 % of coordinates; the training PGD of
the CIFAR defaults (10 / 20 / 10 steps of 1/255, 1.0, 30/255). ``best.pt`` is selected on the
union accuracy over every norm in ``attacks`` (the paper's headline metric; the code keeps the last
epoch). Not reproduced: the code's own PGD initializations (ours: uniform in the ball) and its
cyclic peak at ``(2 * epochs) // 5`` whole epochs (ours: at fraction ``cyclic_peak`` of the steps;
equal when 5 divides ``2 * epochs``).

Config::

    train:
      method: mng_ac
      variant: paper                      # or reference
      attacks:
        - {norm: linf, eps: 0.0314, steps: 10, step_size: 0.0039}
        - {norm: l1, eps: 7.84, steps: 20, step_size: 1.0}      # l1_fraction 0.01 by default
        - {norm: l2, eps: 0.502, steps: 10, step_size: 0.118}
      generator: {hidden: 20, lr_scale: 1.0, momentum: 0.9, weight_decay: 5.0e-4}
      js_weight: 12
      lr_max: 0.21
      optim: {name: sgd, momentum: 0.9, weight_decay: 5.0e-4}
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from ..attacks import per_sample_robust
from ..training.distributed import all_reduce_grads, broadcast_object
from ..training.registry import register_trainer
from .adversarial import AdversarialTrainer, make_pgd, threat_of
from .config import MNGACConfig
from .noise_generator import NoiseGenerator
from .losses import js_divergence
from .schedules import cyclic_lr

__all__ = ["MNGACTrainer", "meta_generator_step"]


def meta_generator_step(model, generator: NoiseGenerator, gen_optimizer: torch.optim.Optimizer,
                        x: Tensor, x_adv: Tensor, y: Tensor, threat, lr: float, weight: float = 1.0) -> Tensor:
    """Steps 3-5: update only ``generator`` through a differentiable one-step look-ahead of
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


@contextmanager
def buffers_kept(model: nn.Module) -> Iterator[None]:
    """Restore every buffer of ``model`` (BatchNorm running statistics) on exit: forward passes
    inside (the training attack) act as if on a copy of the model, as in the reference code."""
    saved = [(b, b.clone()) for b in model.buffers()]
    try:
        yield
    finally:
        with torch.no_grad():
            for b, v in saved:
                b.copy_(v)


@register_trainer("mng_ac", config=MNGACConfig)
class MNGACTrainer(AdversarialTrainer):
    """MNG-AC training (see the module docstring); ``self.generator`` is the meta noise generator."""

    kind = "mng_ac"

    def __init__(self, model, train_set, val_set, cfg, out_dir, device, *, quiet: bool = False):
        super().__init__(model, train_set, val_set, cfg, out_dir, device, quiet=quiet)
        t = self.tcfg
        g = t.generator
        in_ch = int(model.spec["in_shape"][0])
        self.generator = NoiseGenerator(in_ch, g.hidden, g.input == "image", g.projection).to(device)
        # lr: set every batch from the classifier's cyclic schedule
        self.gen_optimizer = torch.optim.SGD(self.generator.parameters(), lr=t.lr_max * g.lr_scale,
                                             momentum=g.momentum, weight_decay=g.weight_decay)
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
        # three passes, in the reference's order: BatchNorm normalizes each batch with its own statistics
        logits_clean = self.model(x)
        logits_aug = self.model(x_aug)
        logits_adv = self.model(x_adv)
        ce = F.cross_entropy(logits_adv, y)
        js = js_divergence(logits_clean, logits_adv, logits_aug)
        return ce + self.tcfg.js_weight * js, ce, js, logits_adv

    def train_step(self, x: Tensor, y: Tensor, step: int) -> dict[str, Tensor]:
        t = self.tcfg
        lr = cyclic_lr(step + 1, self.total_steps, t.lr_max, t.cyclic_peak)
        for g in self.optimizer.param_groups:
            g["lr"] = lr
        for g in self.gen_optimizer.param_groups:
            g["lr"] = lr * t.generator.lr_scale
        k = broadcast_object(int(torch.randint(len(self.attacks), (1,))))  # the global batch's norm: rank 0's draw
        with buffers_kept(self.model):
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

    def validate(self) -> dict[str, float]:
        """Clean accuracy, PGD accuracy per norm of ``attacks`` (``pgd_<norm>_acc``) and their union
        (``union_acc``: robust to every norm) on ``val_subset`` held-out samples; ``select`` is the
        union accuracy (ties broken by clean accuracy)."""
        if self.val_set is None or len(self.val_set) == 0:
            return {}
        x, y = self._val_tensors()
        with torch.no_grad():
            clean = float((self.model(x).argmax(1) == y).float().mean())
        out = {"clean_acc": clean}
        if self.tcfg.val_attack_steps <= 0:
            return {**out, "select": clean}
        robust = []
        for a in self.tcfg.attacks:
            atk = make_pgd(self.model, a, steps=self.tcfg.val_attack_steps, seed=int(self.cfg.seed))
            r = per_sample_robust(self.model, x, y, atk, batch_size=max(1, x.shape[0]), device=x.device,
                                  clean="after").robust
            out[f"pgd_{a.norm}_acc"] = float(r.float().mean())
            robust.append(r)
        union = float(torch.stack(robust).all(0).float().mean())
        return {**out, "union_acc": union, "select": union + 1e-3 * clean}
