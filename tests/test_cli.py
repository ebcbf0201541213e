"""The command line: train then verify end to end, and bad input as one-paragraph errors."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from robustsuite.cli import main

ROOT = Path(__file__).resolve().parents[1]
QUICK = ["--set", "train.epochs=2", "--set", "data.train_subset=128", "--set", "train.schedule.start_epoch=1",
         "--set", "train.schedule.ramp_epochs=1", "--set", "model.options={width: 0.5, linear: 32}",
         "--set", "device=cpu"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "run"
    assert main(["train", str(ROOT / "configs/digits_crown_ibp.yaml"), "--out", str(out), "--quiet", *QUICK]) == 0
    return out


def test_train_writes_checkpoints_resolved_config_and_history(trained):
    for name in ("best.pt", "last.pt", "config.yaml", "history.json"):
        assert (trained / name).is_file(), name
    assert len(json.loads((trained / "history.json").read_text())) == 2
    assert "epochs: 2" in (trained / "config.yaml").read_text()


def test_verify_prints_a_table_and_writes_json(trained, capsys, tmp_path):
    out = tmp_path / "v.json"
    rc = main(["verify", str(trained / "best.pt"), "--eps", "0.01,0.05", "--method", "ibp,crown",
               "--subset", "40", "--pgd-steps", "5", "--device", "cpu", "--out", str(out)])
    text = capsys.readouterr().out
    assert rc == 0 and "certified" in text and "crown" in text
    rows = json.loads(out.read_text())["rows"]
    assert len(rows) == 4 and all(r["certified_acc"] <= r["pgd_acc"] for r in rows)


@pytest.mark.parametrize("argv,needle", [
    (["train", "configs/digits_crown_ibp.yaml", "--set", "train.epoch=3"], "train.epoch: unknown key"),
    (["train", "configs/digits_crown_ibp.yaml", "--set", "train.eps=two"], "train.eps"),
    (["train", "configs/digits_crown_ibp.yaml", "--set", "data.name=imagenet"], "imagenet"),
    (["train", "configs/digits_crown_ibp.yaml", "--set", "model.name=vgg"], "vgg"),
    (["train", "configs/nope.yaml"], "does not exist"),
    (["verify", "missing.pt"], "does not exist"),
    (["verify", "configs/digits_crown_ibp.yaml"], "cannot be read"),
    (["train", "configs/digits_crown_ibp.yaml", "--set", "data.name=mnist", "--set", "data.root=/nonexistent"], "download"),
])
def test_bad_input_gives_one_paragraph_error_without_traceback(argv, needle, tmp_path):
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    argv = [a if not a.startswith("configs/") else str(ROOT / a) for a in argv]
    if "--out" not in argv and argv[0] == "train":
        argv += ["--out", str(tmp_path / "o")]
    p = subprocess.run([sys.executable, "-m", "robustsuite", *argv], env=env, capture_output=True, text=True,
                       timeout=240)
    assert p.returncode == 2, p.stderr[-1500:]
    assert needle in p.stderr and "Traceback" not in p.stderr, p.stderr[-1500:]


def test_help_answers_with_examples(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    assert "example" in capsys.readouterr().out


def test_attack_prints_robust_accuracy_and_asr(trained, capsys):
    rc = main(["attack", str(trained / "best.pt"), "--attack", "pgd", "--norm", "linf", "--eps", "0.1",
               "--steps", "5", "--subset", "32", "--device", "cpu"])
    text = capsys.readouterr().out
    assert rc == 0 and "robust accuracy" in text and "ASR" in text


def test_eval_writes_a_report_that_passes_the_consistency_check(trained, tmp_path, capsys):
    suite = tmp_path / "suite.yaml"
    suite.write_text("certify:\n  - {method: ibp, norm: linf, eps: [0.05]}\n"
                     "attacks:\n  - {name: pgd, norm: linf, eps: [0.05], steps: 5}\nsubset: {first: 30}\n")
    rc = main(["eval", str(trained / "best.pt"), "--suite", str(suite), "--out", str(tmp_path / "ev"), "--device", "cpu"])
    assert rc == 0
    for name in ("report.json", "records.csv", "report.md"):
        assert (tmp_path / "ev" / name).is_file()
