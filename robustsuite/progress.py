"""What a person sees while a run goes on, and what the run's log file keeps.

Three channels, chosen so that the terminal stays short and nothing is lost:

- **progress bars** (:func:`bar`): tqdm bars with rate and ETA, one per model and stage; shown only on a
  terminal (stderr is a TTY) and when not asked to be quiet, so test logs and CI output stay clean;
- **summary lines** (:func:`summary`): one line per finished model or stage, logged at INFO on this
  module's logger, ``robustsuite.progress``; the command line shows this logger's INFO lines by default
  while every other INFO line (per epoch, per item) shows only with ``--verbose``;
- **the run's log file** (:func:`run_log`): every INFO line of the ``robustsuite`` loggers, with time
  stamps, appended to ``train.log`` / ``eval.log`` / ``run.log`` in the output folder.

Warnings and errors are never hidden by any of these (the command line shows them even with ``--quiet``).
The API does not print: the command line (:mod:`robustsuite.cli`) decides what reaches the terminal.
"""
from __future__ import annotations

import contextlib
import logging
import sys
from pathlib import Path
from typing import Iterable, Iterator

#: the logger of the summary lines (this module's own): shown on the terminal by default
log = logging.getLogger(__name__)
PROGRESS_LOGGER = log.name
#: the package's root logger; a log file collects its INFO lines
PACKAGE_LOGGER = "robustsuite"
#: the line format of a log file
FILE_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

__all__ = ["show_bars", "bar", "summary", "run_log", "PROGRESS_LOGGER", "PACKAGE_LOGGER"]


def show_bars(quiet: bool = False) -> bool:
    """Progress bars only on a terminal and when not asked to be quiet."""
    return not quiet and sys.stderr.isatty()


def bar(iterable: Iterable | None = None, *, desc: str, total: int | None = None, quiet: bool = False,
        leave: bool = False, **kw):
    """A tqdm bar on stderr (rate and ETA), disabled when :func:`show_bars` says no: then it only
    passes ``iterable`` through (``update``/``set_postfix`` are no-ops)."""
    from tqdm.auto import tqdm
    return tqdm(iterable, desc=desc, total=total, leave=leave, disable=not show_bars(quiet), dynamic_ncols=True,
                **kw)


def summary(msg: str, *args) -> None:
    """One line about a finished model or stage: shown on the terminal by default (not with ``--quiet``)."""
    log.info(msg, *args)


class _LogFile(logging.Handler):
    """Appends each record to ``path``, opening and closing the file per record: the log survives its
    folder being replaced whole (:func:`robustsuite.files.replace_folder`: a report folder is, and the
    report carries its ``eval.log`` over), and no file stays open after the run. A log file that cannot be
    written is skipped silently: the run's own outputs report their write errors, a log line is not
    worth a failed run (and a logging traceback would break the command line's one-paragraph errors)."""

    def __init__(self, path: Path):
        super().__init__(logging.INFO)
        self.path = path
        self.setFormatter(logging.Formatter(FILE_FORMAT))

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record)
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(line + "\n")
        except (OSError, ValueError):
            pass


class _Forward(logging.Handler):
    """Passes a record on as propagation would have before :func:`run_log` lowered the package logger's
    level: to the handlers that were on it and on its ancestors (or Python's last-resort handler when
    there were none), only when the record is at least ``shown`` (the level those handlers saw before)."""

    def __init__(self, logger: logging.Logger, handlers: list[logging.Handler], propagate: bool, shown: int):
        super().__init__(logging.NOTSET)
        self.logger, self.handlers, self.propagate, self.shown = logger, handlers, propagate, shown

    def handle(self, record: logging.LogRecord) -> bool:  # no lock of its own: the targets take theirs
        if record.levelno < self.shown:
            return False
        found = 0
        for h in self.handlers:
            found += 1
            if record.levelno >= h.level:
                h.handle(record)
        c = self.logger.parent if self.propagate else None
        while c is not None:
            for h in c.handlers:
                found += 1
                if record.levelno >= h.level:
                    h.handle(record)
            c = c.parent if c.propagate else None
        if not found and logging.lastResort is not None and record.levelno >= logging.lastResort.level:
            logging.lastResort.handle(record)
        return True

    def emit(self, record: logging.LogRecord) -> None:  # pragma: no cover - handle() does the work
        pass


@contextlib.contextmanager
def run_log(path: str | Path, *, enabled: bool = True) -> Iterator[Path | None]:
    """Append every INFO (and higher) line of the ``robustsuite`` loggers to ``path`` for the block.

    The file is created with the first line (the folder must exist by then) and appended to by a
    later run in the same folder (a resumed run continues its log). Nested blocks each get every line
    (a study's ``run.log`` and its models' ``train.log``). What any other handler shows does not change:
    when the package logger did not make INFO records before, it does for the block, and the handlers
    that were there (on it, its ancestors, or Python's last resort) get only the records they got before.
    ``enabled=False`` (ranks other than 0 under torchrun) does nothing. The handlers are removed at the
    end of the block, however it ends.
    """
    if not enabled:
        yield None
        return
    path = Path(path)
    pkg = logging.getLogger(PACKAGE_LOGGER)
    handler = _LogFile(path)
    shown = pkg.getEffectiveLevel()
    saved_level, saved_propagate, saved_handlers = pkg.level, pkg.propagate, list(pkg.handlers)
    if shown > logging.INFO:  # INFO records are made for the file, and kept from everyone else
        forward = _Forward(pkg, saved_handlers, saved_propagate, shown)
        for h in saved_handlers:
            pkg.removeHandler(h)
        pkg.addHandler(forward)
        pkg.propagate = False
        pkg.setLevel(logging.INFO)
    pkg.addHandler(handler)
    try:
        yield path
    finally:
        pkg.removeHandler(handler)
        handler.close()
        if shown > logging.INFO:
            pkg.removeHandler(forward)
            for h in saved_handlers:
                pkg.addHandler(h)
            pkg.propagate = saved_propagate
            pkg.setLevel(saved_level)
