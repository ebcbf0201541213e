"""``benchmarks/README.md`` and the project README's benchmark table, rebuilt from ``benchmarks/results/``.

    .venv/bin/python -m benchmarks.summary            # rewrite both
    .venv/bin/python -m benchmarks.summary --check    # exit 1 if either is out of date

``make bench`` runs it after the benchmarks, so every figure of the table is the one in the JSON file
named beside it; a test checks that the committed README matches the committed results.
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
README = HERE / "README.md"
PROJECT_README = HERE.parent / "README.md"
START, END = "<!-- benchmark table: python -m benchmarks.summary -->", "<!-- end of benchmark table -->"

HEADER = """# Benchmarks

Speed ratios (against a reference measured in the same run) and the papers' claims in miniature.
Not part of `make test`. Every figure below comes from the JSON file named beside it, written by the
command beside it (run from the repository root with the project's `.venv`); `make bench` reruns them
all and rebuilds this file from the results (`python -m benchmarks.summary`). Timings were taken on
the shared 2-core development machine (no GPU); ratios interleave the compared runs and report
medians, with CPU-time ratios where the machine was shared.
"""


def _load(name: str, results: Path) -> dict:
    path = results / name
    if not path.is_file():  # every row needs its file: a table with a gap would pass for a complete one
        raise FileNotFoundError(f"{path}: no such result file; run the benchmark that writes it (the command "
                                f"column of benchmarks/README.md), then python -m benchmarks.summary")
    return json.loads(path.read_text())


def _pm(stat: dict, scale: float = 100.0, digits: int = 1) -> str:
    return f"{stat['mean'] * scale:.{digits}f}±{stat['std'] * scale:.{digits}f}"


# ------------------------------------------------------------------------------------ one per file
def certified_training_step(results: Path) -> str:
    rows = {r["model"]: r for r in _load("certified_training_step.json", results)["rows"]}
    a, b = rows["cnn_small"], rows["cnn7"]
    slow = [r["bare_reference_style_ms"] / r["bare_ms"] for r in (a, b)]
    return (f"cnn_small {a['cpu_ratio_ours_over_bare']:.3f}x, CNN-7+BN (width 0.5) {b['cpu_ratio_ours_over_bare']:.3f}x "
            f"(CPU time, 1 thread); auto_LiRPA example-style loop {slow[0]:.2f}x / {slow[1]:.2f}x the bare loop's time")


def calibration(results: Path) -> str:
    parts = []
    for block in _load("crown_ibp_calibration.json", results)["results"]:
        ibp = next(r for r in block["rows"] if r["method"] == "ibp")
        parts.append(f"eps {block['eps']:g}: clean {100 * ibp['clean_acc']:.1f} %, IBP-certified "
                     f"{100 * ibp['certified_acc']:.1f} %, PGD {100 * ibp['pgd_acc']:.1f} %")
    return "; ".join(parts)


def smoothing(results: Path) -> str:
    r = _load("smoothing_certify.json", results)["results"][0]
    return (f"{r['noisy_forwards_per_s']['ours'] / 1000:.1f}k/s; {r['ratio_ours_over_bare']:.2f}x a bare "
            f"noisy-forward loop; {r['ratio_ours_over_reference']:.2f}x a plain per-image reference")


def stochastic(results: Path) -> str:
    d = _load("stochastic_claims.json", results)
    s, c = d["summary"], d["checks"]

    def m(method: str, key: str, digits: int = 3) -> str:
        v = s.get(method, {}).get(key)
        return f"{v['mean']:.{digits}f}" if v else "-"

    bl2 = d["settings"]["bl2"]
    l2p = "holds" if c.get("learn2perturb pgd > pgd_at pgd") else "does not hold"
    grows = "grows, as in the paper's Fig. 4" if c.get("learn2perturb noise grows during training (paper Fig. 4)") else \
        "shrinks: the paper's growing noise is not reproduced"
    one_draw = [(k.split(":")[0], max(v)) for k, v in c.items() if "per seed, one draw, in samples" in k
                and isinstance(v, list) and max(v) > 0]
    one_draw_text = ("; the one-draw comparison fails for " + ", ".join(f"{m} (by up to {n} of "
                     f"{d['settings']['test']} samples in one seed: the luck of one noise draw)" for m, n in one_draw)
                     if one_draw else "")
    eot_ok = [k.split(":")[0] for k, v in c.items() if "eot_pgd <= pgd (every seed, expected" in k and v is True]
    eot_bad = [k.split(":")[0] for k, v in c.items() if "eot_pgd <= pgd (every seed, expected" in k and v is False]
    masked = [k.split(":")[0] for k, v in c.items() if "gradient masking" in k and v is False]
    return (f"boundary ASR within L2 {bl2:g} (one draw / majority vote): PGD-AT {m('pgd_at', 'boundary.asr_l2_bound', 2)}, "
            f"Learn2Perturb {m('learn2perturb', 'boundary.asr_l2_bound', 2)} / {m('learn2perturb', 'eot_boundary.asr_l2_bound', 2)}, "
            f"ANIS2 {m('anis2', 'boundary.asr_l2_bound', 2)} / {m('anis2', 'eot_boundary.asr_l2_bound', 2)}; "
            f"MNG-AC union {m('mng_ac', 'multi.union')} vs L-inf PGD-AT {m('pgd_at', 'multi.union')}; "
            f"Learn2Perturb PGD {m('learn2perturb', 'pgd')} vs PGD-AT {m('pgd_at', 'pgd')} (claim {l2p}); "
            f"Learn2Perturb noise x{c['learn2perturb noise scale last/first-noise-epoch']:.2f} over training: {grows}, "
            f"PNI x{c['pni noise scale last/first-noise-epoch']:.2f}; EOT-PGD <= PGD (expected over draws): "
            f"holds for {', '.join(eot_ok) or 'none'}{'; FAILS for ' + ', '.join(eot_bad) if eot_bad else ''}"
            f"{one_draw_text}; "
            f"Square beats PGD (masking) for {', '.join(masked) or 'no model'}")


def budgets_equal_volume(results: Path) -> str:
    d = _load("budgets_equal_volume.json", results)
    s = d["summary"]
    parts = []
    for e in ("0.1", "0.2"):
        parts.append(f"e {e}: uniform {_pm(s[f'e{e}_rho1']['cert_own_ibp'])}, rho 2 {_pm(s[f'e{e}_rho2']['cert_own_ibp'])}, "
                     f"rho 4 {_pm(s[f'e{e}_rho4']['cert_own_ibp'])}")
    violations = sum(int(r.get("violations", 0) or 0) for r in d["per_run"])
    return "; ".join(parts) + f" (IBP-certified %, own boxes); {violations} PGD violations"


def budgets_ratio(results: Path) -> str:
    d = _load("budgets_ratio.json", results)
    s = d["summary"]
    dis, bor = s["digits_distractor"], s["digits_border"]
    nocoord = [r["ratio"] for r in d["per_run"] if not r.get("coordinates", True)]
    tail = f"; without coordinate channels {nocoord[0]:.2f}" if nocoord else ""
    return (f"distractor {_pm(dis['ratio'], 1, 2)} (cap {dis['ratio_cap']:.0f}, "
            f"{100 * dis['frac_irrelevant_at_upper']['mean']:.1f} % of irrelevant pixels at the upper limit), "
            f"border {_pm(bor['ratio'], 1, 2)} (cap {bor['ratio_cap']:.2f}){tail}")


def budgets_step(results: Path) -> str:
    rows = _load("budgets_step_time.json", results)["rows"]
    by = {}
    for r in rows:
        by.setdefault(r["model"], []).append(r)
    parts = []
    for model, rs in by.items():
        def one(r: dict) -> str:
            if r["ratio"] <= 1.3:
                return f"{r['ratio']:.2f}"
            share = r.get("generator_alone_over_uniform")
            why = f": the generator alone costs {share:.2f}x the uniform step" if share is not None else ""
            return f"{r['ratio']:.2f} (missed{why})"
        parts.append(f"{'CNN-7' if model == 'cnn7' else model} " + " / ".join(one(r) for r in rs))
    return "; ".join(parts) + " (mid-ramp / IBP phase)"


def budgets_layout(results: Path) -> str:
    s = _load("budgets_layout.json", results)["summary"]
    oracle = s.get("fixed_mask_layout")
    learned = {k: v for k, v in s.items() if k != "fixed_mask_layout"}
    ratios = ", ".join(f"{k} {v['ratio_last']['mean']:.1f}" for k, v in learned.items())
    text = f"ratio (last.pt) {ratios}"
    if oracle:
        sh = s.get("shipped", next(iter(learned.values())))
        text += (f"; fixed ideal layout (ratio 16): IBP-certified {_pm(oracle['cert_ibp_last'])} %, IBP CE "
                 f"{oracle['ibp_ce_last']['mean']:.3f}, vs shipped {_pm(sh['cert_ibp_last'])} %, "
                 f"{sh['ibp_ce_last']['mean']:.3f}")
    return text


def budgets_context(results: Path) -> str:
    d = _load("budgets_context.json", results)
    s, parts = d["summary"], []
    for dname in d["setup"]["sets"]:
        for e in d["setup"]["eps"]:
            rho = max(d["setup"]["rhos"])
            u, f, c = (s[f"{dname}|e{e:g}|{k}"] for k in ("uniform|rho1", f"fixed|rho{rho:g}", f"contextual|rho{rho:g}"))
            parts.append(f"{dname.replace('digits_', '')} e {e:g}: uniform {_pm(u['cert_ibp'])}, fixed {_pm(f['cert_ibp'])}, "
                         f"contextual {_pm(c['cert_ibp'])} (its mean mask {_pm(c['mean_mask_cert_ibp'])})")
    helps = [v for v in d["verdicts"] if v["context_beats_fixed_beyond_seed_spread"]]
    return ("; ".join(parts) + f" (IBP-certified %, rho {max(d['setup']['rhos']):g}); context beats the fixed mask "
            f"beyond the seed spread in {len(helps)} of {len(d['verdicts'])} (set, e, rho, bound) cells")


def _missed(names: list[str]) -> str:
    return "goal met" if not names else "missed: " + ", ".join(names)


def pgd_speed(results: Path) -> str:
    rows = _load("attacks_pgd.json", results)["results"]
    parts, missed = [], []
    for norm, label in (("linf", "L-inf"), ("l2", "L2")):
        mine = [r for r in rows if r.get("norm", "linf") == norm]
        if not mine:
            continue
        ref = "torchattacks" if norm == "linf" else "PGDL2"
        cells = []
        for r in mine:
            key = f"batch {r['batch']} PGD-{r['steps']}"
            cells.append(f"{key} {r['ours_over_floor']:.3f}x floor / {r['ours_over_torchattacks']:.3f}x {ref}")
            if not r["goal_floor_1.1_met"]:
                missed.append(f"{label} {key} (floor)")
            if r.get("goal_torchattacks_1.0_met") is False:
                missed.append(f"{label} {key} (torchattacks)")
        parts.append(f"{label} {mine[0]['eps']:g}: " + "; ".join(cells))
    return "; ".join(parts) + f"; {_missed(missed)}"


def boundary(results: Path) -> str:
    rows = _load("attacks_boundary.json", results)["results"]
    parts = [f"{r['bare_over_ours_queries_per_s']:.3f} (batch {r['batch']})" for r in rows]
    return "bare/ours " + ", ".join(parts) + "; " + _missed([f"batch {r['batch']}" for r in rows if not r["goal_1.2_met"]])


def _short(model: str) -> str:
    """``"CROWN-IBP digits (runs/...)"`` -> ``"CROWN-IBP digits"``: the table names models, the JSON keeps paths."""
    return model.split(" (")[0]


def cw(results: Path) -> str:
    parts, missed = [], []
    for r in _load("attacks_cw.json", results)["results"]:
        a, n, fb = r["abort"], r["no_abort"], r["foolbox"]
        name = _short(r["model"])
        if "cpu_s" in fb:
            ref = f", foolbox {fb['median_l2']:.4f} / {fb['cpu_s']:.1f} s (abort/foolbox CPU {r['abort_over_foolbox_cpu']:.2f}x)"
        else:
            ref = f", foolbox not run ({fb['skipped']})"
            missed.append(f"{name} (foolbox not measured)")
        parts.append(f"{name}, {r['batch']} digits: median L2 / CPU abort {a['median_l2']:.4f} / {a['cpu_s']:.1f} s, "
                     f"no abort {n['median_l2']:.4f} / {n['cpu_s']:.1f} s (ratio {r['abort_over_no_abort_median_l2']:.4f}, "
                     f"CPU {r['abort_over_no_abort_cpu']:.2f}x){ref}")
        if not r["goal_l2_within_0.5pct_met"]:
            missed.append(f"{name} (median L2)")
        if r.get("goal_faster_than_foolbox_met") is False:
            missed.append(f"{name} (slower than foolbox)")
    return "; ".join(parts) + f"; {_missed(missed)}"


def boundary_foolbox(results: Path) -> str:
    parts = []
    for r in _load("attacks_boundary_foolbox.json", results)["results"]:
        o, fb = r["ours"], r["foolbox"]
        text = (f"{_short(r['model'])}, {r['batch']} digits, budget {r['max_queries'] // 1000}k: ours median L2 "
                f"{o['median_l2']:.4f}, {o['queries_median']:.0f} queries (median; {o['rows_per_sample']:.0f} model rows "
                f"per sample), {o['converged']} converged, {o['success']} successes, {o['cpu_s']:.0f} s CPU")
        if "median_l2" in fb:
            text += (f"; foolbox {fb['median_l2']:.4f} ({fb['rows_per_sample']:.0f} rows per sample, {fb['success']} "
                     f"successes, {fb['cpu_s']:.0f} s CPU); ours/foolbox median L2 {r['ours_over_foolbox_median_l2']:.3f}")
        else:
            text += f"; foolbox not run ({fb['skipped']})"
        parts.append(text)
    return "; ".join(parts)


def verifier(results: Path) -> str:
    d = _load("verifier.json", results)
    over = "; ".join(f"{m} " + ", ".join(f"batch {r['batch']} {r['cpu_ratio']:.3f}x" for r in d["overhead"] if r["model"] == m)
                     for m in dict.fromkeys(r["model"] for r in d["overhead"]))
    missed = [f"{r['model']} batch {r['batch']}" for r in d["overhead"] if r["cpu_ratio"] > 1.05]
    chunks = "; ".join(f"{m}: " + ", ".join(f"{c['method']} {c['best_chunk']}" for c in d["chunks"] if c["model"] == m)
                       for m in dict.fromkeys(c["model"] for c in d["chunks"]))
    diff = max(r["max_abs_diff_vs_largest"] for c in d["chunks"] for r in c["rows"])
    quick = " (quick run)" if "--quick" in d.get("command", "") else ""
    return (f"verify / bare{quick}: {over}; {_missed(missed)}; fastest chunk (samples per auto_LiRPA call; bounds "
            f"within {diff:.1e} of the one-chunk ones) {chunks}")


def _pct(share: float) -> str:
    return f"{100 * share:.2f}".rstrip("0").rstrip(".")


#: bench_complete.PHASES (not imported: it imports torch)
_PHASES = ("ibp", "crown", "pgd", "alpha-crown (open samples only)", "milp (complete run)")


def complete(results: Path) -> str:
    d = _load("complete_verification.json", results)
    goal, parts = d["goal"], []
    for r in d["rows"]:
        b, a = r["before"], r["after"]
        parts.append(
            f"{r['model']} e {r['eps']:g} ({r['n']} digits{', before without alpha-CROWN' if b.get('alpha-crown_on_open', 0) is None else ''}): {_pct(b['verified'])} / {_pct(b['falsified'])} / "
            f"{_pct(b['unknown'])} -> {_pct(a['verified'])} / {_pct(a['falsified'])} / {_pct(a['unknown'])}, "
            f"{r['milp_samples']} samples reached the MILP (median {r['milp_seconds_median']:g} s, max "
            f"{r['milp_seconds_max']:g} s each, limit {r['time_limit']:g} s), complete run {r['complete_seconds']:.0f} s, "
            f"{r['violations']} violations")
    for r in d.get("stopped", []):
        phase = next((p for p in _PHASES if p not in r["finished_phases_seconds"]), _PHASES[-1])
        parts.append(f"{r['model']} e {r['eps']:g} ({r['n']} digits): stopped after {r['max_minutes']:g} min, in {phase}")
    g = next((r for r in d["rows"] if (r["model"], r["eps"]) == (goal["model"], goal["eps"])), None)
    if g is None:
        verdict = f"goal not measured ({goal['model']} e {goal['eps']:g} has no row)"
    else:
        ok = g["after"]["unknown"] <= goal["unknown_max"] and g["complete_seconds"] <= goal["seconds_max"]
        verdict = (f"goal {'met' if ok else 'missed'}: {goal['model']} e {goal['eps']:g} unknown "
                   f"{_pct(g['after']['unknown'])} % in {g['complete_seconds']:.0f} s")
    return "verified / falsified / unknown %, before -> after the MILP: " + "; ".join(parts) + f"; {verdict}"


def eval_stages(results: Path) -> str:
    d = _load("eval_stages.json", results)
    per_stage: dict[str, list[float]] = {}
    for st in d["stages"].values():
        for name, row in st.items():
            per_stage.setdefault(name, []).append(row["seconds"])
    name, secs = max(per_stage.items(), key=lambda kv: sum(kv[1]))
    name = name.replace("|", " ")  # a pipe would split the markdown table's cell
    return (f"{d['total_seconds']:.0f} s in all for {len(d['stages'])} models x {d['samples']} samples "
            f"(largest stage: {name} {min(secs):.0f}-{max(secs):.0f} s per model); {d['violations']} violations")


def autoattack(results: Path) -> str:
    d = _load("autoattack.json", results)
    st = d["settings"]
    parts = []
    for c in d["cells"]:
        comps = ", ".join(f"{k['attack']} {k['cpu_ratio_ours_over_reference']:.2f}x" for k in c["components"] if k["n"])
        parts.append(f"{c['model']} {'L-inf' if c['norm'] == 'linf' else 'L2'} {c['eps']:g}: robust "
                     f"{c['robust_accuracy_ours']:.3f} vs {c['robust_accuracy_reference']:.3f}, CPU "
                     f"{c['cpu_ratio_ours_over_reference']:.2f}x ({comps})"
                     + (f", model-work floor {c['floor_ours_over_reference_cpu']:.2f}x"
                        if c.get("floor_ours_over_reference_cpu") is not None else ""))
    quick = " (quick run)" if st.get("quick") else ""
    verdict = "goals met" if d["goal_met"] else "missed: " + ", ".join(
        f"{c['model']} {c['norm']} ({'strength' if not c['goal_strength_met'] else ''}"
        f"{', ' if not c['goal_strength_met'] and not c['goal_speed_met'] else ''}"
        f"{'speed' if not c['goal_speed_met'] else ''})" for c in d["cells"] if not c["goal_met"])
    return f"{st['n']} digits{quick}; " + "; ".join(parts) + f"; {verdict}"


@dataclass(frozen=True)
class Row:
    name: str
    what: str
    result: Callable[[Path], str]
    goal: str
    command: str
    files: str


ROWS = [
    Row("certified training step", "our CROWN-IBP trainer step vs a bare auto_LiRPA loop making the same calls; "
        "digits, batch 64, mid-ramp (IBP + CROWN-IBP)", certified_training_step, "<= 1.05",
        "`python -m benchmarks.bench_certified_training`", "`results/certified_training_step.json`"),
    Row("CROWN-IBP calibration", "`configs/digits_crown_ibp.yaml`, 450 test digits, PGD-40", calibration,
        "eps 0.1 >= 82 %, eps 0.2 >= 62 %", "`python -m benchmarks.bench_calibration --seed 0`",
        "`results/crown_ibp_calibration.json`"),
    Row("smoothing CERTIFY", "noisy forwards/s, cnn_small 1x8x8, 8 images, n0 = 100, n = 10k, batch 1000, 1 thread",
        smoothing, ">= 0.95x bare, >= 1x reference",
        "`OMP_NUM_THREADS=1 python -m benchmarks.bench_smoothing --repeats 11`", "`results/smoothing_certify.json`"),
    Row("stochastic defenses", "claims in miniature on digits, ResNet-V1-8 (width 0.5), 20 epochs, 3 seeds, L-inf 0.1",
        stochastic, "see `../shared/specs/stochastic.md`", "`OMP_NUM_THREADS=1 python -m benchmarks.bench_stochastic`",
        "`results/stochastic_claims.json`, `results/stochastic_noise_scale.png`"),
    Row("learned budgets, equal volume", "digits, cnn_small w2, 60 epochs, 3 seeds; learned (own boxes) vs uniform "
        "CROWN-IBP, same schedule", budgets_equal_volume, "learned >= uniform",
        "`OMP_NUM_THREADS=1 python -m benchmarks.bench_budgets`",
        "`results/budgets_equal_volume.json`, `results/budgets_certified_vs_eps.png`"),
    Row("learned budgets, ratio", "irrelevant/relevant geometric-mean budget at rho 4, 3 seeds", budgets_ratio,
        ">= 2 (spec probe: 13.3)", "same", "`results/budgets_ratio.json`, `results/budgets_heatmaps_*.png`"),
    Row("learned budgets, layout study", "why the distractor ratio stays under the spec probe's 13.3: variants at "
        "the probe's 40 epochs, 3 seeds, and an oracle classifier trained under the ideal mask-aligned layout",
        budgets_layout, "a finding, no goal", "`OMP_NUM_THREADS=1 python -m benchmarks.bench_budget_layout`",
        "`results/budgets_layout.json`, `results/budgets_layout_columns.png`"),
    Row("learned budgets, context", "does the context matter? uniform vs learned fixed mask vs learned contextual "
        "budgets at equal volume, same schedule (30 epochs), cnn_small, 3 seeds; e 0.1/0.2, rho 2/4, three sets",
        budgets_context, "a finding: contextual > fixed beyond the seed spread?",
        "`OMP_NUM_THREADS=1 python -m benchmarks.bench_budgets --parts d`",
        "`results/budgets_context.json`, `results/budgets_context_*.png`"),
    Row("learned budgets, step", "joint vs uniform CROWN-IBP step, batch 64, CPU time, 1 thread", budgets_step,
        "<= 1.3", "`OMP_NUM_THREADS=1 python -m benchmarks.bench_budgets --parts c`", "`results/budgets_step_time.json`"),
    Row("PGD-k speed", "our PGD-k vs a bare loop of k forward+backward passes and vs torchattacks PGD, same "
        "model/batch; L2 rows vs torchattacks PGDL2 (which rescales and clips: not the projection ours makes); "
        "digits CNN 1x8x8, 1 thread, CPU time", pgd_speed,
        "<= 1.1x floor, <= 1.0x torchattacks (L-inf); <= 1.1x floor (L2)",
        "`OMP_NUM_THREADS=1 python -m benchmarks.bench_attacks --repeats 20 --crown CROWN_IBP_CHECKPOINT` "
        "(the demo's; foolbox 3.3.4 on `PYTHONPATH` for the C&W and foolbox rows)", "`results/attacks_pgd.json`"),
    Row("boundary attack throughput", "label queries/s of BoundaryAttack vs a bare forward+argmax loop replaying "
        "the attack's own model calls (same batch sizes, same order); digits CNN, 400 queries/sample, 1 thread, "
        "CPU time", boundary, "<= 1.2", "same",
        "`results/attacks_boundary.json`"),
    Row("C&W early abort", "C&W L2 (1000 steps, 9 search steps, c0 1e-3, lr 1e-2) with and without early abort, and "
        "foolbox 3.3.4's `L2CarliniWagnerAttack` with the same settings; correctly classified held-out digits, "
        "1 thread, CPU time", cw, "median L2 abort / no abort within 0.5 %, CPU abort < foolbox", "same",
        "`results/attacks_cw.json`"),
    Row("boundary attack vs foolbox", "our BoundaryAttack at a 20k query budget vs foolbox 3.3.4's `BoundaryAttack` "
        "given the same model rows per sample (steps = budget x 10/11); every model row counted", boundary_foolbox,
        "counts every row and walks until its budget is spent or the sample converges (it stopped after ~9k of 20k, "
        "3.7 % above foolbox's median L2); median L2 vs foolbox's as measured", "same", "`results/attacks_boundary_foolbox.json`"),
    Row("AutoAttack standard", "our `AutoAttack` cascade vs pyautoattack 0.2.0's, both default settings, seed 0; "
        "digits CROWN-IBP and PGD-AT demo models, L-inf 0.1 and L2 0.5; robust accuracy and CPU time ratio (1 thread), "
        "per component on the same samples", autoattack, "robust <= reference + 1 sample, CPU <= 0.5x",
        "`OMP_NUM_THREADS=1 python -m benchmarks.bench_autoattack`", "`results/autoattack.json`"),
    Row("evaluator per stage", "`configs/suites/demo.yaml` on the CROWN-IBP and PGD-AT digits models, 450 samples, "
        "2 threads", eval_stages, "<= 300 s", "`python -m benchmarks.bench_eval` (after `make demo`)",
        "`results/eval_stages.json`"),
    Row("Verifier overhead and chunks", "`Verifier.verify` (CROWN-IBP) vs the bare auto_LiRPA calls giving the same "
        "answer, untrained digits CNN (cnn_small) and CNN-7+BN (width 0.5), CPU time, 1 thread; per-sample time of each "
        "method by chunk size (the CPU defaults come from it)", verifier, "<= 1.05x bare",
        "`OMP_NUM_THREADS=1 python -m benchmarks.bench_verifier --quick` (overhead rerun alone with `--parts overhead`)", "`results/verifier.json`"),
    Row("complete verification", "PGD -> IBP/CROWN -> MILP (HiGHS) per undecided sample, on the demo's CROWN-IBP and "
        "PGD-AT digits models, first N test digits, L-inf; before = IBP, CROWN, alpha-CROWN + PGD (50 steps, "
        "2 restarts)", complete, "unknown <= 1 % on CROWN-IBP at 0.1 in < 10 min on 2 cores; PGD-AT as measured",
        "`python -m benchmarks.bench_complete --checkpoint crown_ibp=runs/demo/models/crown_ibp/best.pt "
        "--models crown_ibp`, then `--models pgd_at --n 20 --time-limit 15 --max-minutes 10` (with "
        "`--no-alpha-crown` for the measured rows; after `make demo`)", "`results/complete_verification.json`"),
]


def table(results: Path = RESULTS) -> str:
    """The table: one row per benchmark, figures read from ``results``."""
    lines = ["| benchmark | what | result | goal | command | file |", "| --- | --- | --- | --- | --- | --- |"]
    for row in ROWS:
        lines.append(f"| {row.name} | {row.what} | {row.result(results)} | {row.goal} | {row.command} | {row.files} |")
    return "\n".join(lines) + "\n"


def render(results: Path = RESULTS) -> str:
    """The whole benchmarks/README.md: the header, then the table."""
    return HEADER + "\n" + table(results)


def with_table(text: str, results: Path = RESULTS) -> str:
    """``text`` (the project README) with the table between its START and END markers replaced."""
    if START not in text or END not in text:
        raise ValueError(f"README.md has no {START} ... {END} block for the benchmark table")
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    return head + START + "\n" + table(results) + END + tail


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--check", action="store_true", help="exit 1 if benchmarks/README.md is out of date")
    args = ap.parse_args(argv)
    wanted = {README: render(), PROJECT_README: with_table(PROJECT_README.read_text())}
    if args.check:
        stale = [p.name for p, text in wanted.items() if p.read_text() != text]
        print("out of date: " + ", ".join(stale) + " (run python -m benchmarks.summary)" if stale else "up to date")
        return 1 if stale else 0
    from robustsuite.files import atomic_write_text

    for path, text in wanted.items():
        atomic_write_text(path, text)
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
