"""The ``robustsuite`` command line: a thin layer over the Python API, and the only one.

Every command lives in its own module (``train``, ``verify``, ``attack``, ``eval``, ``compare``,
``run``): it registers its parser with ``add_parser(subparsers)``, parses its arguments, calls the API
and prints. Argument types and shared options are in :mod:`.args`, the test-data options of the
checkpoint commands in :mod:`.data_args`. Errors of the package
(:class:`~robustsuite.errors.RobustSuiteError`) are printed as one paragraph without a traceback and
exit with status 2; a soundness violation exits with status 3. Nothing outside this package parses
arguments, prints tables or chooses exit codes.
"""
from __future__ import annotations

import argparse
import logging
import sys
import textwrap

from ..errors import RobustSuiteError
from . import attack, compare, run, train, verify
from . import eval as eval_command
from .args import add_quiet_argument

__all__ = ["main", "build_parser", "add_quiet_argument"]

log = logging.getLogger("robustsuite")

#: the commands in the order ``--help`` lists them
COMMANDS = (train, verify, attack, eval_command, compare, run)


def _setup_logging(quiet: bool) -> None:
    logging.basicConfig(level=logging.WARNING if quiet else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="robustsuite",
        description="Certified and empirical adversarial robustness for PyTorch, side by side.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=textwrap.dedent("""\
            examples:
              robustsuite train configs/digits_crown_ibp.yaml --out runs/crown_ibp
              robustsuite verify runs/crown_ibp/best.pt --eps 0.1,0.2 --method ibp,crown-ibp,crown
              robustsuite attack runs/crown_ibp/best.pt --attack pgd --norm linf --eps 0.1
              robustsuite eval runs/crown_ibp/best.pt runs/pgd_at/best.pt --suite configs/suites/demo.yaml --out runs/eval
              robustsuite compare runs/eval runs/other_eval --out runs/compare
              robustsuite run configs/digits_study.yaml     (train every model of a study, then one report)
            """))
    p.add_argument("--quiet", action="store_true", help="no progress bars, warnings only")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    for command in COMMANDS:
        command.add_parser(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 1
    _setup_logging(getattr(args, "quiet", False))
    try:
        return int(args.func(args) or 0)
    except RobustSuiteError as e:
        print(f"robustsuite {args.command}: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # a file or folder we could not read or write: path, cause and fix, no traceback
        # (our writers raise OutputError, a RobustSuiteError, with a specific fix; this is the rest)
        from ..files import output_error
        path = e.filename if e.filename is not None else "a file"
        err = output_error(e, path, "access", fix="check that the path exists and that this user may read and "
                                                  "write it, or choose another path")
        print(f"robustsuite {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"robustsuite {args.command}: interrupted; a training run resumes from its last.pt", file=sys.stderr)
        return 130
