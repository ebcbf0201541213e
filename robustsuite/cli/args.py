"""Argument types and options shared by the commands: radii, counts, name lists, ``--quiet`` and
``--verbose``, devices.

A type function raises :class:`argparse.ArgumentTypeError`, so argparse reports a bad value as a usage
error (exit 2) naming the option.
"""
from __future__ import annotations

import argparse

from ..errors import ConfigError

#: the exit status of a soundness violation (a certified sample misclassified or broken by an attack);
#: package errors exit 2 (see :func:`robustsuite.cli.main`)
VIOLATION_EXIT = 3


def floats(text: str) -> list[float]:
    """``"0.1,0.2"`` -> ``[0.1, 0.2]`` (at least one number)."""
    try:
        vals = [float(t) for t in str(text).split(",") if t.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None
    if not vals:
        raise argparse.ArgumentTypeError("expected at least one number")
    return vals


def radii(text: str) -> list[float]:
    """``--eps`` of verify: L-inf radii, each in (0, 1] (the rule of the config's ``eps``)."""
    from ..settings import check_linf_radii
    try:
        return check_linf_radii(floats(text), "--eps")
    except ConfigError as e:
        raise argparse.ArgumentTypeError(str(e).removeprefix("--eps: ")) from None


def positive_int(text: str) -> int:
    """An integer >= 1 (``--subset 0`` would otherwise mean 'all samples')."""
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1 (a number of samples), got {v}; leave it out for all samples")
    return v


def names(text: str) -> list[str]:
    """``"a, b,"`` -> ``["a", "b"]``."""
    return [t.strip() for t in str(text).split(",") if t.strip()]


#: what --quiet and --verbose do (the global flags and each command's)
QUIET_HELP = "no progress bars and no summary lines: warnings and errors only"
VERBOSE_HELP = ("every INFO line on the terminal (per epoch, per evaluated item); they always go to the run's "
                "log file (train.log, eval.log, run.log in the output folder)")


def add_verbosity_arguments(parser: argparse.ArgumentParser) -> None:
    """The command's ``--quiet`` and ``--verbose``. They only ever turn a flag on, so ``robustsuite
    --quiet CMD`` stays quiet (a subparser's default would overwrite the global flag's value)."""
    parser.add_argument("--quiet", action="store_true", default=argparse.SUPPRESS, help=QUIET_HELP)
    parser.add_argument("--verbose", action="store_true", default=argparse.SUPPRESS, help=VERBOSE_HELP)


def device(name: str):
    """The torch.device of a ``--device`` value (auto | cpu | cuda | cuda:N)."""
    from ..runtime import resolve_device
    return resolve_device(name)
