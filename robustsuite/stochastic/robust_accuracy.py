"""Evaluation helpers for stochastic models: multi-norm union accuracy, expected accuracy over draws.

Every number here is computed with the model's noise on (its mode is not changed).
"""
from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

from ..attacks import Attack, per_sample_robust

__all__ = ["multi_norm_accuracy", "expected_accuracy"]


def multi_norm_accuracy(model, x: Tensor, y: Tensor, attacks: Mapping[str, Attack],
                        batch_size: int = 256) -> dict[str, float]:
    """Per-attack robust accuracy, the union accuracy (robust to every attack) and their average.

    Robust: clean-correct and the attack failed (:func:`robustsuite.attacks.per_sample_robust`,
    the clean pass after the attack on each batch, one fresh noise draw each)."""
    robust = {name: per_sample_robust(model, x, y, atk, batch_size=batch_size, clean="after").robust
              for name, atk in attacks.items()}
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
