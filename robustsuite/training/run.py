"""From a validated config to a trained checkpoint: data, model, the trainer of ``train.method``.

``train(cfg, out_dir)`` is what ``robustsuite train CONFIG`` calls. The trainer of ``train.method``
comes from the trainer registry (:mod:`robustsuite.training.registry`), which each trainer fills where
it is defined, so this shared part does not import the parts that build on it.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset, Subset

from ..errors import ConfigError
from ..runtime import resolve_device, seed_everything
from .config import RunConfig
from .registry import trainer_class

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    """Where a training run left its outputs, and its per-epoch history."""

    out_dir: Path
    best: Path
    last: Path
    history: list[dict[str, Any]]


def split_train_val(train_set: Dataset, val_fraction: float, seed: int = 0) -> tuple[Dataset, Dataset | None]:
    """Hold out ``val_fraction`` of the training set for model selection (fixed permutation)."""
    n = len(train_set)
    n_val = int(round(n * val_fraction))
    if n_val == 0:
        return train_set, None
    if n_val >= n:
        raise ConfigError(f"data.val_fraction: {val_fraction} leaves no training samples out of {n}")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    return Subset(train_set, sorted(perm[n_val:])), Subset(train_set, sorted(perm[:n_val]))


def build_datasets(cfg: RunConfig) -> tuple[Dataset, Dataset | None, Dataset]:
    """(train, val, test) datasets of a config; val is carved out of train."""
    from .. import data as rdata

    d = cfg.data
    train_set = rdata.load(d.name, "train", root=d.root, download=d.download, **d.options)
    test_set = rdata.load(d.name, "test", root=d.root, download=d.download, **d.options)
    if d.train_subset:
        train_set = rdata.subset(train_set, n=d.train_subset)
    if d.test_subset:
        test_set = rdata.subset(test_set, n=d.test_subset)
    train_set, val_set = split_train_val(train_set, d.val_fraction)
    return train_set, val_set, test_set


def build_model(cfg: RunConfig, in_shape: tuple[int, ...], num_classes: int) -> torch.nn.Module:
    """The zoo model of ``cfg.model`` with the data set's normalization inside (unless given)."""
    from .. import data as rdata
    from .. import models

    options = dict(cfg.model.options)
    info = rdata.info(cfg.data.name, **cfg.data.options)
    if getattr(info, "mean", None) is not None and "mean" not in options and "std" not in options:
        options["mean"], options["std"] = list(info.mean), list(info.std)
    return models.build(cfg.model.name, in_shape, num_classes, **options)


def train(cfg: RunConfig, out_dir: str | Path, *, device: str | None = None, resume: bool = True,
          quiet: bool = False, stop_after: int | None = None) -> TrainResult:
    """Train the model of ``cfg`` with its trainer; write ``best.pt``, ``last.pt``, ``config.yaml``,
    ``history.json`` and ``train.log`` into ``out_dir``. Resumes from ``out_dir/last.pt`` when present
    (a finished run returns at once). Holds the lock of ``out_dir`` throughout (rank 0 under torchrun): a second run
    into the same folder raises :class:`~robustsuite.errors.OutputError` naming this one's PID. Every
    INFO line of the run (one per epoch) is appended to ``out_dir/train.log`` (rank 0 only; see
    :func:`robustsuite.progress.run_log`)."""
    from ..files import output_lock, writes_outputs
    from ..progress import run_log
    from .distributed import init_from_env

    init_from_env()  # no-op unless launched by torchrun with WORLD_SIZE > 1
    with output_lock(out_dir, enabled=writes_outputs()) as folder, \
            run_log(folder / "train.log", enabled=writes_outputs()):
        return _train(cfg, out_dir, device=device, resume=resume, quiet=quiet, stop_after=stop_after)


def _train(cfg: RunConfig, out_dir: str | Path, *, device: str | None, resume: bool, quiet: bool,
           stop_after: int | None) -> TrainResult:
    from .. import data as rdata
    from .distributed import device_for_rank

    dev = device_for_rank(resolve_device(device or cfg.device))
    train_set, val_set, _ = build_datasets(cfg)  # seeded by the config alone (no global RNG draws)
    # Seeded after loading: importing a data set's library may draw from a global RNG (scikit-learn
    # imports rich, whose import draws from Python's `random`), and that must not shift the run.
    seed_everything(cfg.seed)
    info = rdata.info(cfg.data.name, **cfg.data.options)
    x0, _ = train_set[0]
    model = build_model(cfg, tuple(x0.shape), info.num_classes).to(dev)
    cls = trainer_class(cfg.train.method)
    trainer = cls(model, train_set, val_set, cfg, out_dir, dev, quiet=quiet)
    history = trainer.fit(resume=resume, stop_after=stop_after)
    return TrainResult(out_dir=Path(out_dir), best=trainer.best_path, last=trainer.last_path, history=history)
