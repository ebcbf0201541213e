"""The package's exception types.

Every error raised for bad input is a subclass of :class:`RobustSuiteError` and of the matching
builtin (``ValueError``/``TypeError``/``FileNotFoundError``), so ``except ValueError`` keeps working.
Messages name the field, what was given and what is allowed.
"""
from __future__ import annotations


class RobustSuiteError(Exception):
    """Base class of every error robustsuite raises on purpose."""


class ConfigError(RobustSuiteError, ValueError):
    """A configuration value is missing, unknown, of the wrong type or out of range."""


class InputError(RobustSuiteError, ValueError):
    """A tensor argument has the wrong shape, dtype, range, or contains NaN/inf."""


class InputTypeError(RobustSuiteError, TypeError):
    """An argument has the wrong Python type."""


class UnknownNameError(RobustSuiteError, ValueError):
    """An unknown method, model, data set or attack name; the message lists the known ones."""


class UnsupportedModelError(RobustSuiteError, ValueError):
    """The model contains something an operation cannot handle soundly (e.g. noise layers in bounds)."""


class DataNotFoundError(RobustSuiteError, FileNotFoundError):
    """A data set is not on disk; the message says where we looked and how to get it."""


class CheckpointError(RobustSuiteError, ValueError):
    """A checkpoint file is missing, corrupt, or does not match the model it is loaded into."""


def unknown(field: str, given: object, allowed) -> UnknownNameError:
    """Build the standard error for an unknown name."""
    choices = ", ".join(sorted(map(str, allowed)))
    return UnknownNameError(f"{field}: unknown value {given!r}; choose one of: {choices}")


class OutputError(RobustSuiteError, OSError):
    """An output file or folder cannot be written (disk full, no permission, a file in the way, the
    folder is in use by another run); the message names the path, the cause and the fix."""

    def __str__(self) -> str:
        return self.strerror if isinstance(self.strerror, str) else super().__str__()
