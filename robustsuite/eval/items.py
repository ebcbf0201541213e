"""What the evaluator hands the items of a suite: the model's properties and the run context.

An *item* is one unit of evaluation work: a suite entry (:class:`~robustsuite.eval.suite.CertifyItem`,
:class:`~robustsuite.eval.suite.AttackItem`, :class:`~robustsuite.eval.suite.SmoothingItem`, all
subclasses of :class:`~robustsuite.eval.suite.EvalItem`) narrowed to one radius (and, for attacks,
one EOT variant) by :meth:`Suite.items() <robustsuite.eval.suite.Suite.items>`. The evaluator knows
nothing else of an item than this protocol:

* ``key`` (the name in ``report.not_applicable``), ``columns`` (the record keys it fills), ``stage``
  (its timing row), ``once`` (runs in repeat 0 only: its result does not depend on the model's noise);
* ``applies(info: ModelInfo) -> str | None``: the reason it does not apply to the model, or None;
* ``run(ctx: RunContext) -> {column: [one value per sample]}``; raising :class:`NotApplicable`
  when the model turns out not to fit (e.g. a bound method cannot parse it);
* ``describe()`` (its entry of ``report.items``) and ``fingerprint(suite)`` (everything its columns
  depend on besides the model, the samples, the seed and the repeat: a resumed evaluation reuses a
  finished column only when this is unchanged).

A new kind of item is one such class (and its field in :class:`~robustsuite.eval.suite.Suite`).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Iterator, Mapping

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from torch import Tensor, nn

    from .suite import Suite

__all__ = ["ModelInfo", "RunContext", "NotApplicable"]


class NotApplicable(Exception):
    """An item found at run time that it does not apply to the model; the message is the reason
    (recorded in ``report.not_applicable``; the item's columns are None for that model)."""


@dataclass(frozen=True)
class ModelInfo:
    """What the items decide applicability on, measured once per model before any item runs.

    Attributes:
        name: the model's name in the report.
        declares_noise: some submodule declares ``is_stochastic = True`` (every noise layer of
            :mod:`robustsuite.stochastic` does).
        varies: two forward passes on the same input differed (the determinism probe,
            :func:`robustsuite.eval.checks.outputs_vary`).
        budget_model: the model has a learned-budget generator (``box`` and ``budgets`` methods).
        num_classes: the number of logits.
    """

    name: str
    declares_noise: bool
    varies: bool
    budget_model: bool
    num_classes: int

    @property
    def stochastic(self) -> bool:
        """Random: declares a noise layer or fails the determinism probe (evaluated ``repeats``
        times, attacked with EOT as well; bounds do not apply)."""
        return self.declares_noise or self.varies


@dataclass
class RunContext:
    """Everything an item's ``run`` may use for one (model, repeat).

    ``x`` (N, C, H, W) in [0, 1] and ``y`` (N,) stay on the CPU; :meth:`batches` moves batches of
    ``suite.batch_size`` to ``device``. ``cache`` lives as long as the model's evaluation (e.g. one
    verifier per bound method, shared by the radii and repeats).
    """

    name: str
    model: "nn.Module"
    info: ModelInfo
    x: "Tensor"
    y: "Tensor"
    repeat: int
    seed: int
    device: "torch.device"
    suite: "Suite"
    models: Mapping[str, "nn.Module"]
    cache: dict[Any, Any] = field(default_factory=dict)

    @property
    def n(self) -> int:
        return int(self.x.shape[0])

    def batches(self) -> Iterator[tuple["Tensor", "Tensor"]]:
        """``(x, y)`` batches of ``suite.batch_size`` samples on ``device``, in order."""
        bs = self.suite.batch_size
        for i in range(0, self.n, bs):
            yield self.x[i:i + bs].to(self.device), self.y[i:i + bs].to(self.device)
