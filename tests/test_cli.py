"""The command line: train then verify end to end, and bad input as one-paragraph errors."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

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


def test_verify_milp_prints_the_three_counts(trained, capsys, tmp_path):
    """``verify --method milp``: complete verification beside CROWN, its row counts the statuses."""
    out = tmp_path / "v.json"
    assert main(["verify", str(trained / "best.pt"), "--method", "milp,crown", "--eps", "0.1", "--time-limit", "10",
                 "--subset", "16", "--pgd-steps", "10", "--device", "cpu", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "verified" in text and "falsified" in text and "unknown" in text
    rows = {r["method"]: r for r in json.loads(out.read_text())["rows"]}
    r = rows["milp"]
    assert r["verified"] + r["falsified"] + r["unknown"] == 16 and r["unknown"] == 0
    assert r["certified_acc"] == r["verified"] / 16 >= rows["crown"]["certified_acc"]
    assert r["certified_acc"] <= r["pgd_acc"] and not r.get("violations")


def _cli(argv: list[str], cwd: Path = ROOT) -> subprocess.CompletedProcess:
    """``python -m robustsuite *argv`` in a fresh process, as a user would type it."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", "robustsuite", *argv], env=env, capture_output=True, text=True,
                          timeout=240, cwd=cwd)


def _assert_one_paragraph_error(p: subprocess.CompletedProcess, needle: str) -> None:
    """Exit status 2, the needle in stderr, and no traceback."""
    assert p.returncode == 2, p.stderr[-1500:]
    assert needle in p.stderr and "Traceback" not in p.stderr, p.stderr[-1500:]


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
    argv = [a if not a.startswith("configs/") else str(ROOT / a) for a in argv]
    if "--out" not in argv and argv[0] == "train":
        argv += ["--out", str(tmp_path / "o")]
    _assert_one_paragraph_error(_cli(argv), needle)


@pytest.fixture(scope="module")
def bad_files(trained, tmp_path_factory):
    """Files for the bad-input classes: npz data of the wrong size, with NaN, with too many classes; a
    torch file that is not a checkpoint, a truncated checkpoint; a suite and a study with a typo."""
    d = tmp_path_factory.mktemp("bad")
    rng = np.random.default_rng(0)
    np.savez(d / "size28.npz", x=rng.random((6, 28, 28), dtype=np.float32), y=np.arange(6))
    x = rng.random((6, 1, 8, 8))
    x[4, 0, 2, 3] = np.nan
    np.savez(d / "nan.npz", x=x, y=np.arange(6))
    np.savez(d / "classes12.npz", x=rng.random((12, 1, 8, 8)), y=np.arange(12))
    torch.save({"weights": torch.zeros(3)}, d / "foreign.pt")
    raw = (trained / "best.pt").read_bytes()
    (d / "truncated.pt").write_bytes(raw[: len(raw) // 2])
    (d / "suite.yaml").write_text("certify:\n  - {method: ibp, eps: [0.05]}\nsubset: {first: 8}\n")
    (d / "typo_suite.yaml").write_text("certify:\n  - {method: ibp, eps: [0.05], nrom: l2}\n")
    (d / "study.yaml").write_text(yaml.safe_dump({"models": {"a": {"config": str(ROOT / "configs/digits_pgd_at.yaml")}},
                                                  "suite": str(d / "suite.yaml"), "modles": {}}))
    return {"ckpt": str(trained / "best.pt"), "dir": str(d)}


# Every bad-input class, from the command line of each command it reaches. {ckpt}: a tiny trained digits
# checkpoint (1x8x8 inputs, 10 classes); {dir}: the files of ``bad_files``; {out}: a fresh folder.
BAD_INPUTS = [
    # unknown config key / wrong type
    (["eval", "{ckpt}", "--suite", "{dir}/typo_suite.yaml", "--out", "{out}"], "certify[0].nrom: unknown key"),
    (["eval", "{ckpt}", "--suite", "{dir}/suite.yaml", "--out", "{out}", "--set", "subset.first=abc"],
     "subset.first: Input should be a valid integer"),
    (["run", "{dir}/study.yaml"], "modles: unknown key"),
    # missing data
    (["verify", "{ckpt}", "--data", "npz", "--data-option", "path={dir}/none.npz"], "none.npz' does not exist"),
    (["eval", "{ckpt}", "--suite", "{dir}/suite.yaml", "--out", "{out}", "--data", "npz"],
     "npz: option 'path' is required"),
    # bad checkpoint
    (["verify", "{dir}/foreign.pt"], "is not a robustsuite checkpoint"),
    (["attack", "{dir}/truncated.pt", "--eps", "0.1"], "cannot be read"),
    # shape mismatch: images and classes
    (["verify", "{ckpt}", "--data", "npz", "--data-option", "path={dir}/size28.npz"],
     "npz images are (1, 28, 28) but the model of"),
    (["eval", "{ckpt}", "--suite", "{dir}/suite.yaml", "--out", "{out}", "--data-option", "size=16"],
     "fix: use data of the model's input shape (for digits: --data-option size=8)"),
    (["attack", "{ckpt}", "--eps", "0.1", "--data", "npz", "--data-option", "path={dir}/classes12.npz"],
     "npz has label 11 but the model of"),
    # NaN input
    (["attack", "{ckpt}", "--eps", "0.1", "--data", "npz", "--data-option", "path={dir}/nan.npz"],
     "array 'x' contains NaN or inf at sample 4"),
    # unknown method / attack
    (["verify", "{ckpt}", "--method", "ibp,foo"], "method: unknown value 'foo'; choose one of: alpha-crown"),
    (["verify", "{ckpt}", "--method", "milp", "--time-limit", "0"], "expected a number of seconds > 0"),
    (["attack", "{ckpt}", "--eps", "0.1", "--attack", "foo"], "attack: unknown value 'foo'; choose one of"),
    (["train", "configs/digits_crown_ibp.yaml", "--set", "train.method=foo", "--out", "{out}"],
     "train.method: unknown value 'foo'; choose one of"),
]


@pytest.mark.parametrize("argv,needle", BAD_INPUTS, ids=[f"{a[0]}-{i}" for i, (a, _) in enumerate(BAD_INPUTS)])
def test_every_bad_input_class_from_the_command_line(argv, needle, bad_files, tmp_path):
    argv = [a.format(**bad_files, out=tmp_path / "out") for a in argv]
    argv = [str(ROOT / a) if a.startswith("configs/") else a for a in argv]
    _assert_one_paragraph_error(_cli(argv, cwd=tmp_path), needle)


def test_commands_run_on_user_npz_data(trained, tmp_path, capsys):
    """--data npz: a checkpoint evaluated on the user's own images of its input shape."""
    rng = np.random.default_rng(1)
    path = tmp_path / "mine.npz"
    np.savez(path, x=rng.integers(0, 256, (12, 8, 8), dtype=np.uint8), y=np.arange(12) % 10)
    data = ["--data", "npz", "--data-option", f"path={path}", "--device", "cpu"]
    assert main(["attack", str(trained / "best.pt"), "--eps", "0.1", "--steps", "2", *data]) == 0
    assert "on 12 samples" in capsys.readouterr().out
    out = tmp_path / "v.json"
    assert main(["verify", str(trained / "best.pt"), "--eps", "0.05", "--method", "ibp", "--pgd-steps", "2",
                 "--out", str(out), *data]) == 0
    assert "12 test samples of npz" in capsys.readouterr().out
    assert len(json.loads(out.read_text())["rows"]) == 1


def test_help_answers_with_examples(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    assert "example" in capsys.readouterr().out


def test_attack_prints_robust_accuracy_and_asr(trained, capsys):
    rc = main(["attack", str(trained / "best.pt"), "--attack", "pgd", "--norm", "linf", "--eps", "0.1",
               "--steps", "5", "--subset", "32", "--device", "cpu"])
    text = capsys.readouterr().out
    assert rc == 0 and "robust accuracy" in text and "ASR" in text


def test_attack_autoattack_prints_the_breakdown_and_bad_settings_exit_2(trained, tmp_path):
    ckpt = str(trained / "best.pt")
    p = _cli(["attack", ckpt, "--attack", "autoattack", "--eps", "0.1", "--subset", "16", "--device", "cpu",
              "--steps", "2", "--option", "n_queries=10", "--option", "n_target_classes=1"], cwd=tmp_path)
    assert p.returncode == 0, p.stderr[-1500:]
    assert "robust accuracy" in p.stdout and "broken first by:" in p.stdout, p.stdout
    _assert_one_paragraph_error(_cli(["attack", ckpt, "--attack", "autoattack", "--eps", "0.1", "--option",
                                      "version=plus"], cwd=tmp_path), "version: unknown value 'plus'")
    _assert_one_paragraph_error(_cli(["attack", ckpt, "--attack", "autoattack", "--eps", "0.1", "--norm", "l1"],
                                     cwd=tmp_path), "choose one of: LinfBall, L2Ball")


def test_eval_writes_a_report_that_passes_the_consistency_check(trained, tmp_path, capsys):
    suite = tmp_path / "suite.yaml"
    suite.write_text("certify:\n  - {method: ibp, norm: linf, eps: [0.05]}\n"
                     "attacks:\n  - {name: pgd, norm: linf, eps: [0.05], steps: 5}\nsubset: {first: 30}\n")
    rc = main(["eval", str(trained / "best.pt"), "--suite", str(suite), "--out", str(tmp_path / "ev"), "--device", "cpu"])
    assert rc == 0
    for name in ("report.json", "records.csv", "report.md"):
        assert (tmp_path / "ev" / name).is_file()
