"""APGD: the step-size-free PGD of AutoAttack (APGD-CE, APGD-DLR, APGD-T; L-inf, L2 and Box)."""
from __future__ import annotations

import torch
from torch import Tensor

from ..threats import Box, ThreatModel
from .base import Perturbation, RestartAttack, check_float, check_int, check_optional_int
from .gradients import check_label_range, loss_and_logits
from .losses import dlr_targeted_loss
from .geometry import geometry_for
from .registry import register_attack

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


@register_attack("apgd")
class APGD(RestartAttack):
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

    APGD-T (``loss='dlr', targeted=True``; the paper's Sec. 4 and AutoAttack's ``apgd-t``): ``y``
    are the *true* labels and success is misclassification, as in the paper; the attack runs
    once per target class ``t`` on the targeted DLR loss
    ``-(z_y - z_t) / (z_(1) - (z_(3) + z_(4)) / 2)`` (see
    :func:`~robustsuite.attacks.losses.dlr_targeted_loss`), the targets being the classes of
    the 2nd to ``(n_target_classes + 1)``-th largest logits at the clean point (true class
    excluded; :meth:`target_classes`). The runs for ``target_batch`` targets are stacked into one
    batch (by default one target at a time on a CPU, all stacked on an accelerator:
    :meth:`target_group`); a sample keeps its first success in target order and is not attacked
    for later target groups (the reference runs the targets one after another on the still-robust
    samples: the same attack, batched). ``queries`` counts, per sample, the clean forward plus
    ``restarts * (steps + 1) * eot`` per target run; ``extras['targets']`` holds the targets
    (B, T). Paper defaults: ``steps=100``, ``n_target_classes=9``, ``restarts=1``.

    Arguments:
        model (nn.Module): model returning logits; its mode is left as it is.
        threat (LinfBall | L2Ball | Box): the perturbation set.
        steps (int): iterations, >= 1. (Default: 100)
        restarts (int): random restarts, worst case kept, >= 1. (Default: 1)
        loss (str): 'ce' (APGD-CE), 'margin' or 'dlr' (APGD-DLR; with ``targeted=True``
            APGD-T). (Default: 'ce')
        rho (float): checkpoint condition (1) threshold, in (0, 1). (Default: 0.75)
        momentum (float): alpha of the momentum step, in (0, 1]. (Default: 0.75)
        targeted (bool): with loss 'ce' or 'margin', ``y`` are target labels; with 'dlr',
            APGD-T on the true labels ``y`` (see above). (Default: False)
        n_target_classes (int): APGD-T's target classes per sample, >= 1 (at most K - 1 are
            used). (Default: 9)
        target_batch (int | None): APGD-T targets stacked per batch (memory: rows =
            B * target_batch). (Default: None = per device: one at a time on a CPU, all at once
            elsewhere; see :meth:`target_group`)
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
        >>> apgd_t = APGD(model, LinfBall(8/255), loss="dlr", targeted=True, n_target_classes=9)
        >>> res = apgd_t.run(x, y)   # y: true labels; res.success: misclassified
    """

    threats = ("linf", "l2", "box")
    losses = ("ce", "margin", "dlr")

    def __init__(self, model, threat: ThreatModel, *, steps: int = 100, restarts: int = 1,
                 loss: str = "ce", rho: float = 0.75, momentum: float = 0.75, targeted: bool = False,
                 n_target_classes: int = 9, target_batch: int | None = None, eot: int = 1,
                 max_batch: int | None = None, seed: int | None = 0):
        super().__init__(model, threat, restarts=restarts, loss=loss, targeted=targeted, eot=eot,
                         max_batch=max_batch, seed=seed)
        self.steps = check_int("steps", steps, minimum=1)
        self.rho = check_float("rho", rho, minimum=0.0, maximum=1.0, strict=True)
        self.momentum = check_float("momentum", momentum, minimum=0.0, maximum=1.0, strict=True)
        self.n_target_classes = check_int("n_target_classes", n_target_classes, minimum=1)
        self.target_batch = check_optional_int("target_batch", target_batch, minimum=1)
        # APGD-T: the targeted DLR loss needs the true label, so y stays the true labels
        self._auto_targets = self.targeted and self.loss == "dlr"

    @property
    def labels_are_targets(self) -> bool:
        # APGD-T takes the true labels and picks its own targets; success is misclassification
        return self.targeted and not self._auto_targets

    def _perturb(self, x, y, generator):
        if self._auto_targets:
            return self._perturb_targets(x, y, generator)
        best_x, _, _ = self._restarts(x, y, y, generator, check_labels=True)
        return Perturbation(best_x, self.restarts * (self.steps + 1) * self.eot,
                            self.restarts * self.steps)

    def _restarts(self, x: Tensor, y: Tensor, y_loss: Tensor, generator, check_labels: bool
                  ) -> tuple[Tensor, Tensor, Tensor]:
        """``restarts`` runs; per sample the first success, else the highest-loss point."""
        loss_fn = self._targeted_dlr if self._auto_targets else self._loss_fn()
        return self.keep_worst_case(
            self._single_run(x, y, y_loss, loss_fn, generator, check_labels=check_labels and r == 0)
            for r in range(self.restarts))

    @staticmethod
    def _targeted_dlr(logits: Tensor, y_t: Tensor) -> Tensor:
        """The targeted DLR of labels packed as ``(B, 2)``: (true label, target) per row (packed so
        that EOT replication and chunking index both with the rows)."""
        return dlr_targeted_loss(logits, y_t[:, 0], y_t[:, 1])

    def target_classes(self, x: Tensor, y: Tensor) -> Tensor:
        """APGD-T's targets (B, T): the classes of the 2nd, 3rd, ... largest logits at the clean
        point, the true class excluded (T = min(n_target_classes, K - 1); EOT-averaged logits)."""
        x, y = self._validate(x, y)
        return self._targets(x, y)

    def _targets(self, x: Tensor, y: Tensor) -> Tensor:
        _, logits = loss_and_logits(self.model, x, y, lambda z, t: z.new_zeros(z.shape[0]),
                                    n=self.eot, max_batch=self.max_batch)
        check_label_range(logits, y)
        k = min(self.n_target_classes, logits.shape[1] - 1)
        # for a correctly classified sample this is the reference's "k-th largest logit, k >= 2";
        # excluding y keeps a misclassified sample from targeting its own true class
        return logits.scatter(1, y.unsqueeze(1), float("-inf")).topk(k, dim=1).indices

    def target_group(self, n_targets: int, device: torch.device) -> int:
        """How many of the ``n_targets`` target runs are stacked into one batch: ``target_batch``
        if set, else 1 on a CPU and all of them on another device.

        On a CPU a forward/backward pass costs the same per row at any batch size (the digits
        models: 44-48 us per row from 400 to 3600 rows, one thread), so stacking saves nothing
        and spends the later targets' runs on samples an earlier target already broke (up to
        ``n_targets`` times the work of one target at a time, which is the reference's cost). On
        an accelerator one stacked batch keeps the device busy where one target at a time would
        leave it idle; set ``target_batch`` when ``B * n_targets`` rows do not fit in memory.
        """
        if self.target_batch is not None:
            return self.target_batch
        return 1 if torch.device(device).type == "cpu" else n_targets

    def _perturb_targets(self, x: Tensor, y: Tensor, generator) -> Perturbation:
        """APGD-T: one APGD run per target class on the targeted DLR loss, the targets stacked
        into the batch ``target_batch`` at a time; a sample keeps its first success (in target
        order) and leaves the later target groups."""
        B = x.shape[0]
        targets = self._targets(x, y)                                   # (B, T)
        T = targets.shape[1]
        per_run = self.restarts * (self.steps + 1) * self.eot
        queries = torch.full((B,), self.eot, dtype=torch.long, device=x.device)  # the clean logits
        best_x, best_loss = x.clone(), x.new_full((B,), float("-inf"))
        active = torch.arange(B, device=x.device)
        group = self.target_group(T, x.device)
        steps = 0
        for t0 in range(0, T, group):
            tg = targets[active, t0:t0 + group]                         # (A, c)
            A, c = tg.shape
            rows = active.repeat(c)                                     # target-major rows
            atk = self.with_threat(self.threat[rows]) if _batched_box(self.threat, B) else self
            y_r = y[rows]
            x_r, ok, loss = atk._restarts(x[rows], y_r, torch.stack([y_r, tg.t().reshape(-1)], 1),
                                          generator, check_labels=False)
            ok, loss = ok.view(c, A), loss.view(c, A)
            hit = ok.any(0)
            pick = torch.where(hit, ok.int().argmax(0), loss.argmax(0))  # first success, else best
            cols = torch.arange(A, device=x.device)
            x_pick = x_r.view(c, A, *x.shape[1:])[pick, cols]
            l_pick = loss[pick, cols]
            take = hit | (l_pick > best_loss[active])
            best_x[active] = torch.where(_col(take, x_pick), x_pick, best_x[active])
            best_loss[active] = torch.where(hit, float("inf"), torch.maximum(l_pick, best_loss[active]))
            queries[active] += c * per_run
            steps += c * self.restarts * self.steps
            active = active[~hit]                                       # one host sync per group
            if active.numel() == 0:
                break
        return Perturbation(best_x, queries, steps, {"targets": targets})

    def _single_run(self, x: Tensor, y: Tensor, y_loss: Tensor, loss_fn, generator, check_labels: bool):
        """One APGD run: success is judged on ``y``, the loss gets ``y_loss`` (``y`` itself, or
        APGD-T's packed (label, target) pairs)."""
        geo = geometry_for(self.threat, x)
        B = x.shape[0]
        eta0 = 2.0 if isinstance(self.threat, Box) else 2.0 * float(self.threat.eps)
        eta = x.new_full((B,), eta0)

        x_adv = geo.random_start(generator)
        loss, grad, logits = self._loss_and_grad(x_adv, y_loss, loss_fn=loss_fn, check_labels=check_labels)
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

            loss, grad, logits = self._loss_and_grad(x_adv, y_loss, loss_fn=loss_fn)
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


def _batched_box(threat, batch: int) -> bool:
    """A ``Box`` whose bounds carry a batch axis of ``batch`` rows (sliced with the samples)."""
    return isinstance(threat, Box) and threat.lower.dim() == 4 and threat.lower.shape[0] == batch > 1


def _col(mask: Tensor, like: Tensor) -> Tensor:
    return mask.view(-1, *([1] * (like.dim() - 1)))
