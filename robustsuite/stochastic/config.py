"""Typed ``train`` sections of the stochastic defenses and their adversarial-training baselines.

``method`` picks the class: ``pgd_at``, ``pni``, ``learn2perturb``, ``trades``, ``anis2``,
``mng_ac``. Every section has the shared settings of :class:`~robustsuite.training.config.TrainBase`, an
``attack`` (the PGD used for training and for model selection), and validation settings.
"""
from __future__ import annotations

from typing import Literal, Optional

from pydantic import Field, model_validator

from ..settings import Strict
from ..training.config import OptimConfig, TrainBase

__all__ = ["AttackSettings", "StochasticTrainBase", "PGDATConfig", "PNIConfig", "Learn2PerturbConfig",
           "TradesConfig", "ANIS2Config", "MNGACConfig", "GeneratorSettings", "L2PNoiseSettings",
           "PNINoiseSettings"]


class AttackSettings(Strict):
    """A PGD attack: threat norm and radius (pixel units of [0, 1] images), steps, step size."""

    norm: Literal["linf", "l2", "l1"] = "linf"
    eps: float = Field(..., gt=0, description="radius in the norm, pixel units")
    steps: int = Field(7, ge=1)
    step_size: Optional[float] = Field(None, gt=0, description="default 2.5 * eps / steps")
    random_start: bool = True
    l1_fraction: float = Field(0.05, gt=0, le=1, description="L1 only: coordinates per sparse step")


class StochasticTrainBase(TrainBase):
    """Shared settings of the adversarial trainers."""

    attack: AttackSettings
    clean_weight: float = Field(0.0, ge=0, le=1, description="loss = (1 - w) CE(adv) + w CE(clean)")
    nesterov: bool = Field(False, description="Nesterov momentum (SGD only)")
    val_subset: int = Field(256, ge=1, description="validation samples attacked for model selection")
    val_attack_steps: int = Field(5, ge=0, description="PGD steps for model selection (0: clean accuracy)")


class PGDATConfig(StochasticTrainBase):
    """Madry PGD adversarial training (``method: pgd_at``), optionally mixed with clean data."""

    method: Literal["pgd_at"] = "pgd_at"


class PNINoiseSettings(Strict):
    init: float = Field(0.25, ge=0)
    shared: bool = Field(False, description="one draw per batch (reference code) instead of per sample")


class PNIConfig(StochasticTrainBase):
    """Parametric noise injection (``method: pni``): a learnable scalar per layer, PGD-AT."""

    method: Literal["pni"] = "pni"
    noise: PNINoiseSettings = Field(default_factory=PNINoiseSettings)
    noise_weight_decay: bool = Field(False, description="apply the weight decay to alpha too")


class L2PNoiseSettings(Strict):
    init: float = Field(0.25, gt=0)
    theta_min: float = Field(0.01, ge=0)
    shared: bool = Field(False, description="one draw per batch (reference code) instead of per sample")

    @model_validator(mode="after")
    def _order(self):
        if self.init < self.theta_min:
            raise ValueError(f"init ({self.init}) must be >= theta_min ({self.theta_min})")
        return self


class Learn2PerturbConfig(StochasticTrainBase):
    """Learn2Perturb (``method: learn2perturb``): see :mod:`robustsuite.stochastic.learn2perturb`.

    ``variant: paper`` (default) is the paper's Algorithm 1; ``variant: reference`` the authors'
    training script. ``noise_start`` defaults to the variant's source: 20 epochs (paper, Sec. 3.3)
    or 10 (the script's ``noise_add_delay``).
    """

    method: Literal["learn2perturb"] = "learn2perturb"
    variant: Literal["paper", "reference"] = Field(
        "paper", description="'paper': Algorithm 1 (W and theta updated from the same point, regularizer "
        "push -gamma * grad g outside the learning rate); 'reference': the authors' script (a theta-only "
        "step on the regularizer, then a joint step)")
    noise: L2PNoiseSettings = Field(default_factory=L2PNoiseSettings)
    gamma: float = Field(1e-4, ge=0, description="regularizer weight")
    noise_start: Optional[int] = Field(None, ge=0, description="0-based epoch from which noise is on and "
                                       "learned; default 20 (paper) or 10 (reference)")
    adv_start: int = Field(20, ge=0, description="0-based epoch from which the loss uses PGD examples")
    theta_lr: Optional[float] = Field(None, gt=0, description="theta's learning rate; default optim.lr "
                                      "(scaled by the same milestones as optim.lr)")
    clean_weight: float = Field(0.5, ge=0, le=1)
    nesterov: bool = True

    @model_validator(mode="after")
    def _delays(self):
        given = self.noise_start is not None
        if not given:
            object.__setattr__(self, "noise_start", 20 if self.variant == "paper" else 10)
        if self.noise_start >= self.epochs:
            what = "" if given else f", the {self.variant} variant's default"
            raise ValueError(f"noise_start ({self.noise_start}{what}) must be < epochs ({self.epochs}): "
                             "the noise would never be trained; fix: set train.noise_start below epochs")
        return self


class TradesConfig(StochasticTrainBase):
    """TRADES (``method: trades``): CE(clean) + beta * KL, x_adv maximizing the KL."""

    method: Literal["trades"] = "trades"
    beta: float = Field(6.0, ge=0)

    @model_validator(mode="after")
    def _norm(self):
        if self.attack.norm == "l1":
            raise ValueError("attack.norm: TRADES supports 'linf' and 'l2', got 'l1'")
        return self


class ANIS2Config(StochasticTrainBase):
    """ANIS2 (``method: anis2``): see :mod:`robustsuite.stochastic.anis2`."""

    method: Literal["anis2"] = "anis2"
    teacher_checkpoint: Optional[str] = Field(None, description="a trained deterministic teacher; "
                                              "None trains one first (teacher_epochs)")
    teacher_epochs: int = Field(10, ge=1)
    teacher_optim: OptimConfig = Field(default_factory=OptimConfig)
    teacher_adversarial: bool = Field(False, description="train the teacher with PGD-AT instead of CE")
    alpha: float = Field(0.5, gt=0, le=1, description="EMA weight of the new batch statistic: "
                         "sigma <- (1 - alpha) sigma + alpha std (the slides; 0.5 there)")
    gamma_init: float = Field(0.0, ge=0)
    gamma_max: float = Field(0.2, ge=0)
    gamma_ramp_epochs: Optional[int] = Field(None, ge=0, description="T of the staircase step "
                                             "k = r (gamma_max - gamma_init) / T; None: train.epochs "
                                             "(the slides: gamma_max at the end of training); a smaller "
                                             "T reaches gamma_max earlier and then holds it")
    gamma_step_every: int = Field(2, ge=1, description="r: epochs per staircase step")
    shared: bool = False

    @model_validator(mode="after")
    def _gammas(self):
        if self.gamma_max < self.gamma_init:
            raise ValueError(f"gamma_max ({self.gamma_max}) must be >= gamma_init ({self.gamma_init})")
        return self


class GeneratorSettings(Strict):
    """MNG-AC's meta noise generator and its optimizer (:mod:`robustsuite.stochastic.noise_generator`).

    ``input`` and ``projection`` left unset follow ``train.variant``; the rest is the authors'
    code (the slides are silent): 20 hidden channels, SGD with momentum 0.9 and weight decay 5e-4 on
    the classifier's cyclic learning rate (``lr_scale`` times it)."""

    input: Optional[Literal["noise", "image"]] = Field(None, description="'image': noise and the image "
                                                       "(paper); 'noise': Gaussian noise only (reference code); "
                                                       "unset: from train.variant")
    projection: Optional[Literal["exact", "reference"]] = Field(
        None, description="'exact': projected onto the ball and [0, 1] (paper); 'reference': the code's fit "
        "(L2 rescaled to exactly eps after the [0, 1] clip); unset: from train.variant")
    hidden: int = Field(20, ge=1)
    lr_scale: float = Field(1.0, gt=0, description="generator lr = lr_scale * the classifier's cyclic lr")
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(5e-4, ge=0)


def _cifar_attacks() -> list[AttackSettings]:
    # the reference code's training PGD (attack_pgd in train_MNG.py): steps 10 / 20 / 10, step sizes
    # 1/255, 255/255, 30/255
    return [AttackSettings(norm="linf", eps=8 / 255, steps=10, step_size=1 / 255),
            AttackSettings(norm="l1", eps=2000 / 255, steps=20, step_size=1.0, l1_fraction=0.01),
            AttackSettings(norm="l2", eps=128 / 255, steps=10, step_size=30 / 255)]


#: what ``variant`` sets in ``generator`` when it is left unset
MNG_AC_VARIANTS = {"paper": {"input": "image", "projection": "exact"},
                   "reference": {"input": "noise", "projection": "reference"}}


class MNGACConfig(StochasticTrainBase):
    """MNG-AC (``method: mng_ac``): see :mod:`robustsuite.stochastic.mng_ac`. ``attacks`` are the
    norms drawn per batch; ``attack`` defaults to the first of them; ``best.pt`` is selected on the
    union accuracy over all of them. An L1 attack without an explicit ``l1_fraction`` steps on the
    top 1 % of coordinates (the reference code's ``k = 99`` percentile), not the shared 5 %."""

    method: Literal["mng_ac"] = "mng_ac"
    variant: Literal["paper", "reference"] = Field("paper", description="defaults of generator.input and "
                                                   "generator.projection: the paper's or the authors' code's")
    attack: Optional[AttackSettings] = None  # type: ignore[assignment]
    attacks: list[AttackSettings] = Field(default_factory=_cifar_attacks)
    generator: GeneratorSettings = Field(default_factory=GeneratorSettings)
    js_weight: float = Field(12.0, ge=0)
    lr_max: float = Field(0.21, gt=0)
    cyclic_peak: float = Field(0.4, gt=0, lt=1)
    lookahead_lr: Optional[float] = Field(None, gt=0, description="default: the classifier's current lr")
    # the reference's classifier optimizer (its lr is replaced by the cyclic one every batch; no clipping)
    optim: OptimConfig = Field(default_factory=lambda: OptimConfig(name="sgd", lr=0.21, momentum=0.9,
                                                                   weight_decay=5e-4, grad_clip=None))

    @model_validator(mode="after")
    def _attacks(self):
        if not self.attacks:
            raise ValueError("attacks: at least one attack is needed")
        norms = [a.norm for a in self.attacks]
        if len(set(norms)) != len(norms):
            raise ValueError(f"attacks: each norm at most once, got {norms}")
        for a in self.attacks:
            if a.norm == "l1" and "l1_fraction" not in a.model_fields_set:
                object.__setattr__(a, "l1_fraction", 0.01)
                a.model_fields_set.add("l1_fraction")
        if self.attack is None:
            object.__setattr__(self, "attack", self.attacks[0])
        for key, value in MNG_AC_VARIANTS[self.variant].items():
            if getattr(self.generator, key) is None:
                object.__setattr__(self.generator, key, value)
                self.generator.model_fields_set.add(key)
        return self
