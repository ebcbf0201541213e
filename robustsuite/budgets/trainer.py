"""Joint certified training of a classifier and its budget generator (``train.method: budgets``).

Per batch at the current target radius e (the CROWN-IBP eps schedule, per batch):
budgets ``eps_i = exp(projection(g(x)))`` (volume e^d, range [e / rho, rho e]); box
``[x - eps_i, x + eps_i]`` clipped to [0, 1]; the CROWN-IBP loss of :mod:`robustsuite.certify.trainer`
over that box; one backward pass, then a step of the classifier's optimizer and of the generator's
own optimizer. With e ~ 0 the step is natural training and the generator is not involved; during
``generator.warmup_epochs`` (and always at rho = 1) the generator is frozen, so the box is the
uniform ball (its last layer starts at zero). With rho = 1 the run is the uniform CROWN-IBP run of
the same seed, number for number: the generator is initialized from its own RNG stream and the
budgets are exactly e.

Checkpoints hold the classifier as every trainer's do (``model_spec``/``model_state``, so
:func:`robustsuite.training.model_from_checkpoint` gives the classifier) plus ``generator_spec``,
``generator_state`` and ``budgets`` (``eps``, ``rho``: the test radius and range ratio);
:func:`load_budget_model` rebuilds the pair.
"""
from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import Tensor

from ..certify.trainer import CertifiedTrainer
from ..errors import CheckpointError
from ..threats import Box
from ..training.loop import build_optimizer
from ..training.registry import register_trainer
from .config import BudgetTrainConfig
from .budget_generator import BudgetGenerator, BudgetModel, FixedBudgetGenerator, generator_from_spec

log = logging.getLogger(__name__)

__all__ = ["BudgetTrainer", "load_budget_model", "budget_settings"]


@register_trainer("budgets", config=BudgetTrainConfig)
class BudgetTrainer(CertifiedTrainer):
    """CROWN-IBP training under the boxes of a jointly trained :class:`BudgetGenerator` (or, with
    ``generator.kind: fixed``, of one learned mask for all images, :class:`FixedBudgetGenerator`).

    ``self.model`` is the classifier (what auto_LiRPA bounds); ``self.generator`` the generator;
    ``self.budget_model`` the pair. The classifier keeps the optimizer, schedule and gradient
    clipping of ``train.optim``; the generator has its own (``train.generator.optim``).
    """

    kind = "budgets"

    def __init__(self, model, train_set, val_set, cfg, out_dir, device, *, quiet: bool = False):
        g = cfg.train.generator
        x0, _ = train_set[0]
        # Own RNG stream: building the generator must not change what the classifier's run draws.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(cfg.seed) + int(g.seed_offset))
            if g.kind == "fixed":  # the input-independent baseline: one mask, no network
                self.generator = FixedBudgetGenerator(tuple(x0.shape)).to(device)
            else:
                self.generator = BudgetGenerator(tuple(x0.shape), width=g.width, depth=g.depth,
                                                 coordinates=g.coordinates).to(device)
        self.budget_model = BudgetModel(model, self.generator)
        super().__init__(model, train_set, val_set, cfg, out_dir, device, quiet=quiet)
        self.gen_optimizer = build_optimizer(self.generator.parameters(), g.optim)

    # --------------------------------------------------------------------------- generator
    def generator_active(self) -> bool:
        """Whether the generator learns now (after its warm-up, and only when rho > 1)."""
        return self.tcfg.rho > 1.0 and self.epoch >= self.tcfg.generator.warmup_epochs

    def _generator_lr(self) -> float:
        o = self.tcfg.generator.optim
        return o.lr * o.gamma ** sum(1 for m in o.milestones if self.epoch >= m)

    def box(self, x: Tensor, eps: float) -> tuple[Tensor, Tensor]:
        """The learned box at target radius ``eps``, clipped to [0, 1] (differentiable in the
        generator's parameters while it learns)."""
        with torch.set_grad_enabled(torch.is_grad_enabled() and self.generator_active()):
            b = self.budget_model.budgets(x, eps, self.tcfg.rho, check=False)
        return (x - b).clamp(0, 1), (x + b).clamp(0, 1)

    # --------------------------------------------------------------------------- one batch
    def bound_method(self) -> str:
        return self.tcfg.bound  # train.method is "budgets"; the bound is its own key

    def box_stats(self, lo: Tensor, hi: Tensor) -> dict[str, Tensor]:
        """The effective (clipped) log-mean radius of the learned box."""
        return {"eff_log_radius": ((hi - lo) / 2).clamp_min(1e-12).log().mean()}

    def clip_and_step(self, loss: Tensor) -> None:
        """One backward pass; the classifier's step as the uniform trainer's, then the generator's."""
        self.gen_optimizer.zero_grad(set_to_none=True)
        super().clip_and_step(loss)
        if not self.generator_active():
            return
        o = self.tcfg.generator.optim
        for group in self.gen_optimizer.param_groups:
            group["lr"] = self._generator_lr()
        if o.grad_clip:
            torch.nn.utils.clip_grad_norm_(list(self.generator.parameters()), o.grad_clip)
        self.gen_optimizer.step()

    # --------------------------------------------------------------------------- selection
    def eval_box(self, x: Tensor) -> Box:
        """The set that selection certifies: the learned box at ``eps_test`` and ``rho_test``."""
        return self.budget_model.box(x, self.tcfg.eps_test, self.tcfg.rho_test)

    def validate(self) -> dict[str, float]:
        """Clean and certified accuracy on the held-out split under the learned boxes at
        ``eps_test`` and ``rho_test`` (certified accuracy decides ``best.pt``)."""
        if self.val_set is None or len(self.val_set) == 0:
            return {}
        from ..certify.verifier import Verifier
        from ..data import as_tensors

        x, y = as_tensors(self.val_set)
        x, y = x.to(self.device), y.to(self.device)
        with torch.no_grad():
            box = self.eval_box(x)
        v = Verifier(self.model, self.input_shape, method=self.tcfg.select_method, device=self.device)
        res = v.verify(x, y, box)
        clean = float(res.clean_correct.float().mean())
        cert = float(res.certified.float().mean())
        return {"clean_acc": clean, "certified_acc": cert, "select": cert + 1e-3 * clean}

    # --------------------------------------------------------------------------- checkpoints
    def _model_entry(self) -> dict:
        entry = super()._model_entry()
        entry.update(generator_spec=dict(self.generator.spec), generator_state=self.generator.state_dict(),
                     budgets={"eps": float(self.tcfg.eps_test), "rho": float(self.tcfg.rho_test),
                              "train_eps": float(self.tcfg.eps), "train_rho": float(self.tcfg.rho)})
        return entry

    def extra_state(self) -> dict:
        return {"generator_state": self.generator.state_dict(), "gen_optimizer": self.gen_optimizer.state_dict()}

    def load_extra_state(self, state: dict) -> None:
        if "generator_state" in state:
            self.generator.load_state_dict(state["generator_state"])
            self.gen_optimizer.load_state_dict(state["gen_optimizer"])


def budget_settings(ckpt: dict) -> dict:
    """``{"eps": test radius, "rho": test range ratio, ...}`` of a budget checkpoint."""
    if ckpt.get("kind") != "budgets" or "budgets" not in ckpt:
        raise CheckpointError(f"checkpoint of kind {ckpt.get('kind')!r} is not a budget checkpoint "
                              "(train one with train.method: budgets)")
    return dict(ckpt["budgets"])


def load_budget_model(ckpt: dict | str | Path, device: str | torch.device = "cpu") -> BudgetModel:
    """The classifier + generator of a budget checkpoint, in eval mode on ``device``."""
    from ..training.checkpoint import load_checkpoint, load_weights, model_from_checkpoint

    if not isinstance(ckpt, dict):
        ckpt = load_checkpoint(ckpt)
    budget_settings(ckpt)
    for key in ("generator_spec", "generator_state"):
        if key not in ckpt:
            raise CheckpointError(f"budget checkpoint has no {key!r} entry")
    classifier = model_from_checkpoint(ckpt, device=device)
    gen = generator_from_spec(ckpt["generator_spec"])
    load_weights(gen, ckpt["generator_state"], "budget checkpoint: the generator weights")
    return BudgetModel(classifier, gen.to(device)).eval()
