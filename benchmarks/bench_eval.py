"""Evaluator time per stage: the demo suite on the demo checkpoints (digits test split).

Runs :func:`robustsuite.eval.evaluate` once with a suite (default ``configs/suites/demo.yaml``) on
trained checkpoints (default the ``make demo`` ones) and reports, per model and stage (clean pass,
each bound method, each attack, EOT variants, smoothing), the wall-clock seconds and samples per
second, plus the total against the 5-minute goal of ``make demo`` on 2 cores. The smoothing
throughput itself has its own benchmark (``bench_smoothing``). Results go to
``benchmarks/results/eval_stages.json``.

Usage::

    OMP_NUM_THREADS=1 .venv/bin/python -m benchmarks.bench_eval [--checkpoints A.pt B.pt]
        [--suite configs/suites/demo.yaml] [--threads 2] [--set subset.first=100]
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time

import torch

from benchmarks.provenance import provenance
from robustsuite import data as rdata
from robustsuite.eval import evaluate, load_suite
from robustsuite.eval.loading import load_models
from robustsuite.files import atomic_write_json

GOAL_S = 300.0


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoints", nargs="+", default=["runs/demo/models/crown_ibp/best.pt", "runs/demo/models/pgd_at/best.pt"])
    ap.add_argument("--suite", default="configs/suites/demo.yaml")
    ap.add_argument("--set", action="append", default=[])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default="benchmarks/results/eval_stages.json")
    ap.add_argument("--report", help="also save the report here")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    origin = provenance()  # the tree this run measures, taken before it starts
    suite = load_suite(args.suite, args.set)
    models, d = load_models(args.checkpoints)
    test = rdata.load(d.get("name", "digits"), "test", **(d.get("options") or {}))
    t0 = time.perf_counter()
    rep = evaluate(models, test, suite, device="cpu", seed=0,
                   data_description={"name": d.get("name", "digits"), "split": "test", "options": d.get("options") or {}})
    total = time.perf_counter() - t0
    if args.report:
        rep.save(args.report)
    n = rep.samples["n"]
    stages = {m: {s: {"seconds": round(t, 3), "samples_per_s": round(n / t, 1) if t > 0 else None}
                  for s, t in d_.items()} for m, d_ in rep.timings.items() if m != "total"}
    result = {"benchmark": "evaluator time per stage", "provenance": origin,
              "command": " ".join(["python -m benchmarks.bench_eval", *(sys.argv[1:] if argv is None else argv)]),
              "suite": suite.name, "checkpoints": args.checkpoints,
              "samples": n, "threads": args.threads, "total_seconds": round(total, 2), "goal_seconds": GOAL_S,
              "meets_goal": total < GOAL_S, "stages": stages, "violations": len(rep.violations),
              "metrics": {m: {k: v["mean"] for k, v in mm.items()} for m, mm in rep.metrics.items()},
              "machine": {"platform": platform.platform(), "cpus": __import__("os").cpu_count(),
                          "torch": torch.__version__}}
    atomic_write_json(args.out, result)
    print(json.dumps({k: result[k] for k in ("total_seconds", "meets_goal", "stages")}, indent=1))
    return result


if __name__ == "__main__":
    main()
