"""AutoAttack ``standard``: our ensemble vs the reference implementation (``pyautoattack`` 0.2.0).

Per model x threat set (the digits CROWN-IBP and PGD-AT models as ``make demo`` trains them; L-inf
0.1 and L2 0.5, the demo suite's smaller L2 radius, where the models keep 54-73 % against PGD):

* the ensemble: robust accuracy and process CPU time of ours (``robustsuite.attacks.AutoAttack``,
  ``version="standard"``, seed 0) vs the reference's ``AutoAttack(version="standard", seed=0)``,
  both with their default settings, runs interleaved (``--repeats``, order rotated). Goals:
  robust accuracy <= the reference's + 1 sample, CPU time <= 0.5x the reference's;
* per component (APGD-CE, APGD-T, FAB-T, Square with AutoAttack's ``standard`` settings), in
  cascade order, each pair (ours, the reference's) on the same samples: those still robust
  after our earlier components. ``model_share`` estimates how much of our time the model itself
  takes (the component's model passes, from ``queries``, times the measured per-row cost of a bare
  forward or forward + backward at that batch size): the floor any implementation of the same
  attack pays, which bounds how far below the reference's time ours can go without doing less
  (an estimate: FAB-T stacks its last 8 targets into one batch, where a row costs less, so its
  share can read above 1). ``model_rows`` counts, with the same forward hook for both, the rows each
  implementation hands the model (with autograd on: forward + backward; off: forward only), and
  ``model_floor_s`` prices them at the measured per-row cost; per cell,
  ``floor_reference_over_reference_cpu`` is the reference's model work alone over its time: no
  implementation doing the same work can go below that fraction of the reference's time
  (``floor_ours_over_reference_cpu``: the same for our counted work, which skips FAB's extra
  forward passes).

Without ``robustsuite.attacks.AutoAttack`` in the tree, "ours" is the cascade of the components
(recorded as ``ours_impl``). One intra-op thread and CPU time by default (the machine may be
shared). The models are trained once into ``--cache`` (``configs/digits_crown_ibp.yaml``;
``configs/digits_pgd_at.yaml`` with the ``set`` list of ``configs/digits_study.yaml``), or taken
from ``--models name=path.pt``. Results: ``benchmarks/results/autoattack.json``.

``--cifar-shaped``: timing only, on a random-weight CIFAR-shaped model (3x32x32, 10 classes;
``--cifar-model``, ResNet-20 by default) and random images labelled with the model's own
predictions, on ``--device``; components run on all samples (with random weights nearly every
sample breaks at once, so a cascade would time next to nothing). Written to
``benchmarks/results/autoattack_cifar_<device>.json``.

Usage::

    .venv/bin/python -m benchmarks.bench_autoattack [--quick] [--n 450] [--repeats 3] [--threads 1]
        [--models crown_ibp=PATH pgd_at=PATH] [--cache runs/bench_autoattack] [--norms linf l2]
    .venv/bin/python -m benchmarks.bench_autoattack --cifar-shaped --device cuda --n 500
    .venv/bin/python -m benchmarks.bench_autoattack --combine linf.json l2.json   # one file from two processes
"""
from __future__ import annotations

import argparse
import logging
import statistics
import sys
import time
import warnings
from pathlib import Path
from typing import Callable

import torch
import yaml

from benchmarks.model_calls import ModelCalls
from benchmarks.provenance import provenance

log = logging.getLogger("bench_autoattack")
ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
#: the threat sets: (our norm name, the reference's, radius)
THREATS = {"linf": ("Linf", 0.1), "l2": ("L2", 0.5)}
SEED = 0
COMPONENTS = ("apgd-ce", "apgd-t", "fab-t", "square")


# --- models and data ---------------------------------------------------------------------------

def study_overrides(name: str) -> list[str]:
    """The ``set`` list ``configs/digits_study.yaml`` (the demo) applies to model ``name``."""
    study = yaml.safe_load((ROOT / "configs" / "digits_study.yaml").read_text())
    return list(study["models"][name].get("set", []))


def demo_model(name: str, cache: Path) -> torch.nn.Module:
    """The demo's ``name`` model, trained into ``cache/name`` (a finished run is reused)."""
    from robustsuite.training import model_from_checkpoint
    from robustsuite.training.config import load_config
    from robustsuite.training.run import train

    config = {"crown_ibp": "configs/digits_crown_ibp.yaml", "pgd_at": "configs/digits_pgd_at.yaml"}[name]
    cfg = load_config(ROOT / config, study_overrides(name) + [f"seed={SEED}", "device=cpu"])
    t0 = time.perf_counter()
    res = train(cfg, cache / name, resume=True, quiet=True)
    log.info("model %s: %s (%.0f s)", name, res.best, time.perf_counter() - t0)
    return model_from_checkpoint(res.best)


def digits_test(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    from robustsuite import data

    x, y = data.as_tensors(data.load("digits", "test"))
    return x[:n].contiguous(), y[:n].contiguous()


def cifar_shaped(model_name: str, n: int, device: torch.device) -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor]:
    """A random-weight model on 3x32x32 (10 classes) and ``n`` random images with its own labels."""
    from robustsuite.models import build

    torch.manual_seed(SEED)
    options = {"depth": 20} if model_name == "resnet_v1" else {}
    model = build(model_name, (3, 32, 32), 10, **options).to(device).eval()
    x = torch.rand(n, 3, 32, 32, generator=torch.Generator().manual_seed(SEED)).to(device)
    with torch.no_grad():
        y = model(x).argmax(1)
    return model, x, y


# --- the attacks ---------------------------------------------------------------------------------

def threat_of(norm: str, eps: float):
    from robustsuite.threats import L2Ball, LinfBall

    return LinfBall(eps) if norm == "linf" else L2Ball(eps)


def ours_component(name: str, model, threat):
    """Our component with AutoAttack's ``standard`` settings (paper defaults)."""
    from robustsuite.attacks import APGD, FAB, Square

    if name == "apgd-ce":
        return APGD(model, threat, loss="ce", steps=100, restarts=1, seed=SEED)
    if name == "apgd-t":
        return APGD(model, threat, loss="dlr", targeted=True, n_target_classes=9, steps=100, seed=SEED)
    if name == "fab-t":
        return FAB(model, threat, targeted=True, n_target_classes=9, steps=100, restarts=1, seed=SEED)
    return Square(model, threat, n_queries=5000, p_init=0.8, seed=SEED)


def reference_component(name: str, model, norm: str, eps: float, device):
    """The reference's component exactly as its ``AutoAttack(version='standard')`` configures it."""
    from pyautoattack.autopgd_base import APGDAttack, APGDAttack_targeted
    from pyautoattack.fab_pt import FABAttack_PT
    from pyautoattack.square import SquareAttack

    rn = THREATS[norm][0]
    if name == "apgd-ce":
        return APGDAttack(model, n_restarts=1, n_iter=100, eps=eps, norm=rn, eot_iter=1, rho=.75, seed=SEED,
                          device=device, loss="ce")
    if name == "apgd-t":
        return APGDAttack_targeted(model, n_restarts=1, n_iter=100, eps=eps, norm=rn, eot_iter=1, rho=.75,
                                   seed=SEED, device=device, n_target_classes=9)
    if name == "fab-t":
        return FABAttack_PT(model, n_restarts=1, n_iter=100, eps=eps, seed=SEED, norm=rn, verbose=False,
                            device=device, targeted=True, n_target_classes=9)
    return SquareAttack(model, p_init=.8, n_queries=5000, eps=eps, norm=rn, n_restarts=1, seed=SEED,
                        verbose=False, device=device, resc_schedule=False)


def ours_impl() -> str:
    try:
        from robustsuite.attacks import AutoAttack  # noqa: F401
        return "robustsuite.attacks.AutoAttack"
    except ImportError:
        return "cascade of robustsuite's components (no robustsuite.attacks.AutoAttack in this tree)"


def ours_ensemble(model, norm: str, eps: float, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-sample robustness (B,) bool under our ``standard`` ensemble."""
    threat = threat_of(norm, eps)
    with torch.no_grad():
        robust = model(x).argmax(1) == y
    try:
        from robustsuite.attacks import AutoAttack
    except ImportError:
        AutoAttack = None
    if AutoAttack is not None:
        res = AutoAttack(model, threat, version="standard", seed=SEED).run(x, y)
        return robust & ~res.success
    for name in COMPONENTS:  # the cascade: each attack on the samples still robust
        idx = robust.nonzero().squeeze(1)
        if idx.numel() == 0:
            break
        res = ours_component(name, model, threat).run(x[idx], y[idx])
        robust[idx[res.success]] = False
    return robust


def reference_ensemble(model, norm: str, eps: float, x: torch.Tensor, y: torch.Tensor, device) -> torch.Tensor:
    """Per-sample robustness (B,) bool under the reference's ``standard`` AutoAttack."""
    from pyautoattack import AutoAttack

    aa = AutoAttack(model, norm=THREATS[norm][0], eps=eps, seed=SEED, version="standard", device=device)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        x_adv, _ = aa.run_standard_evaluation(x, y)
    with torch.no_grad():
        return model(x_adv).argmax(1) == y


# --- timing ---------------------------------------------------------------------------------------

def cpu_timed(fn: Callable[[], object], device: torch.device) -> tuple[object, float, float]:
    """(result, process CPU seconds, wall seconds) of one call (synchronized on an accelerator)."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    sync()
    w0, c0 = time.perf_counter(), time.process_time()
    out = fn()
    sync()
    return out, time.process_time() - c0, time.perf_counter() - w0


def interleaved(runs: dict[str, Callable[[], object]], repeats: int, device, shift: int = 0
                ) -> tuple[dict, dict, dict]:
    """Each run ``repeats`` times, the order rotated per repeat (starting ``shift`` places on) so
    neighbours share the machine's load. Returns ({name: [results]}, {name: [cpu s]}, {name: [wall s]})."""
    names = list(runs)
    out = {n: [] for n in names}
    cpu = {n: [] for n in names}
    wall = {n: [] for n in names}
    for r in range(repeats):
        k = (r + shift) % len(names)
        for name in names[k:] + names[:k]:
            res, c, w = cpu_timed(runs[name], device)
            out[name].append(res)
            cpu[name].append(c)
            wall[name].append(w)
    return out, cpu, wall


def paired_ratio(num: list[float], den: list[float]) -> float:
    return statistics.median(a / b for a, b in zip(num, den, strict=True))


def per_row_cost(model, x: torch.Tensor, y: torch.Tensor, device, reps: int = 5) -> dict[str, float]:
    """CPU seconds per row of a bare forward and of a forward + input backward at this batch."""
    import torch.nn.functional as F

    def fwd():
        with torch.no_grad():
            model(x)

    def fwd_bwd():
        leaf = x.detach().requires_grad_(True)
        torch.autograd.grad(F.cross_entropy(model(leaf), y, reduction="sum"), leaf)

    out = {}
    for key, fn in (("forward", fwd), ("forward_backward", fwd_bwd)):
        fn()
        times = [cpu_timed(fn, device)[1] for _ in range(reps)]
        out[key] = statistics.median(times) / x.shape[0]
    return out


def components(model, norm: str, eps: float, x, y, robust: torch.Tensor, device, repeats: int,
               cascade: bool = True) -> list[dict]:
    """Each component, ours vs the reference's, on the same samples (those still robust after our
    earlier components when ``cascade``, else all of ``robust``)."""
    threat = threat_of(norm, eps)
    robust = robust.clone()
    rows = []
    for i, name in enumerate(COMPONENTS):
        idx = robust.nonzero().squeeze(1)
        if idx.numel() == 0:
            rows.append({"attack": name, "n": 0})
            continue
        xs, ys = x[idx], y[idx]
        ours = ours_component(name, model, threat)
        ref = reference_component(name, model, norm, eps, str(device))

        def run_ref():
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                adv = ref.perturb(xs, ys)
            with torch.no_grad():
                return model(adv).argmax(1) != ys

        # with one repeat the first of a pair pays the warm-up for the new batch shape: alternate it
        counters = {"ours": ModelCalls(model), "reference": ModelCalls(model)}

        def counted(key, fn):
            def run():
                with counters[key]:
                    return fn()
            return run

        outs, cpu, wall = interleaved({"ours": counted("ours", lambda: ours.run(xs, ys)),
                                       "reference": counted("reference", run_ref)}, repeats, device, shift=i)
        res = outs["ours"][0]
        cost = per_row_cost(model, xs, ys, device)
        floor = {k: c.floor_s(cost, repeats) for k, c in counters.items()}
        passes = int(res.queries.sum())       # model evaluations of ours, per row
        per_pass = cost["forward"] if name == "square" else cost["forward_backward"]
        rows.append({
            "attack": name, "n": int(idx.numel()),
            "broken_ours": int(res.success.sum()), "broken_reference": int(outs["reference"][0].sum()),
            "cpu_s_ours": statistics.median(cpu["ours"]), "cpu_s_reference": statistics.median(cpu["reference"]),
            "wall_s_ours": statistics.median(wall["ours"]), "wall_s_reference": statistics.median(wall["reference"]),
            "cpu_ratio_ours_over_reference": paired_ratio(cpu["ours"], cpu["reference"]),
            "model_passes_ours": passes, "model_share_ours": passes * per_pass / statistics.median(cpu["ours"]),
            "cpu_s_per_row": cost,
            # the same count for both implementations (forward hook): how much model work each does, and
            # what that work alone costs at this batch (an estimate; the cascade's batches shrink as samples
            # break, where a row costs more)
            "model_rows": {k: {kind: v // repeats for kind, v in c.rows.items()} for k, c in counters.items()},
            "model_floor_s": floor,
            "model_floor_over_cpu": {k: floor[k] / statistics.median(cpu[k]) for k in floor},
        })
        log.info("  %-8s n=%3d broken ours %3d / ref %3d; CPU ours %6.1f s, ref %6.1f s (%.2fx); model share %.2f; "
                 "model rows ours %s ref %s", name, rows[-1]["n"], rows[-1]["broken_ours"], rows[-1]["broken_reference"],
                 rows[-1]["cpu_s_ours"], rows[-1]["cpu_s_reference"], rows[-1]["cpu_ratio_ours_over_reference"],
                 rows[-1]["model_share_ours"], rows[-1]["model_rows"]["ours"], rows[-1]["model_rows"]["reference"])
        if cascade:
            robust[idx[res.success]] = False
    return rows


def cell(model, label: str, norm: str, eps: float, x, y, device, repeats: int, comp_repeats: int,
         cascade: bool = True) -> dict:
    """One model x threat set: the ensembles, then the components."""
    n = x.shape[0]
    with torch.no_grad():
        clean = model(x).argmax(1) == y
    outs, cpu, wall = interleaved({"ours": lambda: ours_ensemble(model, norm, eps, x, y),
                                   "reference": lambda: reference_ensemble(model, norm, eps, x, y, str(device))},
                                  repeats, device)
    acc = {k: [float(r.float().mean()) for r in v] for k, v in outs.items()}
    ratio = paired_ratio(cpu["ours"], cpu["reference"])
    rob_ours, rob_ref = acc["ours"][0], acc["reference"][0]
    strong = all(a <= b + 1.0 / n + 1e-9 for a, b in zip(acc["ours"], acc["reference"]))
    log.info("%s %s %g: robust ours %.4f ref %.4f; CPU ours %.1f s ref %.1f s (%.2fx)", label, norm, eps, rob_ours,
             rob_ref, statistics.median(cpu["ours"]), statistics.median(cpu["reference"]), ratio)
    comps = components(model, norm, eps, x, y, clean, device, comp_repeats, cascade=cascade)
    ran = [c for c in comps if c.get("n")]
    floor_ref = sum(c["model_floor_s"]["reference"] for c in ran)
    comp_ref = sum(c["cpu_s_reference"] for c in ran)
    floor_ours = sum(c["model_floor_s"]["ours"] for c in ran)
    return {
        "model": label, "norm": norm, "eps": eps, "n": n, "clean_accuracy": float(clean.float().mean()),
        "robust_accuracy_ours": rob_ours, "robust_accuracy_reference": rob_ref,
        "robust_accuracy_all_repeats": acc,
        "cpu_s_ours": statistics.median(cpu["ours"]), "cpu_s_reference": statistics.median(cpu["reference"]),
        "wall_s_ours": statistics.median(wall["ours"]), "wall_s_reference": statistics.median(wall["reference"]),
        "cpu_ratio_ours_over_reference": ratio, "cpu_all_s": cpu,
        "goal_strength_met": strong, "goal_speed_met": ratio <= 0.5, "goal_met": strong and ratio <= 0.5,
        "components": comps,
        # The model-work floor: the components' model rows (counted per implementation) times the measured
        # per-row cost, over the reference's component time. Doing the reference's work, no implementation
        # gets below floor_reference_over_reference_cpu x its time; when that exceeds 0.5, the speed goal is
        # out of reach at equal work.
        "model_floor_s": {"ours": floor_ours, "reference": floor_ref},
        "components_cpu_s": {"ours": sum(c["cpu_s_ours"] for c in ran), "reference": comp_ref},
        "floor_reference_over_reference_cpu": floor_ref / comp_ref if comp_ref else None,
        # the least our own (counted) model work could cost, over the reference's time
        "floor_ours_over_reference_cpu": floor_ours / comp_ref if comp_ref else None,
    }


# --- main ---------------------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    from robustsuite.files import atomic_write_json

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=None, help="test digits (default 450; --quick 150)")
    ap.add_argument("--repeats", type=int, default=None, help="interleaved ensemble repeats (default 3; --quick 1)")
    ap.add_argument("--component-repeats", type=int, default=1)
    ap.add_argument("--quick", action="store_true", help="150 digits, one repeat (a smoke run)")
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")
    ap.add_argument("--norms", nargs="+", choices=sorted(THREATS), default=["linf", "l2"])
    ap.add_argument("--models", nargs="*", default=[], metavar="NAME=PATH",
                    help="checkpoints to use instead of training (names: crown_ibp, pgd_at)")
    ap.add_argument("--cache", default="runs/bench_autoattack", help="where the models are trained")
    ap.add_argument("--cifar-shaped", action="store_true", help="time a random-weight 3x32x32 model instead")
    ap.add_argument("--cifar-model", default="resnet_v1", help="zoo model for --cifar-shaped (resnet_v1 = ResNet-20)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", default=None, help="result file (default benchmarks/results/autoattack.json)")
    ap.add_argument("--combine", nargs="+", default=None, metavar="FILE",
                    help="write one result file from these (e.g. one process per --norms run in parallel); "
                         "they must share commit, tree state and settings except the threat sets")
    args = ap.parse_args(argv)
    if args.combine:
        try:
            payload = combine([Path(f) for f in args.combine])
        except (OSError, ValueError, KeyError) as err:
            ap.error(f"--combine: {err}")
        out = Path(args.out) if args.out else RESULTS / "autoattack.json"
        atomic_write_json(out, payload)
        log.info("wrote %s from %d files (goal %s)", out, len(args.combine), "met" if payload["goal_met"] else "missed")
        return 0 if payload["goal_met"] else 1
    for flag, value in (("--n", args.n), ("--repeats", args.repeats), ("--component-repeats", args.component_repeats),
                        ("--threads", args.threads)):
        if value is not None and value < 1:
            ap.error(f"{flag}: must be >= 1, got {value}")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("auto-attack").setLevel(logging.WARNING)
    origin = provenance()  # the tree this run measures, taken before it starts (the tree may move on)
    torch.set_num_threads(args.threads)
    try:
        device = torch.device(args.device)
    except RuntimeError:
        ap.error(f"--device: not a torch device: {args.device!r} (e.g. cpu, cuda, cuda:1)")
    repeats = args.repeats or (1 if args.quick else 3)
    settings = {"repeats": repeats, "component_repeats": args.component_repeats, "threads": args.threads,
                "device": str(device), "seed": SEED, "quick": args.quick, "threats": {k: THREATS[k][1] for k in args.norms},
                "ours_impl": ours_impl(), "reference": "pyautoattack " + _version("pyautoattack"),
                "clock": "process CPU time" + (" (one intra-op thread)" if args.threads == 1 else "")}
    cells = []
    if args.cifar_shaped:
        n = args.n or (16 if args.quick else 500)
        model, x, y = cifar_shaped(args.cifar_model, n, device)
        settings.update(n=n, model=f"{args.cifar_model} (random weights) 3x32x32", data="random images, own labels")
        for norm in args.norms:
            eps = 8 / 255 if norm == "linf" else 0.5
            cells.append(cell(model, args.cifar_model, norm, eps, x, y, device, repeats, args.component_repeats,
                              cascade=False))
        out = Path(args.out) if args.out else RESULTS / f"autoattack_cifar_{device.type}.json"
    else:
        n = args.n or (150 if args.quick else 450)
        paths = {}
        for item in args.models:
            name, sep, path = item.partition("=")
            if not sep or name not in ("crown_ibp", "pgd_at") or not Path(path).is_file():
                ap.error(f"--models: expected NAME=PATH with NAME crown_ibp or pgd_at and PATH a checkpoint file, "
                         f"got {item!r}")
            paths[name] = path
        x, y = digits_test(n)
        x, y = x.to(device), y.to(device)
        settings.update(n=n, data="digits test split, first n", models={
            "crown_ibp": paths.get("crown_ibp", "configs/digits_crown_ibp.yaml"),
            "pgd_at": paths.get("pgd_at", "configs/digits_pgd_at.yaml + " + " ".join(study_overrides("pgd_at")))})
        for name in ("crown_ibp", "pgd_at"):
            if name in paths:
                from robustsuite.training import model_from_checkpoint
                model = model_from_checkpoint(paths[name])
            else:
                model = demo_model(name, Path(args.cache))
            model = model.to(device)
            for norm in args.norms:
                cells.append(cell(model, name, norm, THREATS[norm][1], x, y, device, repeats, args.component_repeats))
        out = Path(args.out) if args.out else RESULTS / "autoattack.json"
    payload = {"benchmark": "AutoAttack standard: ours vs pyautoattack 0.2.0", "provenance": origin,
               "command": " ".join([".venv/bin/python -m benchmarks.bench_autoattack", *(sys.argv[1:] if argv is None else argv)]),
               "settings": settings, "cells": cells, "goal_met": all(c["goal_met"] for c in cells),
               "goals": {"strength": "robust accuracy <= the reference's + 1 sample",
                         "speed": "CPU time <= 0.5x the reference's"}}
    atomic_write_json(out, payload)
    log.info("wrote %s (goal %s)", out, "met" if payload["goal_met"] else "missed")
    return 0 if payload["goal_met"] else 1


def combine(paths: list[Path]) -> dict:
    """One payload from result files of separate processes: their cells concatenated, their commands
    kept. Refuses files whose provenance (commit, dirty) or settings (other than the threat sets and
    the machine-local date) differ, so no stale or foreign half is merged."""
    import json

    parts = [json.loads(p.read_text()) for p in paths]
    first = parts[0]
    key = ("commit", "dirty", "torch", "threads")
    for p, d in zip(paths[1:], parts[1:]):
        if any(d["provenance"].get(k) != first["provenance"].get(k) for k in key):
            raise ValueError(f"{p}: provenance {({k: d['provenance'].get(k) for k in key})} differs from "
                             f"{paths[0]}'s {({k: first['provenance'].get(k) for k in key})}")
        a = {k: v for k, v in d["settings"].items() if k != "threats"}
        b = {k: v for k, v in first["settings"].items() if k != "threats"}
        if a != b:
            raise ValueError(f"{p}: settings differ from {paths[0]}'s: {a} vs {b}")
    cells = [c for d in parts for c in d["cells"]]
    settings = dict(first["settings"], threats={k: v for d in parts for k, v in d["settings"]["threats"].items()})
    return {"benchmark": first["benchmark"], "provenance": first["provenance"],
            "provenance_all": [d["provenance"] for d in parts], "command": [d["command"] for d in parts],
            "settings": settings, "cells": cells, "goal_met": all(c["goal_met"] for c in cells),
            "goals": first["goals"]}


def _version(dist: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return "not installed"


if __name__ == "__main__":
    raise SystemExit(main())
