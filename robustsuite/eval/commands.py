"""The ``robustsuite eval`` and ``robustsuite compare`` commands (registered by :func:`add_eval_parsers`).

``eval`` exits 0 when the run is consistent and 3 when a sample certified under a set was broken by
an attack under the same set (a soundness violation); package errors exit 2 (``robustsuite.cli``).
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from ..errors import ConfigError

log = logging.getLogger(__name__)

__all__ = ["add_eval_parsers", "cmd_eval", "cmd_compare", "load_models", "model_names"]

VIOLATION_EXIT = 3


def model_names(paths: list[str]) -> list[str]:
    """A short unique name per checkpoint: its folder name (``runs/demo/crown_ibp/best.pt`` -> ``crown_ibp``),
    with every character :func:`~robustsuite.files.safe_name` refuses replaced by ``_``."""
    import re

    from ..files import MAX_NAME, name_problem
    names = []
    for p in paths:
        path = Path(p).resolve() if Path(p).name in ("", ".", "..") else Path(p)
        base = path.parent.name if path.stem in ("best", "last", "report") and path.parent.name else path.stem
        base = re.sub(r"[^\w.+ -]", "_", base)[:MAX_NAME].strip(". ")
        base = base if base and not name_problem(base) else "model"
        name, k = base, 2
        while name in names:
            name, k = f"{base}_{k}", k + 1
        names.append(name)
    return names


def load_models(paths: list[str], names: list[str] | None = None, device: str = "cpu"):
    """``({name: model}, data config of the first checkpoint)`` from checkpoint files; budget
    checkpoints load as budget models (classifier + generator)."""
    from ..files import safe_name
    from ..training.checkpoint import load_checkpoint, model_from_checkpoint
    names = names or model_names(paths)
    if len(names) != len(paths):
        raise ConfigError(f"--names: give one name per checkpoint ({len(paths)}), got {len(names)}")
    for n in names:
        safe_name(n, "--names")  # a name becomes part of file names (plots)
    if len(set(names)) != len(names):
        raise ConfigError(f"--names: every name must be different, got {', '.join(names)}")
    models, data_cfgs = {}, []
    for name, p in zip(names, paths):
        ckpt = load_checkpoint(p)
        if ckpt.get("kind") == "budgets":
            from ..budgets import load_budget_model
            models[name] = load_budget_model(ckpt, device=device)
        else:
            models[name] = model_from_checkpoint(ckpt, device=device)
        data_cfgs.append((name, (ckpt.get("config") or {}).get("data") or {"name": "digits"}))
    ref = data_cfgs[0][1]
    for name, d in data_cfgs[1:]:
        if (d.get("name"), d.get("options")) != (ref.get("name"), ref.get("options")):
            raise ConfigError(f"checkpoints: {name} was trained on data {d.get('name')} {d.get('options')} but "
                              f"{data_cfgs[0][0]} on {ref.get('name')} {ref.get('options')}; evaluate them separately")
    return models, ref


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
    from ..files import output_lock, writes_outputs
    from .report import check_report_folder

    suite_and_models = _eval_inputs(args)  # every input checked before the output folder is touched
    # the lock is held from before the evaluation to the end of the write: a second eval into the
    # same --out stops at once instead of after the evaluation (under torchrun: rank 0 only)
    with output_lock(args.out, enabled=writes_outputs()):
        if writes_outputs():
            check_report_folder(args.out)
        return _run_eval(args, *suite_and_models)


def _eval_inputs(args: argparse.Namespace):
    from .suite import load_suite

    suite = load_suite(args.suite, args.set)
    models, data_raw = load_models(args.checkpoints, args.names)
    return suite, models, data_raw


def _run_eval(args: argparse.Namespace, suite, models, data_raw) -> int:
    from ..cli_data import check_data_fits, model_spec_of, select_test_data
    from .evaluator import evaluate

    test, description = select_test_data(data_raw, args)
    check_data_fits(test, {f"{name} ({path})": model_spec_of(m)
                           for (name, m), path in zip(models.items(), args.checkpoints)})
    from .report import PARTIAL_DIR
    report = evaluate(models, test, suite, device=args.device, seed=args.seed,
                      data_description={**description, "checkpoints": dict(zip(models, map(str, args.checkpoints)))},
                      resume_dir=Path(args.out) / PARTIAL_DIR, fresh=getattr(args, "no_resume", False))
    from ..training.distributed import is_main
    # under torchrun every rank holds the same report; rank 0 writes and prints it
    return finish_report(report, report.save(args.out) if is_main() else None)


def cmd_compare(args: argparse.Namespace) -> int:
    from .compare import compare_reports
    from .report import Report

    reports = [Report.load(p) for p in args.reports]
    names = args.names or model_names([str(Path(p) / "report.json") if Path(p).is_dir() else p for p in args.reports])
    if len(names) != len(reports):
        raise ConfigError(f"--names: give one name per report ({len(reports)}), got {len(names)}")
    text, notes = compare_reports(reports, names, args.out)
    print(text)
    for n in notes:
        print(f"WARNING: {n}", file=sys.stderr)
    if args.out:
        print(f"wrote {Path(args.out) / 'compare.md'}, compare.json, plots/")
    return 0


def _names_arg(text: str) -> list[str]:
    return [t.strip() for t in str(text).split(",") if t.strip()]


def add_eval_parsers(sub) -> None:
    """Register ``eval`` and ``compare`` on the CLI's subparsers."""
    e = sub.add_parser("eval", help="the unified evaluator: bounds, attacks and smoothing of checkpoints in one report",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       description="Evaluate one or more checkpoints on the test split of their data set with an "
                                   "evaluation suite (certified bounds, attacks, EOT and repeats for stochastic "
                                   "models, randomized smoothing). Writes report.json, records.csv, report.md and "
                                   "plots/ into --out and prints the table. Exit status 3 when a certified sample "
                                   "was broken by an attack in the same set (soundness violation).",
                       epilog="example:\n  robustsuite eval runs/demo/models/crown_ibp/best.pt runs/demo/models/pgd_at/best.pt "
                              "--suite configs/suites/demo.yaml --out runs/demo/eval")
    e.add_argument("checkpoints", nargs="+", metavar="CHECKPOINT", help="checkpoints written by robustsuite train")
    e.add_argument("--suite", required=True, help="suite YAML (see configs/suites/)")
    e.add_argument("--out", required=True, help="output folder of the report")
    e.add_argument("--names", type=_names_arg, help="model names, comma-separated (default: checkpoint folder names)")
    e.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override a suite key, e.g. --set subset.first=100 (repeatable)")
    from ..cli_data import add_data_arguments
    add_data_arguments(e)
    e.add_argument("--device", default="auto", help="auto | cpu | cuda")
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--no-resume", action="store_true",
                   help="evaluate everything again instead of reusing the finished items of an interrupted "
                        "evaluation into --out (kept in --out/partial/ until the report is written)")
    from ..cli import add_quiet_argument
    add_quiet_argument(e, "warnings only")
    e.set_defaults(func=cmd_eval)

    c = sub.add_parser("compare", help="several evaluation reports side by side (table and plots)",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       description="Put reports written by `robustsuite eval` side by side: one table (metrics x "
                                   "report:model) and shared plots; warns where the reports were evaluated on "
                                   "different samples.",
                       epilog="example:\n  robustsuite compare runs/a/eval runs/b/eval --out runs/compare")
    c.add_argument("reports", nargs="+", metavar="REPORT", help="report folders (or their report.json)")
    c.add_argument("--out", help="write compare.md, compare.json and plots/ here")
    c.add_argument("--names", type=_names_arg, help="report names, comma-separated (default: folder names)")
    from ..cli import add_quiet_argument
    add_quiet_argument(c, "warnings only")
    c.set_defaults(func=cmd_compare)
