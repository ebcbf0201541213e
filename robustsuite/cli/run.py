"""``robustsuite run STUDY``: a whole study: train every model of a study config, then one report."""
from __future__ import annotations

import argparse
import time

from .args import add_verbosity_arguments
from .eval import finish_report


def cmd_run(args: argparse.Namespace) -> int:
    from ..study import run
    from ..training.distributed import is_main

    t0 = time.perf_counter()
    res = run(args.config, resume=not args.no_resume, quiet=args.quiet, overrides=list(args.set or []),
              stop_after=args.stop_after)
    if is_main():  # under torchrun only rank 0 reports
        for label, st in res.status.items():
            print(f"{label}: {st} -> {res.checkpoints[label]}")
        if res.report is None:
            print(f"stopped after {len(res.status)} model(s); run again to finish ({res.out})")
    if res.report is None:
        return 0
    return finish_report(res.report, res.report_dir, f" in {time.perf_counter() - t0:.0f} s")


def add_parser(sub) -> None:
    """Register ``run`` on the CLI's subparsers."""
    r = sub.add_parser("run", help="a whole study: train every model of a study config, then one report",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       description="Train each model listed in a study config (skipping those with a finished "
                                   "checkpoint, resuming interrupted ones), then evaluate them together with the "
                                   "study's suite. Writes <out>/study.yaml, <out>/models/<label>/ and "
                                   "<out>/report/ (report.md, report.json, records.csv, plots/) and prints the "
                                   "table. Exit status 3 on a soundness violation.",
                       epilog="example:\n  robustsuite run configs/digits_study.yaml\n"
                              "  robustsuite run configs/digits_study.yaml --set out=runs/s2 --set suite_set=[subset.first=50]")
    r.add_argument("config", help="study YAML (see configs/digits_study.yaml)")
    r.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override a study key, e.g. --set out=runs/x or --set models.pgd_at.set=[train.epochs=2]")
    r.add_argument("--no-resume", action="store_true", help="retrain every model from scratch and evaluate everything again")
    r.add_argument("--stop-after", type=int, metavar="N", help="train the first N models only, no evaluation")
    add_verbosity_arguments(r)
    r.set_defaults(func=cmd_run)
