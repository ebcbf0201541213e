"""torch.distributed: 2 CPU processes (gloo, loopback) train and evaluate exactly as one process.

Each run is a subprocess with the variables ``torchrun`` sets (MASTER_ADDR, MASTER_PORT, RANK,
WORLD_SIZE, LOCAL_RANK); the one-process reference runs the same script with WORLD_SIZE=1.
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from robustsuite.training import distributed as D
from robustsuite.training.checkpoint import load_checkpoint

ROOT = Path(__file__).resolve().parents[1]

WORKER = textwrap.dedent('''
    import json, sys, weakref
    import torch
    from robustsuite.training.config import validate
    from robustsuite.training.run import train
    from robustsuite.training import distributed as D

    out, what = sys.argv[1], sys.argv[2]
    data = {"name": "digits", "train_subset": 76, "val_fraction": 0.2}  # 61 train: batches 15,15,15,15,1
    model = {"name": "cnn_small", "options": {"width": 0.5, "linear": 32}}  # no BatchNorm
    if what == "crown":
        tr = {"method": "crown-ibp", "eps": 0.1, "epochs": 3, "batch_size": 15, "beta_final": 0.5,
              "kappa_final": 0.5, "schedule": {"start_epoch": 0, "ramp_epochs": 2},
              "optim": {"lr": 1e-3, "grad_clip": 1.0}}
    elif what == "budgets":  # DDP for the classifier, the generator's gradients averaged after backward
        tr = {"method": "budgets", "eps": 0.1, "rho": 4.0, "epochs": 2, "batch_size": 15,
              "schedule": {"start_epoch": 0, "ramp_epochs": 1}, "optim": {"lr": 1e-3, "grad_clip": 1.0},
              "generator": {"width": 8, "depth": 1, "warmup_epochs": 0, "optim": {"lr": 3e-3}}}
    else:  # a trainer without its own DDP module: gradients averaged after backward
        tr = {"method": "pgd_at", "epochs": 2, "batch_size": 15, "val_subset": 8, "val_attack_steps": 2,
              "attack": {"eps": 0.1, "steps": 2, "random_start": False},
              "optim": {"name": "sgd", "lr": 0.05, "momentum": 0.9, "grad_clip": 10.0}}
    cfg = validate({"name": "d", "seed": 1, "device": "cpu", "data": data, "model": model, "train": tr})
    if what == "crown":  # interrupted after one epoch and resumed
        train(cfg, out + "/run", device="cpu", quiet=True, stop_after=1)
    res = train(cfg, out + "/run", device="cpu", quiet=True)
    result = {"history": res.history}
    if what == "crown":
        from robustsuite.data import load
        from robustsuite.eval import evaluate
        from robustsuite.training import load_checkpoint, model_from_checkpoint
        net = model_from_checkpoint(load_checkpoint(out + "/run/last.pt"))
        suite = {"name": "t", "batch_size": 7, "subset": {"first": 30},
                 "certify": [{"method": "ibp", "norm": "linf", "eps": [0.05]},
                             {"method": "crown-ibp", "norm": "linf", "eps": [0.05]}],
                 "attacks": [{"name": "pgd", "norm": "linf", "eps": [0.1], "steps": 3, "random_start": False},
                             {"name": "fgsm", "norm": "linf", "eps": [0.1]}]}
        report = evaluate({"a": net}, load("digits", "test"), suite, device="cpu", seed=0)
        result["records"] = report.records
        result["metrics"] = json.loads(json.dumps(report.metrics, default=str))
    if D.is_main():
        json.dump(result, open(out + "/result.json", "w"))
    if D.is_distributed():  # the group is gone for good (see test_cleanup_destroys_the_group_for_good)
        group = weakref.ref(torch.distributed.group.WORLD)
        assert D.cleanup() and group() is None, "the process group outlives cleanup (its threads may abort the exit)"
''')


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(script: Path, out: Path, what: str, world: int) -> list[subprocess.Popen]:
    port = _free_port()
    procs = []
    for r in range(world):
        env = dict(os.environ, MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(r), WORLD_SIZE=str(world),
                   LOCAL_RANK=str(r), LOCAL_WORLD_SIZE=str(world), OMP_NUM_THREADS="1",
                   ROBUSTSUITE_DIST_BACKEND="gloo", CUDA_VISIBLE_DEVICES="", PYTHONPATH=str(ROOT))
        procs.append(subprocess.Popen([sys.executable, str(script), str(out), what], env=env, cwd=str(ROOT),
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    return procs


def _wait(procs: list[subprocess.Popen], timeout: float = 240) -> list[str]:
    """Each worker's output, once every one has exited with status 0 (on a failure the others are
    killed: they would wait for the failed one until the store's timeout)."""
    texts = []
    try:
        for p in procs:
            try:
                text, _ = p.communicate(timeout=timeout)
            except subprocess.TimeoutExpired:
                pytest.fail("distributed worker timed out")
            assert p.returncode == 0, text[-4000:]
            texts.append(text)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.communicate()
    return texts


def _state(path: Path) -> dict:
    ckpt = load_checkpoint(path)
    gen = {f"generator.{k}": v for k, v in ckpt.get("generator_state", {}).items()}
    return {**ckpt["model_state"], **gen}


@pytest.mark.parametrize("what", ["crown", "budgets", "pgd_at"])
def test_two_gloo_processes_train_and_evaluate_as_one(tmp_path, what):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    one, two = tmp_path / "one", tmp_path / "two"
    one.mkdir(), two.mkdir()
    procs = _launch(script, one, what, 1) + _launch(script, two, what, 2)
    _wait(procs)

    # training: the same weights after every step (3 epochs with an interrupt/resume for CROWN-IBP)
    a, b = _state(one / "run" / "last.pt"), _state(two / "run" / "last.pt")
    assert a.keys() == b.keys()
    for k in a:
        if k == "generator.head.bias":  # no effect on the budgets (the projection removes the mean), so
            continue                    # its gradient is rounding noise that Adam scales up; see below
        assert torch.allclose(a[k], b[k], atol=1e-6, rtol=0), (k, (a[k] - b[k]).abs().max())
    ra = json.loads((one / "result.json").read_text())
    rb = json.loads((two / "result.json").read_text())
    assert len(ra["history"]) == len(rb["history"])
    for ha, hb in zip(ra["history"], rb["history"]):
        for k, v in ha.items():
            if k != "time_s" and isinstance(v, float):
                assert hb[k] == pytest.approx(v, rel=1e-5, abs=1e-6), k
    # only rank 0 wrote files: one set of checkpoints, no temporary leftovers
    assert sorted(p.name for p in (two / "run").iterdir()) == sorted(p.name for p in (one / "run").iterdir())

    if what == "budgets":  # the learned boxes are the same
        from robustsuite.budgets.trainer import load_budget_model
        x = torch.rand(16, 1, 8, 8, generator=torch.Generator().manual_seed(0))
        ca, cb = (load_checkpoint(d / "run" / "last.pt") for d in (one, two))
        with torch.no_grad():
            ba, bb = (load_budget_model(c).budgets(x, 0.1, 4.0) for c in (ca, cb))
        assert torch.allclose(ba, bb, atol=1e-6, rtol=0)

    if what == "crown":
        # evaluation sharded by batch and gathered: records equal, in the same order
        assert ra["records"].keys() == rb["records"].keys()
        for k in ra["records"]:
            if k.startswith("dist|"):
                assert rb["records"][k] == pytest.approx(ra["records"][k], abs=1e-6), k
            else:
                assert rb["records"][k] == ra["records"][k], k
        assert len(ra["records"]["index"]) == 30
        assert rb["metrics"] == ra["metrics"]


def test_helpers_are_no_ops_with_one_process():
    assert not D.is_distributed() and D.world() == 1 and D.rank() == 0 and D.is_main()
    assert D.all_gather_objects({"a": 1}) == [{"a": 1}] and D.gather_objects(3) == [3]
    assert D.broadcast_object("x") == "x"
    t = torch.ones(2)
    assert D.all_reduce_sum(t) is t
    D.barrier()
    D.all_reduce_grads([torch.nn.Parameter(torch.ones(1))])


def test_sharded_batch_sampler_splits_every_global_batch():
    batches = [[5, 1, 7, 3, 2], [4, 0, 6], [8]]
    parts = [list(D.ShardedBatchSampler(batches, r, 2)) for r in range(2)]
    assert parts[0] == [[5, 7, 2], [4, 6], [8]] and parts[1] == [[1, 3], [0], [8]]
    s = D.ShardedBatchSampler(batches, 1, 2)
    list(s)
    assert s.sizes == [(2, 5), (1, 3), (0, 1)]  # the padding sample of the last batch has weight 0


def test_rank_seeds_differ_per_rank_and_epoch_and_repeat():
    seeds = {D.rank_seed(0, e, r) for e in range(50) for r in range(8)}
    assert len(seeds) == 400                                  # every (epoch, rank) draws its own stream
    assert D.rank_seed(3, 7, 1) == D.rank_seed(3, 7, 1)       # a resumed run draws the same
    assert D.rank_seed(0, 0, 1) != D.rank_seed(1, 0, 1)


# `python -m robustsuite` with a check at exit (atexit runs before the interpreter shuts down): any
# thread of a process group still alive then is named (Linux: /proc lists the threads by name)
AT_EXIT_THREADS = textwrap.dedent('''
    import atexit, os
    def _gloo_threads_at_exit():
        tasks = "/proc/self/task"
        names = [open(f"{tasks}/{t}/comm").read().strip() for t in os.listdir(tasks)] if os.path.isdir(tasks) else []
        if [n for n in names if "gloo" in n]:
            print("process group threads at exit:", names, flush=True)
    atexit.register(_gloo_threads_at_exit)
''')
MAIN = "import runpy; runpy.run_module('robustsuite', run_name='__main__', alter_sys=True)\n"


def test_run_under_two_gloo_processes_reports_once_as_one_process(tmp_path):
    import yaml

    study = {"name": "ddp", "seed": 0, "device": "cpu",
             "models": {"crown_ibp": {"config": str(ROOT / "configs/digits_crown_ibp.yaml"),
                                      "set": ["data.train_subset=64", "data.test_subset=24", "data.val_fraction=0.25",
                                              "train.epochs=2", "train.schedule.start_epoch=1",
                                              "train.schedule.ramp_epochs=1", "train.optim.milestones=[]",
                                              "model.options.width=1", "model.options.linear=16"]}},
             "suite": {"name": "t", "certify": [{"method": "ibp", "eps": [0.05]}],
                       "attacks": [{"name": "pgd", "eps": [0.05], "steps": 2, "random_start": False}],
                       "subset": {"first": 16}, "batch_size": 5}}
    outs = {}
    for world in (1, 2):
        study["out"] = str(tmp_path / f"w{world}")
        path = tmp_path / f"study{world}.yaml"
        path.write_text(yaml.safe_dump(study))
        port = _free_port()
        procs = []
        for r in range(world):
            env = dict(os.environ, MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(r),
                       WORLD_SIZE=str(world), LOCAL_RANK=str(r), LOCAL_WORLD_SIZE=str(world), OMP_NUM_THREADS="1",
                       ROBUSTSUITE_DIST_BACKEND="gloo", CUDA_VISIBLE_DEVICES="", PYTHONPATH=str(ROOT))
            procs.append(subprocess.Popen([sys.executable, "-c", AT_EXIT_THREADS + MAIN, "run", str(path), "--quiet"],
                                          env=env, cwd=str(ROOT), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                          text=True))
        texts = _wait(procs)
        assert sum(t.count("wrote ") for t in texts) == 1         # only rank 0 prints the table and path
        # the command destroyed the group for good before the interpreter shuts down: no thread of it is
        # left (see test_cleanup_destroys_the_group_for_good)
        assert not any("still referenced" in t or "threads at exit" in t for t in texts), texts
        outs[world] = json.loads((tmp_path / f"w{world}" / "report" / "report.json").read_text())
    assert outs[2]["metrics"] == outs[1]["metrics"]


SYNC_WORKER = textwrap.dedent('''
    import sys, weakref
    import torch
    from robustsuite.training.config import validate
    from robustsuite.training import distributed as D
    from robustsuite.training.registry import trainer_class
    from robustsuite.training.run import build_datasets, build_model

    out, what = sys.argv[1], sys.argv[2]
    data = {"name": "digits", "train_subset": 61, "val_fraction": 0.0}   # batches 15, 15, 15, 15, 1
    model = {"name": "resnet_v1", "options": {"depth": 8, "width": 0.25}}
    common = {"epochs": 2, "batch_size": 15, "val_subset": 8, "val_attack_steps": 1}
    if what == "learn2perturb":  # alternating theta / W updates, its own backward
        tr = {"method": "learn2perturb", "noise_start": 0, "adv_start": 1, "gamma": 1e-3,
              "attack": {"eps": 0.1, "steps": 2}, "optim": {"name": "sgd", "lr": 0.05}, **common}
    elif what == "trades":  # two forwards per step inside DDP's forward
        tr = {"method": "trades", "attack": {"eps": 0.1, "steps": 2}, "optim": {"name": "sgd", "lr": 0.05}, **common}
    elif what == "gaussian":
        tr = {"method": "gaussian", "sigma": 0.25, "epochs": 2, "batch_size": 15, "optim": {"lr": 1e-3}}
    elif what == "anis2":  # a teacher trained first (rank 0 writes it), then the student with EMA noise
        tr = {"method": "anis2", "teacher_epochs": 1, "teacher_optim": {"name": "sgd", "lr": 0.05, "milestones": []},
              "gamma_ramp_epochs": 1, "gamma_step_every": 1, "attack": {"eps": 0.1, "steps": 2},
              "optim": {"name": "sgd", "lr": 0.05}, **common}
    else:  # MNG-AC: the meta step updates the noise generator outside the loss backward
        tr = {"method": "mng_ac", "attacks": [{"norm": "linf", "eps": 0.1, "steps": 2},
                                               {"norm": "l2", "eps": 0.5, "steps": 2}],
              "optim": {"name": "sgd"}, **common}
    cfg = validate({"name": "s", "seed": 3, "device": "cpu", "data": data, "model": model, "train": tr})
    D.init_from_env()
    torch.manual_seed(cfg.seed)
    train_set, val_set, _ = build_datasets(cfg)
    net = build_model(cfg, (1, 8, 8), 10)
    trainer = trainer_class(tr["method"])(net, train_set, val_set, cfg, out + "/run", torch.device("cpu"), quiet=True)
    trainer.fit()
    # parameters only: buffers (BatchNorm statistics, ANIS2's EMA noise scales) are per rank by design
    state = {f"model.{k}": v.detach() for k, v in trainer.model.named_parameters()}
    if hasattr(trainer, "generator"):
        state.update({f"generator.{k}": v.detach() for k, v in trainer.generator.named_parameters()})
    torch.save(state, f"{out}/rank{D.rank()}.pt")
    group = weakref.ref(torch.distributed.group.WORLD)
    assert D.cleanup() and group() is None, "the process group outlives cleanup (its threads may abort the exit)"
''')


@pytest.mark.parametrize("what", ["learn2perturb", "mng_ac", "trades", "gaussian", "anis2"])
def test_every_stochastic_trainer_keeps_every_rank_in_step(tmp_path, what):
    # Random draws differ per rank (noise, attack starts), so these are not bit-equal to one process;
    # what must hold is that every rank applies the same averaged update: identical weights everywhere.
    script = tmp_path / "worker.py"
    script.write_text(SYNC_WORKER)
    _wait(_launch(script, tmp_path, what, 2))
    a, b = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    assert a and a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k



TEARDOWN_WORKER = textwrap.dedent('''
    import gc, os, sys, weakref
    import torch
    from robustsuite.training import distributed as D

    def gloo_threads():
        tasks = "/proc/self/task"
        names = [open(f"{tasks}/{t}/comm").read().strip() for t in os.listdir(tasks)] if os.path.isdir(tasks) else []
        return [n for n in names if "gloo" in n]

    def join(port):  # a group of its own per phase: a new rendezvous on a fresh port
        os.environ["MASTER_PORT"] = port
        D.init_from_env()
        return weakref.ref(torch.distributed.group.WORLD)

    out, ports = sys.argv[1], sys.argv[2].split(",")
    from torch.nn.parallel import DistributedDataParallel as DDP
    # 1. released wrapper: the group is gone for good although DDP imported torch.distributed.nn (which
    # takes group.WORLD as a default argument) after the group was made
    group = join(ports[0])
    net = DDP(torch.nn.Linear(4, 2))
    net(torch.randn(3, 4)).sum().backward()
    del net
    assert D.cleanup() and group() is None
    assert not gloo_threads(), gloo_threads()  # the group's worker threads are joined
    # 2. a live wrapper holds the group: cleanup says so (a warning) instead of claiming success
    group = join(ports[1])
    net = DDP(torch.nn.Linear(4, 2))
    assert not D.cleanup() and group() is not None
    del net
    gc.collect()
    assert group() is None and not gloo_threads()
    # 3. rank 1 ends without calling cleanup: the group goes at exit all the same (the check of
    # AT_EXIT_THREADS runs after that), without waiting for rank 0, whose barrier fails, is logged, and
    # its group destroyed all the same
    group = join(ports[2])
    D.barrier()
    if D.rank() == 1:
        sys.exit(0)
    assert D.cleanup() and group() is None
''')


def test_cleanup_destroys_the_group_for_good(tmp_path):
    """A group still alive when the interpreter shuts down aborts the process now and then after a clean
    run ("terminate called without an active exception": a gloo worker thread that releases a tensor
    needs the GIL during shutdown). cleanup destroys it for good, says when a live wrapper still holds
    it, destroys it when another rank is already gone, and runs at exit when a script did not call it."""
    script = tmp_path / "worker.py"
    script.write_text(AT_EXIT_THREADS + TEARDOWN_WORKER)
    ports = ",".join(str(_free_port()) for _ in range(3))
    texts = _wait(_launch(script, tmp_path, ports, 2), timeout=120)
    assert not any("threads at exit" in t for t in texts), texts
    assert all(t.count("still referenced after destroy_process_group") == 1 for t in texts), texts  # phase 2 only
    assert "the barrier before destroying the process group failed" in texts[0], texts
