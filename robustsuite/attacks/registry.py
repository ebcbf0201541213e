"""Attacks by name, and robust accuracy: the API the CLI's ``robustsuite attack`` calls.

Example (what ``robustsuite attack CKPT --attack pgd --norm linf --eps 0.1 --set steps=20`` does)::

    threat = threat_from_name("linf", 0.1)
    atk = make_attack("pgd", model, threat, steps=20)
    report = robust_accuracy(model, x, y, atk, batch_size=256)
    # {"clean_accuracy": ..., "robust_accuracy": ..., "asr": ..., "n": ...}
"""
from __future__ import annotations

import inspect
from typing import Any, Callable

import torch
from torch import Tensor

from ..errors import InputError, InputTypeError, unknown
from ..threats import Box, ThreatModel, check_images
from .apgd import APGD
from .base import Attack
from .bim import BIM
from .boundary import BoundaryAttack
from .cw import CW
from .fab import FAB
from .fgsm import FGSM
from .mim import MIM
from .pgd import PGD
from .pixel import PixelAttack
from .square import Square

__all__ = ["ATTACKS", "make_attack", "attack_settings", "robust_accuracy"]

#: attack name (lowercase) -> class
ATTACKS: dict[str, type[Attack]] = {
    "fgsm": FGSM,
    "bim": BIM,
    "pgd": PGD,
    "mim": MIM,
    "cw": CW,
    "boundary": BoundaryAttack,
    "pixel": PixelAttack,
    "apgd": APGD,
    "square": Square,
    "fab": FAB,
}


def attack_settings(name: str) -> dict[str, Any]:
    """The settings an attack takes, with their defaults (``inspect.Parameter.empty`` if none)."""
    cls = _lookup(name)
    return {p.name: p.default for p in inspect.signature(cls.__init__).parameters.values()
            if p.kind is inspect.Parameter.KEYWORD_ONLY}


def _lookup(name: str) -> type[Attack]:
    key = str(name).lower().replace("-", "").replace("_", "") if isinstance(name, str) else name
    if key not in ATTACKS:
        raise unknown("attack", name, ATTACKS)
    return ATTACKS[key]


def make_attack(name: str, model: Callable[[Tensor], Tensor], threat: ThreatModel | None,
                **settings: Any) -> Attack:
    """Build the attack called ``name`` (see :data:`ATTACKS`) on ``model`` and ``threat``.

    Unknown names and unknown settings raise errors that list the allowed ones; setting values
    are validated by the attack's constructor.
    """
    cls = _lookup(name)
    allowed = attack_settings(name)
    bad = sorted(set(settings) - set(allowed))
    if bad:
        raise InputError(f"{cls.__name__}: unknown setting(s) {', '.join(map(repr, bad))}; "
                         f"choose from: {', '.join(sorted(allowed))}")
    return cls(model, threat, **settings)


def _model_device(model, fallback: torch.device) -> torch.device:
    if isinstance(model, torch.nn.Module):
        for p in model.parameters():
            return p.device
        for b in model.buffers():
            return b.device
    return fallback


def robust_accuracy(model: Callable[[Tensor], Tensor], x: Tensor, y: Tensor, attack: Attack, *,
                    batch_size: int = 256, device: str | torch.device | None = None,
                    return_records: bool = False) -> dict[str, Any]:
    """Clean and robust accuracy of ``model`` on ``(x, y)`` under an untargeted ``attack``.

    A sample counts as robust when the model classifies it correctly *and* the attack fails.
    Batches of ``batch_size`` go to ``device`` (default: the model's parameters' device). A
    per-sample ``Box`` threat (lower/upper with a batch axis of ``len(x)``) is sliced with the data.

    Returns ``{"clean_accuracy", "robust_accuracy", "asr", "n"}`` where ``asr`` (attack success
    rate) is over the clean-correct samples (0.0 when there are none). With ``return_records``
    also ``"records"``: per-sample dicts (index, label, clean_pred, clean_correct, success,
    distance, queries).
    """
    if not isinstance(attack, Attack):
        raise InputTypeError(f"attack: expected a robustsuite attack, got {type(attack).__name__}")
    if attack.labels_are_targets:
        raise InputError("attack: robust accuracy needs the true labels, so an untargeted attack "
                         "(targeted=False) or one that picks its own targets (APGD with loss='dlr')")
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise InputError(f"batch_size: must be an integer >= 1, got {batch_size!r}")
    check_images(x, "x", ndim=4)
    if not isinstance(y, Tensor) or y.dim() != 1 or y.shape[0] != x.shape[0]:
        raise InputError(f"y: expected a (N,) label tensor matching x's {x.shape[0]} samples, "
                         f"got {tuple(y.shape) if isinstance(y, Tensor) else type(y).__name__}")
    dev = torch.device(device) if device is not None else _model_device(model, x.device)
    n = x.shape[0]
    per_sample_box = isinstance(attack.threat, Box) and attack.threat.lower.dim() == 4 \
        and attack.threat.lower.shape[0] == n and n > 1
    clean, success, dist, queries, preds = [], [], [], [], []
    for start in range(0, n, batch_size):
        sl = slice(start, min(n, start + batch_size))
        xb, yb = x[sl].to(dev), y[sl].to(dev)
        atk = attack.with_threat(attack.threat[sl].to(dev)) if per_sample_box else attack
        with torch.no_grad():
            pred = model(xb).argmax(1)
        res = atk.run(xb, yb)
        preds.append(pred.cpu())
        clean.append((pred == yb).cpu())
        success.append(res.success.cpu())
        dist.append(res.distance.detach().cpu())
        queries.append(res.queries.cpu())
    clean_t, succ_t = torch.cat(clean), torch.cat(success)
    robust = clean_t & ~succ_t
    n_clean = int(clean_t.sum())
    out: dict[str, Any] = {
        "clean_accuracy": float(clean_t.float().mean()),
        "robust_accuracy": float(robust.float().mean()),
        "asr": float((clean_t & succ_t).sum()) / n_clean if n_clean else 0.0,
        "n": n,
    }
    if return_records:
        cols = zip(y.tolist(), torch.cat(preds).tolist(), clean_t.tolist(), succ_t.tolist(),
                   torch.cat(dist).tolist(), torch.cat(queries).tolist())
        out["records"] = [
            {"index": i, "label": int(label), "clean_pred": int(pred), "clean_correct": bool(clean),
             "success": bool(succ), "distance": float(d), "queries": int(q)}
            for i, (label, pred, clean, succ, d, q) in enumerate(cols)
        ]
    return out
