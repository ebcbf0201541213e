"""Resume is exact for every trainer: stopped after k < N - 1 epochs and resumed by a fresh trainer, a run
ends with the same ``last.pt`` (weights, optimizer, extra and RNG state) and history as an uninterrupted one."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from robustsuite.training.config import validate
from robustsuite.training import load_checkpoint
from robustsuite.training.run import train

EPOCHS, STOP = 4, 2  # STOP < EPOCHS - 1: the resumed run validates and checkpoints more than once

ATK = {"eps": 0.1, "steps": 1}
RESNET = {"name": "resnet_v1", "options": {"depth": 8, "width": 0.25}}
CNN = {"name": "cnn_small", "options": {"width": 0.25, "linear": 16}}
SCHED = {"start_epoch": 1, "ramp_epochs": 2}
# method -> (model, train section): tiny, but every trainer's random parts are switched on
METHODS = {
    "crown-ibp": (CNN, {"eps": 0.1, "beta_final": 0.5, "schedule": SCHED}),
    "budgets": (CNN, {"eps": 0.1, "rho": 4.0, "schedule": SCHED,
                      "generator": {"width": 4, "depth": 1, "warmup_epochs": 1, "optim": {"lr": 1e-2}}}),
    "pgd_at": (CNN, {"attack": ATK, "clean_weight": 0.2, "val_attack_steps": 1}),
    "learn2perturb": (RESNET, {"attack": ATK, "noise_start": 1, "adv_start": 1, "val_attack_steps": 1}),
    "anis2": (RESNET, {"attack": ATK, "teacher_epochs": 1, "gamma_init": 0.05, "gamma_ramp_epochs": 2,
                       "gamma_step_every": 1, "val_attack_steps": 1}),
    "mng_ac": (CNN, {"attacks": [{"norm": "linf", **ATK}, {"norm": "l2", "eps": 0.5, "steps": 1}],
                     "generator": {"hidden": 4}, "val_attack_steps": 1}),
    "pni": (RESNET, {"attack": ATK, "val_attack_steps": 1}),
    "trades": (CNN, {"attack": ATK, "val_attack_steps": 1}),
    "gaussian": (CNN, {"sigma": 0.25, "val_noise_draws": 2}),
}


def _cfg(method: str):
    model, t = METHODS[method]
    return validate({"name": "exact", "seed": 5, "device": "cpu",
                     "data": {"name": "digits", "train_subset": 40, "val_fraction": 0.2},
                     "model": model,
                     "train": {"method": method, "epochs": EPOCHS, "batch_size": 16, "checkpoint_every": 1,
                               "optim": {"name": "sgd", "lr": 0.05, "momentum": 0.9}, **t}})


def _same(a, b, where: str) -> None:
    """Recursive bit-identity of checkpoint entries (tensors with torch.equal, wall-clock times skipped)."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), f"{where} differs"
    elif isinstance(a, dict):
        keys = {k for k in a if k != "time_s"}
        assert keys == {k for k in b if k != "time_s"}, f"{where}: keys {sorted(map(str, keys))} vs {sorted(map(str, b))}"
        for k in keys:
            _same(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert type(a) is type(b) and len(a) == len(b), f"{where}: length {len(a)} vs {len(b)}"
        for i, (u, v) in enumerate(zip(a, b)):
            _same(u, v, f"{where}[{i}]")
    elif isinstance(a, np.ndarray):  # checkpoints of older versions held numpy's RNG state as an array
        assert np.array_equal(a, b), f"{where} differs"
    else:
        assert a == b, f"{where}: {a!r} vs {b!r}"


@pytest.mark.parametrize("method", list(METHODS))
def test_stopped_and_resumed_run_is_bit_identical_to_an_uninterrupted_one(method, tmp_path, one_thread_seeded):
    cfg = _cfg(method)
    full = train(cfg, tmp_path / "full", quiet=True)
    train(cfg, tmp_path / "cut", quiet=True, stop_after=STOP)
    assert load_checkpoint(tmp_path / "cut" / "last.pt")["epoch"] == STOP
    resumed = train(cfg, tmp_path / "cut", quiet=True)  # a fresh trainer, as a new process builds
    a, b = load_checkpoint(full.last), load_checkpoint(resumed.last)
    assert a["epoch"] == b["epoch"] == EPOCHS and a["finished"] and b["finished"]
    if method == "anis2":  # the teacher each run trained first, in its own folder
        assert a.pop("teacher_checkpoint") == str(tmp_path / "full" / "teacher" / "last.pt")
        assert b.pop("teacher_checkpoint") == str(tmp_path / "cut" / "teacher" / "last.pt")
    _same(a, b, "last.pt")  # weights, optimizer, scheduler, RNG, extra state, history, best score
    _same(full.history, resumed.history, "history")
    best_a, best_b = load_checkpoint(full.best), load_checkpoint(resumed.best)
    best_a.pop("teacher_checkpoint", None), best_b.pop("teacher_checkpoint", None)
    _same(best_a, best_b, "best.pt")


# ------------------------------------------------------------------------- a resume continues the same run or refuses
def _snapshot(folder) -> dict:
    """Every file of a run folder -> (bytes, mtime): what a refused resume must leave as it was. The
    folder's lock file is left out: taking the lock (and writing the holder's PID) is what makes the
    check safe against a second process, and it holds no run data."""
    from robustsuite.files import LOCK_NAME

    return {p.relative_to(folder).as_posix(): (p.read_bytes(), p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file() and p.name != LOCK_NAME}


@pytest.fixture
def partial(tmp_path):
    """A crown-ibp run stopped after 1 of 3 epochs: (config, folder)."""
    cfg = _changed(_cfg("crown-ibp"), train__epochs=3)
    train(cfg, tmp_path / "run", quiet=True, stop_after=1)
    return cfg, tmp_path / "run"


def _changed(cfg, **sections):
    raw = cfg.resolved()
    for dotted, value in sections.items():
        *parents, leaf = dotted.split("__")
        node = raw
        for p in parents:
            node = node[p]
        node[leaf] = value
    return validate(raw)


@pytest.mark.parametrize("change, keys", [
    ({"model__options": {"width": 0.5, "linear": 16}}, ["model.options.width: 0.25 -> 0.5"]),
    ({"model__name": "mlp", "model__options": {"hidden": [16]}}, ["model.name: 'cnn_small' -> 'mlp'", "model.options"]),
    ({"train__eps": 0.2}, ["train.eps: 0.1 -> 0.2"]),
    ({"train__epochs": 1}, ["train.epochs: 3 -> 1"]),  # fewer epochs is another run
    ({"seed": 6}, ["seed: 5 -> 6"]),
])
def test_resume_with_a_different_config_is_refused_and_writes_nothing(partial, change, keys):
    from robustsuite.errors import ConfigError

    cfg, out = partial
    before = _snapshot(out)
    with pytest.raises(ConfigError) as err:
        train(_changed(cfg, **change), out, quiet=True)
    msg = str(err.value)
    assert all(k in msg for k in keys), msg
    assert str(out / "last.pt") in msg and "--out" in msg and "--no-resume" in msg and "\n" not in msg
    assert _snapshot(out) == before  # config.yaml, last.pt, best.pt: same bytes, same mtimes


def test_resume_may_train_longer_and_change_where_it_runs(partial):
    cfg, out = partial
    res = train(_changed(cfg, train__epochs=4, device="auto", train__checkpoint_every=2), out, quiet=True)
    assert len(res.history) == 4 and load_checkpoint(res.last)["epoch"] == 4
    assert "epochs: 4" in (out / "config.yaml").read_text()
    assert load_checkpoint(res.last)["config"]["train"]["epochs"] == 4


def test_cli_resume_with_a_different_config_exits_2_with_one_paragraph(partial, capsys, tmp_path):
    import yaml

    from robustsuite.cli import main

    cfg, out = partial
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(cfg.resolved()))
    before = _snapshot(out)
    assert main(["train", str(tmp_path / "run.yaml"), "--out", str(out), "--set", "train.eps=0.2", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "train.eps: 0.1 -> 0.2" in err and "--no-resume" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1 and _snapshot(out) == before
    assert main(["train", str(tmp_path / "run.yaml"), "--out", str(out), "--set", "train.eps=0.2", "--quiet",
                 "--no-resume"]) == 0  # the way out: start over
    assert load_checkpoint(out / "last.pt")["config"]["train"]["eps"] == 0.2


def test_anis2_refuses_before_its_teacher_is_touched_and_starts_both_over_without_resume(tmp_path):
    from robustsuite.errors import ConfigError

    cfg = _changed(_cfg("anis2"), train__epochs=2)
    out = tmp_path / "run"
    train(cfg, out, quiet=True, stop_after=1)  # teacher trained, student 1 of 2 epochs
    before = _snapshot(out)
    assert "teacher/last.pt" in before
    for change in ({"train__gamma_max": 0.3}, {"train__teacher_epochs": 2}):
        with pytest.raises(ConfigError, match=list(change)[0].replace("__", ".")):
            train(_changed(cfg, **change), out, quiet=True)
        assert _snapshot(out) == before  # nor the teacher's folder
    other = _changed(cfg, train__attack={"eps": 0.2, "steps": 1})
    train(other, out, quiet=True, resume=False)
    assert load_checkpoint(out / "teacher" / "last.pt")["config"]["train"]["attack"]["eps"] == 0.2
