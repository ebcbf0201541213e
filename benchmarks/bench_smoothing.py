"""Randomized-smoothing CERTIFY throughput (noisy forward passes per second), in one process.

Three runs on the same model, images, n0, n and batch (``batch`` noisy samples per forward pass):

* ``ours``: :meth:`robustsuite.eval.Smooth.certify` on all images at once;
* ``bare``: the floor, a bare loop of the same number of noisy forward passes
  (``model(xb + sigma * randn_like(xb))`` on a pre-built batch, no counting, no statistics);
* ``reference``: the algorithm written plainly, one image at a time as the locuslab code does
  (repeat the image, add noise, forward, argmax, copy to the host, count with a Python loop, then
  the Clopper-Pearson bound and the radius per image). Our own plain version, not their code.

Goals: ours >= 0.95x the bare loop's throughput, and >= the reference's. Throughput ratios are
reported from the wall-clock medians, as medians of per-repeat ratios (less sensitive to a drifting
load) and from the process CPU-time medians (least sensitive to other processes on the cores).
Runs are interleaved (the order rotates every repeat) and medians are reported, because the machine
may be shared. Results go to ``benchmarks/results/smoothing_certify.json``.

Usage::

    OMP_NUM_THREADS=1 .venv/bin/python -m benchmarks.bench_smoothing [--repeats 5] [--threads 1]
        [--images 8] [--n 10000] [--n0 100] [--batch 1000] [--quick]
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from scipy.stats import beta, norm

from robustsuite.eval import Smooth
from robustsuite.models import build

RESULTS = Path(__file__).resolve().parent / "results"


def digits_images(k: int) -> torch.Tensor:
    from robustsuite import data
    x, _ = data.as_tensors(data.load("digits", "test"))
    return x[:k].contiguous()


# --- the floor: noisy forward passes and nothing else ----------------------------------------------

def bare_loop(model, x, sigma, total_rows, batch):
    xb = x[:1].expand(batch, *x.shape[1:]).contiguous()
    with torch.no_grad():
        for start in range(0, total_rows, batch):
            rows = min(batch, total_rows - start)
            xr = xb[:rows]
            model(xr + sigma * torch.randn_like(xr))


# --- the reference algorithm, written plainly (one image at a time, Python counting) -------------

def _plain_counts(model, x1, sigma, num, batch, num_classes):
    counts = np.zeros(num_classes, dtype=int)
    with torch.no_grad():
        remaining = num
        while remaining > 0:
            this = min(batch, remaining)
            remaining -= this
            xb = x1.repeat((this, 1, 1, 1))
            pred = model(xb + torch.randn_like(xb) * sigma).argmax(1)
            for c in pred.cpu().numpy():
                counts[c] += 1
    return counts


def plain_certify(model, x, sigma, n0, n, alpha, batch, num_classes=10):
    out = []
    for i in range(x.shape[0]):
        c_a = int(_plain_counts(model, x[i], sigma, n0, batch, num_classes).argmax())
        n_a = int(_plain_counts(model, x[i], sigma, n, batch, num_classes)[c_a])
        p_a = beta.ppf(alpha, n_a, n - n_a + 1) if n_a > 0 else 0.0
        out.append((-1, 0.0) if p_a < 0.5 else (c_a, sigma * norm.ppf(p_a)))
    return out


def timed(fn) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process): on a shared machine the CPU time is the steadier."""
    t0, c0 = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - t0, time.process_time() - c0


def bench(*, images: int, n0: int, n: int, batch: int, sigma: float, alpha: float, repeats: int) -> dict:
    torch.manual_seed(0)
    model = build("cnn_small", (1, 8, 8), 10).eval()
    x = digits_images(images)
    rows = images * (n0 + n)
    smooth = Smooth(model, num_classes=10, sigma=sigma, seed=0)
    runs = {
        "bare": lambda: bare_loop(model, x, sigma, rows, batch),
        "ours": lambda: smooth.certify(x, n0, n, alpha, batch),
        "reference": lambda: plain_certify(model, x, sigma, n0, n, alpha, batch),
    }
    for fn in runs.values():  # warm-up
        fn()
    times = {name: [] for name in runs}
    cpu = {name: [] for name in runs}
    names = list(runs)
    for r in range(repeats):
        for name in names[r % 3:] + names[:r % 3]:  # rotate the order every repeat
            wall_s, cpu_s = timed(runs[name])
            times[name].append(wall_s)
            cpu[name].append(cpu_s)
    med = {name: statistics.median(ts) for name, ts in times.items()}
    med_cpu = {name: statistics.median(ts) for name, ts in cpu.items()}
    fps = {name: rows / t for name, t in med.items()}
    return {
        "model": "cnn_small (1x8x8 -> 10), eval mode", "images": images, "n0": n0, "n": n,
        "batch": batch, "sigma": sigma, "alpha": alpha, "noisy_forwards_per_run": rows,
        "forward_passes_per_run": {"bare": math.ceil(rows / batch),
                                   "ours": math.ceil(images * n0 / batch) + math.ceil(images * n / batch),
                                   "reference": images * (math.ceil(n0 / batch) + math.ceil(n / batch))},
        "median_s": med, "median_cpu_s": med_cpu, "all_s": times, "all_cpu_s": cpu,
        "noisy_forwards_per_s": fps,
        "ratio_ours_over_bare": fps["ours"] / fps["bare"],
        "ratio_ours_over_reference": fps["ours"] / fps["reference"],
        # Per-repeat ratios of runs made next to each other, robust to a drifting machine load.
        "paired_ratio_ours_over_bare_median": statistics.median(
            b / o for b, o in zip(times["bare"], times["ours"])),
        "paired_ratio_ours_over_reference_median": statistics.median(
            r / o for r, o in zip(times["reference"], times["ours"])),
        "cpu_time_ratio_ours_over_bare": med_cpu["bare"] / med_cpu["ours"],
        "cpu_time_ratio_ours_over_reference": med_cpu["reference"] / med_cpu["ours"],
        "goal_bare_0.95": fps["ours"] / fps["bare"] >= 0.95,
        "goal_reference_1.0": fps["ours"] / fps["reference"] >= 1.0,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--images", type=int, default=8)
    p.add_argument("--n", type=int, default=10_000)
    p.add_argument("--n0", type=int, default=100)
    p.add_argument("--batch", type=int, default=1000)
    p.add_argument("--sigma", type=float, default=0.25)
    p.add_argument("--quick", action="store_true", help="n = 2000, 3 repeats")
    p.add_argument("--out", default=str(RESULTS / "smoothing_certify.json"))
    args = p.parse_args(argv)
    if args.quick:
        args.n, args.repeats = 2000, 3
    torch.set_num_threads(args.threads)
    res = bench(images=args.images, n0=args.n0, n=args.n, batch=args.batch, sigma=args.sigma, alpha=0.001,
                repeats=args.repeats)
    doc = {
        "benchmark": "smoothing CERTIFY throughput: ours vs a bare noisy-forward loop and a plain per-image reference",
        "environment": {
            "torch": torch.__version__, "threads": torch.get_num_threads(),
            "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"), "cpu_count": os.cpu_count(),
            "device": "cpu", "python": platform.python_version(), "machine": platform.machine(),
            "command": ".venv/bin/python -m benchmarks.bench_smoothing " + " ".join(sys.argv[1:] if argv is None else argv),
            "note": "shared machine: runs interleaved, medians of the repeats",
        },
        "results": [res],
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(doc, indent=2) + "\n")
    tmp.replace(out)
    f = res["noisy_forwards_per_s"]
    print(f"noisy forwards/s: ours {f['ours']:,.0f}, bare loop {f['bare']:,.0f}, plain reference "
          f"{f['reference']:,.0f}; ours/bare {res['ratio_ours_over_bare']:.3f} (goal >= 0.95), "
          f"ours/reference {res['ratio_ours_over_reference']:.2f} (goal >= 1); paired medians "
          f"{res['paired_ratio_ours_over_bare_median']:.3f} / {res['paired_ratio_ours_over_reference_median']:.2f}; "
          f"by CPU time {res['cpu_time_ratio_ours_over_bare']:.3f} / {res['cpu_time_ratio_ours_over_reference']:.2f} -> {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
