"""Checkpoints: what they hold, writing them atomically, and reading them back with clear errors.

A checkpoint is a dict saved with ``torch.save``:
``format``, ``version``, ``kind`` (the training method), ``model_spec`` (how to rebuild the model
from the zoo), ``model_state``, ``config`` (the resolved run config), ``epoch`` (epochs completed),
``finished``, ``metrics``; resumable ones (``last.pt``) add optimizer, scheduler and RNG states,
the history and the best score so far.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import CheckpointError
from ..files import atomic_torch_save

FORMAT = "robustsuite-checkpoint"
VERSION = 1


def save_checkpoint(path: str | Path, **state: Any) -> Path:
    """Write a checkpoint atomically (a crash never leaves a partial file)."""
    return atomic_torch_save(path, {"format": FORMAT, "version": VERSION, **state})


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict:
    """Read a checkpoint, or raise :class:`CheckpointError` saying what is wrong with the file."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist; train one with "
                              "`robustsuite train CONFIG` (it writes best.pt and last.pt in its output folder)")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as e:  # noqa: BLE001 - any unpickling failure means a bad file
        raise CheckpointError(f"checkpoint {str(path)!r} cannot be read ({type(e).__name__}: {e}); "
                              "the file is corrupt or not a torch checkpoint; fix: point to a best.pt or last.pt "
                              "written by `robustsuite train` (train again if it was damaged)") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointError(f"checkpoint {str(path)!r} is not a robustsuite checkpoint (no "
                              f"'format: {FORMAT}' entry); robustsuite writes them with `robustsuite train`")
    for key in ("model_spec", "model_state"):
        if key not in ckpt:
            raise CheckpointError(f"checkpoint {str(path)!r} has no {key!r} entry")
    return ckpt


def model_from_checkpoint(ckpt: dict | str | Path, device: str | torch.device = "cpu") -> nn.Module:
    """Rebuild the model of a checkpoint (from the zoo) and load its weights; returns it in eval mode."""
    from ..models import build_from_spec

    if not isinstance(ckpt, dict):
        ckpt = load_checkpoint(ckpt)
    spec = ckpt["model_spec"]
    if not isinstance(spec, dict):  # e.g. a model trained outside the zoo: nothing to rebuild it from
        raise CheckpointError(f"checkpoint: 'model_spec' is {type(spec).__name__}, not a zoo model spec; only "
                              "models of the zoo (robustsuite.models) can be rebuilt from a checkpoint")
    if isinstance(spec, dict) and "stochastic" in spec:  # a zoo model with noise layers inserted
        from ..stochastic.builders import build_from_spec as build_stochastic_from_spec
        model = build_stochastic_from_spec(spec)
    else:
        model = build_from_spec(spec)
    try:
        model.load_state_dict(ckpt["model_state"])
    except RuntimeError as e:
        raise CheckpointError(f"checkpoint weights do not match the model {ckpt['model_spec'].get('name')!r}: "
                              f"{str(e).splitlines()[0]}") from None
    return model.to(device).eval()
