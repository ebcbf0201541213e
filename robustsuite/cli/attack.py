"""``robustsuite attack CHECKPOINT``: robust accuracy and attack success rate under one attack."""
from __future__ import annotations

import argparse

from .args import device, positive_int
from .data_args import add_data_arguments, load_test_tensors


def cmd_attack(args: argparse.Namespace) -> int:
    from ..attacks import make_attack, per_sample_robust
    from ..settings import parse_override
    from ..threats import threat_from_name
    from ..training.checkpoint import load_checkpoint, model_from_checkpoint

    ckpt = load_checkpoint(args.checkpoint)
    model = model_from_checkpoint(ckpt, device=device(args.device))
    x, y = load_test_tensors(ckpt, args)
    x, y = x.to(device(args.device)), y.to(device(args.device))
    settings = {}
    for item in args.option or []:
        path, value = parse_override(item)
        settings[".".join(path)] = value
    if args.steps is not None:
        settings["steps"] = args.steps
    atk = make_attack(args.attack, model, threat_from_name(args.norm, args.eps), **settings)
    broken_by: list[str] = []  # an ensemble's (AutoAttack's) record of which attack broke each sample

    def collect(res, rows) -> None:
        broken_by.extend(res.extras.get("records", {}).get("by", []))

    res = per_sample_robust(model, x, y, atk, on_batch=collect).summary()
    print(f"{args.attack} ({args.norm}, eps={args.eps}) on {x.shape[0]} samples: clean accuracy "
          f"{100 * res['clean_accuracy']:.2f}%, robust accuracy {100 * res['robust_accuracy']:.2f}%, "
          f"ASR {100 * res['asr']:.2f}% (over clean-correct samples)")
    if broken_by:
        from collections import Counter
        counts = Counter(broken_by)
        parts = [f"{name} {c}" for name, c in counts.items() if name not in ("robust", "clean")]
        print(f"broken first by: {', '.join(parts) or 'none'}; robust {counts.get('robust', 0)}, "
              f"misclassified without perturbation {counts.get('clean', 0)} (of {len(broken_by)})")
    return 0


def add_parser(sub) -> None:
    """Register ``attack`` on the CLI's subparsers."""
    a = sub.add_parser("attack", help="robust accuracy and attack success rate of a checkpoint under one attack",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       description="A quick empirical check: run one attack on the test split of the checkpoint's "
                                   "data set and print clean accuracy, robust accuracy and ASR.",
                       epilog="examples:\n  robustsuite attack runs/crown_ibp/best.pt --attack pgd --norm linf --eps 0.1 --steps 40\n"
                              "  robustsuite attack runs/crown_ibp/best.pt --attack autoattack --eps 0.1\n"
                              "  robustsuite attack runs/crown_ibp/best.pt --eps 0.1 --data npz --data-option path=mine.npz")
    a.add_argument("checkpoint")
    from ..attacks.registry import attack_names  # read when the parser is built: a registered attack is listed

    a.add_argument("--attack", default="pgd",
                   help="one of: " + ", ".join(attack_names()) + "; EOT for a stochastic model: --option eot=N "
                        "(" + ", ".join(attack_names(eot=True)) + ")")
    a.add_argument("--norm", default="linf", help="linf | l2 | l1")
    a.add_argument("--eps", type=float, required=True, help="radius of the threat ball (pixel units)")
    a.add_argument("--steps", type=int, help="iterations of the attack")
    a.add_argument("--option", action="append", metavar="KEY=VALUE", help="another attack setting (repeatable)")
    a.add_argument("--subset", type=positive_int, help="first N test samples only (N >= 1)")
    add_data_arguments(a)
    a.add_argument("--device", default="auto", help="auto | cpu | cuda")
    a.set_defaults(func=cmd_attack)
