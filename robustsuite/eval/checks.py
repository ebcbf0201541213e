"""Self-checks of a model before it is evaluated, after AutoAttack's ``checks.py`` (Croce & Hein):
what the evaluator must know (is the model random?) and what makes attack numbers unreliable.

* :func:`outputs_vary`: the determinism probe, two forward passes on the same input; a model that
  fails it is evaluated as stochastic even when it declares no noise layer (and the report warns).
* :func:`output_kind`: probabilities (softmax) or log-probabilities (log-softmax) instead of logits.
* :func:`zero_gradient_count`: samples whose cross-entropy gradient w.r.t. the input is exactly 0,
  where gradient attacks cannot move (masked or saturated gradients).

:func:`probe_model` runs them on the evaluated samples and returns the
:class:`~robustsuite.eval.items.ModelInfo` and the warnings for the report. The probes run on
isolated RNG streams: they neither depend on nor shift the evaluation's random numbers.
"""
from __future__ import annotations

import logging

import torch
from torch import Tensor, nn

# the determinism probe lives with the attacks (AutoAttack's rand/standard check uses it too)
from ..attacks.eot import VARY_TOLERANCE, outputs_vary
from .items import ModelInfo

log = logging.getLogger(__name__)

__all__ = ["outputs_vary", "output_kind", "zero_gradient_count", "probe_model", "declares_noise",
           "VARY_TOLERANCE", "OUTPUT_TOLERANCE", "ZERO_GRADIENT_SHARE"]

#: rows within this of summing (softmax) or exp-summing (log-softmax) to 1 (AutoAttack's alpha)
OUTPUT_TOLERANCE = 1e-5
#: warn when at least this share of the samples has an exactly zero input gradient
ZERO_GRADIENT_SHARE = 0.05


def declares_noise(model: nn.Module) -> bool:
    """Whether a submodule declares itself random (``is_stochastic = True``)."""
    from ..certify import is_stochastic
    return is_stochastic(model)


def output_kind(model: nn.Module, x: Tensor) -> str | None:
    """``"softmax"`` when every output row of ``x`` is in [0, 1] and sums to 1, ``"log-softmax"``
    when every row is <= 0 and its exponentials sum to 1, else None (logits, as expected)."""
    with torch.no_grad():
        z = model(x).double()
    a = OUTPUT_TOLERANCE
    if z.max() < 1 + a and z.min() > -a and ((z.sum(1) - 1).abs() < a).all():
        return "softmax"
    if z.max() < a and ((z.exp().sum(1) - 1).abs() < a).all():
        return "log-softmax"
    return None


def zero_gradient_count(model: nn.Module, x: Tensor, y: Tensor, batch_size: int, device: torch.device) -> int:
    """How many samples of ``x`` (N, C, H, W) on the CPU have an input gradient of the cross-entropy
    (of one forward pass) that is exactly 0 everywhere."""
    count = torch.zeros((), dtype=torch.long)
    for i in range(0, x.shape[0], batch_size):
        xb = x[i:i + batch_size].to(device).requires_grad_(True)
        with torch.enable_grad():
            loss = nn.functional.cross_entropy(model(xb), y[i:i + batch_size].to(device), reduction="sum")
            (g,) = torch.autograd.grad(loss, xb, allow_unused=True)
        if g is None:  # the output does not depend on the input at all
            count += xb.shape[0]
        else:
            count += (g.flatten(1).abs().sum(1) == 0).sum().cpu()
    return int(count)


def probe_model(name: str, model: nn.Module, x: Tensor, y: Tensor, *, batch_size: int, device: torch.device,
                seed: int, gradient_check: bool) -> tuple[ModelInfo, list[str]]:
    """The model's :class:`ModelInfo` and the self-check warnings (also logged).

    Args:
        x, y: the evaluated samples (N, C, H, W) in [0, 1] and (N,) labels, on the CPU; the
            determinism and output probes use the first batch, the gradient check all samples.
        gradient_check: count zero gradients (when the suite has gradient attacks).
        seed: seeds the probes' random streams (isolated from the evaluation's).
    """
    from ..runtime import derived_seed, isolated_rng
    first = x[:batch_size].to(device)
    warnings: list[str] = []
    with isolated_rng(derived_seed(seed, "eval", "checks", name)):
        with torch.no_grad():
            num_classes = int(model(first[:1]).shape[1])
        declared = declares_noise(model)
        varies = outputs_vary(model, first)
        kind = output_kind(model, first)
        zero = zero_gradient_count(model, x, y, batch_size, device) if gradient_check else 0
    if varies and not declared:
        warnings.append(f"model {name}: declares no noise layer (is_stochastic) but two forward passes on the same "
                        "input differ; it is evaluated as stochastic (repeats, EOT; bounds do not apply); fix: set "
                        "is_stochastic = True on its noise layers, or turn its randomness off (model.eval())")
    if kind == "softmax":
        warnings.append(f"model {name}: its outputs look like probabilities (every row in [0, 1] sums to 1); the "
                        "attacks and bounds expect logits, and a softmax saturates the cross-entropy gradients; "
                        "fix: remove the final softmax")
    elif kind == "log-softmax":
        warnings.append(f"model {name}: its outputs look like log-probabilities (every row's exponentials sum to 1); "
                        "the attacks' margin losses and the bounds expect logits; fix: remove the final log-softmax")
    n = int(x.shape[0])
    if gradient_check and zero and zero >= ZERO_GRADIENT_SHARE * n:
        warnings.append(f"model {name}: the cross-entropy gradient w.r.t. the input is exactly zero on {zero} of {n} "
                        "samples; gradient attacks cannot move those (masked or saturated gradients), so their "
                        "robust accuracy may be overestimated; check it with a gradient-free attack (square, "
                        "boundary) or a margin loss (loss: margin or dlr)")
    for w in warnings:
        log.warning(w)
    budget_model = callable(getattr(model, "box", None)) and callable(getattr(model, "budgets", None))
    return ModelInfo(name=name, declares_noise=declared, varies=varies, budget_model=budget_model,
                     num_classes=num_classes), warnings
