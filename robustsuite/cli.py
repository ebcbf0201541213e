"""The ``robustsuite`` command line: a thin layer over the Python API.

Every command parses its arguments and calls one API function; errors of the package
(:class:`~robustsuite.errors.RobustSuiteError`) are printed as one paragraph without a traceback
and exit with status 2.
"""
from __future__ import annotations

import argparse
import logging
import sys
import textwrap
from pathlib import Path

from .cli_data import add_data_arguments, check_data_fits, select_test_data
from .errors import ConfigError, RobustSuiteError

log = logging.getLogger("robustsuite")


def _floats(text: str) -> list[float]:
    try:
        vals = [float(t) for t in str(text).split(",") if t.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None
    if not vals:
        raise argparse.ArgumentTypeError("expected at least one number")
    return vals


def _radii(text: str) -> list[float]:
    """``--eps`` of verify: L-inf radii, each in (0, 1] (the rule of the config's ``eps``)."""
    from .settings import check_linf_radii
    try:
        return check_linf_radii(_floats(text), "--eps")
    except ConfigError as e:
        raise argparse.ArgumentTypeError(str(e).removeprefix("--eps: ")) from None


def _positive_int(text: str) -> int:
    """An integer >= 1 (``--subset 0`` would otherwise mean 'all samples')."""
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1 (a number of samples), got {v}; leave it out for all samples")
    return v


def add_quiet_argument(parser: argparse.ArgumentParser, help: str = "no progress bars, warnings only") -> None:
    """The subcommand's ``--quiet``: it only ever turns quiet on, so ``robustsuite --quiet CMD`` stays
    quiet (a subparser's default would overwrite the global flag's value)."""
    parser.add_argument("--quiet", action="store_true", default=argparse.SUPPRESS, help=help)


def _names(text: str) -> list[str]:
    return [t.strip() for t in str(text).split(",") if t.strip()]


def _setup_logging(quiet: bool) -> None:
    logging.basicConfig(level=logging.WARNING if quiet else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)


# ------------------------------------------------------------------------------------ commands
def cmd_train(args: argparse.Namespace) -> int:
    from .training.config import load_config
    from .training.run import train

    overrides = list(args.set or [])
    if args.seed is not None:
        overrides.append(f"seed={args.seed}")
    cfg = load_config(args.config, overrides)
    out = Path(args.out) if args.out else Path("runs") / cfg.name
    result = train(cfg, out, device=args.device, resume=not args.no_resume, quiet=args.quiet)
    from .training.distributed import is_main
    if not is_main():  # under torchrun only rank 0 reports
        return 0
    last = result.history[-1] if result.history else {}
    print(f"trained {cfg.name}: {len(result.history)} epochs -> {result.best} (last: {result.last})")
    shown = {k: v for k, v in last.items() if k.startswith("val_") and isinstance(v, float)}
    if shown:
        print("final validation: " + ", ".join(f"{k[4:]}={v:.4f}" for k, v in shown.items()))
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    from .certify.evaluate import certified_table, format_table
    from .files import atomic_write_json
    from .training.checkpoint import load_checkpoint, model_from_checkpoint

    ckpt = load_checkpoint(args.checkpoint)
    if ckpt.get("kind") == "budgets":  # certified under its own boxes and the uniform ball of equal volume
        from .budgets.evaluate import verify_command
        return verify_command(ckpt, args, *_test_tensors(ckpt, args))
    model = model_from_checkpoint(ckpt)
    x, y = _test_tensors(ckpt, args)
    eps = args.eps or _default_eps(ckpt)
    rows = certified_table(model, x, y, eps=eps, methods=args.method, pgd_steps=args.pgd_steps,
                           device=args.device, seed=args.seed)
    print(f"{args.checkpoint}: {x.shape[0]} test samples of {args.data or ckpt['config']['data']['name']}")
    print(format_table(rows))
    if args.out:
        atomic_write_json(args.out, {"checkpoint": str(args.checkpoint), "rows": rows})
        print(f"wrote {args.out}")
    return 3 if any(r.get("violations") for r in rows) else 0


def cmd_attack(args: argparse.Namespace) -> int:
    from . import threat_from_name
    from .attacks.registry import make_attack, robust_accuracy
    from .training.checkpoint import load_checkpoint, model_from_checkpoint

    ckpt = load_checkpoint(args.checkpoint)
    model = model_from_checkpoint(ckpt, device=_device(args.device))
    x, y = _test_tensors(ckpt, args)
    x, y = x.to(_device(args.device)), y.to(_device(args.device))
    settings = {}
    for item in args.option or []:
        from .settings import parse_override
        path, value = parse_override(item)
        settings[".".join(path)] = value
    if args.steps is not None:
        settings["steps"] = args.steps
    atk = make_attack(args.attack, model, threat_from_name(args.norm, args.eps), **settings)
    res = robust_accuracy(model, x, y, atk)
    print(f"{args.attack} ({args.norm}, eps={args.eps}) on {x.shape[0]} samples: clean accuracy "
          f"{100 * res['clean_accuracy']:.2f}%, robust accuracy {100 * res['robust_accuracy']:.2f}%, "
          f"ASR {100 * res['asr']:.2f}% (over clean-correct samples)")
    return 0


# ------------------------------------------------------------------------------------ helpers
def _device(name: str):
    from .runtime import resolve_device
    return resolve_device(name)


def _default_eps(ckpt: dict) -> list[float]:
    train = ckpt.get("config", {}).get("train", {})
    e = train.get("eps_test") or train.get("eps")
    if e is None:
        raise ConfigError("--eps: the checkpoint's config has no training radius; give --eps explicitly")
    return [float(e)]


def _test_tensors(ckpt: dict, args: argparse.Namespace):
    """(x float32 (N, C, H, W) in [0, 1], y int64 (N,)): the test split the command runs on (the
    checkpoint's data set unless --data/--data-option say otherwise), checked against the model."""
    from . import data as rdata

    test, _ = select_test_data((ckpt.get("config") or {}).get("data"), args)
    check_data_fits(test, {str(args.checkpoint): ckpt.get("model_spec")})
    if args.subset:
        test = rdata.subset(test, n=args.subset)
    return rdata.as_tensors(test)


# ------------------------------------------------------------------------------------ parser
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

    t = sub.add_parser("train", help="train a model from a YAML config",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       description="Train the model of a config with its trainer (train.method). Writes best.pt "
                                   "(best validation score), last.pt (resumable), config.yaml (resolved) and "
                                   "history.json into --out; an interrupted run resumes from last.pt.",
                       epilog="example:\n  robustsuite train configs/digits_crown_ibp.yaml --set train.epochs=5 --out runs/quick")
    t.add_argument("config", help="YAML config (see configs/)")
    t.add_argument("--out", help="output folder (default runs/<config name>)")
    t.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override a config key, e.g. --set train.epochs=5 (repeatable)")
    t.add_argument("--seed", type=int, help="shortcut for --set seed=N")
    t.add_argument("--device", default=None, help="auto | cpu | cuda (default: the config's)")
    t.add_argument("--no-resume", action="store_true", help="start over even if last.pt exists")
    add_quiet_argument(t, "no progress bars")
    t.set_defaults(func=cmd_train)

    v = sub.add_parser("verify", help="certified accuracy of a checkpoint per bound method and radius",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       description="Certify the test split of the checkpoint's data set under L-inf balls with "
                                   "each bound method, beside PGD robust accuracy. A certified sample must be "
                                   "classified correctly and survive PGD (checked per sample; a violation is "
                                   "reported loudly and exits with status 3).",
                       epilog="examples:\n  robustsuite verify runs/crown_ibp/best.pt --eps 0.1,0.2 --method ibp,crown-ibp,crown\n"
                              "  robustsuite verify runs/crown_ibp/best.pt --data npz --data-option path=mine.npz  "
                              "(your images: x (N, C, H, W), y (N,))")
    v.add_argument("checkpoint", help="a checkpoint written by robustsuite train (best.pt or last.pt)")
    v.add_argument("--eps", type=_radii, help="L-inf radii in (0, 1], comma-separated (default: the training eps_test)")
    v.add_argument("--method", type=_names, default=["ibp", "crown-ibp", "crown"],
                   help="bound methods: ibp, crown-ibp, crown, alpha-crown (comma-separated)")
    v.add_argument("--pgd-steps", type=int, default=40, help="PGD steps of the empirical column (0: off)")
    v.add_argument("--subset", type=_positive_int, help="first N test samples only (N >= 1)")
    add_data_arguments(v)
    v.add_argument("--device", default="auto", help="auto | cpu | cuda")
    v.add_argument("--seed", type=int, default=0)
    v.add_argument("--out", help="also write the rows as JSON to this file")
    v.set_defaults(func=cmd_verify)

    a = sub.add_parser("attack", help="robust accuracy and attack success rate of a checkpoint under one attack",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       description="A quick empirical check: run one attack on the test split of the checkpoint's "
                                   "data set and print clean accuracy, robust accuracy and ASR.",
                       epilog="examples:\n  robustsuite attack runs/crown_ibp/best.pt --attack pgd --norm linf --eps 0.1 --steps 40\n"
                              "  robustsuite attack runs/crown_ibp/best.pt --eps 0.1 --data npz --data-option path=mine.npz")
    a.add_argument("checkpoint")
    a.add_argument("--attack", default="pgd", help="fgsm, bim, pgd, mim, cw, apgd, boundary, pixel")
    a.add_argument("--norm", default="linf", help="linf | l2 | l1")
    a.add_argument("--eps", type=float, required=True, help="radius of the threat ball (pixel units)")
    a.add_argument("--steps", type=int, help="iterations of the attack")
    a.add_argument("--option", action="append", metavar="KEY=VALUE", help="another attack setting (repeatable)")
    a.add_argument("--subset", type=_positive_int, help="first N test samples only (N >= 1)")
    add_data_arguments(a)
    a.add_argument("--device", default="auto", help="auto | cpu | cuda")
    a.set_defaults(func=cmd_attack)

    from .eval.commands import add_eval_parsers
    add_eval_parsers(sub)  # eval, compare
    from .study import add_run_parser
    add_run_parser(sub)  # run
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
        from .files import output_error
        path = e.filename if e.filename is not None else "a file"
        err = output_error(e, path, "access", fix="check that the path exists and that this user may read and "
                                                  "write it, or choose another path")
        print(f"robustsuite {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"robustsuite {args.command}: interrupted; a training run resumes from its last.pt", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
