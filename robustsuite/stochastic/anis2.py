"""ANIS2: adaptive noise injection with EMA-tracked scales (Tan, Elovici, Binder; ICPR 2020).

1. Teacher: a deterministic model of the same architecture, loaded from ``teacher_checkpoint`` or
   trained first by ``fit`` (``teacher_epochs``, CE or PGD-AT with ``teacher_adversarial``) in
   ``OUT/teacher/`` with the shared loop (so it resumes too, and starts over with ``resume=False``);
   a student ``last.pt`` that does not continue the run is refused before the teacher is touched.
   It is kept: it is the source of the transfer attack (``OUT/teacher/last.pt``, also named in
   every student checkpoint).
2. Student: a copy of the teacher whose residual-block ReLUs become :class:`StocReLUEMA`
   (``ReLU(x + d)``, ``d ~ N(0, gamma * sigma_c^2)``), fine-tuned with PGD adversarial training.
3. gamma follows the staircase of the slides' Algorithm 1
   (:func:`~robustsuite.stochastic.schedules.gamma_staircase`): ``k = r (gamma_max - gamma_init) / T``
   with ``r = gamma_step_every`` and ``T = train.epochs`` (the slides' "Max epochs"); after every
   r-th epoch gamma += k, so the trained student holds ``gamma_max`` (when r divides T; see
   :meth:`ANIS2Trainer.end_of_epoch_gamma`). ``gamma_ramp_epochs`` overrides T (gamma_max is then
   reached after that many epochs and held).
4. Per batch, sigma makes one EMA update from the forward pass of the training loss, with the
   slides' convention ``sigma <- (1 - alpha) sigma + alpha STD_chnwise(x)`` (alpha 0.5 there; see
   :class:`~robustsuite.stochastic.noise.StocReLUEMA`). The updates are paused while the PGD
   examples are crafted (and on the clean half when ``clean_weight > 0``). Eval mode freezes sigma.

Differences from the slides, written down: the slides do not say where sigma_0 starts (the first
update copies the batch statistic), which PGD settings the student's adversarial training uses
(``train.attack``), or the gamma values (settings). No public code of the authors was found, so
every setting follows the slides and there is no ``reference`` variant.

Config::

    train:
      method: anis2
      teacher_checkpoint: null      # or a robustsuite checkpoint of the base model
      teacher_epochs: 10
      gamma_init: 0.0
      gamma_max: 0.2
      gamma_step_every: 2           # r; T is train.epochs (gamma_ramp_epochs: an override of T)
      alpha: 0.5                    # EMA weight of the new batch statistic
      attack: {norm: linf, eps: 0.1, steps: 7}
"""
from __future__ import annotations

import copy
import logging

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import ConfigError
from ..training.checkpoint import load_checkpoint, load_weights
from ..training.registry import register_trainer
from .adversarial import AdversarialTrainer, PGDATTrainer
from .builders import add_noise, base_spec
from .config import ANIS2Config, PGDATConfig
from .noise import StocReLUEMA, ema_paused, set_gamma
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


@register_trainer("anis2", config=ANIS2Config)
class ANIS2Trainer(AdversarialTrainer):
    """ANIS2 student training from a teacher (see the module docstring); ``self.teacher`` holds the
    deterministic teacher (eval mode), the transfer-attack source."""

    kind = "anis2"

    @property
    def teacher_path(self):
        return self.out_dir / "teacher" / "last.pt"

    def gamma_at(self, epoch: int) -> float:
        """The gamma in effect after ``epoch`` completed epochs (the slides' staircase, T = train.epochs
        unless ``gamma_ramp_epochs`` overrides it)."""
        t = self.tcfg
        ramp = t.epochs if t.gamma_ramp_epochs is None else t.gamma_ramp_epochs
        return gamma_staircase(epoch, t.gamma_init, t.gamma_max, ramp, t.gamma_step_every)

    def end_of_epoch_gamma(self) -> None:
        """The slides' ``if t mod r = 0: gamma = gamma + k`` at the end of epoch t: the model that is
        validated and saved after an epoch holds the gamma of the next one (gamma_max at the end)."""
        set_gamma(self.model, self.gamma_at(self.epoch))

    def sync_model(self) -> None:
        super().sync_model()
        self.end_of_epoch_gamma()

    def prepare_model(self, model, train_set):
        t = self.tcfg
        self._teacher_ready = bool(t.teacher_checkpoint)
        if t.teacher_checkpoint:
            ckpt = load_checkpoint(t.teacher_checkpoint, map_location=self.device)
            if base_spec(ckpt["model_spec"]) != model.spec or "stochastic" in ckpt["model_spec"]:
                raise ConfigError(f"train.teacher_checkpoint: {t.teacher_checkpoint!r} holds model "
                                  f"{ckpt['model_spec']}, but the student is {model.spec}; the teacher "
                                  "must be the same deterministic architecture")
            load_weights(model, ckpt["model_state"], f"train.teacher_checkpoint {str(t.teacher_checkpoint)!r}: its weights")
            self.teacher_source = str(t.teacher_checkpoint)
        else:  # trained (or resumed) by fit(), once the student's own last.pt is known to continue this run
            self.teacher_source = str(self.teacher_path)
            self._teacher_train_set = train_set
        self.teacher = model.eval()
        # The noise layers are added to a copy of the architecture now (the optimizer needs the student's
        # parameters); a teacher trained in fit() then gives the copy its weights.
        student = add_noise(copy.deepcopy(model), "anis2", alpha=t.alpha, gamma=self.gamma_at(0), shared=t.shared)
        return student.train()

    def fit(self, *, resume: bool = True, stop_after: int | None = None):
        """Train (or resume) the teacher unless given, then the student (see :meth:`Trainer.fit`). A student
        ``last.pt`` that does not continue this run is refused before the teacher is touched; with
        ``resume=False`` the teacher starts over too."""
        if not self._teacher_ready:
            ckpt = self.resume_checkpoint() if resume else None
            if ckpt is None:
                self._train_teacher(self.teacher, self._teacher_train_set, resume)
                self._student_from_teacher()
            elif self.teacher_path.is_file():  # the student resumes its own weights; the teacher is only the source
                teacher = load_checkpoint(self.teacher_path, map_location=self.device)
                load_weights(self.teacher, teacher["model_state"], f"ANIS2 teacher {str(self.teacher_path)!r}")
            self.teacher.eval()
            self._teacher_ready = True
        return super().fit(resume=resume, stop_after=stop_after)

    def _student_from_teacher(self) -> None:
        """Copy the trained teacher's weights into the student (its noise buffers keep their initial state)."""
        missing, unexpected = self.model.load_state_dict(self.teacher.state_dict(), strict=False)
        noise = {f"{n}.{b}" for n, m in self.model.named_modules() if isinstance(m, StocReLUEMA)
                 for b, _ in m.named_buffers(recurse=False)}
        if unexpected or set(missing) - noise:  # the student is the teacher plus noise layers, by construction
            raise RuntimeError(f"ANIS2 student does not extend its teacher: missing {missing}, unexpected {unexpected}")

    def _train_teacher(self, model, train_set, resume: bool) -> None:
        t = self.tcfg
        tcfg = PGDATConfig(epochs=t.teacher_epochs, batch_size=t.batch_size, optim=t.teacher_optim,
                           attack=t.attack, val_subset=t.val_subset, val_attack_steps=0,
                           checkpoint_every=t.checkpoint_every)
        cfg = self.cfg.model_copy(update={"train": tcfg})
        cls = PGDATTrainer if t.teacher_adversarial else StandardTrainer
        teacher = cls(model, train_set, None, cfg, self.out_dir / "teacher", self.device, quiet=True)
        teacher.fit(resume=resume)
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
