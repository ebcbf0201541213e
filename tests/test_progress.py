"""What a person sees while a run goes on (issue 16, item 7): a short terminal, a complete log file.

By default the terminal (stderr) shows warnings, errors, progress bars (on a terminal only) and one
summary line per finished model; ``--verbose`` adds every INFO line (per epoch, per item), ``--quiet``
removes bars and summary lines. Every INFO line goes to the run's log file (``train.log``, ``eval.log``,
``run.log``) whatever the flags, and ``main()`` leaves no handler behind.
"""
from __future__ import annotations

import logging
import sys
from pathlib import Path

import pytest
import yaml

from robustsuite.cli import main

ROOT = Path(__file__).resolve().parents[1]
CONFIG = str(ROOT / "configs/digits_pgd_at.yaml")
TINY = ["data.train_subset=96", "data.test_subset=24", "data.val_fraction=0.25", "train.epochs=2",
        "train.optim.milestones=[]", "train.attack.steps=1", "train.val_subset=8", "train.val_attack_steps=1",
        "device=cpu"]
EPOCH_LINE = "robustsuite.training.loop: epoch 1:"


def _sets(keys: list[str]) -> list[str]:
    return [a for k in keys for a in ("--set", k)]


def _handlers() -> tuple:
    pkg = logging.getLogger("robustsuite")
    return list(pkg.handlers), pkg.level, pkg.propagate


def _train(tmp_path: Path, capsys, *flags: str) -> tuple[int, str, Path]:
    """``robustsuite [flags] train`` of a 2-epoch tiny PGD-AT run in-process: (status, stderr, folder)."""
    out = tmp_path / "run"
    before = _handlers()
    rc = main([*flags, "train", CONFIG, "--out", str(out), "--no-resume", *_sets(TINY)])
    assert _handlers() == before  # no handler (file or terminal) and no level left behind
    return rc, capsys.readouterr().err, out


def test_epoch_lines_go_to_the_log_file_and_to_the_terminal_only_with_verbose(tmp_path, capsys):
    rc, err, out = _train(tmp_path, capsys)
    assert rc == 0
    assert "epoch 1:" not in err and "INFO" not in err, err  # no wall of INFO lines
    log = (out / "train.log").read_text()
    assert EPOCH_LINE in log and "robustsuite.training.loop: epoch 2:" in log

    rc, err, _ = _train(tmp_path, capsys, "--verbose")
    assert rc == 0 and EPOCH_LINE in err and "epoch 2:" in err
    rc, err, _ = _train(tmp_path, capsys)  # the flag after the command too (as --quiet)
    assert "epoch 1:" not in err
    assert main(["train", CONFIG, "--out", str(tmp_path / "run"), "--no-resume", "--verbose", *_sets(TINY)]) == 0
    assert EPOCH_LINE in capsys.readouterr().err
    # the log file appends: four runs, four times the first epoch
    assert (out / "train.log").read_text().count(EPOCH_LINE) == 4


def _warn_in_validation(monkeypatch):
    from robustsuite.stochastic.adversarial import AdversarialTrainer

    real = AdversarialTrainer.validate

    def validate(self):
        logging.getLogger("robustsuite.training.loop").warning("a warning while training")
        return real(self)
    monkeypatch.setattr(AdversarialTrainer, "validate", validate)


@pytest.mark.parametrize("flags", [(), ("--quiet",), ("--verbose",), ("--quiet", "--verbose")])
def test_warnings_reach_the_terminal_whatever_the_flags(tmp_path, capsys, monkeypatch, flags):
    _warn_in_validation(monkeypatch)
    rc, err, out = _train(tmp_path, capsys, *flags)
    assert rc == 0
    assert err.count("WARNING robustsuite.training.loop: a warning while training") == 2, err
    assert (out / "train.log").read_text().count("a warning while training") == 2


def test_bars_show_on_a_terminal_only_and_not_when_quiet(tmp_path, capsys, monkeypatch):
    _, err, _ = _train(tmp_path, capsys)  # captured stderr is no terminal: no bar
    assert "\r" not in err and "epoch/s" not in err and "s/epoch" not in err
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True, raising=False)
    _, err, _ = _train(tmp_path, capsys)
    assert "digits_pgd_at:" in err and "2/2" in err and ("epoch/s" in err or "s/epoch" in err), err  # rate
    _, err, _ = _train(tmp_path, capsys, "--quiet")
    assert "digits_pgd_at:" not in err and "\r" not in err


def test_a_study_shows_one_summary_line_per_model_and_logs_everything(tmp_path, capsys):
    study = {"name": "tiny", "seed": 0, "device": "cpu", "out": str(tmp_path / "s"),
             "models": {"pgd_at": {"config": CONFIG, "set": TINY}},
             "suite": {"name": "tiny", "attacks": [{"name": "pgd", "eps": [0.05], "steps": 2}], "repeats": 1},
             "suite_set": ["subset.first=8"]}
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(study))
    before = _handlers()
    assert main(["run", str(path)]) == 0
    assert _handlers() == before
    err = capsys.readouterr().err
    lines = err.splitlines()
    assert [ln.split(":")[0] for ln in lines] == ["[1/1] pgd_at", "evaluated pgd_at"], err  # nothing else
    assert "trained 2 epochs (pgd_at)" in lines[0] and "clean accuracy" in lines[1]
    s = tmp_path / "s"
    run_log_text = (s / "run.log").read_text()
    for needle in (EPOCH_LINE, "robustsuite.study: [1/1] pgd_at: training", "model pgd_at: attack|pgd done",
                   "robustsuite.progress: evaluated pgd_at"):
        assert needle in run_log_text, needle
    assert EPOCH_LINE in (s / "models" / "pgd_at" / "train.log").read_text()
    # the report folder is replaced whole by the save; its eval.log is carried over
    eval_log = (s / "report" / "eval.log").read_text()
    assert "model pgd_at: attack|pgd done" in eval_log and EPOCH_LINE not in eval_log
    # a second run: the model is skipped and the evaluation runs again; the logs grow
    assert main(["run", str(path), "--quiet"]) == 0
    assert capsys.readouterr().err == ""  # quiet: no summary line (and nothing went wrong)
    assert (s / "report" / "eval.log").read_text().count("model pgd_at: attack|pgd done") == 2
    assert "finished checkpoint" in (s / "run.log").read_text()


def test_run_log_leaves_what_other_handlers_show_unchanged(tmp_path, monkeypatch, capsys):
    """A Python user's own logging (here: a root handler, with the package at WARNING) sees what it saw
    before, while the file gets every INFO line; without any handler, warnings still reach stderr."""
    from robustsuite.progress import run_log

    seen: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record):
            seen.append(record.getMessage())

    root = logging.getLogger()
    monkeypatch.setattr(root, "handlers", [Collect()])
    monkeypatch.setattr(root, "level", logging.WARNING)
    log = logging.getLogger("robustsuite.somewhere")
    before = _handlers()
    with run_log(tmp_path / "x.log"):
        log.info("an info line")
        log.warning("a warning line")
        with run_log(tmp_path / "inner.log"):
            log.info("inner info")
    assert _handlers() == before
    assert seen == ["a warning line"]
    text = (tmp_path / "x.log").read_text()
    assert "INFO robustsuite.somewhere: an info line" in text and "a warning line" in text and "inner info" in text
    assert (tmp_path / "inner.log").read_text().count("\n") == 1
    # no handler anywhere: Python's last resort prints warnings, and still does inside the block
    monkeypatch.setattr(root, "handlers", [])
    with run_log(tmp_path / "y.log"):
        log.info("quiet info")
        log.warning("loud warning")
    err = capsys.readouterr().err
    assert "loud warning" in err and "quiet info" not in err
    assert "quiet info" in (tmp_path / "y.log").read_text()
    # disabled (ranks other than 0): nothing is attached, nothing written
    with run_log(tmp_path / "z.log", enabled=False):
        log.warning("x")
    assert not (tmp_path / "z.log").exists() and _handlers() == before
