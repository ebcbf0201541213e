"""``robustsuite train CONFIG``: train the model of a run config with its trainer (``train.method``)."""
from __future__ import annotations

import argparse
from pathlib import Path

from .args import add_verbosity_arguments


def cmd_train(args: argparse.Namespace) -> int:
    from ..training.config import load_config
    from ..training.distributed import is_main
    from ..training.run import train

    overrides = list(args.set or [])
    if args.seed is not None:
        overrides.append(f"seed={args.seed}")
    cfg = load_config(args.config, overrides)
    out = Path(args.out) if args.out else Path("runs") / cfg.name
    result = train(cfg, out, device=args.device, resume=not args.no_resume, quiet=args.quiet)
    if not is_main():  # under torchrun only rank 0 reports
        return 0
    last = result.history[-1] if result.history else {}
    print(f"trained {cfg.name}: {len(result.history)} epochs -> {result.best} (last: {result.last})")
    shown = {k: v for k, v in last.items() if k.startswith("val_") and isinstance(v, float)}
    if shown:
        print("final validation: " + ", ".join(f"{k[4:]}={v:.4f}" for k, v in shown.items()))
    return 0


def _names_epilog() -> str:
    """The model and data set names a config may use, read from their registries when the parser is built
    (so a model or data set registered by the user's own code is listed too)."""
    import textwrap

    from .. import data, models

    lines = [("model.name", models.available()), ("data.name", data.available())]
    return "\n\nnames a config may use:" + "".join(
        "\n" + textwrap.fill(", ".join(names), 100, initial_indent=f"  {key}: ", subsequent_indent="    ")
        for key, names in lines)


def add_parser(sub) -> None:
    """Register ``train`` on the CLI's subparsers."""
    t = sub.add_parser("train", help="train a model from a YAML config",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       description="Train the model of a config with its trainer (train.method). Writes best.pt "
                                   "(best validation score), last.pt (resumable), config.yaml (resolved) and "
                                   "history.json into --out; an interrupted run resumes from last.pt.",
                       epilog="example:\n  robustsuite train configs/digits_crown_ibp.yaml --set train.epochs=5 --out runs/quick"
                              + _names_epilog())
    t.add_argument("config", help="YAML config (see configs/)")
    t.add_argument("--out", help="output folder (default runs/<config name>)")
    t.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override a config key, e.g. --set train.epochs=5 (repeatable)")
    t.add_argument("--seed", type=int, help="shortcut for --set seed=N")
    t.add_argument("--device", default=None, help="auto | cpu | cuda (default: the config's)")
    t.add_argument("--no-resume", action="store_true", help="start over even if last.pt exists")
    add_verbosity_arguments(t)
    t.set_defaults(func=cmd_train)
