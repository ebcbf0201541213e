"""Benchmark: learned contextual perturbation budgets (issue #4, ``budgets.md``).

(a) Learned vs uniform at equal volume on digits: for e in {0.1, 0.2} (training radius 1.2 e), a
    uniform CROWN-IBP model (rho = 1) and joint models with rho in {2, 4}, each over the seeds, all
    with the same schedule and epochs (``configs/digits_budgets.yaml``). Every model is certified on
    the 450 test digits at e: under its own learned boxes and under the uniform ball of equal
    volume (IBP and CROWN-IBP), with PGD-20 inside the learned box as the empirical check.
    Mean +- std of clean and certified accuracy. Goal: learned (own budgets) >= uniform.
    Pictures: certified accuracy vs e (mean +- std over seeds), heatmaps and log-budget histogram.
(b) The budget ratio (irrelevant / relevant geometric-mean budget) and the fraction of irrelevant
    pixels at the upper limit on ``digits_distractor`` and ``digits_border`` at rho = 4
    (``configs/digits_distractor_budgets.yaml``), plus the no-coordinates ablation on the distractor
    set. Goal: ratio >= 2 on both sets.
(d) Does context matter? At equal volume, same schedule, classifier and seeds: the uniform model
    (rho = 1), the learned *fixed* mask (``train.generator.kind: fixed``, one learned per-pixel mask for
    all images) and the learned *contextual* generator, on ``digits``, ``digits_distractor`` and
    ``digits_border``, e in {0.1, 0.2}, rho in {2, 4}. Each model is certified (IBP, CROWN-IBP) under its
    own sets with PGD inside them; each contextual model also under its own *mean mask* (the geometric
    mean of its budgets over the training set), which separates "the classifier" from "the boxes"; and
    the per-pixel spread of its log-budgets across test images measures how contextual they are.
    Picture per set: the mean mask beside a few images' deviations.
(c) Step time: one joint training step vs one uniform CROWN-IBP trainer step on the same model and
    batch (digits, batch 64), in the middle of the eps ramp (CROWN-IBP + IBP bounds) and after it
    (IBP only), for the benchmark's small CNN and for CNN-7. Interleaved repeats; the median of the
    per-repeat ratios of process CPU time (1 thread; robust on a shared machine), wall-clock beside it.
    Goal: ratio <= 1.3. The generator's own share (forward + projection + backward, no classifier)
    is timed beside it: where it alone exceeds 0.3x the uniform step, the goal is out of reach.

Training runs go to ``--runs`` (default ``runs/bench_budgets``) and resume there: rerunning the
same command continues an interrupted sweep (finished runs and their evaluations are reused).
Results: ``benchmarks/results/budgets_{equal_volume,ratio,step_time}.json`` and
``benchmarks/results/budgets_*.png`` (``--quick`` writes ``budgets_quick_*`` instead); part (d):
``benchmarks/results/budgets_context.json`` and ``budgets_context_*.png``.

    OMP_NUM_THREADS=1 .venv/bin/python -m benchmarks.bench_budgets [--quick] [--parts a,b,c]
"""
from __future__ import annotations

import argparse
import copy
import json
import logging
import statistics
import sys
import time
from pathlib import Path

import torch
import yaml

from robustsuite import data as rdata
from robustsuite.budgets import (BudgetGenerator, BudgetModel, budget_ratio, budget_spread, certify_budgets,
                                 load_budget_model, mean_mask_generator)
from robustsuite.budgets.certification import certified_curve
from robustsuite.budgets.plots import (plot_budget_context, plot_budget_grid, plot_certified_vs_eps,
                                       plot_log_budget_histogram)
from robustsuite.training.config import validate
from robustsuite.files import atomic_write_json
from robustsuite.training import load_checkpoint, model_from_checkpoint
from robustsuite.training.run import train

from .provenance import provenance

log = logging.getLogger("bench_budgets")
ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
TRAIN_FACTOR = 1.2  # training radius / test radius, as the uniform calibration config


# ------------------------------------------------------------------------------------------- configs
def _base(path: str) -> dict:
    return yaml.safe_load((ROOT / path).read_text())


def run_config(base: dict, *, name: str, seed: int, eps: float, rho: float, epochs: int | None,
               data: str | None = None, coordinates: bool = True, kind: str = "contextual") -> dict:
    """The raw config of one run: ``rho = 1`` is the uniform CROWN-IBP trainer with the same schedule."""
    raw = copy.deepcopy(base)
    raw.update(name=name, seed=seed, device="cpu")
    if data:
        raw["data"]["name"] = data
    t = raw["train"]
    t.update(eps=round(TRAIN_FACTOR * eps, 6), eps_test=eps)
    if epochs is not None and epochs != t["epochs"]:  # shrink the whole schedule proportionally
        f = epochs / t["epochs"]
        t["epochs"] = epochs
        t["schedule"]["ramp_epochs"] = max(1, round(t["schedule"]["ramp_epochs"] * f))
        t["schedule"]["start_epoch"] = min(t["schedule"]["start_epoch"], max(0, epochs // 10))
        for o in (t["optim"], t["generator"]["optim"]):
            o["milestones"] = sorted({max(1, round(m * f)) for m in o["milestones"]})
    if rho == 1.0:
        t["method"] = t.pop("bound")
        for key in ("rho", "rho_test", "generator"):
            t.pop(key, None)
    else:
        t["rho"] = rho
        t["generator"]["coordinates"] = coordinates
        t["generator"]["kind"] = kind
    return raw


def trained(raw: dict, runs: Path) -> Path:
    out = runs / raw["name"]
    t0 = time.perf_counter()
    res = train(validate(raw), out, quiet=True)
    log.info("trained %s (%.0f s)", raw["name"], time.perf_counter() - t0)
    return res.best


def as_budget_model(best: Path) -> tuple[BudgetModel, float, dict]:
    """A budget checkpoint's pair, or a uniform classifier with a zero generator (rho = 1 exactly)."""
    ckpt = load_checkpoint(best)
    if ckpt.get("kind") == "budgets":
        return load_budget_model(ckpt), float(ckpt["budgets"]["rho"]), ckpt
    clf = model_from_checkpoint(ckpt)
    return BudgetModel(clf, BudgetGenerator(tuple(clf.spec["in_shape"]))).eval(), 1.0, ckpt


def evaluated(best: Path, x, y, eps: float, pgd_steps: int) -> dict:
    cache = best.parent / f"bench_eval_e{eps:g}_pgd{pgd_steps}.json"
    if cache.is_file() and cache.stat().st_mtime >= best.stat().st_mtime:
        return json.loads(cache.read_text())
    bm, rho, ckpt = as_budget_model(best)
    rep = certify_budgets(bm, x, y, eps=eps, rho=rho, methods=["ibp", "crown-ibp"], pgd_steps=pgd_steps,
                          device="cpu", records=False)
    rep["train_seconds"] = round(sum(r.get("time_s", 0) for r in load_checkpoint(best.parent / "last.pt")
                                     .get("history", [])), 1)
    atomic_write_json(cache, rep)
    return rep


def _ms(vals: list[float]) -> dict:
    return {"mean": statistics.fmean(vals), "std": statistics.stdev(vals) if len(vals) > 1 else 0.0}


def _meta(args, part: str) -> dict:
    cmd = "OMP_NUM_THREADS=1 .venv/bin/python -m benchmarks.bench_budgets" + " ".join([""] + sys.argv[1:])
    return {"benchmark": f"budgets_{part}", "command": cmd.strip(), **provenance()}


# ------------------------------------------------------------------------------------------- (a)
def part_a(args, runs: Path, prefix: str) -> dict:
    base = _base("configs/digits_budgets.yaml")
    x, y = rdata.as_tensors(rdata.load("digits", "test"))
    settings = [1.0] + args.rhos
    per_run, table = [], {}
    for eps in args.eps:
        for rho in settings:
            reps = []
            for seed in args.seeds:
                name = f"digits_e{eps:g}_rho{rho:g}_s{seed}_ep{args.epochs or base['train']['epochs']}"
                best = trained(run_config(base, name=name, seed=seed, eps=eps, rho=rho, epochs=args.epochs), runs)
                rep = evaluated(best, x, y, eps, args.pgd_steps)
                rows = {r["method"]: r for r in rep["rows"]}
                rec = {"eps": eps, "rho": rho, "seed": seed, "run": name, "clean": rep["clean_acc"],
                       **{f"cert_own_{m}": rows[m]["certified_learned"] for m in rows},
                       **{f"cert_uniform_ball_{m}": rows[m]["certified_uniform"] for m in rows},
                       "pgd_in_own_box": rep.get("pgd_learned_acc"),
                       "violations": sum(r.get("violations", 0) for r in rows.values()),
                       "effective_radius_own": rep["radius"]["effective_learned_geomean"],
                       "effective_radius_uniform": rep["radius"]["effective_uniform_geomean"],
                       "train_seconds": rep.get("train_seconds")}
                per_run.append(rec)
                reps.append(rec)
                print(json.dumps(rec), flush=True)
            keys = [k for k in reps[0] if k.startswith(("clean", "cert_", "pgd_", "effective_"))]
            table[f"e{eps:g}_rho{rho:g}"] = {"eps": eps, "rho": rho, "seeds": len(reps),
                                             **{k: _ms([r[k] for r in reps]) for k in keys}}
    goals = []
    for eps in args.eps:
        u = table[f"e{eps:g}_rho1"]
        for rho in args.rhos:
            t = table[f"e{eps:g}_rho{rho:g}"]
            for m in ("ibp", "crown-ibp"):
                diff = t[f"cert_own_{m}"]["mean"] - u[f"cert_own_{m}"]["mean"]
                goals.append({"eps": eps, "rho": rho, "method": m, "learned": t[f"cert_own_{m}"]["mean"],
                              "uniform": u[f"cert_own_{m}"]["mean"], "difference": diff, "met": diff >= 0})
    out = {**_meta(args, "equal_volume"), "goal": "certified accuracy under own learned budgets >= uniform "
           "model's certified accuracy at equal volume (mean over seeds)",
           "setup": {"model": base["model"], "epochs": args.epochs or base["train"]["epochs"],
                     "train_eps_factor": TRAIN_FACTOR, "test": "450 digits test images", "pgd_steps": args.pgd_steps,
                     "uniform": "train.method crown-ibp with the same schedule (= budgets with rho 1)"},
           "summary": table, "goals": goals, "per_run": per_run}
    atomic_write_json(RESULTS / f"{prefix}equal_volume.json", out)
    pictures_a(args, runs, base, x, y, prefix)
    return out


def pictures_a(args, runs: Path, base: dict, x, y, prefix: str) -> None:
    eps = args.eps[0]
    grid = sorted({round(v, 3) for v in (0.02, 0.05, 0.08, eps, 0.12, 0.15, 0.2, 0.25) if v <= 2.5 * eps})
    curves, errors = {}, {}
    rho_top = max(args.rhos)
    for rho in [1.0] + args.rhos:
        own, ball = [], []
        for seed in args.seeds:
            name = f"digits_e{eps:g}_rho{rho:g}_s{seed}_ep{args.epochs or base['train']['epochs']}"
            bm, r, _ = as_budget_model(runs / name / "best.pt")
            own.append(certified_curve(bm, x, y, grid, rho=r, method="ibp", device="cpu"))
            if rho == rho_top:
                ball.append(certified_curve(bm.classifier, x, y, grid, method="ibp", device="cpu"))
        for label, vals in (((f"learned rho={rho:g}, own budgets" if rho > 1 else "uniform model (rho=1)"), own),
                            (f"learned rho={rho:g}, uniform ball", ball)):
            if vals:
                curves[label] = (grid, [statistics.fmean(c) for c in zip(*vals)])
                errors[label] = [statistics.stdev(c) if len(c) > 1 else 0.0 for c in zip(*vals)]
    plot_certified_vs_eps(curves, errors=errors, path=RESULTS / f"{prefix}certified_vs_eps.png",
                          title=f"Digits: IBP-certified accuracy vs e (models trained at e={eps:g}; "
                                f"mean +- std over {len(args.seeds)} seed(s))")
    name = f"digits_e{eps:g}_rho{rho_top:g}_s{args.seeds[0]}_ep{args.epochs or base['train']['epochs']}"
    bm, r, _ = as_budget_model(runs / name / "best.pt")
    with torch.no_grad():
        b = bm.budgets(x, eps, r)
    plot_budget_grid(x, b, eps=eps, rho=r, labels=y, path=RESULTS / f"{prefix}heatmaps_digits.png")
    plot_log_budget_histogram(b, eps=eps, rho=r, path=RESULTS / f"{prefix}log_budgets_digits.png")


# ------------------------------------------------------------------------------------------- (b)
def part_b(args, runs: Path, prefix: str) -> dict:
    base = _base("configs/digits_distractor_budgets.yaml")
    eps, rho = 0.1, 4.0
    cases = [(d, True, s) for d in ("digits_distractor", "digits_border") for s in args.synthetic_seeds]
    cases.append(("digits_distractor", False, args.synthetic_seeds[0]))  # ablation: no coordinates
    per_run = []
    for dname, coords, seed in cases:
        name = f"{dname}_e{eps:g}_rho{rho:g}_s{seed}{'' if coords else '_nocoords'}_ep{args.epochs or base['train']['epochs']}"
        raw = run_config(base, name=name, seed=seed, eps=eps, rho=rho, epochs=args.epochs, data=dname,
                         coordinates=coords)
        best = trained(raw, runs)
        ds = rdata.load(dname, "test", **raw["data"].get("options", {}))
        x, y = rdata.as_tensors(ds)
        bm, r, _ = as_budget_model(best)
        with torch.no_grad():
            b = bm.budgets(x, eps, r)
        ratio = budget_ratio(b, ds.irrelevant_mask, eps=eps, rho=r)
        rep = evaluated(best, x, y, eps, 0)
        rows = {q["method"]: q for q in rep["rows"]}
        rec = {"data": dname, "coordinates": coords, "seed": seed, "run": name, **ratio, "clean": rep["clean_acc"],
               "cert_own_ibp": rows["ibp"]["certified_learned"],
               "cert_uniform_ball_ibp": rows["ibp"]["certified_uniform"]}
        per_run.append(rec)
        print(json.dumps(rec), flush=True)
        if seed == args.synthetic_seeds[0]:
            tag = dname.replace("digits_", "") + ("" if coords else "_nocoords")
            plot_budget_grid(x, b, eps=eps, rho=r, labels=y, mask=ds.irrelevant_mask,
                             path=RESULTS / f"{prefix}heatmaps_{tag}.png")
            plot_log_budget_histogram(b, eps=eps, rho=r, mask=ds.irrelevant_mask,
                                      path=RESULTS / f"{prefix}log_budgets_{tag}.png")
    summary = {}
    for dname in ("digits_distractor", "digits_border"):
        rs = [q for q in per_run if q["data"] == dname and q["coordinates"]]
        summary[dname] = {k: _ms([q[k] for q in rs]) for k in ("ratio", "frac_irrelevant_at_upper", "clean",
                                                                "cert_own_ibp", "cert_uniform_ball_ibp")}
        summary[dname].update(seeds=len(rs), ratio_cap=rs[0]["ratio_cap"])
    goals = [{"data": d, "ratio": s["ratio"]["mean"], "met": s["ratio"]["mean"] >= 2.0} for d, s in summary.items()]
    out = {**_meta(args, "ratio"), "goal": "irrelevant/relevant geometric-mean budget ratio >= 2 at rho = 4",
           "setup": {"eps": eps, "rho": rho, "model": base["model"], "epochs": args.epochs or base["train"]["epochs"]},
           "summary": summary, "goals": goals, "per_run": per_run}
    atomic_write_json(RESULTS / f"{prefix}ratio.json", out)
    return out


# ------------------------------------------------------------------------------------------- (d)
CONTEXT_SETS = {"digits": "configs/digits_budgets.yaml", "digits_distractor": "configs/digits_distractor_budgets.yaml",
                "digits_border": "configs/digits_distractor_budgets.yaml"}


def _certified(bm: BudgetModel, x, y, eps: float, rho: float, pgd_steps: int) -> dict:
    rep = certify_budgets(bm, x, y, eps=eps, rho=rho, methods=["ibp", "crown-ibp"], pgd_steps=pgd_steps,
                          device="cpu", records=False)
    rows = {r["method"]: r for r in rep["rows"]}
    return {"clean": rep["clean_acc"], **{f"cert_{m}": rows[m]["certified_learned"] for m in rows},
            "pgd_in_own_set": rep.get("pgd_learned_acc"),
            "violations": sum(r.get("violations", 0) for r in rows.values())}


def part_d(args, runs: Path, prefix: str) -> dict:
    epochs = args.context_epochs
    per_run = []
    variants = [("uniform", 1.0)] + [(k, r) for r in args.rhos for k in ("fixed", "contextual")]
    for dname in args.context_sets:
        base = _base(CONTEXT_SETS[dname])
        opts = dict(base["data"].get("options") or {})
        test = rdata.load(dname, "test", **opts)
        x, y = rdata.as_tensors(test)
        xtr, _ = rdata.as_tensors(rdata.load(dname, "train", **opts))
        mask = getattr(test, "irrelevant_mask", None)
        for eps in args.eps:
            for seed in args.seeds:
                for kind, rho in variants:
                    name = f"ctx_{dname}_e{eps:g}_{kind}_rho{rho:g}_s{seed}_ep{epochs}"
                    raw = run_config(base, name=name, seed=seed, eps=eps, rho=rho, epochs=epochs, data=dname,
                                     kind="contextual" if kind == "uniform" else kind)
                    t0 = time.process_time()
                    best = trained(raw, runs)
                    train_cpu = time.process_time() - t0
                    bm, r, _ = as_budget_model(best)
                    t0 = time.process_time()
                    rec = {"data": dname, "eps": eps, "rho": rho, "kind": kind, "seed": seed, "run": name,
                           **_certified(bm, x, y, eps, r, args.pgd_steps)}
                    if kind == "contextual":
                        with torch.no_grad():
                            b = bm.budgets(x, eps, r)
                        rec["spread"] = budget_spread(b, rho=r)
                        mean_bm = BudgetModel(bm.classifier, mean_mask_generator(bm, xtr, eps, r)).eval()
                        rec["mean_mask"] = _certified(mean_bm, x, y, eps, r, 0)
                        if seed == args.seeds[0] and eps == args.eps[0] and rho == max(args.rhos):
                            plot_budget_context(x, b, eps=eps, rho=r, mask=mask, n=4,
                                                path=RESULTS / f"{prefix}context_{dname}.png",
                                                title=f"{dname}: contextual budgets at e={eps:g}, rho={r:g} "
                                                      f"(seed {seed}): the mean mask and four images' deviations")
                    rec.update(train_cpu_s=round(train_cpu, 1), eval_cpu_s=round(time.process_time() - t0, 1))
                    per_run.append(rec)
                    print(json.dumps(rec), flush=True)
    summary, verdicts = {}, []
    for dname in args.context_sets:
        for eps in args.eps:
            for kind, rho in variants:
                rs = [q for q in per_run if (q["data"], q["eps"], q["kind"], q["rho"]) == (dname, eps, kind, rho)]
                row = {k: _ms([q[k] for q in rs]) for k in ("clean", "cert_ibp", "cert_crown-ibp", "pgd_in_own_set")}
                if kind == "contextual":
                    for m in ("ibp", "crown-ibp"):
                        row[f"mean_mask_cert_{m}"] = _ms([q["mean_mask"][f"cert_{m}"] for q in rs])
                    row["spread_mean_pixel_std"] = _ms([q["spread"]["mean_pixel_std"] for q in rs])
                    row["spread_relative"] = _ms([q["spread"]["relative"] for q in rs])
                summary[f"{dname}|e{eps:g}|{kind}|rho{rho:g}"] = {"data": dname, "eps": eps, "kind": kind, "rho": rho,
                                                                  "seeds": len(rs), **row}
            for rho in args.rhos:
                f = summary[f"{dname}|e{eps:g}|fixed|rho{rho:g}"]
                c = summary[f"{dname}|e{eps:g}|contextual|rho{rho:g}"]
                for m in ("ibp", "crown-ibp"):
                    diff = c[f"cert_{m}"]["mean"] - f[f"cert_{m}"]["mean"]
                    spread = max(c[f"cert_{m}"]["std"], f[f"cert_{m}"]["std"])
                    verdicts.append({"data": dname, "eps": eps, "rho": rho, "method": m,
                                     "contextual": c[f"cert_{m}"]["mean"], "fixed": f[f"cert_{m}"]["mean"],
                                     "difference": diff, "seed_spread": spread,
                                     "context_beats_fixed_beyond_seed_spread": diff > spread})
    out = {**_meta(args, "context"),
           "question": "do contextual budgets certify better than a learned fixed mask of equal volume?",
           "verdict_rule": "contextual - fixed (mean over seeds) > the larger of the two seed standard deviations",
           "setup": {"sets": args.context_sets, "eps": args.eps, "rhos": args.rhos, "seeds": args.seeds,
                     "epochs": epochs, "schedule": "the configs' schedule scaled to these epochs (run_config)",
                     "train_eps_factor": TRAIN_FACTOR, "pgd_steps": args.pgd_steps,
                     "models": {d: _base(CONTEXT_SETS[d])["model"] for d in args.context_sets},
                     "mean_mask": "geometric mean of the contextual model's budgets over its training set",
                     "spread": "per-pixel std over test images of log-budgets, mean over pixels; relative = / (2 log rho)"},
           "summary": summary, "verdicts": verdicts, "per_run": per_run}
    atomic_write_json(RESULTS / f"{prefix}context.json", out)
    return out


# ------------------------------------------------------------------------------------------- (c)
def _trainers(model: str, options: dict, batch: int):
    from robustsuite.training.registry import trainer_class

    base = _base("configs/digits_budgets.yaml")
    common = {"eps": 0.12, "eps_test": 0.1, "epochs": 10, "batch_size": batch, "beta_final": 0.0,
              "schedule": {"start_epoch": 0, "ramp_epochs": 2}}
    out = {}
    train_set = rdata.load("digits", "train")
    for key, t in (("uniform", {"method": "crown-ibp", **common}),
                   ("joint", {"method": "budgets", "rho": 4.0, **common, "generator": base["train"]["generator"]})):
        cfg = validate({"name": "bench", "seed": 0, "device": "cpu", "data": {"name": "digits", "val_fraction": 0.0},
                        "model": {"name": model, "options": options}, "train": t})
        torch.manual_seed(0)
        from robustsuite.training.run import build_model
        m = build_model(cfg, (1, 8, 8), 10)
        out[key] = trainer_class(t["method"])(m, train_set, None, cfg, "/tmp/rs_bench_budgets_unused",
                                               torch.device("cpu"), quiet=True)
    return out


def _generator_alone(joint, x, eps: float, steps: int, repeats: int) -> float:
    """CPU seconds of the generator's share of a joint step on its own: forward, projection, budgets,
    backward of a scalar through them (no classifier, no bounds). The ratio goal cannot be met
    where this alone exceeds 0.3x the uniform step."""
    def once():
        c0 = time.process_time()
        for _ in range(steps):
            joint.generator.zero_grad(set_to_none=True)
            joint.budget_model.budgets(x, eps, joint.tcfg.rho, check=False).sum().backward()
        return (time.process_time() - c0) / steps

    once()
    return statistics.median(once() for _ in range(repeats))


def part_c(args, prefix: str) -> dict:
    x_all, y_all = rdata.as_tensors(rdata.load("digits", "train"))
    rows = []
    cases = [("cnn_small", {"width": 2, "linear": 256}), ("cnn7", {"bn": True, "width": 0.5, "linear": 256})]
    steps, repeats = (3, 3) if args.quick else (5, 11)
    for model, options in cases:
        tr = _trainers(model, options, 64)
        x, y = x_all[:64], y_all[:64]
        u = tr["uniform"]
        for phase, step in (("mid-ramp (CROWN-IBP + IBP bounds)", u.start_step + u.ramp_steps // 2),
                            ("after ramp (IBP bounds)", u.start_step + u.ramp_steps + 1)):
            eps = u.eps_for_step(step)

            def run(t):  # (wall, process CPU) seconds per step; CPU time is robust to a shared machine
                t0, c0 = time.perf_counter(), time.process_time()
                for _ in range(steps):
                    t.train_step(x, y, step)
                return (time.perf_counter() - t0) / steps, (time.process_time() - c0) / steps

            run(tr["uniform"]), run(tr["joint"])  # warm-up
            tu, tj = [], []
            for _ in range(repeats):
                tu.append(run(tr["uniform"]))
                tj.append(run(tr["joint"]))
            ratios = [b[1] / a[1] for a, b in zip(tu, tj)]
            gen = _generator_alone(tr["joint"], x, eps, steps, repeats)
            wall = [b[0] / a[0] for a, b in zip(tu, tj)]
            row = {"model": model, "options": options, "batch": 64, "phase": phase, "eps": eps,
                   "uniform_cpu_ms": 1e3 * statistics.median(a[1] for a in tu),
                   "joint_cpu_ms": 1e3 * statistics.median(b[1] for b in tj),
                   "uniform_wall_ms": 1e3 * statistics.median(a[0] for a in tu),
                   "joint_wall_ms": 1e3 * statistics.median(b[0] for b in tj),
                   "ratio": statistics.median(ratios), "ratio_wall": statistics.median(wall),
                   "generator_alone_cpu_ms": 1e3 * gen,
                   "generator_alone_over_uniform": gen / statistics.median(a[1] for a in tu),
                   "ratio_per_repeat": [round(r, 3) for r in ratios]}
            rows.append(row)
            print(json.dumps(row), flush=True)
    gen = _base("configs/digits_budgets.yaml")["train"]["generator"]
    out = {**_meta(args, "step_time"), "goal": "joint step <= 1.3x the uniform CROWN-IBP step",
           "measure": "median over interleaved repeats of the process CPU time per step (1 thread); wall ratio beside it",
           "generator": {k: gen[k] for k in ("width", "depth", "coordinates")},
           "steps_per_repeat": steps, "repeats": repeats, "rows": rows,
           "goals": [{"model": r["model"], "phase": r["phase"], "ratio": r["ratio"], "met": r["ratio"] <= 1.3}
                     for r in rows]}
    atomic_write_json(RESULTS / f"{prefix}step_time.json", out)
    return out


# ------------------------------------------------------------------------------------------- main
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="smoke run: 1 seed, e 0.1, rho 4, 12 epochs")
    ap.add_argument("--parts", default="a,b,c,d",
                    help="which parts: a (equal volume), b (ratio), c (step time), d (context vs fixed mask)")
    ap.add_argument("--context-sets", default="digits,digits_distractor,digits_border", help="data sets of part d")
    ap.add_argument("--context-epochs", type=int, default=30, help="epochs of part d's runs (schedule scaled)")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--synthetic-seeds", default="0,1,2")
    ap.add_argument("--eps", default="0.1,0.2")
    ap.add_argument("--rhos", default="2,4")
    ap.add_argument("--epochs", type=int, default=None, help="override the configs' epochs (schedule scaled)")
    ap.add_argument("--pgd-steps", type=int, default=20)
    ap.add_argument("--runs", default="runs/bench_budgets")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    for name in ("robustsuite", "matplotlib"):
        logging.getLogger(name).setLevel(logging.WARNING)
    nums = lambda s, f: [f(v) for v in s.split(",") if v.strip()]  # noqa: E731
    args.seeds, args.synthetic_seeds = nums(args.seeds, int), nums(args.synthetic_seeds, int)
    args.eps, args.rhos = nums(args.eps, float), nums(args.rhos, float)
    args.context_sets = nums(args.context_sets, str)
    prefix = "budgets_"
    if args.quick:
        args.seeds, args.synthetic_seeds, args.eps, args.rhos = [0], [0], [0.1], [4.0]
        args.epochs, args.pgd_steps, prefix = args.epochs or 12, 5, "budgets_quick_"
        args.context_epochs, args.context_sets = 4, ["digits"]
        args.runs = args.runs + "_quick"
    runs = ROOT / args.runs
    RESULTS.mkdir(parents=True, exist_ok=True)
    parts = set(args.parts.split(","))
    if "c" in parts:
        out = part_c(args, prefix)
        for g in out["goals"]:
            print(f"(c) {g['model']:<9} {g['phase']:<36} joint/uniform {g['ratio']:.3f} {'met' if g['met'] else 'MISSED'}")
    if "a" in parts:
        out = part_a(args, runs, prefix)
        for k, t in out["summary"].items():
            print(f"(a) {k:<12} clean {100 * t['clean']['mean']:.1f}+-{100 * t['clean']['std']:.1f}  certified own "
                  f"IBP {100 * t['cert_own_ibp']['mean']:.1f}+-{100 * t['cert_own_ibp']['std']:.1f}  CROWN-IBP "
                  f"{100 * t['cert_own_crown-ibp']['mean']:.1f}+-{100 * t['cert_own_crown-ibp']['std']:.1f}  "
                  f"uniform ball IBP {100 * t['cert_uniform_ball_ibp']['mean']:.1f}")
    if "d" in parts:
        out = part_d(args, runs, prefix)
        for v in out["verdicts"]:
            print(f"(d) {v['data']:<18} e {v['eps']:<4g} rho {v['rho']:<3g} {v['method']:<9} contextual "
                  f"{100 * v['contextual']:.1f}% fixed {100 * v['fixed']:.1f}% (seed spread {100 * v['seed_spread']:.1f}) "
                  f"{'context helps' if v['context_beats_fixed_beyond_seed_spread'] else 'within the spread'}")
    if "b" in parts:
        out = part_b(args, runs, prefix)
        for d, s in out["summary"].items():
            print(f"(b) {d:<18} ratio {s['ratio']['mean']:.2f}+-{s['ratio']['std']:.2f} (cap {s['ratio_cap']:.2f}), irrelevant at upper "
                  f"{100 * s['frac_irrelevant_at_upper']['mean']:.1f}%")
    return 0


if __name__ == "__main__":
    sys.exit(main())
