"""APGD: the step-size-free PGD of AutoAttack (APGD-CE; L-inf, L2 and Box)."""
from __future__ import annotations

import torch
from torch import Tensor

from ..errors import InputError
from ..threats import Box, ThreatModel
from .base import GradientAttack, Perturbation, check_float, check_int
from .norms import geometry_for

__all__ = ["APGD", "apgd_checkpoints"]


def apgd_checkpoints(steps: int) -> list[int]:
    """Iterations ``w_j`` where APGD checks its step size (``0 < w_j <= steps``).

    The paper's ``w_j = ceil(p_j * steps)`` with ``p_0 = 0, p_1 = 0.22,
    p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06)``, in AutoAttack's integer form: the first
    window is ``max(int(0.22 steps), 1)`` iterations long and each next one is shorter by
    ``max(int(0.03 steps), 1)``, down to ``max(int(0.06 steps), 1)``. For 100 steps:
    22, 41, 57, 70, 80, 87, 93, 99.
    """
    k = max(int(0.22 * steps), 1)
    decr, k_min = max(int(0.03 * steps), 1), max(int(0.06 * steps), 1)
    w, out = k, []
    while w <= steps:
        out.append(w)
        k = max(k - decr, k_min)
        w += k
    return out


class APGD(GradientAttack):
    r"""APGD in the paper 'Reliable Evaluation of Adversarial Robustness with an Ensemble of
    Diverse Parameter-free Attacks' [https://arxiv.org/abs/2003.01690]

    Distance Measure : Linf, L2 (and Box, steps in units of each element's half-width).

    PGD without a step-size setting: the step starts at ``2 eps`` and is halved per sample at the
    checkpoints ``w_j`` (see :func:`apgd_checkpoints`) when (1) the loss increased in fewer than
    ``rho`` of the steps since the last checkpoint, or (2) the step was not halved at the last
    checkpoint and the best loss has not improved since; a halving restarts from the best point.
    Steps use momentum ``alpha = 0.75``: ``x_{k+1} = P(x_k + alpha (z_{k+1} - x_k) +
    (1 - alpha)(x_k - x_{k-1}))`` with ``z_{k+1} = P(x_k + eta sign(grad))`` (normalized gradient
    for L2). Returns per sample an adversarial iterate if one was found (the latest), else the
    highest-loss point; restarts keep the worst case. Batched, with no host sync in the loop.

    Arguments:
        model (nn.Module): model returning logits; its mode is left as it is.
        threat (LinfBall | L2Ball | Box): the perturbation set.
        steps (int): iterations, >= 1. (Default: 100)
        restarts (int): random restarts, worst case kept, >= 1. (Default: 1)
        loss (str): 'ce' (APGD-CE), 'margin' or 'dlr' (APGD-DLR, untargeted). (Default: 'ce')
        rho (float): checkpoint condition (1) threshold, in (0, 1). (Default: 0.75)
        momentum (float): alpha of the momentum step, in (0, 1]. (Default: 0.75)
        targeted (bool): ``y`` are target labels (loss 'ce' or 'margin'). (Default: False)
        eot (int): EOT draws averaged per gradient, >= 1. (Default: 1)
        max_batch (int | None): most rows per forward pass under EOT. (Default: None = all)
        seed (int | None): seed of the random start. (Default: 0)

    Shape:
        - x: :math:`(N, C, H, W)` in [0, 1].
        - y: :math:`(N)` class indices.
        - output: :math:`(N, C, H, W)`, inside the threat set and [0, 1].

    Examples::
        >>> atk = APGD(model, LinfBall(8/255), steps=100)
        >>> res = atk.run(x, y)
    """

    threats = ("linf", "l2", "box")
    losses = ("ce", "margin", "dlr")

    def __init__(self, model, threat: ThreatModel, *, steps: int = 100, restarts: int = 1,
                 loss: str = "ce", rho: float = 0.75, momentum: float = 0.75, targeted: bool = False,
                 eot: int = 1, max_batch: int | None = None, seed: int | None = 0):
        super().__init__(model, threat, loss=loss, targeted=targeted, eot=eot, max_batch=max_batch,
                         seed=seed)
        self.steps = check_int("steps", steps, minimum=1)
        self.restarts = check_int("restarts", restarts, minimum=1)
        self.rho = check_float("rho", rho, minimum=0.0, maximum=1.0, strict=True)
        self.momentum = check_float("momentum", momentum, minimum=0.0, maximum=1.0, strict=True)
        if self.loss == "dlr" and targeted:
            raise InputError("loss: 'dlr' is untargeted only; use 'ce' or 'margin' with targeted=True")

    def _perturb(self, x, y, generator):
        best_x = best_ok = best_loss = None
        for r in range(self.restarts):
            x_r, ok, loss = self._single_run(x, y, generator, check_labels=(r == 0))
            if best_x is None:
                best_x, best_ok, best_loss = x_r, ok, loss
                continue
            take = ~best_ok & (ok | (loss > best_loss))
            best_x = torch.where(_col(take, x), x_r, best_x)
            best_ok, best_loss = best_ok | ok, torch.where(take, loss, best_loss)
        return Perturbation(best_x, self.restarts * (self.steps + 1) * self.eot,
                            self.restarts * self.steps)

    def _single_run(self, x: Tensor, y: Tensor, generator, check_labels: bool):
        geo = geometry_for(self.threat, x)
        loss_fn = self._loss_fn()
        B = x.shape[0]
        eta0 = 2.0 if isinstance(self.threat, Box) else 2.0 * float(self.threat.eps)
        eta = x.new_full((B,), eta0)

        x_adv = geo.random_start(generator)
        loss, grad, logits = self._loss_and_grad(x_adv, y, loss_fn=loss_fn, check_labels=check_labels)
        found = self._is_success(logits.argmax(1), y)
        x_found = x_adv.clone()
        x_max, grad_max, loss_max = x_adv.clone(), grad.clone(), loss.clone()
        x_prev = x_adv

        checkpoints = set(apgd_checkpoints(self.steps))
        history = x.new_zeros(self.steps + 1, B)
        history[0] = loss
        last_w = 0
        reduced_last = torch.ones(B, dtype=torch.bool, device=x.device)
        loss_max_last = loss_max.clone()

        for k in range(self.steps):
            a = self.momentum if k > 0 else 1.0
            z = geo.project(geo.step(x_adv, grad, eta))
            x_new = x_adv + a * (z - x_adv) + (1 - a) * (x_adv - x_prev)
            x_prev, x_adv = x_adv, geo.project(x_new)

            loss, grad, logits = self._loss_and_grad(x_adv, y, loss_fn=loss_fn)
            ok = self._is_success(logits.argmax(1), y)
            x_found = torch.where(_col(ok, x), x_adv, x_found)
            found |= ok
            better = loss > loss_max
            x_max = torch.where(_col(better, x), x_adv, x_max)
            grad_max = torch.where(_col(better, x), grad, grad_max)
            loss_max = torch.where(better, loss, loss_max)
            history[k + 1] = loss

            if k + 1 in checkpoints:
                w = k + 1
                window = history[last_w:w + 1]
                increases = (window[1:] > window[:-1]).sum(0)
                cond1 = increases.to(x.dtype) < self.rho * (w - last_w)
                cond2 = ~reduced_last & (loss_max_last >= loss_max)
                reduce = cond1 | cond2
                eta = torch.where(reduce, eta / 2, eta)
                rc = _col(reduce, x)
                x_adv = torch.where(rc, x_max, x_adv)
                x_prev = torch.where(rc, x_max, x_prev)
                grad = torch.where(rc, grad_max, grad)
                reduced_last, loss_max_last, last_w = reduce, loss_max.clone(), w

        x_out = torch.where(_col(found, x), x_found, x_max)
        # loss of the returned point, for the restart comparison: the best loss where no success
        return x_out, found, loss_max


def _col(mask: Tensor, like: Tensor) -> Tensor:
    return mask.view(-1, *([1] * (like.dim() - 1)))
