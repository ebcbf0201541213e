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
