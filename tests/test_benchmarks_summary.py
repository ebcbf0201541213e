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


def _pgd_row(norm: str, batch: int, floor: float, ta: float) -> dict:
    return {"norm": norm, "batch": batch, "steps": 10, "eps": 0.1 if norm == "linf" else 0.5, "ours_over_floor": floor,
            "ours_over_torchattacks": ta, "goal_floor_1.1_met": floor <= 1.1,
            "goal_torchattacks_1.0_met": ta <= 1.0 if norm == "linf" else None}


def test_pgd_row_shows_the_l2_rows_and_names_the_missed_goals(tmp_path):
    rows = [_pgd_row("linf", 256, 1.04, 0.99), _pgd_row("l2", 256, 1.18, 1.11), _pgd_row("l2", 2048, 1.09, 1.04)]
    (tmp_path / "attacks_pgd.json").write_text(json.dumps({"results": rows}))
    text = summary.pgd_speed(tmp_path)
    assert text.startswith("L-inf 0.1: batch 256 PGD-10 1.040x floor / 0.990x torchattacks; "
                           "L2 0.5: batch 256 PGD-10 1.180x floor / 1.110x PGDL2; batch 2048 PGD-10 1.090x floor")
    # L2 has no torchattacks goal (PGDL2 is not the projection): only its floor goal can be missed
    assert text.endswith("; missed: L2 batch 256 PGD-10 (floor)")
    rows[1] = _pgd_row("l2", 256, 1.05, 1.11)
    (tmp_path / "attacks_pgd.json").write_text(json.dumps({"results": rows}))
    assert summary.pgd_speed(tmp_path).endswith("; goal met")


def _cw_row(model: str, abort_l2: float, abort_cpu: float, foolbox: dict) -> dict:
    row = {"model": model, "batch": 200, "abort": {"median_l2": abort_l2, "cpu_s": abort_cpu},
           "no_abort": {"median_l2": 1.0, "cpu_s": 20.0}, "foolbox": foolbox,
           "abort_over_no_abort_median_l2": abort_l2, "goal_l2_within_0.5pct_met": abs(abort_l2 - 1) <= 0.005,
           "abort_over_no_abort_cpu": abort_cpu / 20.0}
    if "cpu_s" in foolbox:
        row["abort_over_foolbox_cpu"] = abort_cpu / foolbox["cpu_s"]
        row["goal_faster_than_foolbox_met"] = abort_cpu < foolbox["cpu_s"]
    return row


def test_cw_and_boundary_foolbox_rows(tmp_path):
    rows = [_cw_row("digits CNN 1x8x8 (conv16)", 1.002, 10.0, {"median_l2": 1.01, "cpu_s": 25.0}),
            _cw_row("CROWN-IBP digits (runs/x/best.pt)", 1.01, 30.0, {"median_l2": 1.0, "cpu_s": 25.0})]
    (tmp_path / "attacks_cw.json").write_text(json.dumps({"results": rows}))
    text = summary.cw(tmp_path)
    assert text.startswith("digits CNN 1x8x8, 200 digits: median L2 / CPU abort 1.0020 / 10.0 s, no abort 1.0000 / "
                           "20.0 s (ratio 1.0020, CPU 0.50x), foolbox 1.0100 / 25.0 s (abort/foolbox CPU 0.40x)")
    assert "runs/x" not in text  # the table names the model; the JSON keeps its path
    assert text.endswith("; missed: CROWN-IBP digits (median L2), CROWN-IBP digits (slower than foolbox)")
    rows = [_cw_row("m", 1.0, 10.0, {"skipped": "foolbox not importable"})]
    (tmp_path / "attacks_cw.json").write_text(json.dumps({"results": rows}))
    text = summary.cw(tmp_path)
    assert "foolbox not run (foolbox not importable)" in text and text.endswith("missed: m (foolbox not measured)")

    ours = {"median_l2": 0.9, "queries_median": 20000, "rows_per_sample": 20001, "converged": 3, "success": 100,
            "cpu_s": 40.0}
    row = {"model": "digits CNN (x)", "batch": 100, "max_queries": 20000, "ours": ours,
           "foolbox": {"median_l2": 0.92, "rows_per_sample": 20010, "success": 100, "cpu_s": 120.0},
           "ours_over_foolbox_median_l2": 0.9 / 0.92}
    (tmp_path / "attacks_boundary_foolbox.json").write_text(json.dumps({"results": [row]}))
    text = summary.boundary_foolbox(tmp_path)
    assert text.startswith("digits CNN, 100 digits, budget 20k: ours median L2 0.9000, 20000 queries (median; 20001")
    assert text.endswith("; foolbox 0.9200 (20010 rows per sample, 100 successes, 120 s CPU); ours/foolbox median L2 0.978")


def test_verifier_row_lists_the_ratios_the_missed_batches_and_the_chunks(tmp_path):
    over = [{"model": "cnn_small", "batch": 16, "cpu_ratio": 1.07}, {"model": "cnn_small", "batch": 64, "cpu_ratio": 1.01},
            {"model": "cnn7_bn", "batch": 16, "cpu_ratio": 1.04}]
    chunks = [{"model": "cnn_small", "method": "crown", "best_chunk": 4, "rows": [{"max_abs_diff_vs_largest": 2e-7}]},
              {"model": "cnn7_bn", "method": "crown-ibp", "best_chunk": 128, "rows": [{"max_abs_diff_vs_largest": 0.0}]}]
    (tmp_path / "verifier.json").write_text(json.dumps({"command": "x --quick", "overhead": over, "chunks": chunks}))
    assert summary.verifier(tmp_path) == (
        "verify / bare (quick run): cnn_small batch 16 1.070x, batch 64 1.010x; cnn7_bn batch 16 1.040x; missed: "
        "cnn_small batch 16; fastest chunk (samples per auto_LiRPA call; bounds within 2.0e-07 of the one-chunk ones) "
        "cnn_small: crown 4; cnn7_bn: crown-ibp 128")


def _complete_row(model: str, eps: float, unknown_after: float, seconds: float) -> dict:
    return {"model": model, "eps": eps, "n": 450, "time_limit": 30.0,
            "before": {"verified": 0.8867, "falsified": 0.1067, "unknown": 0.0067},
            "after": {"verified": 0.8867, "falsified": 0.1133 - unknown_after, "unknown": unknown_after},
            "milp_samples": 4, "milp_seconds_median": 0.4, "milp_seconds_max": 1.54, "complete_seconds": seconds,
            "violations": 0}


def test_complete_row_reports_before_and_after_and_the_goal(tmp_path):
    goal = {"model": "crown_ibp", "eps": 0.1, "unknown_max": 0.01, "seconds_max": 600.0}

    def text(rows: list[dict]) -> str:
        (tmp_path / "complete_verification.json").write_text(json.dumps({"goal": goal, "rows": rows}))
        return summary.complete(tmp_path)

    met = text([_complete_row("crown_ibp", 0.1, 0.0, 75.2), _complete_row("pgd_at", 0.05, 0.5, 900.0)])
    assert met.startswith("verified / falsified / unknown %, before -> after the MILP: crown_ibp e 0.1 (450 digits): "
                          "88.67 / 10.67 / 0.67 -> 88.67 / 11.33 / 0, 4 samples reached the MILP (median 0.4 s, max "
                          "1.54 s each, limit 30 s), complete run 75 s, 0 violations; pgd_at e 0.05")
    assert met.endswith("; goal met: crown_ibp e 0.1 unknown 0 % in 75 s")  # PGD-AT's figures have no goal
    assert text([_complete_row("crown_ibp", 0.1, 0.0111, 75.0)]).endswith("goal missed: crown_ibp e 0.1 unknown 1.11 % in 75 s")
    assert text([_complete_row("crown_ibp", 0.1, 0.0, 601.0)]).endswith("goal missed: crown_ibp e 0.1 unknown 0 % in 601 s")
    assert text([_complete_row("crown_ibp", 0.05, 0.0, 60.0)]).endswith("goal not measured (crown_ibp e 0.1 has no row)")
    # a run stopped by --max-minutes is listed with the phase it was in, not left out
    stopped = {"model": "pgd_at", "eps": 0.05, "n": 30, "max_minutes": 15.0,
               "finished_phases_seconds": {"ibp": 0.2, "crown": 0.9, "pgd": 0.2}}
    (tmp_path / "complete_verification.json").write_text(json.dumps(
        {"goal": goal, "rows": [_complete_row("crown_ibp", 0.1, 0.0, 75.2)], "stopped": [stopped]}))
    assert "; pgd_at e 0.05 (30 digits): stopped after 15 min, in alpha-crown (open samples only); goal met" in \
        summary.complete(tmp_path)
    no_alpha = _complete_row("pgd_at", 0.05, 0.5, 60.0)
    no_alpha["before"]["alpha-crown_on_open"] = None
    assert "pgd_at e 0.05 (450 digits, before without alpha-CROWN): 88.67" in text([no_alpha])


def test_a_missing_result_file_is_named_with_what_to_run(tmp_path):
    try:
        summary.cw(tmp_path)
    except FileNotFoundError as e:
        assert "attacks_cw.json" in str(e) and "run the benchmark that writes it" in str(e)
    else:
        raise AssertionError("a row without its result file rendered")
