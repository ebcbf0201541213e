"""Stochastic defenses: learned-noise layers and their trainers, with adversarial-training baselines.

Noise layers (:mod:`.noise`; noise fresh every forward pass, per sample by default, on in eval mode,
off only with :func:`set_noise` / :func:`noise_disabled`):
:class:`PerturbationInjection` (Learn2Perturb), :class:`ScalarNoise` (PNI), :class:`StocReLUEMA`
(ANIS2). Builders (:mod:`.builders`): :func:`add_noise`, :func:`build_stochastic`,
:func:`build_from_spec` (rebuilds a checkpoint's ``model_spec`` with its ``"stochastic"`` entry).

Trainers (``train.method``): ``pgd_at`` (:class:`PGDATTrainer`), ``pni`` (:class:`PNITrainer`),
``learn2perturb`` (:class:`Learn2PerturbTrainer`), ``trades`` (:class:`TradesTrainer`), ``anis2``
(:class:`ANIS2Trainer`), ``mng_ac`` (:class:`MNGACTrainer`), all on the shared loop (checkpoints,
resume). Each registers itself with its config class (:mod:`robustsuite.training.registry`);
``import robustsuite`` imports this package, so a config validates and trains without importing it::

    from robustsuite.training.config import load_config
    from robustsuite.training.run import train
    train(load_config("configs/digits_learn2perturb.yaml"), "runs/l2p")
"""
from ..training.registry import entries
from .adversarial import AdversarialTrainer, PGDATTrainer, PNITrainer
from .anis2 import ANIS2Trainer
from .builders import KINDS, add_noise, base_spec, build_from_spec, build_stochastic, is_stochastic_spec
from .config import (ANIS2Config, AttackSettings, Learn2PerturbConfig, MNGACConfig, PGDATConfig,
                     PNIConfig, TradesConfig)
from .robust_accuracy import expected_accuracy, multi_norm_accuracy
from .noise_generator import NoiseGenerator
from .learn2perturb import Learn2PerturbTrainer
from .losses import harmonic_tau, js_divergence, learn2perturb_regularizer, trades_kl
from .noise import (NoiseLayer, PerturbationInjection, ScalarNoise, StocReLUEMA, clamp_noise_scales,
                    ema_paused, mean_noise_scale, noise_disabled, noise_layers, set_gamma, set_noise)
from .mng_ac import MNGACTrainer, meta_generator_step
from .schedules import cyclic_lr, gamma_staircase
from .trades import TradesTrainer, trades_adversary

#: The train.methods whose trainers this package defines, and their config and trainer classes, read
#: from the trainer registry (each trainer registers itself where it is defined, so no list to keep).
_OWN = {m: e for m, e in entries().items() if e.trainer.__module__.startswith(__name__ + ".")}
METHODS = tuple(_OWN)
TRAIN_CONFIGS = {m: e.config for m, e in _OWN.items()}
TRAINER_CLASSES = {m: e.trainer for m, e in _OWN.items()}

__all__ = [
    "NoiseLayer", "PerturbationInjection", "ScalarNoise", "StocReLUEMA", "set_noise", "noise_disabled",
    "noise_layers", "set_gamma", "ema_paused", "clamp_noise_scales", "mean_noise_scale",
    "KINDS", "add_noise", "build_stochastic", "build_from_spec", "base_spec", "is_stochastic_spec",
    "harmonic_tau", "learn2perturb_regularizer", "js_divergence", "trades_kl",
    "gamma_staircase", "cyclic_lr", "NoiseGenerator", "multi_norm_accuracy", "expected_accuracy",
    "AttackSettings", "PGDATConfig", "PNIConfig", "Learn2PerturbConfig", "TradesConfig", "ANIS2Config",
    "MNGACConfig", "METHODS", "TRAIN_CONFIGS", "TRAINER_CLASSES",
    "AdversarialTrainer", "PGDATTrainer", "PNITrainer", "Learn2PerturbTrainer", "TradesTrainer",
    "ANIS2Trainer", "MNGACTrainer", "meta_generator_step", "trades_adversary",
]
