"""ANIS2: adaptive noise injection with EMA-tracked scales (Tan, Elovici, Binder; ICPR 2020).

1. Teacher: a deterministic model of the same architecture, loaded from ``teacher_checkpoint`` or
   trained first (``teacher_epochs``, CE or PGD-AT with ``teacher_adversarial``) in
   ``OUT/teacher/`` with the shared loop (so it resumes too). It is kept: it is the source of the
   transfer attack (``OUT/teacher/last.pt``, also named in every student checkpoint).
2. Student: a copy of the teacher whose residual-block ReLUs become :class:`StocReLUEMA`
   (``ReLU(x + d)``, ``d ~ N(0, gamma * sigma_c^2)``), fine-tuned with PGD adversarial training.
3. Per epoch, gamma follows the staircase :func:`~robustsuite.stochastic.schedules.gamma_staircase`;
   per batch, sigma makes one EMA update (alpha 0.5) from the forward pass of the training loss
   (the updates are paused while the PGD examples are crafted). Eval mode freezes sigma.

Config::

    train:
      method: anis2
      teacher_checkpoint: null      # or a robustsuite checkpoint of the base model
      teacher_epochs: 10
      gamma_init: 0.0
      gamma_max: 0.2
      gamma_ramp_epochs: 10
      gamma_step_every: 2
      attack: {norm: linf, eps: 0.1, steps: 7}
"""
from __future__ import annotations

import copy
import logging

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import ConfigError
from ..training.checkpoint import load_checkpoint
from .adversarial import AdversarialTrainer, PGDATTrainer
from .builders import add_noise, base_spec
from .config import PGDATConfig
from .noise import ema_paused, set_gamma
from .schedules import gamma_staircase

__all__ = ["ANIS2Trainer", "StandardTrainer"]

log = logging.getLogger(__name__)


class StandardTrainer(AdversarialTrainer):
    """Plain cross-entropy training (the deterministic ANIS2 teacher)."""

    kind = "standard"

    def _ce(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        logits = self.model(x)
        return F.cross_entropy(logits, y), logits

    def train_step(self, x: Tensor, y: Tensor, step: int) -> dict[str, Tensor]:
        loss, logits = self.loss_call(self._ce, x, y)
        self.clip_and_step(loss)
        return {"loss": loss.detach(), "acc": (logits.detach().argmax(1) == y).float().mean()}


class ANIS2Trainer(AdversarialTrainer):
    """ANIS2 student training from a teacher (see the module docstring); ``self.teacher`` holds the
    deterministic teacher (eval mode), the transfer-attack source."""

    kind = "anis2"

    @property
    def teacher_path(self):
        return self.out_dir / "teacher" / "last.pt"

    def gamma_at(self, epoch: int) -> float:
        t = self.tcfg
        return gamma_staircase(epoch, t.gamma_init, t.gamma_max, t.gamma_ramp_epochs, t.gamma_step_every)

    def prepare_model(self, model, train_set):
        t = self.tcfg
        if t.teacher_checkpoint:
            ckpt = load_checkpoint(t.teacher_checkpoint, map_location=self.device)
            if base_spec(ckpt["model_spec"]) != model.spec or "stochastic" in ckpt["model_spec"]:
                raise ConfigError(f"train.teacher_checkpoint: {t.teacher_checkpoint!r} holds model "
                                  f"{ckpt['model_spec']}, but the student is {model.spec}; the teacher "
                                  "must be the same deterministic architecture")
            model.load_state_dict(ckpt["model_state"])
            self.teacher_source = str(t.teacher_checkpoint)
        else:
            self._train_teacher(model, train_set)
            self.teacher_source = str(self.teacher_path)
        self.teacher = model.eval()
        student = add_noise(copy.deepcopy(model), "anis2", alpha=t.alpha, gamma=self.gamma_at(0), shared=t.shared)
        return student.train()

    def _train_teacher(self, model, train_set) -> None:
        t = self.tcfg
        tcfg = PGDATConfig(epochs=t.teacher_epochs, batch_size=t.batch_size, optim=t.teacher_optim,
                           attack=t.attack, val_subset=t.val_subset, val_attack_steps=0,
                           checkpoint_every=t.checkpoint_every)
        cfg = self.cfg.model_copy(update={"train": tcfg})
        cls = PGDATTrainer if t.teacher_adversarial else StandardTrainer
        teacher = cls(model, train_set, None, cfg, self.out_dir / "teacher", self.device, quiet=True)
        teacher.fit(resume=True)
        log.info("ANIS2 teacher ready at %s", self.teacher_path)

    def _model_entry(self) -> dict:
        return {**super()._model_entry(), "teacher_checkpoint": self.teacher_source}

    def _student_loss(self, x: Tensor, x_adv: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        logits = self.model(x_adv)  # the one EMA update of this batch
        loss = F.cross_entropy(logits, y)
        w = self.tcfg.clean_weight
        if w > 0:
            with ema_paused(self.model):
                loss = (1 - w) * loss + w * F.cross_entropy(self.model(x), y)
        return loss, logits

    def train_step(self, x: Tensor, y: Tensor, step: int) -> dict[str, Tensor]:
        gamma = self.gamma_at(step // self.steps_per_epoch)
        set_gamma(self.model, gamma)
        with ema_paused(self.model):
            x_adv = self.adversarial(x, y)
        loss, logits = self.loss_call(self._student_loss, x, x_adv, y)
        self.clip_and_step(loss)
        return {"loss": loss.detach(), "adv_acc": (logits.detach().argmax(1) == y).float().mean(),
                "gamma": torch.tensor(gamma)}
