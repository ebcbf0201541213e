"""The template of the first-order iterative attacks (FGSM, BIM, PGD, MIM).

``IterativeAttack._perturb`` owns the loop; what depends on the threat set (random start,
steepest-ascent step, projection) comes from ``norms.geometry_for``, and what depends on the attack
(momentum) from the ``_direction`` hook. With ``restarts > 1`` each restart starts afresh and the
worst case per sample is kept: the first restart whose final point is adversarial, otherwise the
one with the highest final loss. Within a restart the last iterate is returned (as in Madry et al.
and torchattacks), which keeps a single noisy success of a stochastic model from being cherry-picked.

The loop has no per-sample Python loop; the only per-step work besides the model's forward and
backward pass is the step and a clamp against bounds computed once (L-inf, Box: no host sync) or
the threat's exact projection (L2, L1: ``threats.project_l2_box``/``project_l1_box``, a batched
bisection that syncs once per call to skip itself when every sample is already inside).
"""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ..threats import Box
from .base import GradientAttack, Perturbation, check_bool, check_float, check_int
from .norms import geometry_for

__all__ = ["IterativeAttack"]


class IterativeAttack(GradientAttack):
    """Base of FGSM/BIM/PGD/MIM; see :class:`robustsuite.attacks.PGD` for the settings."""

    def __init__(self, model, threat, *, steps: int, step_size: float | None, random_start: bool,
                 restarts: int = 1, loss: str = "ce", targeted: bool = False, eot: int = 1,
                 max_batch: int | None = None, l1_fraction: float = 0.01, seed: int | None = 0):
        super().__init__(model, threat, loss=loss, targeted=targeted, eot=eot, max_batch=max_batch,
                         seed=seed)
        self.steps = check_int("steps", steps, minimum=0)
        self.step_size = None if step_size is None else check_float("step_size", step_size)
        self.random_start = check_bool("random_start", random_start)
        self.restarts = check_int("restarts", restarts, minimum=1)
        self.l1_fraction = check_float("l1_fraction", l1_fraction, minimum=0.0, maximum=1.0, strict=True)

    def resolved_step_size(self) -> float:
        """The step size used: ``step_size`` or the default. For a ``Box`` a fraction of the
        element half-width; for balls in the ball's norm (pixel units)."""
        if self.step_size is not None:
            return self.step_size
        frac = self._default_step_fraction()
        return frac if isinstance(self.threat, Box) else frac * float(self.threat.eps)

    # --- hooks ------------------------------------------------------------------------------
    def _default_step_fraction(self) -> float:
        """Default step in units of eps (balls) or of the element half-width (Box)."""
        return 2.5 / max(self.steps, 1)

    def _init_state(self, x: Tensor) -> Any:
        return None

    def _direction(self, grad: Tensor, state: Any) -> tuple[Tensor, Any]:
        return grad, state

    # --- the loop ---------------------------------------------------------------------------
    def _perturb(self, x, y, generator):
        geo = geometry_for(self.threat, x, l1_fraction=self.l1_fraction)
        size = self.resolved_step_size()
        loss_fn = self._loss_fn()
        best_x = best_ok = best_loss = None
        for r in range(self.restarts):
            x_adv = geo.random_start(generator) if self.random_start else x.clone()
            state = self._init_state(x)
            for t in range(self.steps):
                _, grad, _ = self._loss_and_grad(x_adv, y, loss_fn=loss_fn, check_labels=(r == 0 and t == 0))
                direction, state = self._direction(grad, state)
                x_adv = geo.project(geo.step_(x_adv, direction, size))  # x_adv is ours: in place
            if self.restarts == 1:
                best_x = x_adv
                break
            loss, logits = self._loss_and_logits(x_adv, y, loss_fn=loss_fn)
            ok = self._is_success(logits.argmax(1), y)
            if best_x is None:
                best_x, best_ok, best_loss = x_adv, ok, loss
                continue
            take = ~best_ok & (ok | (loss > best_loss))
            best_x = torch.where(take.view(-1, *([1] * (x.dim() - 1))), x_adv, best_x)
            best_ok = best_ok | ok
            best_loss = torch.where(take, loss, best_loss)
        queries = self.restarts * self.steps * self.eot + (self.restarts * self.eot if self.restarts > 1 else 0)
        return Perturbation(best_x, queries, self.restarts * self.steps)

