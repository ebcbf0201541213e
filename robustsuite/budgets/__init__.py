"""Learned contextual perturbation budgets (Xu et al., "Learning Contextual Perturbation Budgets for
Training Robust Neural Networks").

Instead of one radius for every pixel, a small generator gives each input dimension its own budget,
so the perturbation set is the per-pixel box ``[x - eps_i, x + eps_i]`` clipped to [0, 1]. Two
constraints keep it meaningful: a fixed volume (the geometric mean of the budgets is the target
radius e, as for the uniform ball of radius e) and a range (every budget within [e / rho, rho e]).
The classifier and the generator are trained jointly with CROWN-IBP bounds under the learned box.

* :func:`project_log_budgets`: exact projection of scores onto the log-budget set (batched,
  differentiable).
* :class:`BudgetGenerator`, :class:`BudgetModel`: the generator; the classifier + generator pair with
  ``budgets(x, eps, rho)`` and ``box(x, eps, rho)``. :class:`FixedBudgetGenerator`: the input-independent
  baseline (one learned mask, ``train.generator.kind: fixed``); :func:`mean_mask_generator`: a
  contextual model's budgets averaged into one mask; :func:`budget_spread`: how contextual budgets are.
* :class:`BudgetTrainer` (``train.method: budgets``, settings :class:`BudgetTrainConfig`).
* :func:`certify_budgets`: certified accuracy under the learned boxes and under the uniform ball of
  equal volume, nominal and effective radii, PGD inside the learned box; :func:`budget_ratio` on the
  synthetic sets with a known irrelevant region.
* :mod:`.plots`: budget heatmaps, log-budget histograms, certified accuracy vs eps.

Example::

    from robustsuite.budgets import load_budget_model, certify_budgets
    bm = load_budget_model("runs/digits_budgets/best.pt")
    report = certify_budgets(bm, x, y, eps=0.1, rho=4, methods=["ibp", "crown-ibp"])
"""
from .config import BudgetTrainConfig, GeneratorConfig
from .certification import budget_ratio, budget_spread, certify_budgets, radius_summary
from .budget_generator import (GENERATORS, BudgetGenerator, BudgetModel, FixedBudgetGenerator, coordinate_channels,
                        generator_from_spec, mean_mask_generator)
from .projection import log_budget_range, project_log_budgets
from .trainer import BudgetTrainer, budget_settings, load_budget_model

__all__ = [
    "project_log_budgets", "log_budget_range",
    "BudgetGenerator", "FixedBudgetGenerator", "GENERATORS", "BudgetModel", "coordinate_channels",
    "generator_from_spec", "mean_mask_generator", "budget_spread",
    "BudgetTrainConfig", "GeneratorConfig", "BudgetTrainer", "load_budget_model", "budget_settings",
    "certify_budgets", "budget_ratio", "radius_summary",
]
