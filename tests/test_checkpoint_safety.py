"""A checkpoint is data: no entry point runs code carried by a checkpoint or a data file, and damaged or
incomplete checkpoints give one clear error naming the file, what is wrong and the fix."""
from __future__ import annotations

import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from robustsuite.budgets import load_budget_model
from robustsuite.cli import main
from robustsuite.training.config import validate
from robustsuite.errors import CheckpointError, DataNotFoundError
from robustsuite.training import load_checkpoint, model_from_checkpoint
from robustsuite.training.run import train

ROOT = Path(__file__).resolve().parents[1]
CNN = {"name": "cnn_small", "options": {"width": 0.25, "linear": 16}}
UNSAFE = "not a safe robustsuite checkpoint"


class Payload:
    """Unpickling this runs ``os.system("touch <sentinel>")``: what a malicious checkpoint would carry."""

    def __init__(self, sentinel: Path):
        self.sentinel = sentinel

    def __reduce__(self):
        return os.system, (f"touch {self.sentinel}",)


def _cfg(method: str = "crown-ibp", **train_over):
    t = {"method": method, "epochs": 2, "batch_size": 16, "optim": {"lr": 1e-3}, **train_over}
    if method in ("crown-ibp", "budgets"):
        t = {"eps": 0.1, "schedule": {"start_epoch": 1, "ramp_epochs": 1}, **t}
    return validate({"name": "safe", "seed": 0, "device": "cpu",
                     "data": {"name": "digits", "train_subset": 32, "val_fraction": 0.25, "test_subset": 16},
                     "model": CNN, "train": t})


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny finished budgets run (its checkpoints are a budget, a plain and a resumable one at once)."""
    out = tmp_path_factory.mktemp("safe") / "run"
    train(_cfg("budgets", rho=2.0, generator={"width": 4, "depth": 1}), out, quiet=True)
    return out


def _poison(src: Path, dst: Path, sentinel: Path, key: str = "rng") -> Path:
    """A copy of a real checkpoint with a payload in one entry: it looks valid in every other way."""
    ckpt = load_checkpoint(src)
    ckpt[key] = Payload(sentinel)
    dst.parent.mkdir(parents=True, exist_ok=True)
    torch.save(ckpt, dst)
    return dst


def test_payload_never_runs_through_any_api_entry_point(trained, tmp_path):
    sentinel = tmp_path / "PWNED"
    bad = _poison(trained / "last.pt", tmp_path / "bad.pt", sentinel)
    calls = {
        "load_checkpoint": lambda: load_checkpoint(bad),
        "model_from_checkpoint": lambda: model_from_checkpoint(bad),
        "load_budget_model": lambda: load_budget_model(bad),
        "anis2 teacher_checkpoint": lambda: train(
            validate({**_cfg().resolved(), "model": {"name": "resnet_v1", "options": {"depth": 8, "width": 0.25}},
                      "train": {"method": "anis2", "epochs": 1, "attack": {"eps": 0.1, "steps": 1},
                                "teacher_checkpoint": str(bad)}}), tmp_path / "anis2", quiet=True),
    }
    # resume of a training run from a poisoned last.pt: the run's own folder, its own config
    run_dir = tmp_path / "resume"
    _poison(trained / "last.pt", run_dir / "last.pt", sentinel, key="optimizer")
    before = (run_dir / "last.pt").read_bytes()
    calls["train resume"] = lambda: train(_budgets_cfg(trained), run_dir, quiet=True)
    for name, call in calls.items():
        with pytest.raises(CheckpointError, match=UNSAFE) as err:
            call()
        assert "robustsuite train" in str(err.value), name  # the fix
        assert not sentinel.exists(), f"{name} ran the payload"
    assert (run_dir / "last.pt").read_bytes() == before  # untouched
    assert not (run_dir / "config.yaml").exists()  # a refused resume writes nothing
    # the payload is real: an unrestricted load runs it (what every entry point did before)
    torch.load(bad, weights_only=False)
    assert sentinel.exists()


def _budgets_cfg(trained: Path):
    """The config the trained fixture ran (so only the poisoned entry stops the resume)."""
    return validate(load_checkpoint(trained / "best.pt")["config"])


def test_study_resume_from_a_poisoned_last_pt_refuses_without_running_it(tmp_path, capsys):
    import yaml

    from robustsuite.study import run

    sentinel = tmp_path / "PWNED"
    study = {"name": "s", "seed": 0, "device": "cpu", "out": str(tmp_path / "study"),
             "models": {"m": {"config": str(ROOT / "configs/digits_pgd_at.yaml"),
                              "set": ["data.train_subset=32", "train.epochs=1", "train.val_subset=8",
                                      "train.attack.steps=1", "train.val_attack_steps=0"]}},
             "suite": {"name": "t", "attacks": [{"name": "pgd", "eps": [0.05], "steps": 1}]}}
    run(study, quiet=True, stop_after=1)
    last = tmp_path / "study" / "models" / "m" / "last.pt"
    _poison(last, last, sentinel, key="history")
    with pytest.raises(CheckpointError, match=UNSAFE):
        run(study, quiet=True)
    (tmp_path / "study.yaml").write_text(yaml.safe_dump(study))
    assert main(["run", str(tmp_path / "study.yaml"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert UNSAFE in err and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert not sentinel.exists()


def test_payload_never_runs_through_the_cli_and_exits_2_with_one_paragraph(trained, tmp_path, capsys):
    sentinel = tmp_path / "PWNED"
    bad = str(_poison(trained / "best.pt", tmp_path / "bad.pt", sentinel, key="metrics"))
    run_dir = tmp_path / "resume"
    _poison(trained / "last.pt", run_dir / "last.pt", sentinel)
    (tmp_path / "cfg.yaml").write_text((trained / "config.yaml").read_text())
    commands = {
        "verify": ["verify", bad, "--eps", "0.05", "--method", "ibp", "--pgd-steps", "0", "--subset", "4",
                   "--device", "cpu"],
        "attack": ["attack", bad, "--eps", "0.05", "--steps", "1", "--subset", "4", "--device", "cpu"],
        "eval": ["eval", bad, "--suite", str(ROOT / "configs/suites/demo.yaml"), "--out", str(tmp_path / "ev")],
        "train": ["train", str(tmp_path / "cfg.yaml"), "--out", str(run_dir), "--quiet"],
    }
    for name, argv in commands.items():
        assert main(argv) == 2, name
        err = capsys.readouterr().err
        assert UNSAFE in err and "robustsuite train" in err and "Traceback" not in err, (name, err)
        assert len(err.strip().splitlines()) == 1, (name, err)
        assert not sentinel.exists(), f"robustsuite {name} ran the payload"
    # one real process: exit status 2, one paragraph, no traceback
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    p = subprocess.run([sys.executable, "-m", "robustsuite", "verify", bad, "--device", "cpu"], env=env,
                       capture_output=True, text=True, timeout=240, cwd=ROOT)
    assert p.returncode == 2 and UNSAFE in p.stderr and "Traceback" not in p.stderr, p.stderr[-1500:]
    assert not sentinel.exists()


def test_cifar_file_with_a_payload_is_refused_without_running_it(tmp_path):
    from robustsuite.data.formats import read

    sentinel = tmp_path / "PWNED"
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    rows = np.zeros((2, 3072), dtype=np.uint8)
    good = {"data": rows, "labels": [1, 2]}
    for name in [f"data_batch_{i}" for i in range(1, 5)]:
        (folder / name).write_bytes(pickle.dumps(good))
    (folder / "data_batch_5").write_bytes(pickle.dumps({**good, "batch_label": Payload(sentinel)}))
    with pytest.raises(DataNotFoundError, match="refused to load global"):
        read("cifar10", "train", tmp_path)
    assert not sentinel.exists()
    (folder / "data_batch_5").write_bytes(pickle.dumps(good))  # the real files' content loads
    images, labels = read("cifar10", "train", tmp_path)
    assert images.shape == (10, 3, 32, 32) and labels.tolist() == [1, 2] * 5


def test_checkpoints_hold_only_tensors_and_plain_values(trained):
    for name in ("best.pt", "last.pt"):
        assert torch.serialization.get_unsafe_globals_in_checkpoint(trained / name) == [], name
    assert torch.load(trained / "last.pt", weights_only=True)["version"] == 2


def test_version_1_last_pt_with_numpy_rng_state_still_loads_and_resumes(tmp_path):
    """Before version 2, last.pt held NumPy's RNG state as an array and Python's as a tuple: plain data
    that the safe loader still reads, and a resume restores it."""
    cfg = _cfg(epochs=2)
    out = tmp_path / "run"
    train(cfg, out, quiet=True, stop_after=1)
    ckpt = load_checkpoint(out / "last.pt")
    np.random.seed(7)
    ckpt["rng"]["numpy"] = np.random.get_state()
    ckpt["rng"]["python"] = __import__("random").getstate()
    ckpt["version"] = 1
    torch.save(ckpt, out / "last.pt")
    assert torch.serialization.get_unsafe_globals_in_checkpoint(out / "last.pt")  # numpy globals inside
    assert isinstance(model_from_checkpoint(out / "last.pt"), torch.nn.Module)
    res = train(cfg, out, quiet=True)
    assert len(res.history) == 2 and load_checkpoint(res.last)["version"] == 2


def test_last_pt_without_resume_entries_is_a_clear_error_and_stays_loadable(trained, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    best = load_checkpoint(trained / "best.pt")  # no optimizer, scheduler, RNG, history
    torch.save(best, out / "last.pt")
    before = (out / "last.pt").read_bytes()
    with pytest.raises(CheckpointError) as err:
        train(_budgets_cfg(trained), out, quiet=True)
    msg = str(err.value)
    assert str(out / "last.pt") in msg and "optimizer" in msg and "--no-resume" in msg and "--out" in msg
    assert (out / "last.pt").read_bytes() == before and not (out / "config.yaml").exists()
    assert isinstance(model_from_checkpoint(out / "last.pt"), torch.nn.Module)  # still a model checkpoint
    # a trainer's own extra state is a resume entry too (the budget generator's optimizer here)
    last = load_checkpoint(trained / "last.pt")
    del last["extra"]["gen_optimizer"]
    torch.save(last, out / "last.pt")
    with pytest.raises(CheckpointError, match="extra.gen_optimizer"):
        train(_budgets_cfg(trained), out, quiet=True)


def test_weight_mismatch_error_is_one_line_naming_the_first_keys_and_shapes(trained, tmp_path):
    ckpt = load_checkpoint(trained / "best.pt")
    ckpt["model_state"]["fc1.weight"] = ckpt["model_state"]["fc1.weight"][:, :3]
    del ckpt["model_state"]["fc_out.bias"]
    ckpt["model_state"]["extra.weight"] = torch.zeros(1)
    with pytest.raises(CheckpointError) as err:
        model_from_checkpoint(ckpt)
    msg = str(err.value)
    assert "\n" not in msg and "missing fc_out.bias" in msg and "unexpected extra.weight" in msg
    assert "fc1.weight: (16, 3) vs (16, 32)" in msg


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_damaged_or_foreign_files_give_one_clear_error(trained, tmp_path):
    sentinel = tmp_path / "PWNED"
    p = tmp_path / "x.pt"
    whole = (trained / "best.pt").read_bytes()
    for content, needle in [(b"", "cannot be read"), (b"name: x\n", "cannot be read"),
                            (whole[: len(whole) // 2], "cannot be read"),
                            (pickle.dumps(Payload(sentinel), protocol=2), UNSAFE),  # a bare pickle naming os.system
                            (pickle.dumps(Payload(sentinel)), "Unsupported operand"),  # protocol 4: refused earlier
                            (None, "not a robustsuite checkpoint")]:
        if content is None:
            torch.save({"weights": torch.zeros(2)}, p)
        else:
            p.write_bytes(content)
        with pytest.raises(CheckpointError, match=needle) as err:
            load_checkpoint(p)
        assert "\n" not in str(err.value) and str(p) in str(err.value) and "weights_only" not in str(err.value)
    assert not sentinel.exists()


def test_model_state_that_is_not_a_mapping_is_refused(trained, tmp_path):
    ckpt = load_checkpoint(trained / "best.pt")
    ckpt["model_state"] = [1, 2]
    torch.save(ckpt, tmp_path / "x.pt")
    with pytest.raises(CheckpointError, match="not a mapping"):
        load_checkpoint(tmp_path / "x.pt")
