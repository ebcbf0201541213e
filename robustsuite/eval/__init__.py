"""eval: the unified evaluator (certified bounds, attacks, randomized smoothing side by side), its
suite, per-sample records and metrics, reports and plots.

Example::

    from robustsuite.eval import evaluate, load_suite
    report = evaluate({"crown-ibp": m1, "pgd-at": m2}, (x, y), load_suite("configs/suites/demo.yaml"))
    print(report.table())
    report.save("runs/demo/eval")     # report.json, records.csv, report.md, plots/
"""
from .evaluator import evaluate, select_samples
from .metrics import check_consistency, metrics_from_records
from .report import Report
from .smoothing import (ABSTAIN, Certificate, Smooth, SmoothingSummary, certified_radius,
                        clopper_pearson_lower, smoothing_summary, two_sided_binomial_pvalue)
from .suite import AttackItem, CertifyItem, EvalItem, SmoothingItem, Suite, load_suite, suite_from_dict

__all__ = ["ABSTAIN", "Certificate", "Smooth", "SmoothingSummary", "certified_radius",
           "clopper_pearson_lower", "smoothing_summary", "two_sided_binomial_pvalue",
           "evaluate", "select_samples", "Report", "metrics_from_records", "check_consistency",
           "Suite", "EvalItem", "CertifyItem", "AttackItem", "SmoothingItem", "load_suite", "suite_from_dict"]
