"""Attacks: the empirical side of robustsuite.

Every attack is a small class constructed with the model, a threat set and keyword-only
settings, and called on a batch::

    atk = PGD(model, LinfBall(8/255), steps=20, step_size=2/255)
    x_adv = atk(x, y)           # (B, C, H, W), inside the threat set and [0, 1]
    res = atk.run(x, y)         # AttackResult: x_adv, success (B,), distance (B,), queries (B,), steps

White-box (gradient) attacks: :class:`FGSM`, :class:`BIM`, :class:`PGD` (L-inf, L2, sparse L1,
per-element Box), :class:`MIM`, :class:`APGD` (APGD-CE, APGD-DLR, APGD-T), :class:`CW` (C&W L2 with
binary search).
Any of them averages gradients over a stochastic model's randomness with ``eot=n`` or
:class:`EOT`. Black-box: :class:`Square` (score-based random search, L-inf/L2), :class:`BoundaryAttack`
(decision-based, labels only); both take ``eot=n`` (majority-vote oracle) for stochastic models;
:class:`PixelAttack` (few-pixel, differential evolution), :class:`TransferAttack` (crafted on a
source model). Ensemble: :class:`AutoAttack` (APGD-CE, APGD-T, FAB-T and Square in cascade; ``rand``
for stochastic models). By name: :data:`ATTACKS`, :func:`make_attack`; evaluation: :func:`per_sample_robust`
(per-sample records, the one batched routine every part uses) and its summary :func:`robust_accuracy`.

Adding an attack: subclass :class:`Attack` (or :class:`GradientAttack`), decorate it with
``@register_attack("name")`` in its own module and import that module here; everything else (the
suite, EOT eligibility, the masking check, the CLI's choices) reads the class (see
``attacks.registry`` and ``docs/extending.md``).

Shared guarantees: outputs are projected onto the threat set intersected with [0, 1] in one place
(``Attack.run``); success and distance are computed there too. Attacks never change the model's
mode (a stochastic model keeps its noise on), never leave gradients on its parameters, run on
``x.device`` and take a ``seed`` where they draw random numbers.
"""
from .apgd import APGD
from .autoattack import AutoAttack
from .base import Attack, AttackResult, GradientAttack, RestartAttack
from .bim import BIM
from .boundary import BoundaryAttack
from .cw import CW
from .eot import EOT
from .fab import FAB
from .fgsm import FGSM
from .losses import LOSSES, ce_loss, dlr_loss, dlr_targeted_loss, kl_loss, margin_loss
from .mim import MIM
from .pgd import PGD
from .pixel import PixelAttack
from .square import Square
from .registry import ATTACKS, attack_class, attack_names, attack_settings, make_attack, register_attack
from .robustness import AttackFactory, PerSampleRecord, per_sample_robust, robust_accuracy
from .transfer import TransferAttack

__all__ = [
    "Attack", "AttackResult", "GradientAttack", "RestartAttack",
    "FGSM", "BIM", "PGD", "MIM", "CW", "EOT", "APGD",
    "BoundaryAttack", "PixelAttack", "Square", "TransferAttack", "FAB", "AutoAttack",
    "ATTACKS", "register_attack", "attack_class", "attack_names", "make_attack", "attack_settings",
    "robust_accuracy", "per_sample_robust", "PerSampleRecord", "AttackFactory",
    "LOSSES", "ce_loss", "margin_loss", "dlr_loss", "dlr_targeted_loss", "kl_loss",
]
