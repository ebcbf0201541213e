"""The ``robustsuite`` command line: a thin layer over the Python API, and the only one.

Every command lives in its own module (``train``, ``verify``, ``attack``, ``eval``, ``compare``,
``run``): it registers its parser with ``add_parser(subparsers)``, parses its arguments, calls the API
and prints. Argument types and shared options are in :mod:`.args`, the test-data options of the
checkpoint commands in :mod:`.data_args`. Errors of the package
(:class:`~robustsuite.errors.RobustSuiteError`) are printed as one paragraph without a traceback and
exit with status 2; a soundness violation exits with status 3. Nothing outside this package parses
arguments, prints tables or chooses exit codes.

The terminal (stderr) shows warnings, errors, progress bars (on a terminal) and one summary line per
finished model or stage (:mod:`robustsuite.progress`); ``--verbose`` adds every INFO line (per epoch,
per evaluated item), ``--quiet`` removes the bars and summary lines. Every INFO line also goes to the
run's log file, whatever the flags (``train.log``, ``eval.log``, ``run.log`` in the output folder).
"""
from __future__ import annotations

import argparse
import logging
import sys
import textwrap
from typing import Callable

from ..errors import RobustSuiteError
from ..progress import PACKAGE_LOGGER, PROGRESS_LOGGER
from . import attack, compare, run, train, verify
from . import eval as eval_command
from .args import QUIET_HELP, VERBOSE_HELP, add_verbosity_arguments

__all__ = ["main", "build_parser", "add_verbosity_arguments"]

log = logging.getLogger("robustsuite")

#: the commands in the order ``--help`` lists them
COMMANDS = (train, verify, attack, eval_command, compare, run)


class _Terminal(logging.Handler):
    """The command line's stderr: warnings and errors always; the summary lines of
    :data:`~robustsuite.progress.PROGRESS_LOGGER` unless quiet; every other INFO line only when verbose.
    Written through ``tqdm.write`` so a line does not tear an open progress bar; ``sys.stderr`` is looked
    up per line (a test may swap it)."""

    def __init__(self, *, quiet: bool, verbose: bool):
        super().__init__(logging.INFO)
        self.quiet, self.verbose = quiet, verbose
        self._plain = logging.Formatter("%(message)s")
        self.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))

    @staticmethod
    def _summary(record: logging.LogRecord) -> bool:
        return record.levelno < logging.WARNING and record.name == PROGRESS_LOGGER

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.WARNING or self.verbose:
            return True
        return not self.quiet and self._summary(record)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            from tqdm import tqdm
            line = self._plain.format(record) if self._summary(record) else self.format(record)
            tqdm.write(line, file=sys.stderr)
        except Exception:  # noqa: BLE001 - as logging.StreamHandler: a broken stderr must not end the run
            self.handleError(record)


def _setup_logging(quiet: bool, verbose: bool) -> Callable[[], None]:
    """Show the package's lines on stderr (see :class:`_Terminal`) and let INFO lines be made (for the
    terminal with --verbose, for the summary lines, for the run's log file); returns the undo, which
    :func:`main` calls when the command ends (tests run many commands in one process)."""
    pkg = logging.getLogger(PACKAGE_LOGGER)
    handler = _Terminal(quiet=quiet, verbose=verbose)
    level = pkg.level
    pkg.addHandler(handler)
    pkg.setLevel(logging.INFO)

    def undo() -> None:
        pkg.removeHandler(handler)
        handler.close()
        pkg.setLevel(level)
    return undo


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
    p.add_argument("--quiet", action="store_true", help=QUIET_HELP)
    p.add_argument("--verbose", action="store_true", help=VERBOSE_HELP)
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
    undo_logging = _setup_logging(getattr(args, "quiet", False), getattr(args, "verbose", False))
    code: int | None = None
    try:
        code = _run_command(args)
        return code
    finally:
        try:
            _leave_process_group(completed=code is not None and code not in _FAILED)
        finally:
            undo_logging()


#: exit statuses of a command that ended early (error, interrupt): its rank may be alone at the end
_FAILED = (2, 130)


def _leave_process_group(*, completed: bool) -> None:
    """Under torchrun: destroy the process group the command joined, before the interpreter shuts down
    (see :func:`robustsuite.training.distributed.cleanup`); after a completed command every rank waits
    for the others first, after an error or an interrupt it does not. A no-op otherwise."""
    from ..training import distributed

    distributed.cleanup(sync=completed)


def _run_command(args: argparse.Namespace) -> int:
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
