"""The adversarial trainers' shared base, PGD adversarial training (Madry) and PNI.

:class:`AdversarialTrainer` extends the shared :class:`~robustsuite.training.loop.Trainer` with:
``prepare_model`` (insert noise layers before the optimizer is built; the model's ``spec`` then
records them), parameter groups (noise scales never get weight decay; Nesterov on request), the
training PGD (random start from torch's global RNG, so resume is exact), and a validation that
attacks ``val_subset`` held-out samples (noise on) to pick ``best.pt``.

The model stays in training mode while the training attack runs (as in Madry et al.'s code); the
attacks never change the mode, and noise stays on.

Config (``method: pgd_at``; ``method: pni`` adds ``noise: {init: 0.25, shared: false}``)::

    train:
      method: pgd_at
      epochs: 20
      attack: {norm: linf, eps: 0.1, steps: 7}
      clean_weight: 0.0
      optim: {name: sgd, lr: 0.05, momentum: 0.9, weight_decay: 5.0e-4}
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..attacks import PGD, per_sample_robust
from ..runtime import derived_seed, isolated_rng
from ..threats import L1Ball, L2Ball, LinfBall
from ..training.loop import Trainer
from ..training.registry import register_trainer
from .builders import add_noise
from .config import PGDATConfig, PNIConfig
from .noise import NoiseLayer, mean_noise_scale

__all__ = ["AdversarialTrainer", "PGDATTrainer", "PNITrainer", "make_pgd", "threat_of"]

_BALLS = {"linf": LinfBall, "l2": L2Ball, "l1": L1Ball}


def threat_of(settings) -> LinfBall | L2Ball | L1Ball:
    """The threat set of an :class:`~robustsuite.stochastic.config.AttackSettings`."""
    return _BALLS[settings.norm](settings.eps)


def make_pgd(model, settings, *, steps: int | None = None, eot: int = 1, seed: int | None = None) -> PGD:
    """The PGD of ``settings`` on ``model`` (``steps`` overrides; ``seed=None``: global RNG)."""
    steps = settings.steps if steps is None else steps
    step_size = settings.step_size if steps == settings.steps else None
    extra = {"l1_fraction": settings.l1_fraction} if settings.norm == "l1" else {}
    return PGD(model, threat_of(settings), steps=steps, step_size=step_size,
               random_start=settings.random_start, eot=eot, seed=seed, **extra)


def split_noise_params(model: nn.Module) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """(weights, noise scales): the parameters of the noise layers, and all others."""
    noise_ids = {id(p) for m in model.modules() if isinstance(m, NoiseLayer) for p in m.parameters(recurse=False)}
    weights = [p for p in model.parameters() if id(p) not in noise_ids and p.requires_grad]
    noise = [p for p in model.parameters() if id(p) in noise_ids and p.requires_grad]
    return weights, noise


def build_grouped_optimizer(groups: list[dict], optim_cfg, nesterov: bool = False) -> torch.optim.Optimizer:
    """Adam or SGD over parameter ``groups`` (each may override ``weight_decay``)."""
    groups = [g for g in groups if g["params"]]
    if optim_cfg.name == "adam":
        return torch.optim.Adam(groups, lr=optim_cfg.lr, weight_decay=optim_cfg.weight_decay)
    return torch.optim.SGD(groups, lr=optim_cfg.lr, momentum=optim_cfg.momentum,
                           weight_decay=optim_cfg.weight_decay, nesterov=nesterov and optim_cfg.momentum > 0)


class AdversarialTrainer(Trainer):
    """Base of the stochastic trainers: model preparation, grouped optimizer, PGD, validation."""

    kind = "adversarial"
    decay_noise = False  # weight decay on noise-scale parameters

    def __init__(self, model, train_set, val_set, cfg, out_dir, device, *, quiet: bool = False):
        self.cfg, self.tcfg = cfg, cfg.train
        self.device = device
        self.out_dir = Path(out_dir)
        model = self.prepare_model(model, train_set)
        super().__init__(model, train_set, val_set, cfg, out_dir, device, quiet=quiet)
        self.optimizer = self.build_optimizer()
        self.scheduler = torch.optim.lr_scheduler.MultiStepLR(
            self.optimizer, milestones=list(self.tcfg.optim.milestones), gamma=self.tcfg.optim.gamma)
        self.attack = make_pgd(self.model, self.tcfg.attack)
        self._val_cache = None

    # ------------------------------------------------------------------ hooks for subclasses
    def prepare_model(self, model: nn.Module, train_set) -> nn.Module:
        """Insert noise layers (subclasses); runs before the optimizer is built."""
        return model

    def build_optimizer(self) -> torch.optim.Optimizer:
        weights, noise = split_noise_params(self.model)
        groups = [{"params": weights}]
        if noise:
            groups.append({"params": noise} if self.decay_noise else {"params": noise, "weight_decay": 0.0})
        return build_grouped_optimizer(groups, self.tcfg.optim, self.tcfg.nesterov)

    def adversarial(self, x: Tensor, y: Tensor) -> Tensor:
        """Training adversarial examples (PGD of ``train.attack``; fresh random start and noise)."""
        return self.attack(x, y)

    # ------------------------------------------------------------------ training
    def mixed_loss(self, x: Tensor, x_adv: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        logits = self.model(x_adv)
        loss = F.cross_entropy(logits, y)
        w = self.tcfg.clean_weight
        if w > 0:
            loss = (1 - w) * loss + w * F.cross_entropy(self.model(x), y)
        return loss, logits

    def train_step(self, x: Tensor, y: Tensor, step: int) -> dict[str, Tensor]:
        x_adv = self.adversarial(x, y)
        loss, logits = self.loss_call(self.mixed_loss, x, x_adv, y)  # in DDP's forward under torchrun
        self.clip_and_step(loss)
        return {"loss": loss.detach(), "adv_acc": (logits.detach().argmax(1) == y).float().mean()}

    # ------------------------------------------------------------------ validation
    def _val_tensors(self):
        if self._val_cache is None:
            from ..data import as_tensors
            # built on first use, which after a resume is a later epoch: on streams of its own, so
            # when it is built cannot change what validation draws
            with isolated_rng(derived_seed(int(self.cfg.seed), "validation set")):
                x, y = as_tensors(self.val_set, limit=self.tcfg.val_subset)
            self._val_cache = (x.to(self.device), y.to(self.device))
        return self._val_cache

    def validate(self) -> dict[str, float]:
        out = {"noise_scale": mean_noise_scale(self.model)}
        if self.val_set is None or len(self.val_set) == 0:
            return out
        x, y = self._val_tensors()
        with torch.no_grad():
            clean = float((self.model(x).argmax(1) == y).float().mean())
        out["clean_acc"] = clean
        if self.tcfg.val_attack_steps > 0:
            atk = make_pgd(self.model, self.tcfg.attack, steps=self.tcfg.val_attack_steps, seed=int(self.cfg.seed))
            rec = per_sample_robust(self.model, x, y, atk, batch_size=max(1, x.shape[0]), device=x.device,
                                    clean="after")
            robust = float(rec.robust.float().mean())
            out["pgd_acc"] = robust
            out["select"] = robust + 1e-3 * clean
        else:
            out["select"] = clean
        return out


@register_trainer("pgd_at", config=PGDATConfig)
class PGDATTrainer(AdversarialTrainer):
    """PGD adversarial training (Madry et al. 2018): CE on PGD examples (optionally mixed with clean)."""

    kind = "pgd_at"


@register_trainer("pni", config=PNIConfig)
class PNITrainer(AdversarialTrainer):
    """Parametric noise injection (He, Rakin, Fan 2019), activation variant: a learnable scalar
    ``alpha`` per insertion point (after the stem and every residual block), ``x + alpha * std(x)
    * N(0, 1)``, trained jointly with the weights by PGD-AT. ``alpha`` gets no weight decay unless
    ``noise_weight_decay``."""

    kind = "pni"

    @property
    def decay_noise(self) -> bool:  # type: ignore[override]
        return self.tcfg.noise_weight_decay

    def prepare_model(self, model, train_set):
        return add_noise(model, "pni", init=self.tcfg.noise.init, shared=self.tcfg.noise.shared)
