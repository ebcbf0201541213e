"""eval: randomized smoothing (and, with the evaluator, the unified evaluation and reports)."""
from .smoothing import (ABSTAIN, Certificate, Smooth, SmoothingSummary, certified_radius,
                        clopper_pearson_lower, smoothing_summary, two_sided_binomial_pvalue)

__all__ = ["ABSTAIN", "Certificate", "Smooth", "SmoothingSummary", "certified_radius",
           "clopper_pearson_lower", "smoothing_summary", "two_sided_binomial_pvalue"]
