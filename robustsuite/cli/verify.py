"""``robustsuite verify CHECKPOINT``: certified accuracy per bound method and radius, PGD beside it.

A budget checkpoint (``kind: budgets``) is certified under its learned boxes and under the uniform
ball of equal volume instead. Exit status 3 when a certified sample is misclassified or broken by PGD
(a soundness violation).
"""
from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import ConfigError
from .args import VIOLATION_EXIT, names, positive_int, radii
from .data_args import add_data_arguments, load_test_tensors


def cmd_verify(args: argparse.Namespace) -> int:
    from ..certify.accuracy import certified_table, format_table
    from ..files import atomic_write_json
    from ..training.checkpoint import load_checkpoint, model_from_checkpoint

    ckpt = load_checkpoint(args.checkpoint)
    if ckpt.get("kind") == "budgets":  # certified under its own boxes and the uniform ball of equal volume
        return _verify_budgets(ckpt, args, *load_test_tensors(ckpt, args))
    model = model_from_checkpoint(ckpt)
    x, y = load_test_tensors(ckpt, args)
    eps = args.eps or _default_eps(ckpt)
    rows = certified_table(model, x, y, eps=eps, methods=args.method, pgd_steps=args.pgd_steps,
                           device=args.device, seed=args.seed, time_limit=args.time_limit,
                           quiet=getattr(args, "quiet", False))
    print(f"{args.checkpoint}: {x.shape[0]} test samples of {args.data or ckpt['config']['data']['name']}")
    print(format_table(rows))
    if args.out:
        atomic_write_json(args.out, {"checkpoint": str(args.checkpoint), "rows": rows})
        print(f"wrote {args.out}")
    return VIOLATION_EXIT if any(r.get("violations") for r in rows) else 0


def _default_eps(ckpt: dict) -> list[float]:
    train = ckpt.get("config", {}).get("train", {})
    e = train.get("eps_test") or train.get("eps")
    if e is None:
        raise ConfigError("--eps: the checkpoint's config has no training radius; give --eps explicitly")
    return [float(e)]


def _verify_budgets(ckpt: dict, args: argparse.Namespace, x, y) -> int:
    """``verify`` on a budget checkpoint: the table of :func:`~robustsuite.budgets.certify_budgets` at
    each ``--eps`` (default the checkpoint's test radius) with the checkpoint's rho; with ``--out``, the
    JSON report and, beside it, the budget heatmaps and the log-budget histogram (PNG)."""
    from ..budgets.certification import certify_budgets, eval_budgets, format_budget_table
    from ..budgets.plots import plot_budget_grid, plot_log_budget_histogram
    from ..budgets.trainer import budget_settings, load_budget_model
    from ..files import atomic_write_json
    from ..runtime import resolve_device

    settings = budget_settings(ckpt)
    dev = resolve_device(args.device)
    model = load_budget_model(ckpt, device=dev)
    eps_list = args.eps or [settings["eps"]]
    rho = settings["rho"]
    reports = [certify_budgets(model, x, y, eps=float(e), rho=rho, methods=args.method, pgd_steps=args.pgd_steps,
                               device=dev, seed=args.seed) for e in eps_list]
    print(f"{args.checkpoint}: {x.shape[0]} test samples of {ckpt['config']['data']['name']}, learned budgets "
          f"(rho {rho:g}) vs the uniform ball of equal volume; radii are geometric means")
    print(format_budget_table(reports))
    if args.out:
        out = Path(args.out)
        atomic_write_json(out, {"checkpoint": str(args.checkpoint), "kind": "budgets", "reports": reports})
        e0 = float(eps_list[0])
        b = eval_budgets(model, x.to(dev), e0, rho).cpu()
        mask = _irrelevant_mask(ckpt, args)
        grid = plot_budget_grid(x, b, eps=e0, rho=rho, path=out.with_name(out.stem + "_heatmaps.png"),
                                labels=y, mask=mask)
        hist = plot_log_budget_histogram(b, eps=e0, rho=rho, mask=mask,
                                         path=out.with_name(out.stem + "_log_budgets.png"))
        print(f"wrote {out}, {grid}, {hist}")
    return VIOLATION_EXIT if any(row.get("violations") for rep in reports for row in rep["rows"]) else 0


def _irrelevant_mask(ckpt: dict, args: argparse.Namespace):
    """The known label-irrelevant region of the checkpoint's test set (synthetic sets), else None."""
    from .. import data as rdata

    d = ckpt["config"]["data"]
    ds = rdata.load(d["name"], "test", root=getattr(args, "data_root", None) or d.get("root"),
                    download=bool(d.get("download", False)), **(d.get("options") or {}))
    return getattr(ds, "irrelevant_mask", None)


def _positive_float(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds > 0, got {text!r}") from None
    if not v > 0 or v != v or v == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a number of seconds > 0, got {text!r}")
    return v


def add_parser(sub) -> None:
    """Register ``verify`` on the CLI's subparsers."""
    v = sub.add_parser("verify", help="certified accuracy of a checkpoint per bound method and radius",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       description="Certify the test split of the checkpoint's data set under L-inf balls with "
                                   "each bound method, beside PGD robust accuracy. A certified sample must be "
                                   "classified correctly and survive PGD (checked per sample; a violation is "
                                   "reported loudly and exits with status 3).",
                       epilog="examples:\n  robustsuite verify runs/crown_ibp/best.pt --eps 0.1,0.2 --method ibp,crown-ibp,crown\n"
                              "  robustsuite verify runs/crown_ibp/best.pt --method milp --eps 0.1 --time-limit 30\n"
                              "  robustsuite verify runs/crown_ibp/best.pt --data npz --data-option path=mine.npz  "
                              "(your images: x (N, C, H, W), y (N,))")
    v.add_argument("checkpoint", help="a checkpoint written by robustsuite train (best.pt or last.pt)")
    v.add_argument("--eps", type=radii, help="L-inf radii in (0, 1], comma-separated (default: the training eps_test)")
    v.add_argument("--method", type=names, default=["ibp", "crown-ibp", "crown"],
                   help="bound methods: ibp, crown-ibp, crown, alpha-crown, or milp (complete verification: "
                        "PGD, CROWN, then an exact MILP per undecided sample; counts verified / falsified / "
                        "unknown) (comma-separated)")
    v.add_argument("--time-limit", type=_positive_float, default=60.0,
                   help="method milp: MILP seconds per sample; a sample not decided by then is unknown (default 60)")
    v.add_argument("--pgd-steps", type=int, default=40, help="PGD steps of the empirical column (0: off)")
    v.add_argument("--subset", type=positive_int, help="first N test samples only (N >= 1)")
    add_data_arguments(v)
    v.add_argument("--device", default="auto", help="auto | cpu | cuda")
    v.add_argument("--seed", type=int, default=0)
    v.add_argument("--out", help="also write the rows as JSON to this file")
    v.set_defaults(func=cmd_verify)
