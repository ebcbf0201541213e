"""Checkpoints into an evaluation: models loaded by kind, with short unique names.

:func:`load_models` is what ``robustsuite eval`` and a study's evaluation load their checkpoints with
(a budget checkpoint loads as its classifier + generator pair); :func:`model_names` names each model
after its folder (``runs/demo/crown_ibp/best.pt`` -> ``crown_ibp``).
"""
from __future__ import annotations

from pathlib import Path

from ..errors import ConfigError

__all__ = ["load_models", "model_names"]


def model_names(paths: list[str]) -> list[str]:
    """A short unique name per checkpoint: its folder name (``runs/demo/crown_ibp/best.pt`` -> ``crown_ibp``),
    with every character :func:`~robustsuite.files.safe_name` refuses replaced by ``_``."""
    import re

    from ..files import MAX_NAME, name_problem
    names = []
    for p in paths:
        path = Path(p).resolve() if Path(p).name in ("", ".", "..") else Path(p)
        base = path.parent.name if path.stem in ("best", "last", "report") and path.parent.name else path.stem
        base = re.sub(r"[^\w.+ -]", "_", base)[:MAX_NAME].strip(". ")
        base = base if base and not name_problem(base) else "model"
        name, k = base, 2
        while name in names:
            name, k = f"{base}_{k}", k + 1
        names.append(name)
    return names


def load_models(paths: list[str], names: list[str] | None = None, device: str = "cpu"):
    """``({name: model}, data config of the first checkpoint)`` from checkpoint files; budget
    checkpoints load as budget models (classifier + generator)."""
    from ..files import safe_name
    from ..training.checkpoint import load_checkpoint, model_from_checkpoint
    names = names or model_names(paths)
    if len(names) != len(paths):
        raise ConfigError(f"--names: give one name per checkpoint ({len(paths)}), got {len(names)}")
    for n in names:
        safe_name(n, "--names")  # a name becomes part of file names (plots)
    if len(set(names)) != len(names):
        raise ConfigError(f"--names: every name must be different, got {', '.join(names)}")
    models, data_cfgs = {}, []
    for name, p in zip(names, paths):
        ckpt = load_checkpoint(p)
        if ckpt.get("kind") == "budgets":
            from ..budgets import load_budget_model
            models[name] = load_budget_model(ckpt, device=device)
        else:
            models[name] = model_from_checkpoint(ckpt, device=device)
        data_cfgs.append((name, (ckpt.get("config") or {}).get("data") or {"name": "digits"}))
    ref = data_cfgs[0][1]
    for name, d in data_cfgs[1:]:
        if (d.get("name"), d.get("options")) != (ref.get("name"), ref.get("options")):
            raise ConfigError(f"checkpoints: {name} was trained on data {d.get('name')} {d.get('options')} but "
                              f"{data_cfgs[0][0]} on {ref.get('name')} {ref.get('options')}; evaluate them separately")
    return models, ref
