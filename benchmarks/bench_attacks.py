"""Attack speed ratios, measured in one process on the same model and batch.

(a) PGD-k: our ``PGD`` vs the floor (a bare loop of k forward + backward-to-input passes, the
    least any k-step gradient attack can cost) and vs ``torchattacks.PGD`` with the same settings.
    Goals: ours / floor <= 1.1, ours / torchattacks <= 1.0. L2 rows (``"norm": "l2"``): the same
    with ``L2Ball`` and ``torchattacks.PGDL2``; goal ours / floor <= 1.1 (ours projects exactly onto
    the ball intersected with [0, 1]; PGDL2 rescales into the ball and clips, which is cheaper and
    not the projection, so ours / PGDL2 is reported without a goal).
(b) Boundary attack: label queries per second vs a bare loop of batched forward passes
    (``model(rows).argmax(1)``) that replays the attack's own forwarding pattern: the batch sizes
    of every model call of one recorded run, in order (the clean check, the start search, the
    line search, each step's walking candidates, each check step's spherical candidates in the
    same call, the final success check). Both forward the same rows, so the ratio of queries
    per second is the ratio of times. Goal: bare / ours <= 1.2 (ours within 1.2x of the bare
    throughput).
(c) C&W L2 early abort: median L2 and CPU time with abort, without, and foolbox's
    ``L2CarliniWagnerAttack`` (same settings). Goals: median L2 abort / no-abort within 0.5 %,
    CPU abort < foolbox. ``benchmarks/results/attacks_cw.json``.
(d) Boundary attack at a 20k budget vs foolbox's ``BoundaryAttack`` given the same model rows:
    median L2, queries spent, samples converged. ``benchmarks/results/attacks_boundary_foolbox.json``.
    foolbox is optional: (c)/(d) record why it was skipped when it is not importable.

Runs are interleaved (floor, ours, torchattacks, then rotated) on one intra-op thread by default,
because the machine may be shared; the headline ratio is the median over repeats of the ratio
of neighbouring runs, in process CPU time (ratios of the medians and of the minima, and wall
times, are recorded too). Results go to ``benchmarks/results/attacks_pgd.json`` and
``benchmarks/results/attacks_boundary.json`` (``--results DIR`` elsewhere, e.g. for a trial run).

Usage::

    .venv/bin/python -m benchmarks.bench_attacks [--repeats 30] [--threads 1] [--no-malloc-tuning] [--quick]
        [--parts linf,l2,boundary] [--results DIR]
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from benchmarks.model_calls import ModelCalls
from benchmarks.provenance import provenance
from robustsuite.attacks import PGD, BoundaryAttack
from robustsuite.threats import L2Ball, LinfBall

log = logging.getLogger("bench_attacks")
HEADLINE_CLOCK = "cpu"  # set in main(): "cpu" with one thread, "wall" otherwise
RESULTS = Path(__file__).resolve().parent / "results"


def digits_cnn() -> nn.Module:
    """A digits-sized CNN (1x8x8 inputs, 10 classes), the shape of the test suite's model."""
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(),
        nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.ReLU(),
        nn.Flatten(), nn.Linear(32 * 4 * 4, 64), nn.ReLU(), nn.Linear(64, 10))


def digits_data() -> tuple[torch.Tensor, torch.Tensor]:
    from sklearn.datasets import load_digits
    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16.0
    return x, torch.tensor(d.target, dtype=torch.long)


def train_quickly(model: nn.Module, x: torch.Tensor, y: torch.Tensor, epochs: int = 10) -> nn.Module:
    gen = torch.Generator().manual_seed(0)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(epochs):
        perm = torch.randperm(len(x), generator=gen)
        for i in range(0, len(x), 64):
            idx = perm[i:i + 64]
            loss = F.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    for p in model.parameters():
        p.grad = None
    return model


def batch_of(x: torch.Tensor, y: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    reps = (n + len(x) - 1) // len(x)
    return x.repeat(reps, 1, 1, 1)[:n].contiguous(), y.repeat(reps)[:n].contiguous()


def timed(fn) -> tuple[float, float]:
    """(wall seconds, process CPU seconds) of one call."""
    w0, c0 = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - w0, time.process_time() - c0


# --- (a) PGD --------------------------------------------------------------------------------------

def floor_loop(model, x, y, k):
    for _ in range(k):
        xr = x.detach().requires_grad_(True)
        loss = F.cross_entropy(model(xr), y, reduction="sum")
        torch.autograd.grad(loss, xr)


def _interleaved(runs: dict, repeats: int) -> dict[str, dict[str, list[float]]]:
    """Time every run once per repeat, rotating the order, so neighbours share the machine's load.
    Returns ``{"wall": {name: [s, ...]}, "cpu": {name: [s, ...]}}``."""
    for fn in runs.values():  # warm-up
        fn()
    times = {"wall": {name: [] for name in runs}, "cpu": {name: [] for name in runs}}
    names = list(runs)
    for r in range(repeats):
        k = r % len(names)
        for name in names[k:] + names[:k]:
            wall, cpu = timed(runs[name])
            times["wall"][name].append(wall)
            times["cpu"][name].append(cpu)
    return times


def _ratios(times: dict[str, dict[str, list[float]]], num: str, den: str) -> dict[str, dict[str, float]]:
    out = {}
    for clock, t in times.items():
        paired = [a / b for a, b in zip(t[num], t[den], strict=True)]
        out[clock] = {"median_of_paired": statistics.median(paired),
                      "ratio_of_medians": statistics.median(t[num]) / statistics.median(t[den]),
                      "ratio_of_minima": min(t[num]) / min(t[den])}
    return out


def _headline(r: dict[str, dict[str, float]]) -> float:
    """The reported ratio: median of paired ratios, in CPU time on one thread (robust to other
    jobs on the machine), else in wall time."""
    return r[HEADLINE_CLOCK]["median_of_paired"]


def _summary(times) -> dict:
    return {clock: {n: statistics.median(v) for n, v in t.items()} for clock, t in times.items()}


def bench_pgd(model, x, y, *, k: int, eps: float, repeats: int, norm: str = "linf") -> dict:
    import torchattacks
    ball, reference = {"linf": (LinfBall, torchattacks.PGD), "l2": (L2Ball, torchattacks.PGDL2)}[norm]
    ours = PGD(model, ball(eps), steps=k, step_size=eps / 4, random_start=True, seed=0)
    theirs = reference(model, eps=eps, alpha=eps / 4, steps=k, random_start=True)
    times = _interleaved({"floor": lambda: floor_loop(model, x, y, k), "ours": lambda: ours(x, y),
                          "torchattacks": lambda: theirs(x, y)}, repeats)
    vs_floor = _ratios(times, "ours", "floor")
    vs_ta = _ratios(times, "ours", "torchattacks")
    return {
        "norm": norm, "batch": int(x.shape[0]), "steps": k, "eps": eps, "repeats": repeats,
        "median_s": _summary(times),
        "images_per_s_ours_wall": x.shape[0] / statistics.median(times["wall"]["ours"]),
        "headline_clock": HEADLINE_CLOCK,
        "ours_over_floor": _headline(vs_floor), "ours_over_torchattacks": _headline(vs_ta),
        "ours_over_floor_all": vs_floor, "ours_over_torchattacks_all": vs_ta,
        "goal_floor_1.1_met": _headline(vs_floor) <= 1.1,
        "goal_torchattacks_1.0_met": _headline(vs_ta) <= 1.0 if norm == "linf" else None,
        "all_s": times,
    }


# --- (b) boundary attack ------------------------------------------------------------------------------

def bench_boundary(model, x, y, *, max_queries: int, repeats: int) -> dict:
    """(b): ours vs the bare loop that makes the same model calls (same batch sizes, same order),
    recorded from one run of the attack; the bare loop is the least any implementation with this
    forwarding pattern pays (the forward passes and the argmax, nothing else)."""
    B = x.shape[0]
    settings = dict(max_queries=max_queries, seed=0, record_every=10**9)
    with ModelCalls(model) as calls:
        res = BoundaryAttack(model, **settings).run(x, y)
    sizes = calls.sizes
    queries = int(res.queries.sum())          # labels the attack asked for (all phases)
    rows = sum(sizes)
    # every forwarded row is a counted query, plus run's final success check (B rows)
    if rows != queries + B or max(sizes) > 2 * B:
        raise RuntimeError(f"boundary attack: {rows} rows for {queries} counted queries + {B}, calls up to "
                           f"{max(sizes)} rows (expected every row counted, calls of at most 2B)")
    atk = BoundaryAttack(model, **settings)
    pool = torch.cat([x, x]).contiguous()     # the largest call is 2B rows (a check step)

    def bare():  # the attack's calls: leading rows of one tensor (views, no copies)
        with torch.no_grad():
            for n in sizes:
                model(pool[:n]).argmax(1)

    times = _interleaved({"bare": bare, "ours": lambda: atk.run(x, y)}, repeats)
    # both forward the same rows: queries/s ratio bare/ours = t_ours / t_bare
    ratio = _ratios(times, "ours", "bare")
    return {
        "batch": B, "max_queries": max_queries, "steps": res.steps, "queries_total": queries,
        "bare_rows_total": rows, "model_calls": len(sizes), "repeats": repeats,
        "bare_mirrors": "the attack's model calls (batch sizes in order, final check included)",
        "median_s": _summary(times),
        "queries_per_s_ours_wall": queries / statistics.median(times["wall"]["ours"]),
        "queries_per_s_bare_wall": queries / statistics.median(times["wall"]["bare"]),
        "headline_clock": HEADLINE_CLOCK,
        "bare_over_ours_queries_per_s": _headline(ratio),
        "bare_over_ours_queries_per_s_all": ratio,
        "goal_1.2_met": _headline(ratio) <= 1.2,
        "median_l2_final": float(res.distance[res.success].median()),
        "all_s": times,
    }


# --- (c) C&W early abort, (d) boundary attack vs foolbox ----------------------------------------------

def _foolbox():
    """foolbox (3.3) or the reason it is absent; install it apart from the project's venv, e.g.
    ``pip install --target /tmp/fbx foolbox==3.3.4`` and run with ``PYTHONPATH=/tmp/fbx``."""
    try:
        import foolbox
        return foolbox, None
    except ImportError as e:  # optional reference
        return None, f"foolbox not importable ({e}); install it apart and set PYTHONPATH"


def _median_l2(x, x_adv, success) -> float:
    """Median L2 over all samples, a failure counting as infinitely far."""
    d = (x_adv - x).flatten(1).norm(dim=1)
    return float(torch.where(success, d, torch.full_like(d, float("inf"))).median())


def bench_cw(model, x, y, *, steps: int = 1000, search_steps: int = 9) -> dict:
    """C&W L2 with and without early abort, and foolbox's ``L2CarliniWagnerAttack`` (same c0,
    steps, search steps, lr, abort): median L2 and CPU time, one run each."""
    from robustsuite.attacks import CW
    out: dict = {"batch": int(x.shape[0]), "steps": steps, "search_steps": search_steps, "c": 1e-3, "lr": 1e-2}
    for name, abort in (("no_abort", False), ("abort", True)):
        atk = CW(model, steps=steps, search_steps=search_steps, abort_early=abort)
        with ModelCalls(model) as counted:
            wall, cpu = timed(lambda: out.__setitem__("_r", atk.run(x, y)))
        r = out.pop("_r")
        out[name] = {"median_l2": _median_l2(x, r.x_adv, r.success), "success": int(r.success.sum()),
                     "cpu_s": cpu, "wall_s": wall, "rows_per_sample": counted.total / x.shape[0],
                     "loop_iterations": r.steps}
    fb, why = _foolbox()
    if fb is None:
        out["foolbox"] = {"skipped": why}
    else:
        atk = fb.attacks.L2CarliniWagnerAttack(binary_search_steps=search_steps, steps=steps, stepsize=1e-2,
                                               confidence=0, initial_const=1e-3, abort_early=True)
        fmodel = fb.PyTorchModel(model, bounds=(0, 1))
        with ModelCalls(model) as counted:
            wall, cpu = timed(lambda: out.__setitem__("_a", atk.run(fmodel, x, y)))
        adv = out.pop("_a")
        with torch.no_grad():
            ok = model(adv).argmax(1) != y
        out["foolbox"] = {"version": fb.__version__, "median_l2": _median_l2(x, adv, ok), "success": int(ok.sum()),
                          "cpu_s": cpu, "wall_s": wall, "rows_per_sample": counted.total / x.shape[0]}
    out["abort_over_no_abort_median_l2"] = out["abort"]["median_l2"] / out["no_abort"]["median_l2"]
    out["goal_l2_within_0.5pct_met"] = abs(out["abort_over_no_abort_median_l2"] - 1) <= 0.005
    out["abort_over_no_abort_cpu"] = out["abort"]["cpu_s"] / out["no_abort"]["cpu_s"]
    if "cpu_s" in out["foolbox"]:
        out["abort_over_foolbox_cpu"] = out["abort"]["cpu_s"] / out["foolbox"]["cpu_s"]
        out["goal_faster_than_foolbox_met"] = out["abort_over_foolbox_cpu"] < 1.0
    return out


def bench_boundary_vs_foolbox(model, x, y, *, max_queries: int = 20000) -> dict:
    """Our boundary attack at ``max_queries`` against foolbox's ``BoundaryAttack`` given the same
    number of model rows per sample (its steps = budget * 10/11, as it labels the spherical
    candidate every 10th step; its start search is not counted by it, but by the wrapper here)."""
    atk = BoundaryAttack(model, max_queries=max_queries, seed=0, record_every=10**9)
    with ModelCalls(model) as counted:
        wall, cpu = timed(lambda: setattr(atk, "_res", atk.run(x, y)))
    r = atk._res
    walked = r.extras["distance_history"][0] > 0
    out: dict = {"batch": int(x.shape[0]), "max_queries": max_queries,
                 "ours": {"median_l2": _median_l2(x, r.x_adv, r.success), "success": int(r.success.sum()),
                          "queries_median": float(r.queries.float().median()),
                          "queries_min_walked": int(r.queries[walked].min()) if bool(walked.any()) else None,
                          "converged": int(r.extras["converged"].sum()), "steps": r.steps,
                          "rows_per_sample": counted.total / x.shape[0], "cpu_s": cpu, "wall_s": wall}}
    fb, why = _foolbox()
    if fb is None:
        out["foolbox"] = {"skipped": why}
        return out
    steps = max(1, round(max_queries * 10 / 11))
    fatk = fb.attacks.BoundaryAttack(steps=steps)
    fmodel = fb.PyTorchModel(model, bounds=(0, 1))
    with ModelCalls(model) as counted:
        wall, cpu = timed(lambda: setattr(fatk, "_adv", fatk.run(fmodel, x, fb.criteria.Misclassification(y))))
    adv = fatk._adv
    with torch.no_grad():
        ok = model(adv).argmax(1) != y
    out["foolbox"] = {"version": fb.__version__, "steps": steps, "median_l2": _median_l2(x, adv, ok),
                      "success": int(ok.sum()), "rows_per_sample": counted.total / x.shape[0],
                      "cpu_s": cpu, "wall_s": wall}
    out["ours_over_foolbox_median_l2"] = out["ours"]["median_l2"] / out["foolbox"]["median_l2"]
    return out


def _correct(model, x, y, n):
    with torch.no_grad():
        ok = model(x).argmax(1) == y
    return x[ok][:n].contiguous(), y[ok][:n].contiguous()


def tune_malloc() -> bool:
    """Keep freed memory in the process (glibc ``mallopt``: no mmap for large blocks, no heap
    trimming), so a run does not pay page faults for re-allocating the activations the previous
    one freed. Without it a digits-CNN PGD run spends about a third of its time in the kernel
    (70k minor faults per run at batch 2048), noise that swamps the ratios. Applied to every
    variant alike; returns whether it took effect."""
    if sys.platform != "linux":
        return False
    try:
        import ctypes
        libc = ctypes.CDLL("libc.so.6")
        m_trim_threshold, m_mmap_threshold = -1, -3
        return bool(libc.mallopt(m_mmap_threshold, 1 << 30)) and bool(libc.mallopt(m_trim_threshold, 1 << 30))
    except (OSError, AttributeError):
        return False


def environment(argv: list[str]) -> dict:
    import torchattacks
    return {
        "torch": torch.__version__, "torchattacks": torchattacks.__version__,
        "threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
        "device": "cpu", "python": platform.python_version(), "machine": platform.machine(),
        "command": " ".join([".venv/bin/python -m benchmarks.bench_attacks"] + argv),
        "note": ("shared machine: runs interleaved; headline = median over repeats of the ratio of "
                 "neighbouring runs, in process CPU time when threads == 1 (else wall time)"),
    }


def write_json(path: Path, payload: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        json.dump(payload, f, indent=2)
        f.write("\n")
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--quick", action="store_true", help="fewer repeats and smaller runs (smoke)")
    ap.add_argument("--crown", default=None, help="CROWN-IBP digits checkpoint for the C&W section (optional)")
    ap.add_argument("--no-malloc-tuning", action="store_true", help="leave glibc's malloc settings alone")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch intra-op threads (default 1: stable timings on a shared machine)")
    ap.add_argument("--parts", default="linf,l2,boundary",
                    help="comma-separated: linf (PGD L-inf rows), l2 (PGD L2 rows), boundary")
    ap.add_argument("--results", type=Path, default=RESULTS, help="folder for the result JSON files")
    args = ap.parse_args(argv)
    parts = {p.strip() for p in args.parts.split(",") if p.strip()}
    if not parts or parts - {"linf", "l2", "boundary"}:
        ap.error(f"--parts: expected a comma-separated subset of linf,l2,boundary, got {args.parts!r}")
    torch.set_num_threads(args.threads)
    global HEADLINE_CLOCK
    HEADLINE_CLOCK = "cpu" if args.threads == 1 else "wall"
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    repeats = 5 if args.quick else args.repeats
    torch.manual_seed(0)
    x_all, y_all = digits_data()
    model = train_quickly(digits_cnn(), x_all[:1500], y_all[:1500])
    env = environment(argv)
    origin = provenance()  # the tree this run measures, taken before it starts (the tree may move on)
    env["malloc_tuned"] = False if args.no_malloc_tuning else tune_malloc()

    pgd_rows = []
    sizes = [(256, 10)] if args.quick else [(256, 10), (256, 20), (2048, 10)]
    # L2 eps 0.5: the L2 radius of the suite's digits configs (bench_stochastic's L2 PGD)
    for norm, eps in (("linf", 0.1), ("l2", 0.5)):
        if norm not in parts:
            continue
        for batch, k in sizes:
            x, y = batch_of(x_all, y_all, batch)
            row = bench_pgd(model, x, y, k=k, eps=eps, norm=norm,
                            repeats=repeats if batch <= 256 else max(5, repeats // 2))
            row["model"] = "digits CNN 1x8x8 (conv16-conv32/2-fc64-fc10)"
            log.info("PGD-%d %s batch %d: ours/floor %.3f  ours/torchattacks %.3f  (%s time, median of paired "
                     "ratios; wall %.0f img/s)", k, norm, batch, row["ours_over_floor"],
                     row["ours_over_torchattacks"], HEADLINE_CLOCK, row["images_per_s_ours_wall"])
            pgd_rows.append(row)
    if pgd_rows:
        write_json(args.results / "attacks_pgd.json", {"benchmark": "PGD-k vs floor and torchattacks",
                                                       "environment": env, "provenance": origin,
                                                       "results": pgd_rows})
    if "boundary" not in parts:
        return 0

    boundary_rows = []
    # held-out digits the model classifies correctly, so every sample walks (the bare loop replays
    # the attack's recorded calls whatever they are)
    with torch.no_grad():
        correct = model(x_all[1500:]).argmax(1) == y_all[1500:]
    x_ok, y_ok = x_all[1500:][correct], y_all[1500:][correct]
    for batch in ([256] if args.quick else [256, 1024]):
        x, y = batch_of(x_ok, y_ok, batch)
        row = bench_boundary(model, x, y, max_queries=400, repeats=max(5, repeats // 2))
        row["model"] = "digits CNN 1x8x8 (conv16-conv32/2-fc64-fc10)"
        log.info("boundary batch %d: bare/ours queries/s %.3f  (%s time; wall %.0f queries/s ours, %.0f bare)",
                 batch, row["bare_over_ours_queries_per_s"], HEADLINE_CLOCK, row["queries_per_s_ours_wall"],
                 row["queries_per_s_bare_wall"])
        boundary_rows.append(row)
    write_json(args.results / "attacks_boundary.json", {"benchmark": "boundary attack queries/s vs bare forward",
                                                    "environment": env, "provenance": origin,
                                                    "results": boundary_rows})
    bench_cw_and_boundary(model, x_all, y_all, env, quick=args.quick, crown=args.crown, results=args.results,
                          origin=origin)
    return 0


def bench_cw_and_boundary(model, x_all, y_all, env: dict, *, quick: bool, crown: str | None,
                          results: Path = RESULTS, origin: dict | None = None) -> None:
    """(c) and (d): on held-out digits the model classifies correctly; C&W also on the CROWN-IBP
    digits model when its checkpoint is given (``--crown runs/digits_crown_ibp/best.pt``).
    ``origin``: the provenance taken when the run started (default: now)."""
    origin = origin or provenance()
    models = {"digits CNN 1x8x8 (conv16-conv32/2-fc64-fc10)": model}
    if crown:
        from robustsuite.eval.loading import load_models
        models[f"CROWN-IBP digits ({crown})"] = next(iter(load_models([crown])[0].values())).eval()
    rows = []
    for name, m in models.items():
        for p in m.parameters():
            p.requires_grad_(False)
        x, y = _correct(m, x_all[1500:], y_all[1500:], 40 if quick else 200)
        row = bench_cw(m, x, y, steps=200 if quick else 1000)
        row["model"] = name
        log.info("C&W %s: median L2 abort/no-abort %.4f, CPU abort/no-abort %.2f, abort/foolbox %s", name,
                 row["abort_over_no_abort_median_l2"], row["abort_over_no_abort_cpu"],
                 f"{row['abort_over_foolbox_cpu']:.2f}" if "abort_over_foolbox_cpu" in row else row["foolbox"])
        rows.append(row)
    write_json(results / "attacks_cw.json", {"benchmark": "C&W early abort vs no abort vs foolbox",
                                             "environment": env, "provenance": origin, "results": rows})
    x, y = _correct(model, x_all[1500:], y_all[1500:], 20 if quick else 100)
    row = bench_boundary_vs_foolbox(model, x, y, max_queries=2000 if quick else 20000)
    row["model"] = "digits CNN 1x8x8 (conv16-conv32/2-fc64-fc10)"
    log.info("boundary vs foolbox: median L2 ours %.4f, foolbox %s", row["ours"]["median_l2"],
             row["foolbox"].get("median_l2", row["foolbox"].get("skipped")))
    write_json(results / "attacks_boundary_foolbox.json", {"benchmark": "boundary attack vs foolbox, same rows",
                                                           "environment": env, "provenance": origin,
                                                           "results": [row]})


if __name__ == "__main__":
    raise SystemExit(main())
