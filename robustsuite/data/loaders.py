"""DataLoaders, subsets and whole-set tensors, reproducible from a seed."""
from __future__ import annotations

import random

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Subset

from ..errors import ConfigError, InputError
from .tensor_dataset import ImageTensorDataset


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _seed_worker(worker_id: int) -> None:
    # DataLoader seeds torch in each worker from the loader's generator; give NumPy and random the
    # same seed so any transform that uses them is reproducible too.
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


def make_loader(dataset: Dataset, batch_size: int, *, shuffle: bool, seed: int = 0, num_workers: int = 0,
                drop_last: bool = False, distributed: bool = False) -> DataLoader:
    """A DataLoader whose order (and worker augmentation) is fixed by ``seed``.

    Args:
        dataset: any map-style dataset of ``(image, label)``.
        batch_size: samples per batch (> 0); batches are (x float32 NCHW, y int64).
        shuffle: reshuffle every epoch, drawing from a generator seeded with ``seed``: two loaders
            with the same seed give the same batches.
        seed: seeds the shuffling generator (and, through it, each worker's torch seed).
        num_workers: worker processes (0 = load in this process).
        drop_last: drop the last incomplete batch.
        distributed: use a ``DistributedSampler(shuffle=shuffle, seed=seed)`` over the initialized
            process group, so each rank sees its own shard. The caller must call
            ``loader.sampler.set_epoch(epoch)`` at the start of every epoch, or every epoch repeats the
            first one's order. The sampler pads the shards to equal length by repeating samples.

    Augmentation draws from torch's global RNG: in worker processes it is seeded from ``seed``; with
    ``num_workers=0`` seed the process (``robustsuite.runtime.seed_everything``) for identical runs.
    """
    if not _is_int(batch_size) or batch_size <= 0:
        raise ConfigError(f"batch_size: must be an integer > 0, got {batch_size!r}")
    if not _is_int(num_workers) or num_workers < 0:
        raise ConfigError(f"num_workers: must be an integer >= 0, got {num_workers!r}")
    if not _is_int(seed):
        raise ConfigError(f"seed: must be an integer, got {seed!r}")
    generator = torch.Generator().manual_seed(seed)
    sampler = None
    if distributed:
        if not (dist.is_available() and dist.is_initialized()):
            raise ConfigError("distributed: true needs an initialized torch.distributed process group "
                              "(launch with torchrun and call init_process_group first)")
        sampler = DistributedSampler(dataset, shuffle=bool(shuffle), seed=seed)
        shuffle = False  # the sampler shuffles
    return DataLoader(dataset, batch_size=batch_size, shuffle=bool(shuffle), sampler=sampler,
                      num_workers=num_workers, drop_last=drop_last, generator=generator,
                      worker_init_fn=_seed_worker if num_workers > 0 else None,
                      persistent_workers=num_workers > 0, pin_memory=torch.cuda.is_available())


def subset(dataset: Dataset, n: int | None = None, every: int | None = None) -> Dataset:
    """Every ``every``-th sample (default 1), then the first ``n`` of those (default all).

    An ImageTensorDataset gives an ImageTensorDataset over views of its tensors (keeping its
    transform, ``irrelevant_mask`` and ``info``); any other dataset gives a ``torch.utils.data.Subset``.
    """
    if n is not None and (not _is_int(n) or n < 0):
        raise ConfigError(f"n: must be an integer >= 0 or None, got {n!r}")
    if every is not None and (not _is_int(every) or every < 1):
        raise ConfigError(f"every: must be an integer >= 1 or None, got {every!r}")
    indices = range(0, len(dataset), every or 1)[:n]
    if isinstance(dataset, ImageTensorDataset):
        return dataset.select(slice(indices.start, indices.stop, indices.step))
    return Subset(dataset, list(indices))


def as_tensors(dataset: Dataset, limit: int | None = None,
               batch_size: int = 1024) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``limit`` samples (default all) as (x float32 (N, C, H, W), y int64 (N,)).

    For an ImageTensorDataset without augmentation this is a slice of its tensors; otherwise the
    samples go through a DataLoader in batches of ``batch_size`` (so an augmenting train set yields
    augmented images, exactly as iterating it would). Meant for sets that fit in memory.
    """
    if limit is not None and (not _is_int(limit) or limit < 0):
        raise ConfigError(f"limit: must be an integer >= 0 or None, got {limit!r}")
    if isinstance(dataset, ImageTensorDataset) and dataset.transform is None:
        return dataset.tensors(limit)
    part = subset(dataset, n=limit)
    if len(part) == 0:
        raise InputError("dataset: no samples to stack (empty dataset or limit 0)")
    xs, ys = [], []
    # a generator of its own: the loader's base seed would otherwise be a hidden draw from torch's global RNG
    for x, y in DataLoader(part, batch_size=batch_size, shuffle=False, generator=torch.Generator()):
        xs.append(x)
        ys.append(torch.as_tensor(y))
    x, y = torch.cat(xs), torch.cat(ys).long()
    if x.dim() != 4 or not x.is_floating_point():
        raise InputError(f"dataset: expected float images (C, H, W), got batches of {x.dtype} {tuple(x.shape)}")
    return x.float(), y
