"""benchmarks/bench_complete.py keeps every model's rows in one file, says where each came from, and
records a run stopped by --max-minutes instead of leaving a silent gap."""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks import bench_complete  # noqa: E402


def test_rows_merge_across_runs_and_a_stopped_run_is_recorded(tmp_path, monkeypatch):
    import robustsuite.training.checkpoint as ckpt

    monkeypatch.setattr(ckpt, "load_checkpoint", lambda path: None)
    monkeypatch.setattr(ckpt, "model_from_checkpoint", lambda c: torch.nn.Identity())
    slow = {0.1}

    def fake_run_one(model, x, y, eps, time_limit, workers, seconds=None, alpha=True):
        seconds["ibp"] = 0.1
        if eps in slow:
            time.sleep(30)  # interrupted by --max-minutes
        return {"eps": eps, "n": int(x.shape[0]), "after": {"unknown": 0.0}, "complete_seconds": 1.0, "alpha": alpha}

    monkeypatch.setattr(bench_complete, "run_one", fake_run_one)
    out = tmp_path / "complete.json"
    base = ["--n", "4", "--threads", "1", "--out", str(out), "--max-minutes", "0.01"]
    t0 = time.perf_counter()
    bench_complete.main(["--models", "crown_ibp", "--checkpoint", "crown_ibp=a.pt", "--eps", "0.05", "0.1", *base])
    assert time.perf_counter() - t0 < 20
    d = json.loads(out.read_text())
    assert [(r["model"], r["eps"]) for r in d["rows"]] == [("crown_ibp", 0.05)]
    assert "date" in d["rows"][0]["provenance"]
    assert [(r["model"], r["eps"], r["finished_phases_seconds"]) for r in d["stopped"]] == [("crown_ibp", 0.1, {"ibp": 0.1})]
    assert d["meets_goal"] is None  # the goal's (model, eps) has no row

    slow.clear()  # without alpha-CROWN the row is measured, and the stopped full run stays listed
    bench_complete.main(["--models", "crown_ibp", "--checkpoint", "crown_ibp=a.pt", "--eps", "0.1", "--no-alpha-crown", *base])
    d = json.loads(out.read_text())
    assert [(r["eps"], r["alpha"]) for r in d["rows"]] == [(0.05, True), (0.1, False)] and len(d["stopped"]) == 1
    # a second run of the other model, then the stopped one again in full: everything is kept
    bench_complete.main(["--models", "pgd_at", "--checkpoint", "pgd_at=b.pt", "--eps", "0.05", *base])
    bench_complete.main(["--models", "crown_ibp", "--checkpoint", "crown_ibp=a.pt", "--eps", "0.1", *base])
    d = json.loads(out.read_text())
    assert [(r["model"], r["eps"], r["checkpoint"]) for r in d["rows"]] == \
        [("crown_ibp", 0.05, "a.pt"), ("crown_ibp", 0.1, "a.pt"), ("pgd_at", 0.05, "b.pt")]
    assert d["stopped"] == [] and d["meets_goal"] is True
