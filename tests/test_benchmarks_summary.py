"""benchmarks/README.md and the README's benchmark table are what benchmarks/summary.py builds from the committed results."""
from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks import summary  # noqa: E402


def test_benchmark_tables_match_the_result_files():
    assert (ROOT / "benchmarks" / "README.md").read_text() == summary.render(), \
        "benchmarks/README.md is out of date: run python -m benchmarks.summary"
    readme = (ROOT / "README.md").read_text()
    assert summary.with_table(readme) == readme, "README.md's benchmark table is out of date: run python -m benchmarks.summary"


def test_summary_figures_follow_the_result_files(tmp_path):
    shutil.copytree(ROOT / "benchmarks" / "results", tmp_path, dirs_exist_ok=True)
    path = tmp_path / "certified_training_step.json"
    d = json.loads(path.read_text())
    d["rows"][0]["cpu_ratio_ours_over_bare"] = 1.234
    path.write_text(json.dumps(d))
    assert "cnn_small 1.234x" in summary.render(tmp_path)
    assert "cnn_small 1.234x" not in summary.render()


def test_autoattack_row_reports_each_cell_and_names_the_missed_goals(tmp_path):
    comp = {"attack": "apgd-ce", "n": 10, "cpu_ratio_ours_over_reference": 0.9}
    cells = [{"model": "crown_ibp", "norm": "linf", "eps": 0.1, "robust_accuracy_ours": 0.88,
              "robust_accuracy_reference": 0.89, "cpu_ratio_ours_over_reference": 0.8, "goal_met": False,
              "goal_strength_met": True, "goal_speed_met": False, "components": [comp, {"attack": "square", "n": 0}]},
             {"model": "pgd_at", "norm": "l2", "eps": 0.5, "robust_accuracy_ours": 0.6,
              "robust_accuracy_reference": 0.6, "cpu_ratio_ours_over_reference": 0.4, "goal_met": True,
              "goal_strength_met": True, "goal_speed_met": True, "components": [comp]}]
    (tmp_path / "autoattack.json").write_text(json.dumps(
        {"settings": {"n": 150, "quick": True}, "cells": cells, "goal_met": False}))
    text = summary.autoattack(tmp_path)
    assert text.startswith("150 digits (quick run); crown_ibp L-inf 0.1: robust 0.880 vs 0.890, CPU 0.80x (apgd-ce 0.90x)")
    assert "pgd_at L2 0.5: robust 0.600 vs 0.600, CPU 0.40x" in text
    assert text.endswith("missed: crown_ibp linf (speed)")
    assert "square" not in text  # a component that had no sample left is not listed
