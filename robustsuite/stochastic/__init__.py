"""Stochastic defenses: learned-noise layers and their trainers, with adversarial-training baselines.

Noise layers (:mod:`.noise`; noise fresh every forward pass, per sample by default, on in eval mode,
off only with :func:`set_noise` / :func:`noise_disabled`):
:class:`PerturbationInjection` (Learn2Perturb), :class:`ScalarNoise` (PNI), :class:`StocReLUEMA`
(ANIS2). Builders (:mod:`.builders`): :func:`add_noise`, :func:`build_stochastic`,
:func:`build_from_spec` (rebuilds a checkpoint's ``model_spec`` with its ``"stochastic"`` entry).

Trainers (``train.method``): ``pgd_at`` (:class:`PGDATTrainer`), ``pni`` (:class:`PNITrainer`),
``learn2perturb`` (:class:`Learn2PerturbTrainer`), ``trades`` (:class:`TradesTrainer`), ``anis2``
(:class:`ANIS2Trainer`), ``mng_ac`` (:class:`MNGACTrainer`), all on the shared loop (checkpoints,
resume). Their configs validate and train without importing this package first::

    from robustsuite.config import load_config
    from robustsuite.training.run import train
    train(load_config("configs/digits_learn2perturb.yaml"), "runs/l2p")
"""
from ..config import train_config_class
from ..training.run import trainer_class
from .adversarial import AdversarialTrainer, PGDATTrainer, PNITrainer
from .anis2 import ANIS2Trainer
from .builders import KINDS, add_noise, base_spec, build_from_spec, build_stochastic, is_stochastic_spec
from .config import (ANIS2Config, AttackSettings, Learn2PerturbConfig, MNGACConfig, PGDATConfig,
                     PNIConfig, TradesConfig)
from .evaluate import expected_accuracy, multi_norm_accuracy, per_sample_robust
from .generator import NoiseGenerator
from .learn2perturb import Learn2PerturbTrainer
from .losses import harmonic_tau, js_divergence, learn2perturb_regularizer, trades_kl
from .noise import (NoiseLayer, PerturbationInjection, ScalarNoise, StocReLUEMA, clamp_noise_scales,
                    ema_paused, mean_noise_scale, noise_disabled, noise_layers, set_gamma, set_noise)
from .mng_ac import MNGACTrainer, meta_generator_step
from .schedules import cyclic_lr, gamma_staircase
from .trades import TradesTrainer, trades_adversary

#: The stochastic train.methods, and their config and trainer classes as the central registries
#: (:mod:`robustsuite.config`, :mod:`robustsuite.training.run`) resolve them.
METHODS = ("pgd_at", "pni", "learn2perturb", "trades", "anis2", "mng_ac")
TRAIN_CONFIGS = {m: train_config_class(m) for m in METHODS}
TRAINER_CLASSES = {m: trainer_class(m) for m in METHODS}

__all__ = [
    "NoiseLayer", "PerturbationInjection", "ScalarNoise", "StocReLUEMA", "set_noise", "noise_disabled",
    "noise_layers", "set_gamma", "ema_paused", "clamp_noise_scales", "mean_noise_scale",
    "KINDS", "add_noise", "build_stochastic", "build_from_spec", "base_spec", "is_stochastic_spec",
    "harmonic_tau", "learn2perturb_regularizer", "js_divergence", "trades_kl",
    "gamma_staircase", "cyclic_lr", "NoiseGenerator", "multi_norm_accuracy", "per_sample_robust", "expected_accuracy",
    "AttackSettings", "PGDATConfig", "PNIConfig", "Learn2PerturbConfig", "TradesConfig", "ANIS2Config",
    "MNGACConfig", "METHODS", "TRAIN_CONFIGS", "TRAINER_CLASSES",
    "AdversarialTrainer", "PGDATTrainer", "PNITrainer", "Learn2PerturbTrainer", "TradesTrainer",
    "ANIS2Trainer", "MNGACTrainer", "meta_generator_step", "trades_adversary",
]
