"""Distribution on ``torch.distributed``: process group from the ``torchrun`` environment, shards, gathers.

``torchrun --nproc_per_node=N -m robustsuite train|eval ...`` starts N copies of the command line;
the trainer and the evaluator call :func:`init_from_env`, which joins the process group when
``WORLD_SIZE > 1`` (``nccl`` when CUDA is available, else ``gloo``; the CUDA device is set from
``LOCAL_RANK``). With one process every helper here is a no-op, so single-process code paths do
not change.

Training (:class:`~robustsuite.training.loop.Trainer`): ``train.batch_size`` is the **global** batch.
Epoch e draws the same seeded permutation and the same global batches as one process; rank r takes
``batch[r::world]`` of each global batch (:class:`ShardedBatchSampler`) and its loss is scaled by
``world * local / global`` so the averaged gradient is the gradient of the global batch mean even
when the last batch does not divide evenly. Gradients are averaged by DistributedDataParallel in
every trainer: the certified trainers wrap the module that computes bounds and loss, the others
compute their loss through ``Trainer.loss_call`` (the model inside a DDP wrapper). Gradients DDP
does not see (a budget or noise generator, MNG-AC's meta step) are averaged by :func:`all_reduce_grads`;
MNG-AC's per-batch norm is rank 0's draw. So every rank takes the same step (tested for every trainer).
Only rank 0 writes files.

Random draws (PGD random starts, noise layers, augmentation) come from a stream seeded per epoch by
(seed, epoch, rank), so each shard gets its own draws and a resumed run repeats them; a run with
random draws is therefore equal to one process in distribution, not bit for bit.

BatchNorm: batch statistics are per process (each rank normalizes with its shard's statistics), so a
model with BatchNorm trained on N processes is not bit-equal to one process; running statistics
saved in checkpoints are rank 0's. Models without BatchNorm give the same weights as one process up
to float summation order (~1e-7).

Teardown: :func:`cleanup` destroys the group on every path (the command line calls it when a command
ends, else it runs at exit; the trainer drops its DistributedDataParallel wrappers when ``fit``
returns), so the group's C++ worker threads (gloo's) are joined while the interpreter is alive. A
group still alive when the interpreter shuts down aborts a rank now and then after a clean run: a
worker thread that frees its last collective frees that collective's tensors, a tensor with a Python
object takes the GIL, a thread taking the GIL during shutdown is ended (``pthread_exit``) inside a
``noexcept`` destructor, and C++ stops the process ("terminate called without an active exception",
status -6). :func:`cleanup` checks that the group is gone and says what still holds it otherwise.
"""
from __future__ import annotations

import atexit
import datetime
import gc
import importlib
import logging
import os
import weakref
from typing import Any, Iterator, Sequence

import torch
import torch.distributed as dist
from torch import Tensor

# the rank queries live in the bottom layer (files decides who writes with them); re-exported here
from ..runtime import is_distributed, is_main, local_rank, rank, world

__all__ = ["init_from_env", "is_distributed", "is_main", "world", "rank", "local_rank", "barrier", "cleanup",
           "all_gather_objects", "gather_objects", "broadcast_object", "all_reduce_sum", "all_reduce_grads",
           "broadcast_module", "ShardedBatchSampler", "device_for_rank", "loss_weight", "rank_seed"]

log = logging.getLogger(__name__)

_OWNED = False  # whether this module created the process group (and so destroys it in cleanup)


def init_from_env(timeout_s: float = 1800.0) -> bool:
    """Join the process group described by the ``torchrun`` environment (``WORLD_SIZE``, ``RANK``,
    ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``) when ``WORLD_SIZE > 1``; idempotent.

    Returns whether this process runs distributed.
    """
    global _OWNED
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size() > 1
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    if not dist.is_available():  # pragma: no cover - builds without distributed support
        raise RuntimeError("WORLD_SIZE > 1 but this PyTorch build has no torch.distributed")
    cuda = torch.cuda.is_available() and os.environ.get("ROBUSTSUITE_DIST_BACKEND", "") != "gloo"
    backend = os.environ.get("ROBUSTSUITE_DIST_BACKEND") or ("nccl" if cuda else "gloo")
    if backend == "nccl":
        torch.cuda.set_device(local_rank())
    # torch.distributed.nn takes ``group.WORLD`` as a default argument of its functions when imported.
    # DistributedDataParallel imports it (through torch._dynamo) on first use; imported after the group
    # exists, it would hold the group for good, so destroying it could not join its threads (see cleanup).
    # Imported now, those defaults are None.
    importlib.import_module("torch.distributed.nn")
    dist.init_process_group(backend=backend, timeout=datetime.timedelta(seconds=timeout_s))
    _OWNED = True
    # A script that calls the API (train, evaluate) and never cleanup: the group still goes before the
    # interpreter shuts down (atexit runs while it is alive). No barrier there: ranks end in any order.
    atexit.unregister(cleanup)  # once, however many groups this process makes in turn
    atexit.register(cleanup, sync=False)
    return dist.get_world_size() > 1


def rank_seed(seed: int, epoch: int, rank: int) -> int:
    """The seed of rank ``rank``'s random draws in epoch ``epoch`` of a run seeded with ``seed``
    (distinct per rank and epoch, the same on a resumed run)."""
    return ((int(seed) * 100_003 + int(epoch)) * 1_009 + int(rank)) % (2 ** 63)


def device_for_rank(device: torch.device) -> torch.device:
    """``cuda`` -> ``cuda:LOCAL_RANK`` when distributed on the nccl backend; any other device unchanged."""
    if is_distributed() and device.type == "cuda" and dist.get_backend() == "nccl":
        return torch.device("cuda", local_rank())
    return device


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def cleanup(*, sync: bool = True) -> bool:
    """Destroy the process group if :func:`init_from_env` created it (a no-op otherwise); idempotent.

    ``sync``: wait at a barrier first, so no rank tears down (rank 0 also ends the rendezvous store)
    while another still runs its last collectives. Pass ``sync=False`` on an error path: a rank that
    failed must not wait for ranks that may never arrive; destroying its group also ends their pending
    collectives at once instead of at the timeout. A failed barrier (another rank already gone) is
    logged and the group destroyed all the same.

    Returns whether no group of ours is left: True once the group is gone for good (its worker
    threads joined) or when there was none to destroy; False (with a warning naming the cause) when
    something still holds it, e.g. a live DistributedDataParallel wrapper: its threads then outlive
    this call and may abort the interpreter's exit.
    """
    global _OWNED
    if not (_OWNED and dist.is_initialized()):
        _OWNED = False
        return True
    group = weakref.ref(dist.group.WORLD)
    try:
        if sync and dist.get_world_size() > 1:
            dist.barrier()
    except Exception as e:  # noqa: BLE001 - teardown goes on: the group is destroyed below in any case
        log.warning("rank %d: the barrier before destroying the process group failed (another rank "
                    "ended first, probably with an error): %s", rank(), e)
    finally:
        dist.destroy_process_group()
        _OWNED = False
    gc.collect()  # a wrapper kept only by a reference cycle lets go of the group now, not at exit
    if group() is not None:
        log.warning("rank %d: the process group is still referenced after destroy_process_group (a live "
                    "DistributedDataParallel wrapper or a module imported after init_process_group that "
                    "holds torch.distributed.group.WORLD); its worker threads outlive it and may abort this "
                    "process at exit (\"terminate called without an active exception\"); fix: drop the "
                    "references before cleanup()", rank())
        return False
    return True


def all_gather_objects(obj: Any) -> list[Any]:
    """``[obj of rank 0, obj of rank 1, ...]`` on every rank (``[obj]`` with one process)."""
    if not is_distributed():
        return [obj]
    out: list[Any] = [None] * world()
    dist.all_gather_object(out, obj)
    return out


def gather_objects(obj: Any, dst: int = 0) -> list[Any] | None:
    """The list of every rank's ``obj`` on rank ``dst``; None elsewhere (``[obj]`` with one process)."""
    if not is_distributed():
        return [obj]
    if dist.get_backend() == "nccl":  # gather_object is gloo-only in older releases; all-gather is safe
        out = all_gather_objects(obj)
        return out if rank() == dst else None
    out = [None] * world() if rank() == dst else None
    dist.gather_object(obj, out, dst=dst)
    return out


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank ``src``'s ``obj`` on every rank."""
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def all_reduce_sum(t: Tensor) -> Tensor:
    """Sum of ``t`` over ranks (a new tensor; ``t`` itself with one process)."""
    if not is_distributed():
        return t
    t = t.clone()
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def all_reduce_grads(params: Sequence[torch.nn.Parameter]) -> None:
    """Average the gradients of ``params`` over ranks in place (skips parameters without a gradient;
    every rank must have the same set of gradients, which deterministic control flow guarantees)."""
    if not is_distributed():
        return
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    flat /= world()
    offset = 0
    for g in grads:
        g.copy_(flat[offset:offset + g.numel()].view_as(g))
        offset += g.numel()


def broadcast_module(module: torch.nn.Module, src: int = 0) -> None:
    """Copy rank ``src``'s parameters and buffers into ``module`` on every rank."""
    if not is_distributed():
        return
    with torch.no_grad():
        for t in list(module.parameters()) + list(module.buffers()):
            dist.broadcast(t.data, src=src)


class ShardedBatchSampler:
    """Rank ``rank``'s part ``batch[rank::world]`` of every global batch of ``batches``.

    A rank whose part of a (small last) batch is empty gets the batch's first sample with weight 0:
    every rank runs every step (collectives stay matched) and the sample does not count.
    ``sizes[i]`` is (local count, global count) of batch i of the last iteration.
    """

    def __init__(self, batches, rank: int, world: int):
        self.batches, self.rank, self.world = batches, rank, world
        self.sizes: list[tuple[int, int]] = []

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self) -> Iterator[list[int]]:
        self.sizes = []
        for batch in self.batches:
            batch = list(batch)
            part = batch[self.rank::self.world]
            self.sizes.append((len(part), len(batch)))
            yield part if part else batch[:1]


def loss_weight(local: int, global_: int) -> float:
    """Factor on a rank's mean loss so that averaging gradients over ranks gives the global mean's."""
    return world() * local / global_


