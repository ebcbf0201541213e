"""Counting what an attack hands a model, for the benchmarks that compare implementations at equal
model work: a forward hook, so the model and the attack run exactly as they would without it (the
same small cost for every implementation measured)."""
from __future__ import annotations

import torch


class ModelCalls:
    """While entered, records every call of ``model``: ``sizes`` (the rows of each call, in order)
    and ``rows`` split by whether autograd was on (``"grad"``: a forward + backward, assuming every
    such forward is differentiated) or off (``"no_grad"``: a forward only). Reusable: counts add
    up over several entries."""

    def __init__(self, model: torch.nn.Module):
        self.model = model
        self.sizes: list[int] = []
        self.rows = {"grad": 0, "no_grad": 0}
        self._handle = None

    def _hook(self, module, inputs, output) -> None:
        n = int(inputs[0].shape[0])
        self.sizes.append(n)
        self.rows["grad" if torch.is_grad_enabled() else "no_grad"] += n

    def __enter__(self) -> "ModelCalls":
        self._handle = self.model.register_forward_hook(self._hook)
        return self

    def __exit__(self, *exc) -> None:
        self._handle.remove()

    @property
    def total(self) -> int:
        """All rows the model was called on."""
        return self.rows["grad"] + self.rows["no_grad"]

    def floor_s(self, cost: dict[str, float], runs: int) -> float:
        """Estimated CPU seconds of the model alone per run (rows x the measured per-row cost
        ``cost["forward_backward"]`` / ``cost["forward"]``)."""
        return (self.rows["grad"] * cost["forward_backward"] + self.rows["no_grad"] * cost["forward"]) / runs
