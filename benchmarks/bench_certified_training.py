"""Benchmark: one CROWN-IBP training step of our trainer vs a bare auto_LiRPA loop.

Same model, batch, radius and mixing weight; the bare loop makes the same auto_LiRPA calls (clean
pass, CROWN-IBP margins with the IBP bound reused, robust CE, Adam with gradient clipping) with no
trainer around them. A second bare variant follows auto_LiRPA's example scripts (a separate IBP
call, then CROWN-IBP), for orientation. Single steps are interleaved (ours, bare, example style) and the median ratio is reported;
with one thread the process CPU time is the steady measure on a shared machine.

    .venv/bin/python -m benchmarks.bench_certified_training [--quick]
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from robustsuite.certify.bounds import spec_matrix
from robustsuite.certify.lirpa import BoundedModule, BoundedTensor, PerturbationLpNorm
from robustsuite.certify.trainer import CertifiedTrainer, robust_ce_from_margins
from robustsuite.training.config import validate
from robustsuite.data import as_tensors, load
from robustsuite.models import build

RESULTS = Path(__file__).parent / "results"


def _cfg(model_name: str, options: dict, batch: int) -> "validate":
    return validate({"name": "bench", "seed": 0, "device": "cpu",
                     "data": {"name": "digits", "val_fraction": 0.0},
                     "model": {"name": model_name, "options": options},
                     "train": {"method": "crown-ibp", "eps": 0.1, "epochs": 1, "batch_size": batch,
                               "schedule": {"start_epoch": 0, "ramp_epochs": 2}}})


def _bare_step(bm, opt, params, x, y, eps, beta, reference_style):
    logits = bm(x)
    C = spec_matrix(y, 10)
    bx = BoundedTensor(x, PerturbationLpNorm(norm=float("inf"), eps=None, x_L=(x - eps).clamp(0, 1),
                                             x_U=(x + eps).clamp(0, 1)))
    if reference_style:
        ilb, _ = bm.compute_bounds(x=(bx,), C=C, method="IBP", bound_upper=False)
        clb, _ = bm.compute_bounds(x=(bx,), C=C, method="CROWN-IBP", bound_upper=False)
    else:
        clb, _ = bm.compute_bounds(x=(bx,), C=C, method="CROWN-IBP", bound_upper=False)
        ilb, _ = bm.compute_bounds(C=C, method=None, IBP=True, reuse_ibp=True)
    m = beta * clb + (1 - beta) * ilb
    robust = torch.logsumexp(torch.cat([m.new_zeros(m.shape[0], 1), -m], 1), 1).mean()
    loss = 0.5 * F.cross_entropy(logits, y) + 0.5 * robust
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, 10.0)
    opt.step()


def bench(model_name: str, options: dict, batch: int, steps: int, repeats: int) -> dict:
    x_all, y_all = as_tensors(load("digits", "train"))
    x, y = x_all[:batch], y_all[:batch]
    cfg = _cfg(model_name, options, batch)

    torch.manual_seed(0)
    ours_model = build(model_name, (1, 8, 8), 10, **options)
    trainer = CertifiedTrainer(ours_model, load("digits", "train"), None, cfg, "/tmp/rs_bench_unused",
                               torch.device("cpu"), quiet=True)
    # A step in the middle of the ramp: eps and beta strictly between their end points.
    step = trainer.start_step + trainer.ramp_steps // 2
    eps = trainer.eps_for_step(step)
    beta = (0.1 - eps) / 0.1

    torch.manual_seed(0)
    bare_model = build(model_name, (1, 8, 8), 10, **options)
    bm = BoundedModule(bare_model, torch.zeros(2, 1, 8, 8), bound_opts={"relu": "adaptive", "conv_mode": "patches"})
    bm.train()
    params = list(bare_model.parameters())
    opt = torch.optim.Adam(params, lr=1e-3)

    def run_ours():
        for _ in range(steps):
            trainer.train_step(x, y, step)

    def run_bare(ref=False):
        for _ in range(steps):
            _bare_step(bm, opt, params, x, y, eps, beta, ref)

    for fn in (run_ours, run_bare):  # warm-up
        fn()
    t_ours, t_bare, t_ref = [], [], []
    c_ours, c_bare = [], []
    for _ in range(repeats):
        for fn, acc, cpu in ((run_ours, t_ours, c_ours), (run_bare, t_bare, c_bare), (lambda: run_bare(True), t_ref, None)):
            t0, c0 = time.perf_counter(), time.process_time()
            fn()
            acc.append((time.perf_counter() - t0) / steps)
            if cpu is not None:
                cpu.append((time.process_time() - c0) / steps)
    ratios = [a / b for a, b in zip(t_ours, t_bare)]
    cpu_ratios = [a / b for a, b in zip(c_ours, c_bare)]
    return {"model": model_name, "options": options, "batch": batch, "eps": eps, "beta": round(beta, 4),
            "steps_per_repeat": steps, "repeats": repeats,
            "ours_ms": 1e3 * statistics.median(t_ours), "bare_ms": 1e3 * statistics.median(t_bare),
            "bare_reference_style_ms": 1e3 * statistics.median(t_ref),
            "ratio_ours_over_bare": statistics.median(ratios),
            "ratio_per_repeat": [round(r, 4) for r in ratios],
            # CPU time of this process: far steadier than wall time on a shared machine.
            "ours_cpu_ms": 1e3 * statistics.median(c_ours), "bare_cpu_ms": 1e3 * statistics.median(c_bare),
            "cpu_ratio_ours_over_bare": statistics.median(cpu_ratios),
            "cpu_ratio_per_repeat": [round(r, 4) for r in cpu_ratios]}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="fewer repeats")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)  # one thread: CPU time then measures the work, not the contention
    cases = [("cnn_small", {"width": 2, "linear": 256}, 64), ("cnn7", {"bn": True, "width": 0.5, "linear": 256}, 64)]
    steps, repeats = (1, 11) if args.quick else (1, 41)
    rows = [bench(n, o, b, steps, repeats) for n, o, b in cases]
    out = {"benchmark": "certified_training_step", "command": "python -m benchmarks.bench_certified_training"
           + (" --quick" if args.quick else ""), "torch": torch.__version__, "threads": torch.get_num_threads(),
           "machine": platform.machine(), "python": sys.version.split()[0], "goal": "ratio <= 1.05 (CPU-time ratio, 1 thread)", "rows": rows}
    RESULTS.mkdir(exist_ok=True)
    from robustsuite.files import atomic_write_json
    atomic_write_json(RESULTS / "certified_training_step.json", out)
    for r in rows:
        print(f"{r['model']:<10} batch {r['batch']}: ours {r['ours_ms']:.1f} ms, bare {r['bare_ms']:.1f} ms "
              f"(wall ratio {r['ratio_ours_over_bare']:.3f}, CPU-time ratio {r['cpu_ratio_ours_over_bare']:.3f}); auto_LiRPA example style {r['bare_reference_style_ms']:.1f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
