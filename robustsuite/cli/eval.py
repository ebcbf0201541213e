"""``robustsuite eval CHECKPOINT...``: the unified evaluator on checkpoints, one report.

Exits 0 when the run is consistent and 3 when a sample certified under a set was broken by an attack
under the same set (a soundness violation); package errors exit 2 (:func:`robustsuite.cli.main`).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .args import VIOLATION_EXIT, add_verbosity_arguments, names
from .data_args import add_data_arguments, check_data_fits, model_spec_of, select_test_data

__all__ = ["cmd_eval", "add_parser", "finish_report"]


def finish_report(report, out: Path | None, note: str = "") -> int:
    """Print the report's table and where it was written (rank 0 only under torchrun); the exit status:
    ``VIOLATION_EXIT`` (with a loud message) when a certified sample was broken by an attack, else 0.
    ``out`` is the folder the report was saved to (None on ranks other than 0)."""
    from ..training.distributed import is_main

    if is_main():
        print(report.table(transpose=True))
        print(f"wrote {out / 'report.md'} (report.json, records.csv, plots/){note}")
        if report.violations:
            print(f"SOUNDNESS VIOLATION: {len(report.violations)} (bound, attack or clean, set) combinations with "
                  f"certified samples that are broken or misclassified; see {out / 'report.md'}", file=sys.stderr)
    return VIOLATION_EXIT if report.violations else 0


def cmd_eval(args: argparse.Namespace) -> int:
    from ..eval.report import LOG_NAME, check_report_folder
    from ..files import output_lock, writes_outputs
    from ..progress import run_log

    suite_and_models = _eval_inputs(args)  # every input checked before the output folder is touched
    # the lock is held from before the evaluation to the end of the write: a second eval into the
    # same --out stops at once instead of after the evaluation (under torchrun: rank 0 only)
    with output_lock(args.out, enabled=writes_outputs()) as out:
        if writes_outputs():
            check_report_folder(out)
        # every INFO line of the evaluation into the report folder (Report.save keeps it)
        with run_log(out / LOG_NAME, enabled=writes_outputs()):
            return _run_eval(args, *suite_and_models)


def _eval_inputs(args: argparse.Namespace):
    from ..eval.loading import load_models
    from ..eval.suite import load_suite

    suite = load_suite(args.suite, args.set)
    models, data_raw = load_models(args.checkpoints, args.names)
    return suite, models, data_raw


def _run_eval(args: argparse.Namespace, suite, models, data_raw) -> int:
    from ..eval.evaluator import evaluate
    from ..eval.report import PARTIAL_DIR
    from ..training.distributed import is_main

    test, description = select_test_data(data_raw, args)
    check_data_fits(test, {f"{name} ({path})": model_spec_of(m)
                           for (name, m), path in zip(models.items(), args.checkpoints)})
    report = evaluate(models, test, suite, device=args.device, seed=args.seed,
                      data_description={**description, "checkpoints": dict(zip(models, map(str, args.checkpoints)))},
                      resume_dir=Path(args.out) / PARTIAL_DIR, fresh=args.no_resume,
                      quiet=getattr(args, "quiet", False))
    # under torchrun every rank holds the same report; rank 0 writes and prints it
    return finish_report(report, report.save(args.out) if is_main() else None)


def add_parser(sub) -> None:
    """Register ``eval`` on the CLI's subparsers."""
    e = sub.add_parser("eval", help="the unified evaluator: bounds, attacks and smoothing of checkpoints in one report",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       description="Evaluate one or more checkpoints on the test split of their data set with an "
                                   "evaluation suite (certified bounds, attacks, EOT and repeats for stochastic "
                                   "models, randomized smoothing). Writes report.json, records.csv, report.md and "
                                   "plots/ (and eval.log) into --out and prints the table. Exit status 3 when a certified sample "
                                   "was broken by an attack in the same set (soundness violation).",
                       epilog="example:\n  robustsuite eval runs/demo/models/crown_ibp/best.pt runs/demo/models/pgd_at/best.pt "
                              "--suite configs/suites/demo.yaml --out runs/demo/eval")
    e.add_argument("checkpoints", nargs="+", metavar="CHECKPOINT", help="checkpoints written by robustsuite train")
    e.add_argument("--suite", required=True, help="suite YAML (see configs/suites/)")
    e.add_argument("--out", required=True, help="output folder of the report")
    e.add_argument("--names", type=names, help="model names, comma-separated (default: checkpoint folder names)")
    e.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override a suite key, e.g. --set subset.first=100 (repeatable)")
    add_data_arguments(e)
    e.add_argument("--device", default="auto", help="auto | cpu | cuda")
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--no-resume", action="store_true",
                   help="evaluate everything again instead of reusing the finished items of an interrupted "
                        "evaluation into --out (kept in --out/partial/ until the report is written)")
    add_verbosity_arguments(e)
    e.set_defaults(func=cmd_eval)
