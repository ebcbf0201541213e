"""Checkpoints: what they hold, writing them atomically, and reading them back safely with clear errors.

A checkpoint is a dict saved with ``torch.save``:
``format``, ``version``, ``kind`` (the training method), ``model_spec`` (how to rebuild the model
from the zoo), ``model_state``, ``config`` (the resolved run config), ``epoch`` (epochs completed),
``finished``, ``metrics``; resumable ones (``last.pt``) add optimizer, scheduler and RNG states,
the history and the best score so far.

A checkpoint is data: it holds only tensors and plain Python values (dicts, lists, tuples, str,
numbers, bools, None), and every read goes through :func:`load_checkpoint`, which uses torch's
``weights_only`` unpickler, so a file whose pickle names any other Python object (a payload that
would run code) is refused before anything in it runs. The one allowance is NumPy's array
reconstruction (``numpy.ndarray``, ``numpy.dtype``, ``_reconstruct``: plain data, no code): the
``last.pt`` files of version 1 held NumPy's RNG state as an array, and they stay readable.
"""
from __future__ import annotations

import pickle
import re
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import CheckpointError
from ..files import atomic_torch_save

FORMAT = "robustsuite-checkpoint"
VERSION = 2  # 2: RNG states as tensors and plain values (1 held NumPy's as an array)

_TRAIN_HINT = "only load checkpoints written by `robustsuite train` (best.pt, last.pt), or train the model again"


def _numpy_array_globals() -> list:
    """What unpickling a plain NumPy array needs (NumPy 1 and 2 spell ``_reconstruct``'s module differently)."""
    try:
        from numpy._core.multiarray import _reconstruct  # NumPy 2
    except ImportError:
        from numpy.core.multiarray import _reconstruct  # NumPy 1
    return [_reconstruct, np.ndarray, np.dtype, type(np.dtype(np.uint32))]


def save_checkpoint(path: str | Path, **state: Any) -> Path:
    """Write a checkpoint atomically (a crash never leaves a partial file). ``state`` must hold only
    tensors and plain Python values, or :func:`load_checkpoint` will refuse the file."""
    return atomic_torch_save(path, {"format": FORMAT, "version": VERSION, **state})


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict:
    """Read a checkpoint without running any code it may carry, or raise :class:`CheckpointError`
    saying what is wrong with the file and how to fix it.

    Guarantees: the file is unpickled by torch's ``weights_only`` unpickler (tensors, plain containers
    and numbers only, plus NumPy arrays); the result is a dict with ``format``, a mapping
    ``model_spec`` and a mapping ``model_state``.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist; train one with "
                              "`robustsuite train CONFIG` (it writes best.pt and last.pt in its output folder)")
    try:
        with torch.serialization.safe_globals(_numpy_array_globals()):
            ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        found = re.search(r"GLOBAL\s+([\w.]+)", str(e))
        # refused by the weights_only unpickler: a pickle naming a Python object, or a torch archive whose
        # pickle uses opcodes beyond plain data (a text file fails on its first byte: merely unreadable)
        if "Weights only load failed" in str(e) and (found or zipfile.is_zipfile(path)):
            what = f" ({found.group(1)})" if found else ""
            raise CheckpointError(
                f"checkpoint {str(path)!r} is not a safe robustsuite checkpoint: its pickle refers to a Python "
                f"object{what} that loading would have to import and run, so it was not loaded; robustsuite "
                f"checkpoints hold only tensors and plain values; fix: {_TRAIN_HINT}") from None
        raise _unreadable(path, e) from None
    except Exception as e:  # noqa: BLE001 - any other failure means a damaged or foreign file
        raise _unreadable(path, e) from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointError(f"checkpoint {str(path)!r} is not a robustsuite checkpoint (no "
                              f"'format: {FORMAT}' entry); robustsuite writes them with `robustsuite train`")
    for key in ("model_spec", "model_state"):
        if key not in ckpt:
            raise CheckpointError(f"checkpoint {str(path)!r} has no {key!r} entry; fix: {_TRAIN_HINT}")
    if not isinstance(ckpt["model_state"], Mapping):
        raise CheckpointError(f"checkpoint {str(path)!r}: 'model_state' is a {type(ckpt['model_state']).__name__}, "
                              f"not a mapping of weight names to tensors; fix: {_TRAIN_HINT}")
    return ckpt


def _unreadable(path: Path, e: Exception) -> CheckpointError:
    text = str(e)
    if "WeightsUnpickler error:" in text:  # torch's own advice (load with weights_only=False) is what we must not do
        text = text.split("WeightsUnpickler error:", 1)[1]
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    reason = lines[0] if lines else ""
    return CheckpointError(f"checkpoint {str(path)!r} cannot be read ({type(e).__name__}: {reason[:200]}); "
                           "the file is corrupt or not a torch checkpoint; fix: point to a best.pt or last.pt "
                           "written by `robustsuite train` (train again if it was damaged)")


def state_mismatch(module: nn.Module, state: Mapping[str, Any], limit: int = 3) -> str | None:
    """None when ``state`` fits ``module`` exactly, else one line naming the first missing and unexpected
    keys and the first keys whose shapes differ (``name: (saved shape) vs (model shape)``)."""
    if not isinstance(state, Mapping):
        return f"the saved state is a {type(state).__name__}, not a mapping of weight names to tensors"
    own = module.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k}: {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in own
              if k in state and isinstance(state[k], torch.Tensor) and state[k].shape != own[k].shape]
    not_tensors = [k for k in own if k in state and not isinstance(state[k], torch.Tensor)]

    def part(label: str, items: list[str]) -> str:
        if not items:
            return ""
        more = f" (+{len(items) - limit} more)" if len(items) > limit else ""
        return f"{label} {', '.join(items[:limit])}{more}"

    parts = [p for p in (part("missing", missing), part("unexpected", unexpected),
                         part("shape saved vs model:", shapes), part("not a tensor:", not_tensors)) if p]
    return "; ".join(parts) or None


def load_weights(module: nn.Module, state: Mapping[str, Any], what: str) -> None:
    """``module.load_state_dict(state)``, or :class:`CheckpointError` naming ``what`` and the first
    differing keys and shapes (instead of torch's multi-line report)."""
    problem = state_mismatch(module, state)
    if problem is None:
        try:
            module.load_state_dict(state)
            return
        except (RuntimeError, TypeError, ValueError) as e:
            problem = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    raise CheckpointError(f"{what} do not match the model: {problem}")


def model_from_checkpoint(ckpt: dict | str | Path, device: str | torch.device = "cpu") -> nn.Module:
    """Rebuild the model of a checkpoint (from the zoo, or by the part that extended it: see
    :func:`robustsuite.models.register_spec_builder`) and load its weights; returns it in eval mode."""
    from ..models import build_from_spec

    if not isinstance(ckpt, dict):
        ckpt = load_checkpoint(ckpt)
    spec = ckpt["model_spec"]
    if not isinstance(spec, dict):  # e.g. a model trained outside the zoo: nothing to rebuild it from
        raise CheckpointError(f"checkpoint: 'model_spec' is {type(spec).__name__}, not a zoo model spec; only "
                              "models of the zoo (robustsuite.models) can be rebuilt from a checkpoint")
    model = build_from_spec(spec)  # a stochastic spec is rebuilt by the builder that part registered
    load_weights(model, ckpt["model_state"], f"checkpoint weights of model {spec.get('name')!r}")
    return model.to(device).eval()
