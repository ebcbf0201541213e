"""The template of the first-order iterative attacks (FGSM, BIM, PGD, MIM).

``IterativeAttack._perturb`` owns the loop; what depends on the threat set (random start,
steepest-ascent step, projection) comes from ``geometry.geometry_for``, and what depends on the
attack (momentum) from the ``_direction`` hook. With ``restarts > 1`` each restart starts afresh and
the worst case per sample is kept (``RestartAttack.keep_worst_case``): the first restart whose final
point is adversarial, otherwise the one with the highest final loss. Within a restart the last
iterate is returned (as in Madry et al. and torchattacks), which keeps a single noisy success of a
stochastic model from being cherry-picked.

The loop has no per-sample Python loop; the only per-step work besides the model's forward and
backward pass is the step and a clamp against bounds computed once (L-inf, Box: no host sync) or
the exact projection (L2: the geometry's ``threats.project_l2_box`` solver with bounds and buffers
built once per run, about 40 tensor ops and one host sync per step; L1: ``project_l1_box``, about 70
ops and one host sync; both a few Newton steps on the multiplier, a sort only for samples they
leave). On a CPU that work is mostly per-op dispatch, which right after the backward pass costs
several times its steady price: PGD-10 L2 on the digits CNN at batch 256 pays ~1.2x its floor
(L-inf ~1.05x), ~1.09x at batch 2048.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ..threats import Box
from .base import Perturbation, RestartAttack, check_bool, check_float, check_int
from .geometry import Geometry, geometry_for

__all__ = ["IterativeAttack"]


class IterativeAttack(RestartAttack):
    """Base of FGSM/BIM/PGD/MIM; see :class:`robustsuite.attacks.PGD` for the settings."""

    def __init__(self, model, threat, *, steps: int, step_size: float | None, random_start: bool,
                 restarts: int = 1, loss: str = "ce", targeted: bool = False, eot: int = 1,
                 max_batch: int | None = None, l1_fraction: float = 0.01, start_sigma: float | None = None,
                 seed: int | None = 0):
        super().__init__(model, threat, restarts=restarts, loss=loss, targeted=targeted, eot=eot,
                         max_batch=max_batch, seed=seed)
        self.steps = check_int("steps", steps, minimum=0)
        self.step_size = None if step_size is None else check_float("step_size", step_size)
        self.random_start = check_bool("random_start", random_start)
        self.l1_fraction = check_float("l1_fraction", l1_fraction, minimum=0.0, maximum=1.0, strict=True)
        self.start_sigma = None if start_sigma is None else check_float("start_sigma", start_sigma, strict=True)

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
    def _start(self, geo: Geometry, generator) -> Tensor:
        """Where a restart begins: ``x``, a uniform point of the set, or ``x + start_sigma * N(0, 1)``."""
        if not self.random_start:
            return geo.x.clone()
        if self.start_sigma is not None:
            return geo.gaussian_start(self.start_sigma, generator)
        return geo.random_start(generator)

    def _descend(self, geo: Geometry, y_loss: Tensor, loss_fn, generator, check_labels: bool) -> Tensor:
        """One restart: ``steps`` steepest-ascent steps of ``loss_fn(logits, y_loss)`` from the
        start, each projected onto the set and [0, 1]; returns the last iterate (B, C, H, W)."""
        x_adv = self._start(geo, generator)
        state = self._init_state(geo.x)
        size = self.resolved_step_size()
        for t in range(self.steps):
            _, grad, _ = self._loss_and_grad(x_adv, y_loss, loss_fn=loss_fn, check_labels=check_labels and t == 0)
            direction, state = self._direction(grad, state)
            x_adv = geo.project(geo.step_(x_adv, direction, size))  # x_adv is ours: in place
        return x_adv

    def _perturb(self, x, y, generator):
        geo = geometry_for(self.threat, x, l1_fraction=self.l1_fraction)
        loss_fn = self._loss_fn()
        y_loss = self._loss_reference(x, y)  # before the start is drawn: a noisy model draws here too
        check = y_loss is y

        def runs():
            for r in range(self.restarts):
                x_adv = self._descend(geo, y_loss, loss_fn, generator, check_labels=check and r == 0)
                if self.restarts == 1:  # nothing to compare: no extra forward pass
                    yield x_adv, None, None
                    return
                loss, logits = self._loss_and_logits(x_adv, y_loss, loss_fn=loss_fn)
                yield x_adv, self._is_success(logits.argmax(1), y), loss

        best_x, _, _ = self.keep_worst_case(runs())
        per_restart = self.steps + (1 if self.restarts > 1 else 0)
        queries = self.restarts * per_restart * self.eot + (self.eot if y_loss is not y else 0)
        return Perturbation(best_x, queries, self.restarts * self.steps)
