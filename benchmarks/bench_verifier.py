"""Benchmark: the Verifier's cost per call against a bare auto_LiRPA call, and its chunk sizes.

Part ``overhead``: ``Verifier.verify`` (CROWN-IBP) against the bare calls that give the same
answer (``compute_bounds`` of the margins with a specification matrix, plus ``model(x).argmax``
for the clean prediction that a certificate needs), same model and batch, both already built.
Calls are interleaved and the median CPU time of this process (one thread) is reported.

Part ``chunks``: the time to bound N samples with each method at several chunk sizes
(``max_batch``), and the largest difference of the bounds from the one-chunk bounds. The
Verifier's CPU defaults (``DEFAULT_MAX_BATCH``) come from this table.

Models: the demo's digits CNN (``cnn_small`` width 4, linear 256, 1x8x8) and CNN-7 with
BatchNorm (width 0.5), untrained weights (the cost does not depend on the weights; alpha-CROWN's
early stop does a little).

    OMP_NUM_THREADS=1 .venv/bin/python -m benchmarks.bench_verifier [--parts overhead,chunks] [--quick]
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

from robustsuite import LinfBall
from robustsuite.certify import Verifier
from robustsuite.certify.bounds import spec_matrix
from robustsuite.certify.lirpa import VERSION, BoundedModule, BoundedTensor, PerturbationLpNorm
from robustsuite.models import build

RESULTS = Path(__file__).parent / "results"
MODELS = {"cnn_small": ("cnn_small", {"width": 4, "linear": 256}),
          "cnn7_bn": ("cnn7", {"bn": True, "width": 0.5, "linear": 256})}
EPS = 0.1


def _model(key: str) -> torch.nn.Module:
    name, options = MODELS[key]
    torch.manual_seed(0)
    model = build(name, (1, 8, 8), 10, **options)
    model.train()
    with torch.no_grad():  # BatchNorm statistics that are not the initial ones
        model(torch.rand(64, 1, 8, 8))
    return model.eval()


def _data(n: int, model) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    x = torch.rand(n, 1, 8, 8, generator=g)
    with torch.no_grad():
        return x, model(x).argmax(1)


def overhead(key: str, batch: int, repeats: int) -> dict:
    model = _model(key)
    x, y = _data(batch, model)
    v = Verifier(model, (1, 8, 8), method="crown-ibp", device="cpu")
    bm = BoundedModule(model, torch.zeros(2, 1, 8, 8), bound_opts={"conv_mode": "patches"})
    bm.eval()

    def bare():
        C = spec_matrix(y, 10)
        lo, hi = (x - EPS).clamp(0, 1), (x + EPS).clamp(0, 1)
        bx = BoundedTensor(x, PerturbationLpNorm(norm=float("inf"), eps=None, x_L=lo, x_U=hi))
        lb, _ = bm.compute_bounds(x=(bx,), C=C, method="CROWN-IBP", bound_upper=False)
        with torch.no_grad():
            correct = model(x).argmax(1) == y
        return correct & (lb > 0).all(1)

    def ours():
        return v.verify(x, y, LinfBall(EPS)).certified

    assert torch.equal(bare(), ours())
    for fn in (bare, ours, bare, ours):  # warm-up
        fn()
    t_bare, t_ours = [], []
    for _ in range(repeats):
        for fn, acc in ((bare, t_bare), (ours, t_ours)):
            c0 = time.process_time()
            fn()
            acc.append(time.process_time() - c0)
    ratios = [a / b for a, b in zip(t_ours, t_bare)]
    return {"model": key, "batch": batch, "repeats": repeats, "bare_cpu_ms": 1e3 * statistics.median(t_bare),
            "ours_cpu_ms": 1e3 * statistics.median(t_ours), "cpu_ratio": statistics.median(ratios),
            "fixed_ms": 1e3 * (statistics.median(t_ours) - statistics.median(t_bare))}


def chunks(key: str, method: str, n: int, sizes: list[int]) -> dict:
    model = _model(key)
    x, y = _data(n, model)
    rows, ref = [], None
    for size in sorted(sizes, reverse=True):  # the largest chunk first: it is the reference
        v = Verifier(model, (1, 8, 8), method=method, device="cpu", max_batch=size)
        v.margin_bounds(x[:2], y[:2], LinfBall(EPS))  # warm-up (and the first-call graph check)
        c0, t0 = time.process_time(), time.perf_counter()
        m = v.margin_bounds(x, y, LinfBall(EPS)).detach()
        cpu, wall = time.process_time() - c0, time.perf_counter() - t0
        ref = m if ref is None else ref
        rows.append({"chunk": size, "cpu_s": cpu, "wall_s": wall, "per_sample_ms": 1e3 * cpu / n,
                     "max_abs_diff_vs_largest": float((m - ref).abs().max())})
        print(f"  {key} {method} n={n} chunk {size}: {cpu:.2f} s CPU ({1e3 * cpu / n:.1f} ms/sample), "
              f"max |diff| {rows[-1]['max_abs_diff_vs_largest']:.2e}", flush=True)
    best = min(rows, key=lambda r: r["cpu_s"])
    return {"model": key, "method": method, "n": n, "rows": rows, "best_chunk": best["chunk"]}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--parts", default="overhead,chunks")
    ap.add_argument("--quick", action="store_true", help="fewer repeats and samples")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    parts = set(args.parts.split(","))
    out = {"benchmark": "verifier",
           "command": "OMP_NUM_THREADS=1 python -m benchmarks.bench_verifier" + (" --quick" if args.quick else ""),
           "torch": torch.__version__, "auto_LiRPA": VERSION, "threads": torch.get_num_threads(),
           "machine": platform.machine(), "python": sys.version.split()[0], "device": "cpu",
           "goal": "verify <= 1.05x the bare calls (CPU time, 1 thread)"}
    from robustsuite.files import atomic_write_json

    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / "verifier.json"
    if path.is_file():  # a part not rerun keeps its earlier figures (--parts overhead must not drop the chunks)
        old = json.loads(path.read_text())
        out.update({k: old[k] for k in ("overhead", "chunks") if k in old and k not in parts})
    if "overhead" in parts:
        reps = 11 if args.quick else 31
        out["overhead"] = []
        for key, batch in (("cnn_small", 16), ("cnn_small", 64), ("cnn_small", 256), ("cnn7_bn", 16), ("cnn7_bn", 64)):
            r = overhead(key, batch, reps)
            print(f"overhead {key} batch {batch}: bare {r['bare_cpu_ms']:.2f} ms, verify {r['ours_cpu_ms']:.2f} ms, "
                  f"ratio {r['cpu_ratio']:.3f}", flush=True)
            out["overhead"].append(r)
            atomic_write_json(path, out)  # written as it goes: a long run can be stopped
    if "chunks" in parts:
        q = args.quick
        plan = [("cnn_small", "ibp", 512, [64, 128, 256, 512]),
                ("cnn_small", "crown-ibp", 256 if q else 512, [16, 32, 64, 128, 256]),
                ("cnn_small", "crown", 64, [4, 8, 16, 32, 64]),
                ("cnn_small", "alpha-crown", 16 if q else 32, [4, 8, 16] if q else [4, 8, 16, 32]),
                ("cnn7_bn", "crown-ibp", 128, [16, 32, 64, 128]),
                ("cnn7_bn", "crown", 16 if q else 32, [4, 8, 16] if q else [4, 8, 16, 32])]
        out["chunks"] = []
        for p in plan:
            out["chunks"].append(chunks(*p))
            atomic_write_json(path, out)
    print(json.dumps({k: v for k, v in out.items() if k in ("overhead",)}, indent=1)[:2000])
    return 0


if __name__ == "__main__":
    sys.exit(main())
