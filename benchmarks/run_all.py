"""Run every benchmark of the project in turn (``make bench``); each writes its own results file.

    .venv/bin/python -m benchmarks.run_all [--only NAME ...] [--quick]

Long: the claims benchmarks train many models (several hours in all on 2 CPU cores; part d of
``bench_budgets``, the context study, alone about 90 minutes on one core). ``bench_budgets`` resumes
an interrupted sweep from ``runs/``; ``bench_stochastic`` trains every model from scratch and reuses
only results of the same commit and settings.
"""
from __future__ import annotations

import argparse
import importlib
import inspect
import sys
import time

#: (module, arguments for a full run, arguments for --quick)
BENCHMARKS = [
    ("bench_certified_training", [], ["--quick"]),
    ("bench_attacks", ["--repeats", "40"], []),
    ("bench_smoothing", ["--repeats", "11"], []),
    ("bench_autoattack", [], ["--quick"]),
    ("bench_calibration", [], []),
    ("bench_budgets", [], ["--quick"]),
    ("bench_budget_layout", [], ["--quick"]),
    ("bench_stochastic", [], []),
    ("bench_eval", [], []),
    ("bench_complete", [], ["--n", "100"]),
]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", nargs="*", help="benchmark module names to run (default: all)")
    ap.add_argument("--quick", action="store_true", help="the quick variant where a benchmark has one")
    args = ap.parse_args(argv)
    failed = []
    for name, full, quick in BENCHMARKS:
        if args.only and name not in args.only:
            continue
        t0 = time.perf_counter()
        print(f"== {name}", flush=True)
        main_fn = importlib.import_module(f"benchmarks.{name}").main
        argv_b = quick if args.quick else full
        try:
            if inspect.signature(main_fn).parameters:
                out = main_fn(argv_b)
            else:  # a benchmark without options reads sys.argv
                sys.argv = [name, *argv_b]
                out = main_fn()
            rc = out if isinstance(out, int) else 0
        except SystemExit as e:  # argparse-style exits
            rc = e.code
        print(f"== {name}: exit {rc} after {time.perf_counter() - t0:.0f} s", flush=True)
        if rc:
            failed.append(name)
    from benchmarks import summary  # the README table, rebuilt from the result files just written

    summary.main([])
    if failed:
        print("benchmarks that failed or missed a goal: " + ", ".join(failed))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
