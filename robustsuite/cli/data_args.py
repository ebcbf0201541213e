"""Which test data a checkpoint command (``verify``, ``attack``, ``eval``) runs on, and whether it fits.

By default the checkpoint's own data set (its ``config.data``), test split; ``--data NAME`` and
``--data-option KEY=VALUE`` pick another one, e.g. the user's own arrays (``--data npz --data-option
path=mine.npz``). :func:`check_data_fits` turns a shape or label mismatch into an error that names both
sides and the fix, instead of a failure deep inside the first layer.
"""
from __future__ import annotations

import argparse

from ..errors import ConfigError

__all__ = ["add_data_arguments", "select_test_data", "model_spec_of", "check_data_fits", "load_test_tensors"]


def add_data_arguments(parser: argparse.ArgumentParser) -> None:
    """--data, --data-option and --data-root: which test data a checkpoint command runs on."""
    from .. import data  # the names come from the data set registry

    parser.add_argument("--data", metavar="NAME",
                        help="run on this data set instead of the checkpoint's (e.g. npz with --data-option "
                             "path=FILE.npz; one of: " + ", ".join(data.available()) + "); it must have the "
                             "model's input shape")
    parser.add_argument("--data-option", action="append", metavar="KEY=VALUE",
                        help="an option of the data set (repeatable), e.g. path=mine.npz or size=16; without "
                             "--data it changes one of the checkpoint's data options")
    parser.add_argument("--data-root", help="data folder (default: the checkpoint's)")


def _data_options(items: list[str] | None) -> dict:
    """``["path=a.npz", "size=16"]`` -> ``{"path": "a.npz", "size": 16}`` (values read as YAML)."""
    import yaml

    options = {}
    for item in items or []:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--data-option {item!r}: expected KEY=VALUE, e.g. --data-option path=mine.npz")
        try:
            options[key.strip()] = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError as e:
            raise ConfigError(f"--data-option {item!r}: value is not valid YAML ({e})") from None
    return options


def select_test_data(ckpt_data: dict | None, args: argparse.Namespace):
    """The test split a checkpoint command runs on, and its description ``{name, split, options}``.

    ``--data NAME`` takes the data set and its options from the command line only; without it the
    checkpoint's ``config.data`` is used, with ``--data-option`` values replacing its options.
    """
    from pydantic import ValidationError

    from .. import data as rdata
    from ..errors import CheckpointError
    from ..training.config import DataConfig

    options = _data_options(getattr(args, "data_option", None))
    if getattr(args, "data", None):
        name, root, download = args.data, args.data_root, False
    else:
        if not ckpt_data:
            raise CheckpointError("checkpoint: its config has no data entry (config.data), so the test data is "
                                  "unknown; fix: name it with --data NAME [--data-option KEY=VALUE]")
        try:
            d = DataConfig.model_validate(ckpt_data)
        except ValidationError as e:
            raise CheckpointError(f"checkpoint: its data config is invalid ({e.errors()[0]['msg']}); fix: name "
                                  "the data with --data NAME [--data-option KEY=VALUE]") from None
        name, root, download = d.name, args.data_root or d.root, d.download
        options = {**d.options, **options}
    test = rdata.load(name, "test", root=root, download=download, **options)
    return test, {"name": getattr(test.info, "name", name), "split": "test", "options": options}


def model_spec_of(model) -> dict | None:
    """The zoo spec of a loaded model (a budget model's is its classifier's)."""
    spec = getattr(model, "spec", None) or getattr(getattr(model, "classifier", None), "spec", None)
    return spec if isinstance(spec, dict) else None


def check_data_fits(dataset, specs: dict[str, dict | None]) -> None:
    """Raise InputError when the images of ``dataset`` are not the input shape of every model
    (``specs``: label -> model spec with ``in_shape`` (C, H, W) and ``num_classes``), or a label is
    not one of a model's classes. A mismatch would otherwise fail deep inside the first layer."""
    from ..errors import InputError

    info = getattr(dataset, "info", None)
    shape = tuple(info.shape) if info is not None else tuple(dataset[0][0].shape)
    labels = getattr(dataset, "labels", None)
    top = int(labels.max()) if labels is not None and len(labels) else (info.num_classes - 1 if info else 0)
    name = getattr(info, "name", "data")
    for label, spec in specs.items():
        if not spec or "in_shape" not in spec:
            continue
        want = tuple(int(v) for v in spec["in_shape"])
        if shape != want:
            raise InputError(f"data: {name} images are {shape} but the model of {label} takes {want}; fix: use "
                             f"data of the model's input shape{_shape_hint(name, want)}")
        classes = int(spec.get("num_classes", top + 1))
        if top >= classes:
            raise InputError(f"data: {name} has label {top} but the model of {label} has {classes} classes "
                             f"(0 .. {classes - 1}); fix: use data whose labels are in that range")


def _shape_hint(name: str, want: tuple[int, ...]) -> str:
    """How to get ``want``-shaped images from the data set ``name``, where there is a way."""
    if name == "digits" and len(want) == 3 and want[0] == 1 and want[1] == want[2]:
        return f" (for digits: --data-option size={want[1]})"
    if name == "npz":
        return f" (for npz: store x as (N, {', '.join(map(str, want))}))"
    return ""


def load_test_tensors(ckpt: dict, args: argparse.Namespace):
    """(x float32 (N, C, H, W) in [0, 1], y int64 (N,)): the test split a checkpoint command runs on
    (the checkpoint's data set unless --data/--data-option say otherwise, the first --subset samples),
    checked against the model."""
    from .. import data as rdata

    test, _ = select_test_data((ckpt.get("config") or {}).get("data"), args)
    check_data_fits(test, {str(args.checkpoint): ckpt.get("model_spec")})
    if args.subset:
        test = rdata.subset(test, n=args.subset)
    return rdata.as_tensors(test)
