"""The training loop every trainer shares: epochs, seeded shuffling, checkpoints, resume, selection.

A trainer subclasses :class:`Trainer` and supplies ``train_step`` (one batch, returns detached
scalar tensors to log) and optionally ``validate`` (a dict with a ``select`` score, higher is
better, that picks ``best.pt``), ``sync_model`` (copy state back from wrapped modules before a
checkpoint) and ``extra_state``/``load_extra_state``.

Determinism: the batch order of epoch e comes from a generator seeded with (seed, e); training's own
draws (noise, attack starts, augmentation) come from the global RNGs, whose states ``last.pt`` saves;
validation runs on RNG streams of its own seeded with (seed, epoch) and gives the global ones back
unchanged, so when (or whether) it runs cannot shift what training draws. A run resumed from its last
checkpoint therefore reaches bit-identical weights, optimizer states and history.

Resume: ``last.pt`` is read, checked and restored before anything is written. It must hold every
entry of :data:`RESUME_ENTRIES` (and the trainer's extra state), and its config must be the run's
config up to :data:`RESUME_FREE_KEYS` and a longer ``train.epochs`` (:func:`config_differences`);
otherwise the resume is refused with an error naming the file, the keys and the ways out.

Distribution (``torchrun``, see :mod:`robustsuite.training.distributed`): ``train.batch_size`` is the
global batch; every rank draws the same global batches and takes ``batch[rank::world]``; gradients
are averaged over ranks by DDP (every trainer computes its loss inside a DDP-wrapped forward:
:meth:`Trainer.loss_call` or its own bounded module); only rank 0 validates and writes files, and
the history is the same on every rank.
"""
from __future__ import annotations

import abc
import logging
import math
import time
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import BatchSampler, DataLoader, Dataset, RandomSampler

from .config import RunConfig
from ..errors import CheckpointError, ConfigError, RobustSuiteError
from ..files import atomic_write_json, atomic_write_text
from ..progress import bar
from ..runtime import derived_seed, isolated_rng, rng_state, set_rng_state
from . import distributed as dist_utils
from .checkpoint import load_checkpoint, load_weights, save_checkpoint

log = logging.getLogger(__name__)

#: what a ``last.pt`` must hold to continue a run (besides the model entries every checkpoint has)
RESUME_ENTRIES = ("config", "epoch", "optimizer", "scheduler", "rng", "history", "best_score")
#: config keys that may change between a run and its resume: where it runs and what is checked after it
#: (``train.epochs`` may also grow; see :func:`config_differences`)
RESUME_FREE_KEYS = ("device", "verify", "train.checkpoint_every")
_NO_RESUME = "`--no-resume` (resume=False) to start over in this folder (its checkpoints are replaced)"


def _flatten(cfg: Any, prefix: str = "") -> dict[str, Any]:
    """Dotted paths of a nested mapping -> leaf values (lists are leaves)."""
    if not isinstance(cfg, dict):
        return {prefix: cfg}
    out: dict[str, Any] = {}
    for k, v in cfg.items():
        out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
    return out


def _short(value: Any, width: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= width else text[:width - 3] + "..."


def config_differences(saved: dict, new: dict) -> list[str]:
    """``"key: old -> new"`` for every resolved-config key in which ``new`` does not continue the run
    that ``saved`` describes. Free to change: :data:`RESUME_FREE_KEYS`, and ``train.epochs`` when it
    grows (the run trains on; schedules over the whole run, such as MNG-AC's cyclic learning rate, then
    follow the new length)."""
    a, b = _flatten(saved), _flatten(new)
    out = []
    for key in [*b, *(k for k in a if k not in b)]:  # the new config's order, then keys it no longer has
        old_v, new_v = a.get(key, "<absent>"), b.get(key, "<absent>")
        if old_v == new_v or any(key == f or key.startswith(f + ".") for f in RESUME_FREE_KEYS):
            continue
        if key == "train.epochs" and isinstance(old_v, int) and isinstance(new_v, int) and new_v > old_v:
            continue
        out.append(f"{key}: {_short(old_v)} -> {_short(new_v)}")
    return out


def check_same_run(saved: dict, new: dict, path: str | Path) -> None:
    """Raise :class:`~robustsuite.errors.ConfigError` when ``new`` (a resolved config) does not continue
    the run whose ``last.pt`` at ``path`` holds ``saved``; the message names the differing keys
    (at most 6) and the two ways out."""
    diffs = config_differences(saved, new)
    if diffs:
        more = f" (+{len(diffs) - 6} more)" if len(diffs) > 6 else ""
        raise ConfigError(
            f"cannot resume from {str(path)!r}: the run in this folder was trained with a different config "
            f"({'; '.join(diffs[:6])}{more}); nothing was written; fix: train into another folder (--out DIR), "
            f"or {_NO_RESUME}; only a longer train.epochs, device, verify and train.checkpoint_every may change "
            "on resume")


def build_optimizer(params, optim_cfg) -> torch.optim.Optimizer:
    """Adam or SGD (momentum, Nesterov off) from an :class:`~robustsuite.training.config.OptimConfig`."""
    params = [p for p in params if p.requires_grad]
    if optim_cfg.name == "adam":
        return torch.optim.Adam(params, lr=optim_cfg.lr, weight_decay=optim_cfg.weight_decay)
    return torch.optim.SGD(params, lr=optim_cfg.lr, momentum=optim_cfg.momentum,
                           weight_decay=optim_cfg.weight_decay)


class _LossClosure(nn.Module):
    """Holds the model, so DDP sees its parameters; ``forward(fn, *args)`` is ``fn(*args)``."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, fn, *args):
        return fn(*args)


class Trainer(abc.ABC):
    """Base class: owns the epoch loop, checkpoints (``last.pt``, ``best.pt``) and resume.

    Args:
        model: the network to train (already on ``device``).
        train_set, val_set: datasets of (image (C, H, W) in [0, 1], label); ``val_set`` may be None.
        cfg: the validated run config (``cfg.train`` holds the trainer's section).
        out_dir: folder for checkpoints, the resolved config and the history.
        device: torch device.
        quiet: no progress bars (they show only on a terminal anyway).
    """

    kind = "base"

    def __init__(self, model: nn.Module, train_set: Dataset, val_set: Dataset | None, cfg: RunConfig,
                 out_dir: str | Path, device: torch.device, *, quiet: bool = False):
        dist_utils.init_from_env()
        rank_device = dist_utils.device_for_rank(torch.device(device))
        if rank_device != torch.device(device):
            device = rank_device
            model.to(device)
        self.model = model
        self.train_set, self.val_set = train_set, val_set
        self.cfg, self.tcfg = cfg, cfg.train
        self.out_dir = Path(out_dir)
        self.device = device
        self.quiet = quiet or not dist_utils.is_main()
        self.loss_weight = 1.0  # distributed: world * local / global of the current batch
        self.ddp_managed: set[int] = set()  # ids of parameters whose gradients DDP averages
        self._ddp: nn.Module | None = None  # DistributedDataParallel around the model (loss_call)
        self.epoch = 0  # epochs completed
        self.history: list[dict[str, Any]] = []
        self.best_score = -math.inf
        self.steps_per_epoch = max(1, math.ceil(len(train_set) / self.tcfg.batch_size))
        self.optimizer = build_optimizer(self.parameters(), self.tcfg.optim)
        self.scheduler = torch.optim.lr_scheduler.MultiStepLR(
            self.optimizer, milestones=list(self.tcfg.optim.milestones), gamma=self.tcfg.optim.gamma)

    # --------------------------------------------------------------------------- hooks
    def parameters(self):
        """Parameters the optimizer updates (override to add e.g. a budget generator)."""
        return self.model.parameters()

    @abc.abstractmethod
    def train_step(self, x: Tensor, y: Tensor, step: int) -> dict[str, Tensor]:
        """One batch: forward, loss, backward, optimizer step; return detached scalars to log."""

    def validate(self) -> dict[str, float]:
        """Validation metrics; a ``select`` entry (higher is better) picks ``best.pt``."""
        return {}

    def selectable(self) -> bool:
        """Whether this epoch may become ``best.pt`` (e.g. only after the eps ramp)."""
        return True

    def sync_model(self) -> None:
        """Copy state held outside ``self.model`` (e.g. BatchNorm statistics of a bounded copy) back."""

    def extra_state(self) -> dict:
        return {}

    def load_extra_state(self, state: dict) -> None:
        pass

    def on_resume(self) -> None:
        """Rebuild anything derived from the model after its weights were restored."""

    # --------------------------------------------------------------------------- helpers
    def loss_call(self, fn, *args):
        """``fn(*args)``: the step's loss (and whatever else ``fn`` returns), computed from calls of
        ``self.model``. Under torchrun it runs inside the forward of a DistributedDataParallel wrapper
        of ``self.model``, so the next backward averages the model's gradients over ranks as DDP does
        (bucketed, overlapped with the backward); backward passes outside it (attacks, regularizers)
        stay local, as DDP ignores them."""
        if not dist_utils.is_distributed():
            return fn(*args)
        if self._ddp is None:
            from torch.nn.parallel import DistributedDataParallel as DDP

            ids = [self.device.index] if self.device.type == "cuda" and self.device.index is not None else None
            # find_unused_parameters: noise parameters sit idle while noise is off (Learn2Perturb's
            # delay, PNI before its start)
            self._ddp = DDP(_LossClosure(self.model), device_ids=ids, find_unused_parameters=True)
            self.ddp_managed = {id(p) for p in self.model.parameters()}
        return self._ddp(fn, *args)

    def backward(self, loss: Tensor) -> None:
        """``loss.backward()``; under torchrun also the gradient of the global batch: the loss weighted
        by this rank's share, and the gradients DDP does not manage averaged over ranks."""
        if dist_utils.is_distributed():
            (loss * self.loss_weight).backward()
            dist_utils.all_reduce_grads(self._unmanaged_params())
        else:
            loss.backward()

    def clip_and_step(self, loss: Tensor) -> None:
        """Backward pass, gradient-norm clipping (if configured) and an optimizer step."""
        self.optimizer.zero_grad(set_to_none=True)
        self.backward(loss)
        clip = self.tcfg.optim.grad_clip
        if clip:
            torch.nn.utils.clip_grad_norm_([p for g in self.optimizer.param_groups for p in g["params"]], clip)
        self.optimizer.step()

    def _unmanaged_params(self) -> list[Tensor]:
        """Parameters of every optimizer of the trainer whose gradients DDP does not average."""
        seen: set[int] = set(self.ddp_managed)
        out = []
        for opt in [o for o in vars(self).values() if isinstance(o, torch.optim.Optimizer)]:
            for g in opt.param_groups:
                for p in g["params"]:
                    if id(p) not in seen:
                        seen.add(id(p))
                        out.append(p)
        return out

    def loader(self, epoch: int) -> DataLoader:
        gen = torch.Generator().manual_seed(int(self.cfg.seed) * 100_003 + epoch)
        if dist_utils.is_distributed():  # the same global batches as one process; this rank's part
            batches = BatchSampler(RandomSampler(self.train_set, generator=gen), self.tcfg.batch_size,
                                   drop_last=False)
            sampler = dist_utils.ShardedBatchSampler(batches, dist_utils.rank(), dist_utils.world())
            # generator too: the loader draws its base seed from it first, as the one-process loader
            return DataLoader(self.train_set, batch_sampler=sampler, generator=gen, num_workers=0)
        return DataLoader(self.train_set, batch_size=self.tcfg.batch_size, shuffle=True, generator=gen,
                          drop_last=False, num_workers=0)

    @property
    def last_path(self) -> Path:
        return self.out_dir / "last.pt"

    @property
    def best_path(self) -> Path:
        return self.out_dir / "best.pt"

    def _model_entry(self) -> dict:
        return {"kind": self.kind, "model_spec": getattr(self.model, "spec", None),
                "model_state": self.model.state_dict(), "config": self.cfg.resolved()}

    def save_last(self, finished: bool) -> None:
        if not dist_utils.is_main():
            return
        save_checkpoint(self.last_path, **self._model_entry(), epoch=self.epoch, finished=finished,
                        optimizer=self.optimizer.state_dict(), scheduler=self.scheduler.state_dict(),
                        rng=rng_state(), history=self.history, best_score=self.best_score,
                        extra=self.extra_state(), metrics=self.history[-1] if self.history else {})

    def resume_checkpoint(self) -> dict | None:
        """``last.pt`` of this folder, checked to continue this very run, or None when there is none.

        Reads only: raises :class:`~robustsuite.errors.ConfigError` when the run was trained with a
        different config (see :func:`config_differences`) and :class:`~robustsuite.errors.CheckpointError`
        when the file is unsafe, unreadable or lacks a resume entry; the folder is left as it was.
        """
        if not self.last_path.is_file():
            return None
        ckpt = load_checkpoint(self.last_path, map_location=self.device)
        missing = [k for k in RESUME_ENTRIES if k not in ckpt]
        missing += [f"extra.{k}" for k in self.extra_state() if k not in (ckpt.get("extra") or {})]
        if missing:
            raise CheckpointError(
                f"cannot resume from {str(self.last_path)!r}: it lacks {', '.join(missing)} (a best.pt copied "
                "over it, or a file not written by `robustsuite train`); nothing was written; fix: train into "
                f"another folder (--out DIR), or start over here with {_NO_RESUME}")
        if not isinstance(ckpt["config"], dict):
            raise CheckpointError(f"cannot resume from {str(self.last_path)!r}: its 'config' entry is a "
                                  f"{type(ckpt['config']).__name__}, not a mapping; fix: {_NO_RESUME}")
        check_same_run(ckpt["config"], self.cfg.resolved(), self.last_path)
        return ckpt

    def restore(self, ckpt: dict) -> None:
        """Continue from a checkpoint of :meth:`resume_checkpoint` (weights, optimizers, schedule, history,
        extra state, and last every RNG state, so nothing drawn while restoring shifts the streams)."""
        where = f"resume from {str(self.last_path)!r}"
        load_weights(self.model, ckpt["model_state"], f"{where}: the saved weights")
        try:
            self.optimizer.load_state_dict(ckpt["optimizer"])
            self.scheduler.load_state_dict(ckpt["scheduler"])
            self.epoch = int(ckpt["epoch"])
            self.history = list(ckpt["history"])
            self.best_score = float(ckpt["best_score"])
            self.load_extra_state(ckpt.get("extra") or {})
            self.on_resume()
            set_rng_state(ckpt["rng"])
        except (RuntimeError, ValueError, TypeError, KeyError, AttributeError) as e:
            if isinstance(e, RobustSuiteError):
                raise
            reason = str(e).strip().splitlines()[0] if str(e).strip() else ""
            raise CheckpointError(f"{where}: its optimizer, schedule, RNG or trainer state does not fit this "
                                  f"run ({type(e).__name__}: {reason[:200]}); fix: {_NO_RESUME}, or another "
                                  "--out") from None
        log.info("resumed %s from epoch %d", self.last_path, self.epoch)

    def resume(self) -> bool:
        """Load ``last.pt`` if present (see :meth:`resume_checkpoint`); return whether the run continues from it."""
        ckpt = self.resume_checkpoint()
        if ckpt is None:
            return False
        self.restore(ckpt)
        return True

    # --------------------------------------------------------------------------- the loop
    def fit(self, *, resume: bool = True, stop_after: int | None = None) -> list[dict[str, Any]]:
        """Train to ``cfg.train.epochs`` (continuing from ``last.pt`` when ``resume``); return the history.

        ``stop_after`` ends the call after that many epochs in total (used to test resume).
        Under torchrun the DistributedDataParallel wrappers are dropped when it returns or raises (see
        :meth:`release_ddp`).
        """
        try:
            return self._fit(resume=resume, stop_after=stop_after)
        finally:
            self.release_ddp()

    def release_ddp(self) -> None:
        """Set every attribute of the trainer that holds a DistributedDataParallel wrapper to None (each
        is built on first use, so training can go on): a wrapper holds the process group, which
        :func:`~robustsuite.training.distributed.cleanup` can only destroy, and so join its threads,
        once nothing holds it."""
        from torch.nn.parallel import DistributedDataParallel as DDP

        for name, value in list(vars(self).items()):
            if isinstance(value, DDP):
                setattr(self, name, None)

    def _fit(self, *, resume: bool, stop_after: int | None) -> list[dict[str, Any]]:
        main = dist_utils.is_main()
        if resume:  # checked and restored before anything is written: a refused resume leaves the folder as it was
            self.resume()
        if main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            atomic_write_text(self.out_dir / "config.yaml", _yaml(self.cfg.resolved()))
            # the first line of the run in its log (after the resume check: a refused resume writes nothing)
            log.info("%s %s (%s) to epoch %d in %s", "continuing" if self.epoch else "training", self.cfg.name,
                     self.kind, self.tcfg.epochs, self.out_dir)
        if dist_utils.is_distributed():
            dist_utils.broadcast_module(self.model)  # identical start on every rank (DDP does it too)
            dist_utils.barrier()
        total = self.tcfg.epochs if stop_after is None else min(self.tcfg.epochs, stop_after)
        # one bar per run over its epochs (loss and validation score in the postfix), the batches nested
        epochs = bar(desc=self.cfg.name, total=self.tcfg.epochs, initial=self.epoch, unit="epoch", quiet=self.quiet)
        while self.epoch < total:
            epoch = self.epoch
            self.model.train()
            t0 = time.perf_counter()
            sums: dict[str, Tensor] = {}
            counts: dict[str, int] = {}
            loader = self.loader(epoch)
            if dist_utils.is_distributed():
                # Own draws per rank (attack starts, noise layers, augmentation): one stream on every
                # rank would repeat the same draws in every shard. Seeded by (seed, epoch, rank), so a
                # resumed run draws what an uninterrupted one does.
                torch.manual_seed(dist_utils.rank_seed(int(self.cfg.seed), epoch, dist_utils.rank()))
            sharded = isinstance(loader.batch_sampler, dist_utils.ShardedBatchSampler)
            it = bar(loader, total=self.steps_per_epoch, quiet=self.quiet, unit="batch",
                     desc=f"{self.kind} epoch {epoch + 1}/{self.tcfg.epochs}")
            for i, (x, y) in enumerate(it):
                x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
                n = x.shape[0]
                if sharded:  # this rank's share of the global batch (0 for a padding sample)
                    n, n_global = loader.batch_sampler.sizes[i]
                    self.loss_weight = dist_utils.loss_weight(n, n_global)
                stats = self.train_step(x, y, epoch * self.steps_per_epoch + i)
                for k, v in stats.items():  # a key may be missing in some batches (no bounds at eps 0)
                    sums[k] = sums.get(k, 0) + v.detach() * n
                    counts[k] = counts.get(k, 0) + n
                if not it.disable and i % 10 == 0 and "loss" in stats:
                    it.set_postfix(loss=f"{float(stats['loss']):.3f}")
            self.scheduler.step()
            self.epoch += 1
            self.sync_model()
            row: dict[str, Any] = {"epoch": self.epoch, "time_s": round(time.perf_counter() - t0, 3),
                                   "lr": self.optimizer.param_groups[0]["lr"]}
            if sharded:  # means over the global batches: sums and counts of every rank
                parts = dist_utils.all_gather_objects({k: (float(v), counts[k]) for k, v in sums.items()})
                sums, counts = {}, {}
                for part in parts:
                    for k, (s, c) in part.items():
                        sums[k], counts[k] = sums.get(k, 0.0) + s, counts.get(k, 0) + c
            row.update({k: float(v) / counts[k] for k, v in sums.items() if counts[k]})
            self.model.eval()
            # Validation draws (noise layers, attack starts, DataLoader seeds) come from streams of their
            # own, so they never shift what training draws next (a resumed run validates the same).
            with isolated_rng(derived_seed(int(self.cfg.seed), self.epoch, "validate")):
                val = self.validate() if main else {}
            val = dist_utils.broadcast_object(val)  # rank 0 validates; every rank keeps the same history
            row.update({f"val_{k}": v for k, v in val.items()})
            self.history.append(row)
            if main:
                log.info("epoch %d: %s", self.epoch, ", ".join(f"{k}={v:.4g}" for k, v in row.items()
                                                             if isinstance(v, float)))
                epochs.set_postfix({k: f"{row[k]:.3g}" for k in ("loss", "val_select") if k in row}, refresh=False)
                epochs.update()
            if "select" in val and self.selectable() and val["select"] > self.best_score:
                self.best_score = val["select"]
                if main:
                    save_checkpoint(self.best_path, **self._model_entry(), epoch=self.epoch, finished=False,
                                    metrics=row)
            finished = self.epoch >= self.tcfg.epochs
            if finished or self.epoch % self.tcfg.checkpoint_every == 0 or self.epoch == total:
                self.save_last(finished)
        epochs.close()
        if main and self.epoch >= self.tcfg.epochs and not self.best_path.is_file():
            save_checkpoint(self.best_path, **self._model_entry(), epoch=self.epoch, finished=True,
                            metrics=self.history[-1] if self.history else {})
        if main:
            atomic_write_json(self.out_dir / "history.json", self.history)
        dist_utils.barrier()  # every rank returns once the files exist
        self.model.eval()
        return self.history


def _yaml(obj: dict) -> str:
    import yaml
    return yaml.safe_dump(obj, sort_keys=False)
