"""CROWN-IBP certified training (Zhang et al., ICLR 2020) on top of the shared training loop.

Per batch at the current radius eps (from the schedule, per batch):

* margin lower bounds ``m = beta * m_CROWN-IBP + (1 - beta) * m_IBP`` (the CROWN pass is skipped
  when beta is ~0; ``method: ibp`` is beta = 0 throughout);
* robust loss ``log(1 + sum_j exp(-m_j))`` (cross-entropy of ``[0, -m]`` against class 0);
* total ``kappa * CE(f(x), y) + (1 - kappa) * robust``;
* with eps ~ 0, natural training, no bounds.

The bounded graph shares the model's parameters; BatchNorm statistics live in the bounded copy
during training (auto_LiRPA clones buffers) and are copied back before every checkpoint.
Loss fusion bounds the cross-entropy itself (auto_LiRPA's ``CrossEntropyWrapper``), whose cost does
not grow with the number of classes; evaluation always uses the explicit margin bounds.
Subclasses change the perturbation set through :meth:`CertifiedTrainer.box` (learned budgets do).

The whole batch loss (clean pass, bounds, robust loss) is the ``forward`` of :class:`CertifiedLoss`,
a module holding the bounded graph; under ``torchrun`` it is wrapped in DistributedDataParallel, so
DDP averages the gradients of the shared parameters (see :mod:`robustsuite.training.distributed`).
"""
from __future__ import annotations

import logging
import warnings

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..training import distributed as dist_utils
from ..training.loop import Trainer
from ..training.registry import register_trainer
from ..training.schedules import eps_at, mix_factor
from .bounds import spec_matrix
from .config import CertifiedTrainConfig

log = logging.getLogger(__name__)

_BETA_SKIP = 1e-5  # as the reference code: below this the CROWN pass is not worth its cost


def robust_ce_from_margins(margin_lower: Tensor) -> Tensor:
    """Per-sample ``log(1 + sum_j exp(-m_j))`` for margin lower bounds (B, K-1): an upper bound
    of the cross-entropy over the whole set."""
    zeros = margin_lower.new_zeros(margin_lower.shape[0], 1)
    return torch.logsumexp(torch.cat([zeros, -margin_lower], dim=1), dim=1)


def margin_lower_bounds(bm, x: Tensor, y: Tensor, lo: Tensor, hi: Tensor, beta: float, num_classes: int) -> Tensor:
    """Mixed CROWN-IBP/IBP lower bounds (B, K-1) of the margins over the box [lo, hi].

    One CROWN-IBP call yields both bounds: auto_LiRPA computes the IBP bound of ``C f`` on the way
    (kept as ``ibp_lower``), so the IBP term costs nothing extra.
    """
    from .lirpa import BoundedTensor, PerturbationLpNorm

    C = spec_matrix(y, num_classes).to(x.dtype)
    center = torch.min(torch.max(x, lo.detach()), hi.detach())
    bx = BoundedTensor(center, PerturbationLpNorm(norm=float("inf"), eps=None, x_L=lo, x_U=hi))
    if beta > _BETA_SKIP:
        crown_lb, _ = bm.compute_bounds(x=(bx,), C=C, method="CROWN-IBP", bound_upper=False)
        ibp_lb, _ = bm.compute_bounds(C=C, method=None, IBP=True, reuse_ibp=True)
        return beta * crown_lb + (1.0 - beta) * ibp_lb
    ibp_lb, _ = bm.compute_bounds(x=(bx,), C=C, method="IBP", bound_upper=False)
    return ibp_lb


def _exp_node(bm):
    for node in bm._modules.values():
        if type(node).__name__ == "BoundExp":
            return node
    raise RuntimeError("loss fusion: no exp node in the bounded cross-entropy graph")


class CertifiedLoss(nn.Module):
    """``forward(x, y, eps, beta, kappa)`` -> (loss, natural CE, robust CE or None, box statistics) of
    one batch: the module DDP wraps, so bounds are computed inside the wrapped forward. Its only
    submodule is the bounded graph (which shares the model's parameters)."""

    def __init__(self, trainer: "CertifiedTrainer"):
        super().__init__()
        self.bm = trainer.bm
        object.__setattr__(self, "trainer", trainer)  # not a submodule: DDP must not see it

    def forward(self, x: Tensor, y: Tensor, eps: float, beta: float, kappa: float):
        t = self.trainer
        stats: dict[str, Tensor] = {}
        if t.tcfg.loss_fusion:
            natural, robust = t._fused_losses(x, y, eps, beta)
        else:
            logits = self.bm(x)  # clean pass first: BatchNorm in train mode uses this batch's statistics
            natural = F.cross_entropy(logits, y)
            robust = None
            if eps > t.tcfg.natural_below:
                lo, hi = t.box(x, eps)
                m = margin_lower_bounds(self.bm, x, y, lo, hi, beta, t.num_classes)
                robust = robust_ce_from_margins(m).mean()
                with torch.no_grad():
                    stats.update(t.box_stats(lo, hi))
        loss = natural if robust is None else kappa * natural + (1.0 - kappa) * robust
        return loss, natural, robust, stats


@register_trainer("crown-ibp", "ibp", config=CertifiedTrainConfig)
class CertifiedTrainer(Trainer):
    """CROWN-IBP (or IBP) certified training of ``model`` under uniform L-inf balls clipped to [0, 1]."""

    kind = "crown-ibp"

    def __init__(self, model, train_set, val_set, cfg, out_dir, device, *, quiet: bool = False):
        super().__init__(model, train_set, val_set, cfg, out_dir, device, quiet=quiet)
        self.kind = self.tcfg.method
        x0, _ = train_set[0]
        self.input_shape = tuple(x0.shape)
        with torch.no_grad():
            self.num_classes = int(model(x0.unsqueeze(0).to(device)).shape[1])
        sched = self.tcfg.schedule
        self.start_step = sched.start_epoch * self.steps_per_epoch
        self.ramp_steps = sched.ramp_epochs * self.steps_per_epoch
        self._build_bounded()

    # --------------------------------------------------------------------------- bounded graph
    def _build_bounded(self) -> None:
        dummy = torch.zeros(2, *self.input_shape, device=self.device)
        was = self.model.training
        self.model.train()
        with warnings.catch_warnings():
            # Tracing BatchNorm in train mode makes the ONNX exporter warn about the running-stat
            # update and the export mode; both are expected here (auto_LiRPA notes, section 4).
            warnings.filterwarnings("ignore", message=r".*(Removing mutation|TrainingMode|Converting a tensor).*")
            self._construct(dummy)
        self.bm.train()
        self.model.train(was)
        self._loss_module = None  # (re)built from this bounded graph on the next step

    def loss_module(self) -> nn.Module:
        """:class:`CertifiedLoss` of the current bounded graph, wrapped in DDP when distributed; built on
        first use (:meth:`~robustsuite.training.loop.Trainer.release_ddp` drops the wrapper when ``fit`` ends)."""
        if self._loss_module is None:
            mod = CertifiedLoss(self)
            if dist_utils.is_distributed():
                from torch.nn.parallel import DistributedDataParallel as DDP
                ids = [self.device.index] if self.device.type == "cuda" and self.device.index is not None else None
                mod = DDP(mod, device_ids=ids)  # BatchNorm running statistics follow rank 0
                self.ddp_managed = {id(p) for p in mod.parameters()}
            self._loss_module = mod
        return self._loss_module

    def _construct(self, dummy: Tensor) -> None:
        from .graph_check import build_checked
        from .lirpa import BoundedModule, CrossEntropyWrapper

        # Training must not bound through an operation the verifier refuses (graph_check's allowlist);
        # build_checked also turns auto_LiRPA's own tracing failures into an error naming the op.
        method = "ibp" if self.bound_method() == "ibp" else "crown-ibp"
        # bound_opts: only keys both auto_LiRPA 0.3 and 0.7.x read ('conv_mode', 'loss_fusion'). The
        # ReLU relaxation stays at its default, 'adaptive', in both (0.3 names the key 'relu', 0.7.x
        # 'activation_bound_option').
        if self.tcfg.loss_fusion:
            build_checked(self.model, dummy, method, device=self.device)  # the classifier's own graph
            self.bm = BoundedModule(CrossEntropyWrapper(self.model),
                                    (dummy, torch.zeros(2, dtype=torch.long, device=self.device)),
                                    bound_opts={"loss_fusion": True}, device=self.device)
        else:
            self.bm = build_checked(self.model, dummy, method,
                                    bound_opts={"conv_mode": "patches"}, device=self.device)

    def on_resume(self) -> None:
        self._build_bounded()  # the bounded copy's BatchNorm buffers come from the restored model

    def sync_model(self) -> None:
        state = self.bm.state_dict()
        if self.tcfg.loss_fusion:
            state = {k[len("model."):]: v for k, v in state.items() if k.startswith("model.")}
        self.model.load_state_dict(state, strict=False)

    # --------------------------------------------------------------------------- schedules
    def eps_for_step(self, step: int) -> float:
        s = self.tcfg.schedule
        return eps_at(step, eps_max=self.tcfg.eps, start_step=self.start_step, ramp_steps=self.ramp_steps,
                      kind=s.kind, mid=s.mid)

    def box(self, x: Tensor, eps: float) -> tuple[Tensor, Tensor]:
        """The training set around ``x`` at radius ``eps``: an L-inf ball clipped to [0, 1]."""
        return (x - eps).clamp(0, 1), (x + eps).clamp(0, 1)

    def selectable(self) -> bool:
        return self.epoch * self.steps_per_epoch >= self.start_step + self.ramp_steps

    # --------------------------------------------------------------------------- one batch
    def bound_method(self) -> str:
        """``crown-ibp`` (CROWN-IBP mixed with IBP by beta) or ``ibp`` (beta = 0 throughout)."""
        return self.tcfg.method

    def box_stats(self, lo: Tensor, hi: Tensor) -> dict[str, Tensor]:
        """Extra per-batch statistics of the training box, for the history (none here)."""
        return {}

    def train_step(self, x: Tensor, y: Tensor, step: int) -> dict[str, Tensor]:
        eps = self.eps_for_step(step)
        beta = mix_factor(eps, self.tcfg.eps, self.tcfg.beta_final) if self.bound_method() == "crown-ibp" else 0.0
        kappa = mix_factor(eps, self.tcfg.eps, self.tcfg.kappa_final)
        # auto_LiRPA's TorchScript helpers are re-optimized depending on what ran before in the process,
        # which changes the last bits of a step; without that, a run resumed in a fresh process is
        # bit-identical to an uninterrupted one.
        with torch.jit.optimized_execution(False):
            loss, natural, robust, stats = self.loss_module()(x, y, eps, beta, kappa)
            out: dict[str, Tensor] = dict(stats)
            self.clip_and_step(loss)
        out.update(loss=loss.detach(), natural_ce=natural.detach(), eps=torch.tensor(eps))
        if robust is not None:
            out["robust_ce"] = robust.detach()
        return out

    def _fused_losses(self, x: Tensor, y: Tensor, eps: float, beta: float):
        from .lirpa import BoundedTensor, PerturbationLpNorm

        exp_node = _exp_node(self.bm)
        out = self.bm(x, y)  # sum_j exp(z_j - z_y - max): CE = log(out) + max
        natural = (torch.log(out).squeeze(1) + exp_node.max_input.squeeze(1)).mean()
        if eps <= self.tcfg.natural_below:
            return natural, None
        lo, hi = self.box(x, eps)
        center = torch.min(torch.max(x, lo.detach()), hi.detach())
        bx = BoundedTensor(center, PerturbationLpNorm(norm=float("inf"), eps=None, x_L=lo, x_U=hi))
        _, iub = self.bm.compute_bounds(x=(bx, y), method="IBP", bound_lower=False)
        robust = torch.log(iub).squeeze(1) + exp_node.max_input.squeeze(1)
        if beta > _BETA_SKIP:
            _, cub = self.bm.compute_bounds(x=(bx, y), method="CROWN-IBP", bound_lower=False)
            crown = torch.log(cub).squeeze(1) + exp_node.max_input.squeeze(1)
            # Both are upper bounds of the worst-case CE, so their convex combination is one too.
            robust = beta * crown + (1.0 - beta) * robust
        return natural, robust.mean()

    # --------------------------------------------------------------------------- selection
    def validate(self) -> dict[str, float]:
        if self.val_set is None or len(self.val_set) == 0:
            return {}
        from ..data import as_tensors
        from ..threats import LinfBall
        from .verifier import Verifier

        x, y = as_tensors(self.val_set)
        x, y = x.to(self.device), y.to(self.device)
        v = Verifier(self.model, self.input_shape, method=self.tcfg.select_method, device=self.device)
        res = v.verify(x, y, LinfBall(self.tcfg.eps_test))
        clean = float(res.clean_correct.float().mean())
        cert = float(res.certified.float().mean())
        # Certified accuracy decides; clean accuracy breaks ties.
        return {"clean_acc": clean, "certified_acc": cert, "select": cert + 1e-3 * clean}
