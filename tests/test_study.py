"""The study pipeline (``robustsuite run`` / ``robustsuite.study.run``): train each model, skip finished
ones, resume interrupted ones, evaluate them together in one report; study config errors."""
from __future__ import annotations

import argparse
import copy
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from robustsuite.errors import ConfigError
from robustsuite.cli.run import add_parser as add_run_parser
from robustsuite.study import load_study, run, study_from_dict

ROOT = Path(__file__).resolve().parents[1]
TINY = ["data.train_subset=128", "data.test_subset=40", "data.val_fraction=0.25"]
STUDY = {
    "name": "tiny",
    "seed": 0,
    "device": "cpu",
    "models": {
        "crown_ibp": {"config": "configs/digits_crown_ibp.yaml",
                      "set": TINY + ["train.epochs=2", "train.schedule.start_epoch=1", "train.schedule.ramp_epochs=1",
                                     "train.optim.milestones=[]", "model.options.width=1", "model.options.linear=32"]},
        "pgd_at": {"config": "configs/digits_pgd_at.yaml",
                   "set": TINY + ["train.epochs=1", "train.optim.milestones=[]", "train.attack.steps=2",
                                  "train.val_subset=16", "train.val_attack_steps=1"]},
    },
    "suite": {"name": "tiny", "certify": [{"method": "ibp", "eps": [0.05]}],
              "attacks": [{"name": "pgd", "eps": [0.05], "steps": 3}], "repeats": 1},
    "suite_set": ["subset.first=16"],
}


def _study(tmp_path, name="s", **changes):
    s = copy.deepcopy(STUDY)
    s["out"] = str(tmp_path / name)
    s.update(changes)
    return s


def _mtimes(out):
    return {p.relative_to(out).as_posix(): p.stat().st_mtime_ns for p in sorted((out / "models").rglob("*.pt"))}


@pytest.fixture(scope="module")
def done(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("study")
    study = _study(tmp)
    return study, run(study, quiet=True)


def test_study_runs_end_to_end_and_writes_one_report(done):
    study, res = done
    out = res.out
    assert res.status == {"crown_ibp": "trained", "pgd_at": "trained"}
    assert res.report.models == ["crown_ibp", "pgd_at"]
    for label in ("crown_ibp", "pgd_at"):
        assert res.checkpoints[label] == out / "models" / label / "best.pt" and res.checkpoints[label].is_file()
        assert (out / "models" / label / "config.yaml").is_file()
    assert res.report_dir == out / "report"
    for f in ("report.json", "records.csv", "report.md"):
        assert (out / "report" / f).is_file()
    assert list((out / "report" / "plots").glob("*.png"))
    assert res.report.samples and len(res.report.records["index"]) > 0
    assert "clean_accuracy" in res.report.metrics["crown_ibp"]
    assert any(k.startswith("certified|") for k in res.report.metrics["crown_ibp"])
    saved = yaml.safe_load((out / "study.yaml").read_text())
    assert saved["name"] == "tiny" and set(saved["resolved"]["models"]) == {"crown_ibp", "pgd_at"}
    assert saved["resolved"]["models"]["pgd_at"]["train"]["epochs"] == 1
    assert saved["resolved"]["suite"]["subset"]["first"] == 16


def test_second_run_skips_training_and_gives_the_same_metrics(done):
    study, first = done
    before = _mtimes(first.out)
    again = run(study, quiet=True)
    assert again.status == {"crown_ibp": "skipped", "pgd_at": "skipped"}
    assert _mtimes(first.out) == before
    assert again.report.metrics == first.report.metrics
    other_device = run({**study, "device": "auto"}, quiet=True, stop_after=2)   # the device is not the model
    assert other_device.status == {"crown_ibp": "skipped", "pgd_at": "skipped"} and _mtimes(first.out) == before


def test_a_study_killed_while_evaluating_resumes_the_evaluation(done, monkeypatch):
    """The evaluation keeps its finished items in <out>/report/partial: the next run reuses them and
    writes the same report; resume=False evaluates everything again."""
    from robustsuite.eval.resume import ColumnStore

    study, first = done
    real, saved = ColumnStore.save, []

    def save(self, *args, **kwargs):
        out = real(self, *args, **kwargs)
        saved.append(args[:3])
        if len(saved) == 1:
            raise KeyboardInterrupt  # killed after the first finished item
        return out

    monkeypatch.setattr(ColumnStore, "save", save)
    with pytest.raises(KeyboardInterrupt):
        run(study, quiet=True)
    assert len(list((first.out / "report" / "partial").rglob("*.json"))) == 1
    again = run(study, quiet=True)
    assert saved[0] not in saved[1:] and len(saved) == 4  # 2 models x (ibp, pgd), one reused
    assert (again.report.records, again.report.metrics) == (first.report.records, first.report.metrics)
    assert not (first.out / "report" / "partial").exists()


def test_interrupted_study_completes(tmp_path):
    from robustsuite.training.run import train

    study = _study(tmp_path)
    part = run(study, quiet=True, stop_after=1)          # interrupted after the first model
    assert part.report is None and part.status == {"crown_ibp": "trained"}
    assert not (part.out / "models" / "pgd_at").exists()
    # the second model interrupted mid-run: 1 of 2 epochs done
    study["models"]["pgd_at"]["set"] = study["models"]["pgd_at"]["set"] + ["train.epochs=2"]
    rs = study_from_dict(study)
    train(rs.runs["pgd_at"], part.out / "models" / "pgd_at", device="cpu", quiet=True, stop_after=1)
    full = run(study, quiet=True)
    assert full.status == {"crown_ibp": "skipped", "pgd_at": "resumed"}
    from robustsuite.training.checkpoint import load_checkpoint
    last = load_checkpoint(part.out / "models" / "pgd_at" / "last.pt")
    assert last["finished"] and last["epoch"] == 2 and len(last["history"]) == 2
    assert full.report.models == ["crown_ibp", "pgd_at"] and (full.out / "report" / "report.md").is_file()
    # a model whose config changed since it was trained is refused, with the study's own way out
    study["models"]["pgd_at"]["set"] = study["models"]["pgd_at"]["set"] + ["train.attack.eps=0.2"]
    with pytest.raises(ConfigError, match=r"models\.pgd_at: .*train\.attack\.eps.*--set out=DIR"):
        run(study, quiet=True)


@pytest.mark.parametrize("change, match", [
    (lambda s: s.update(modles={}), r"modles: unknown key; allowed keys here: name, seed"),
    (lambda s: s["models"]["pgd_at"].update(confg="x"), r"models\.pgd_at\.confg: unknown key"),
    (lambda s: s["models"]["pgd_at"].update(config="configs/nope.yaml"), r"models\.pgd_at\.config: file 'configs/nope.yaml' does not exist"),
    (lambda s: s["models"]["pgd_at"]["set"].append("train.epochs=0"), r"models\.pgd_at\.train\.epochs: Input should be greater than or equal to 1"),
    (lambda s: s["models"]["pgd_at"]["set"].append("train.bogus=1"), r"models\.pgd_at\.train\.bogus: unknown key"),
    (lambda s: s["suite"]["attacks"].append({"name": "transfer", "source": "nobody", "attack": "pgd", "eps": [0.05]}),
     r"attacks\[1\]\.source: unknown model label 'nobody'.*crown_ibp, pgd_at"),
    (lambda s: s["suite"].update(certify=[{"method": "ibp", "eps": [0.05], "nrom": "l2"}]), r"suite\.certify\[0\]\.nrom: unknown key"),
    (lambda s: s.update(suite="configs/suites/none.yaml"), r"suite: file 'configs/suites/none.yaml' does not exist"),
    (lambda s: s.update(models={}), r"models: "),
    (lambda s: s.update(models={"a/b": {"config": "configs/digits_pgd_at.yaml"}}), r"models.a/b: name 'a/b' is not allowed"),
    (lambda s: s.update(device="gpu"), r"device: .*auto, cpu, cuda"),
])
def test_bad_study_configs_name_the_key(tmp_path, change, match):
    s = _study(tmp_path)
    change(s)
    with pytest.raises(ConfigError, match=match):
        study_from_dict(s)


def test_study_file_paths_and_the_shipped_study(tmp_path):
    rs = load_study("configs/digits_study.yaml")
    assert set(rs.runs) >= {"crown_ibp", "budgets", "pgd_at", "learn2perturb", "anis2", "mng_ac", "smoothing"}
    assert rs.runs["crown_ibp"].train.method == "crown-ibp" and rs.runs["smoothing"].train.method == "gaussian"
    assert str(rs.out) == "runs/digits_study"
    assert load_study("configs/digits_study.yaml", ["out=/x/y"]).out.as_posix() == "/x/y"
    # a study file elsewhere finds model configs beside itself (paths relative to its own folder)
    (tmp_path / "m.yaml").write_text(open("configs/digits_pgd_at.yaml").read())
    (tmp_path / "study.yaml").write_text(yaml.safe_dump({"models": {"a": {"config": "m.yaml"}},
                                                         "suite": "configs/suites/demo.yaml"}))
    assert load_study(tmp_path / "study.yaml").runs["a"].train.method == "pgd_at"


def test_cli_run(done, capsys, tmp_path):
    study, first = done
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(study))
    p = argparse.ArgumentParser()
    add_run_parser(p.add_subparsers())
    args = p.parse_args(["run", str(path), "--quiet"])
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert "crown_ibp: skipped" in out and "pgd_at: skipped" in out
    assert "clean_accuracy" in out and str(first.out / "report" / "report.md") in out


def _run_cli(study_file, **kw) -> "subprocess.Popen":
    """``python -m robustsuite run STUDY --quiet`` in a fresh process (one thread, as the tests run)."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    return subprocess.Popen([sys.executable, "-m", "robustsuite", "run", str(study_file), "--quiet"], env=env,
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def _report(out):
    report = json.loads((out / "report" / "report.json").read_text())
    return report["metrics"], report["records"]


def test_study_killed_mid_training_and_restarted_gives_the_same_report(tmp_path):
    """SIGKILL (no cleanup at all) in the middle of the first model's training, then the same command
    again: it resumes from last.pt and ends with the report of a run that was never interrupted,
    down to the last bit of the weights."""
    study = _study(tmp_path, "killed")
    # 6 epochs, so the kill lands between the first last.pt and the end of the model's training
    study["models"]["crown_ibp"]["set"] = study["models"]["crown_ibp"]["set"] + ["train.epochs=6"]
    whole = {**copy.deepcopy(study), "out": str(tmp_path / "whole")}
    for name, s in (("killed", study), ("whole", whole)):
        (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump(s))
    reference = _run_cli(tmp_path / "whole.yaml")  # the uninterrupted run, alongside

    last = tmp_path / "killed" / "models" / "crown_ibp" / "last.pt"
    victim = _run_cli(tmp_path / "killed.yaml")
    deadline = time.monotonic() + 120
    while not last.exists() and victim.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    victim.send_signal(signal.SIGKILL)
    victim.communicate()
    assert victim.returncode == -signal.SIGKILL, "the study ended before it could be killed"
    from robustsuite.training.checkpoint import load_checkpoint
    assert not load_checkpoint(last)["finished"], "killed too late: the first model had finished"
    assert not (tmp_path / "killed" / "report").exists()

    restarted = _run_cli(tmp_path / "killed.yaml")
    out, err = restarted.communicate(timeout=300)
    assert restarted.returncode == 0, err[-1500:]
    assert "crown_ibp: resumed" in out and "pgd_at: trained" in out
    ref_out, ref_err = reference.communicate(timeout=300)
    assert reference.returncode == 0, ref_err[-1500:]

    assert _report(tmp_path / "killed") == _report(tmp_path / "whole")  # metrics and per-sample records
    for label in ("crown_ibp", "pgd_at"):
        a = load_checkpoint(tmp_path / "killed" / "models" / label / "best.pt")
        b = load_checkpoint(tmp_path / "whole" / "models" / label / "best.pt")
        assert a["epoch"] == b["epoch"]
        # bit-identical: bounded steps run with TorchScript's optimizing executor off (see
        # CertifiedTrainer.train_step), so earlier calls in the process cannot change their numerics
        for k, v in b["model_state"].items():
            assert torch.equal(a["model_state"][k], v), k
