"""Evaluation helpers for stochastic models: PGD with and without EOT, multi-norm union accuracy.

Every number here is computed with the model's noise on (its mode is not changed).
"""
from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

from ..attacks import Attack

__all__ = ["per_sample_robust", "multi_norm_accuracy", "expected_accuracy"]


def per_sample_robust(model, x: Tensor, y: Tensor, attack: Attack, batch_size: int = 256) -> Tensor:
    """(N,) bool: the model classifies the attacked point correctly (one fresh noise draw each)."""
    out = []
    for i in range(0, x.shape[0], batch_size):
        xb, yb = x[i:i + batch_size], y[i:i + batch_size]
        res = attack.run(xb, yb)
        with torch.no_grad():
            clean_ok = model(xb).argmax(1) == yb
        out.append(clean_ok & ~res.success)
    return torch.cat(out)


def multi_norm_accuracy(model, x: Tensor, y: Tensor, attacks: Mapping[str, Attack],
                        batch_size: int = 256) -> dict[str, float]:
    """Per-attack robust accuracy, the union accuracy (robust to every attack) and their average."""
    robust = {name: per_sample_robust(model, x, y, atk, batch_size) for name, atk in attacks.items()}
    out = {name: float(r.float().mean()) for name, r in robust.items()}
    out["union"] = float(torch.stack(list(robust.values())).all(0).float().mean())
    out["average"] = sum(out[n] for n in robust) / len(robust)
    return out


def expected_accuracy(model, x: Tensor, y: Tensor, draws: int = 20, batch_size: int = 256) -> Tensor:
    """(N,) the fraction of ``draws`` noise draws under which the model classifies ``x`` correctly:
    a stochastic model's accuracy on fixed inputs without the luck of one draw."""
    out = []
    with torch.no_grad():
        for i in range(0, x.shape[0], batch_size):
            xb, yb = x[i:i + batch_size], y[i:i + batch_size]
            hits = sum((model(xb).argmax(1) == yb).float() for _ in range(draws))
            out.append(hits / draws)
    return torch.cat(out)
