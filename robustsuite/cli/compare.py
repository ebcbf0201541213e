"""``robustsuite compare REPORT...``: several evaluation reports side by side (table and plots)."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..errors import ConfigError
from .args import add_verbosity_arguments, names


def cmd_compare(args: argparse.Namespace) -> int:
    from ..eval.loading import model_names
    from ..eval.compare import compare_reports
    from ..eval.report import Report

    reports = [Report.load(p) for p in args.reports]
    labels = args.names or model_names([str(Path(p) / "report.json") if Path(p).is_dir() else p for p in args.reports])
    if len(labels) != len(reports):
        raise ConfigError(f"--names: give one name per report ({len(reports)}), got {len(labels)}")
    text, notes = compare_reports(reports, labels, args.out)
    print(text)
    for n in notes:
        print(f"WARNING: {n}", file=sys.stderr)
    if args.out:
        print(f"wrote {Path(args.out) / 'compare.md'}, compare.json, plots/")
    return 0


def add_parser(sub) -> None:
    """Register ``compare`` on the CLI's subparsers."""
    c = sub.add_parser("compare", help="several evaluation reports side by side (table and plots)",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       description="Put reports written by `robustsuite eval` side by side: one table (metrics x "
                                   "report:model) and shared plots; warns where the reports were evaluated on "
                                   "different samples.",
                       epilog="example:\n  robustsuite compare runs/a/eval runs/b/eval --out runs/compare")
    c.add_argument("reports", nargs="+", metavar="REPORT", help="report folders (or their report.json)")
    c.add_argument("--out", help="write compare.md, compare.json and plots/ here")
    c.add_argument("--names", type=names, help="report names, comma-separated (default: folder names)")
    add_verbosity_arguments(c)
    c.set_defaults(func=cmd_compare)
