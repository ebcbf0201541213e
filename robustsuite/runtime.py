"""Devices, seeds and the process's rank: what every entry point takes or asks.

The rank queries (:func:`is_distributed`, :func:`rank`, :func:`world`, :func:`is_main`) read
``torch.distributed``'s process group and are no-ops with one process; joining the group and the
collectives live in :mod:`robustsuite.training.distributed`."""
from __future__ import annotations

import os
import random
import zlib
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch
import torch.distributed as dist

from .errors import ConfigError


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """``"auto"`` (CUDA when present, else CPU), ``"cpu"``, ``"cuda"`` or ``"cuda:N"`` -> torch.device."""
    if isinstance(device, torch.device):
        return device
    name = "auto" if device is None else str(device).lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(f"device: {device!r} was asked for but CUDA is not available on this "
                              "machine; use device 'auto' or 'cpu'")
        return torch.device(name)
    raise ConfigError(f"device: unknown value {device!r}; choose one of: auto, cpu, cuda, cuda:N")


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python, NumPy and torch (CPU and CUDA); return a CPU generator seeded the same way."""
    seed = int(seed)
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    os.environ.setdefault("PYTHONHASHSEED", str(seed))
    return torch.Generator().manual_seed(seed)


def rng_state() -> dict:
    """Every RNG state a checkpoint must hold for a resumed run to continue identically, as tensors and
    plain values only (a checkpoint is loaded with torch's ``weights_only`` unpickler):
    ``{"python": {"version", "state" int64 (625,), "gauss_next"}, "numpy": {"kind", "keys" int64 (624,),
    "pos", "has_gauss", "cached_gaussian"}, "torch": uint8 tensor[, "cuda": [uint8 tensor per device]]}``."""
    version, internal, gauss_next = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"python": {"version": int(version), "state": torch.tensor(internal, dtype=torch.int64),
                        "gauss_next": gauss_next},
             "numpy": {"kind": str(kind), "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                       "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Restore what :func:`rng_state` captured (also the tuples that version-1 checkpoints held).

    Raises:
        ValueError, TypeError, KeyError: the state is malformed (the caller names the file).
    """
    py, npy = state["python"], state["numpy"]
    if isinstance(py, dict):
        py = (int(py["version"]), tuple(int(v) for v in py["state"].tolist()), py["gauss_next"])
    if isinstance(npy, dict):
        keys = npy["keys"]
        keys = keys.numpy() if isinstance(keys, torch.Tensor) else np.asarray(keys)
        npy = (str(npy["kind"]), keys.astype(np.uint32), int(npy["pos"]), int(npy["has_gauss"]),
               float(npy["cached_gaussian"]))
    if not isinstance(state["torch"], torch.Tensor):
        raise TypeError(f"torch RNG state is a {type(state['torch']).__name__}, not a tensor")
    # validate everything before changing anything: a half-restored RNG would be worse than none
    random.Random().setstate(py)
    np.random.RandomState().set_state(npy)
    random.setstate(py)
    np.random.set_state(npy)
    torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


def derived_seed(seed: int, *parts: int | str) -> int:
    """A seed for one purpose of a run seeded with ``seed`` (e.g. ``(seed, epoch, "val")``): distinct per
    purpose, the same in every process, so a resumed run derives what an uninterrupted one does."""
    text = "/".join(str(p) for p in (int(seed), *parts))
    return zlib.crc32(text.encode()) | (int(seed) % (2**31)) << 32


@contextmanager
def isolated_rng(seed: int) -> Iterator[None]:
    """Run the block on RNG streams seeded with ``seed`` and give every global RNG (Python, NumPy, torch
    CPU and initialized CUDA devices) back its state afterwards: draws inside (validation, noise layers,
    DataLoader base seeds) neither depend on nor shift the training stream, so when a block runs (or
    whether it runs at all, as after a resume) cannot change what training draws."""
    py, npy = random.getstate(), np.random.get_state()
    cuda = torch.cuda.is_available() and torch.cuda.is_initialized()
    devices = list(range(torch.cuda.device_count())) if cuda else []
    with torch.random.fork_rng(devices=devices):
        torch.default_generator.manual_seed(int(seed))
        if cuda:  # only when initialized: seeding an uninitialized CUDA is deferred and would outlive the block
            torch.cuda.manual_seed_all(int(seed))
        random.seed(int(seed))
        np.random.seed(int(seed) % (2**32))
        try:
            yield
        finally:
            random.setstate(py)
            np.random.set_state(npy)


# ---------------------------------------------------------------------------------------- ranks
def is_distributed() -> bool:
    """Whether this process is one of several in an initialized ``torch.distributed`` process group."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world() -> int:
    return dist.get_world_size() if is_distributed() else 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def is_main() -> bool:
    """Whether this process writes files and logs (rank 0, or the only process)."""
    return rank() == 0
