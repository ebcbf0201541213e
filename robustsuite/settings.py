"""Settings: the bottom layer every part's configuration is built on.

* :class:`Strict`: the base of every config section (pydantic v2): unknown keys are errors, values
  are validated on assignment, and a number field refuses booleans (``true`` is not 1).
* :func:`load_yaml`, :func:`parse_override`, :func:`apply_overrides`: YAML files and ``--set
  key.path=value`` overrides (applied to the raw mapping before validation).
* :func:`_format_error`: a pydantic ``ValidationError`` as one
  :class:`~robustsuite.errors.ConfigError` naming every key path, what was given and what is allowed.
* Field types every part needs: :data:`LinfRadius` (0 < eps <= 1), :data:`SafeName` (a name that
  becomes part of a path, :func:`name_problem`), :data:`DeviceName`; :class:`SubkeyError`.

This module imports only :mod:`robustsuite.errors` (and third-party packages): each part keeps its
own config classes (``training/config.py``, ``certify/config.py``, ``stochastic/config.py``, ...)
and builds them from these.
"""
from __future__ import annotations

import copy
import re
import types
import typing
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, TypeAdapter, ValidationError, ValidationInfo, field_validator

from .errors import ConfigError

__all__ = ["Strict", "SubkeyError", "LinfRadius", "check_linf_radii", "SafeName", "DeviceName", "name_problem",
           "safe_name", "MAX_NAME", "load_yaml", "parse_override", "apply_overrides", "_format_error"]


class SubkeyError(ValueError):
    """A validator's error about one key below what it validates (e.g. an attack setting of a suite
    item, ``value`` given): :func:`_format_error` appends ``key`` to the error's path."""

    def __init__(self, key: str, message: str, value: Any = None):
        super().__init__(message)
        self.key, self.value = key, value


def _takes_bool(ann: Any) -> bool:
    """Whether a field of annotation ``ann`` may hold a bool (bool, Any, or no number in it)."""
    if ann is bool or ann is Any:
        return True
    origin = typing.get_origin(ann)
    if origin is Annotated:
        return _takes_bool(typing.get_args(ann)[0])
    if origin in (typing.Union, types.UnionType):
        return any(_takes_bool(a) for a in typing.get_args(ann) if a is not type(None))
    if origin is Literal:
        return any(isinstance(a, bool) for a in typing.get_args(ann))
    return ann not in (int, float)


def _bool_for_number(ann: Any, value: Any) -> bool:
    """Whether ``value`` (or an element of it) is a bool where ``ann`` expects a number: pydantic's lax
    mode reads ``true`` as 1, so ``--set train.epochs=true`` would silently train one epoch."""
    origin = typing.get_origin(ann)
    if origin is Annotated:
        return _bool_for_number(typing.get_args(ann)[0], value)
    if origin in (typing.Union, types.UnionType):
        members = [a for a in typing.get_args(ann) if a is not type(None)]
        return len(members) == 1 and _bool_for_number(members[0], value)
    if origin in (list, tuple, set) and isinstance(value, (list, tuple)):
        args = [a for a in typing.get_args(ann) if a is not Ellipsis]
        return bool(args) and any(_bool_for_number(args[0], v) for v in value)
    if origin is dict and isinstance(value, dict):
        args = typing.get_args(ann)
        return len(args) == 2 and any(_bool_for_number(args[1], v) for v in value.values())
    return isinstance(value, bool) and not _takes_bool(ann)


class Strict(BaseModel):
    """Base of every config section: unknown keys are errors, values are validated on assignment,
    and a number field refuses booleans (``true`` is not 1)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    @field_validator("*", mode="before")
    @classmethod
    def _no_bool_for_number(cls, v: Any, info: ValidationInfo) -> Any:
        field = cls.model_fields.get(info.field_name) if info.field_name else None
        if field is not None and _bool_for_number(field.annotation, v):
            raise ValueError(f"expected a number, got the boolean {v!r}")
        return v


def _linf_radius(v: float) -> float:
    if not (0.0 < v <= 1.0):
        raise ValueError(f"an L-inf radius must be in (0, 1] (pixel units, images in [0, 1]), got {v}")
    return float(v)


#: An L-inf radius in pixel units: 0 < eps <= 1 (at 1 the ball already covers all of [0, 1]^d).
LinfRadius = Annotated[float, AfterValidator(_linf_radius)]


def check_linf_radii(values: Any, field: str = "eps") -> list[float]:
    """``values`` (a number or a list) as a list of :data:`LinfRadius`, or a :class:`ConfigError`."""
    items = values if isinstance(values, (list, tuple)) else [values]
    try:
        return TypeAdapter(list[LinfRadius]).validate_python(list(items))
    except ValidationError as e:
        raise ConfigError(f"{field}: {e.errors()[0]['msg'].removeprefix('Value error, ')}") from None


# ---------------------------------------------------------------------------------------- names
_NAME = re.compile(r"^\w(?:[\w.+ -]*[\w+-])?$")
MAX_NAME = 100


def name_problem(name: Any) -> str | None:
    """Why ``name`` cannot name a file or folder, or None when it can.

    A name is 1..100 characters: letters, digits and ``_`` (any script), then also ``.``, ``+``,
    ``-`` and spaces inside; it starts with a letter, digit or ``_`` and does not end with ``.`` or a
    space. So no ``/``, ``\\``, NUL, ``..``, hidden names, ``|`` (a record-key separator) or ``,``
    (the CLI's list separator).
    """
    if not isinstance(name, str):
        return f"expected a text name, got {type(name).__name__}"
    if not name:
        return "must not be empty"
    if len(name) > MAX_NAME:
        return f"is {len(name)} characters long; use at most {MAX_NAME}"
    if not _NAME.match(name):
        return ("use letters, digits, '_', and inside also '.', '+', '-' or spaces; it becomes a file or folder "
                "name, so no '/', '\\', '..', '|', ',' or leading '.'")
    return None


def safe_name(name: Any, field: str) -> str:
    """``name`` if it may become part of a path (see :func:`name_problem`), else a
    :class:`ConfigError` naming ``field``."""
    problem = name_problem(name)
    if problem:
        raise ConfigError(f"{field}: name {name!r} is not allowed: {problem}")
    return name


def _safe_name(v: str) -> str:
    problem = name_problem(v)
    if problem:
        raise ValueError(f"name {v!r} is not allowed: {problem}")
    return v


#: A name that becomes part of a path (a run folder, a model label, a plot file): see :func:`safe_name`.
SafeName = Annotated[str, AfterValidator(_safe_name)]


def _device_name(v: str) -> str:
    if v not in ("auto", "cpu", "cuda") and not v.startswith("cuda:"):
        raise ValueError("must be one of auto, cpu, cuda, cuda:N")
    return v


#: A ``device`` field: auto, cpu, cuda or cuda:N (resolved at run time by ``runtime.resolve_device``).
DeviceName = Annotated[str, AfterValidator(_device_name)]


# ---------------------------------------------------------------------------------------- loading
def _format_error(err: ValidationError, model: type[BaseModel], root: str = "") -> ConfigError:
    """``err`` as one :class:`ConfigError`: a line per problem, each naming the key path under ``root``
    (unknown keys with the allowed ones, missing keys, bad values with what was given)."""
    lines = []
    for e in err.errors():
        parts = [str(p) for p in e["loc"] if not str(p).startswith("function-") and p != "[key]"]
        keyed = (e.get("ctx") or {}).get("error")
        if isinstance(keyed, SubkeyError):  # the error is about a key below this field
            parts.append(keyed.key)
            e = {**e, "msg": str(keyed), "input": keyed.value}
        loc = ".".join(([root] if root else []) + parts) or "<config>"
        if e["type"] == "extra_forbidden":
            allowed = _allowed_keys(model, e["loc"][:-1])
            lines.append(f"{loc}: unknown key" + (f"; allowed keys here: {allowed}" if allowed else ""))
        elif e["type"] == "missing":
            lines.append(f"{loc}: required key is missing")
        else:
            given = e.get("input")
            given_s = "" if isinstance(given, (dict, list)) else f" (given {given!r})"
            msg = e["msg"].removeprefix("Value error, ")  # pydantic's prefix for a validator's ValueError
            lines.append(f"{loc}: {msg}{given_s}")
    return ConfigError("invalid config:\n  " + "\n  ".join(lines))


def _allowed_keys(model: Any, loc: tuple) -> str:
    for part in loc:
        field = getattr(model, "model_fields", {}).get(part)
        ann = getattr(field, "annotation", None)
        model = ann if isinstance(ann, type) and issubclass(ann, BaseModel) else None
        if model is None:
            return ""
    return ", ".join(model.model_fields)


def parse_override(item: str) -> tuple[list[str], Any]:
    """``a.b.c=value`` -> (["a", "b", "c"], value parsed as YAML)."""
    if "=" not in item:
        raise ConfigError(f"--set {item!r}: expected key.path=value (for example train.epochs=5)")
    key, raw = item.split("=", 1)
    path = [p for p in key.strip().split(".") if p]
    if not path:
        raise ConfigError(f"--set {item!r}: empty key path")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as e:
        raise ConfigError(f"--set {item!r}: value is not valid YAML ({e})") from None
    return path, value


def apply_overrides(raw: dict, overrides: list[str] | None) -> dict:
    """Return a copy of ``raw`` with every ``key.path=value`` override applied."""
    out = copy.deepcopy(raw)
    for item in overrides or []:
        path, value = parse_override(item)
        node = out
        for i, p in enumerate(path[:-1]):
            nxt = node.get(p)
            if nxt is None:
                nxt = node[p] = {}
            if not isinstance(nxt, dict):
                raise ConfigError(f"--set {item!r}: {'.'.join(path[:i + 1])} is not a section")
            node = nxt
        node[path[-1]] = value
    return out


def load_yaml(path: str | Path) -> dict:
    """Read a YAML mapping with an error that names the file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} does not exist (ready configs are in configs/)")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {str(path)!r} is not valid YAML: {e}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"config file {str(path)!r} must hold a mapping of sections (data, model, train, ...)")
    return raw

