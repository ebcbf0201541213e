"""Report plots (matplotlib, Agg backend, written atomically as PNG).

* ``robust_vs_eps.png``: per model, accuracy vs radius for each attack (robust accuracy) and each
  bound method (certified accuracy), one line style per kind, one panel per (model, norm);
* ``smoothing_radius.png``: certified accuracy vs L2 radius of the smoothed classifiers;
* ``asr.png``: attack success rate per attack and set, one bar group per model;
* ``complete.png``: complete verification, a three-way bar (verified / unknown / falsified) per
  model and radius;
* ``budgets_MODEL.png``: learned-budget heatmaps where a budget model was evaluated.
"""
from __future__ import annotations

import logging
from collections import defaultdict
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np

from ..files import atomic_save_figure
from .metrics import set_eps, set_norm

if TYPE_CHECKING:
    from .report import Report

log = logging.getLogger(__name__)

__all__ = ["report_plots", "plot_robust_vs_eps", "plot_smoothing_radius", "plot_asr", "plot_complete"]

NORM_TITLE = {"linf": "L-inf", "l2": "L2", "l1": "L1", "learned": "learned budgets"}


def _plt():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _save(fig, path: Path) -> Path:
    plt = _plt()
    try:
        atomic_save_figure(path, fig)
    finally:
        plt.close(fig)
    return path


def _curves(report: "Report", model: str, prefix: str) -> dict[tuple[str, str], list[tuple[float, float]]]:
    """{(name, norm): [(eps, value), ...]} for metrics ``prefix|NAME|SET`` of one model."""
    out: dict[tuple[str, str], list[tuple[float, float]]] = defaultdict(list)
    for k, m in report.metrics.get(model, {}).items():
        parts = k.split("|")
        if parts[0] == prefix and len(parts) == 3 and m.get("mean") is not None:
            out[(parts[1], set_norm(parts[2]))].append((set_eps(parts[2]), m["mean"]))
    return {k: sorted(v) for k, v in out.items()}


def plot_robust_vs_eps(reports: Sequence["Report"], path: str | Path, names: Sequence[str] | None = None) -> Path | None:
    """Robust (attacks, solid) and certified (bounds, dashed) accuracy vs eps; one panel per model and norm."""
    plt = _plt()
    panels = []
    for ri, rep in enumerate(reports):
        for model in rep.models:
            atk, cert = _curves(rep, model, "robust"), _curves(rep, model, "certified")
            clean = rep.metrics.get(model, {}).get("clean_accuracy", {}).get("mean")
            norms = sorted({n for _, n in list(atk) + list(cert)})
            label = model if names is None else f"{names[ri]}: {model}"
            panels += [(label, norm, atk, cert, clean) for norm in norms]
    if not panels:
        return None
    cols = min(3, len(panels))
    rows = (len(panels) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(4.8 * cols, 3.8 * rows), squeeze=False)
    for ax, (label, norm, atk, cert, clean) in zip(axes.flat, panels):
        for (name, nm), pts in sorted(atk.items()):
            if nm != norm:
                continue
            xs, ys = zip(*([(0.0, clean)] if clean is not None else []) + pts) if pts else ((), ())
            ax.plot(xs, ys, marker="o", label=f"{name.upper()} (robust)")
        for (name, nm), pts in sorted(cert.items()):
            if nm != norm:
                continue
            xs, ys = zip(*([(0.0, clean)] if clean is not None else []) + pts)
            ax.plot(xs, ys, marker="s", linestyle="--", label=f"{name.upper()} (certified)")
        ax.set_title(f"{label} - {NORM_TITLE.get(norm, norm)}")
        ax.set_xlabel(f"perturbation radius eps ({NORM_TITLE.get(norm, norm)}, pixel units)")
        ax.set_ylabel("accuracy")
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="best")
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    fig.suptitle("Robust accuracy under attack (solid) and certified accuracy (dashed) vs radius; eps 0 = clean accuracy",
                 fontsize=10)
    fig.tight_layout()
    return _save(fig, Path(path))


def _smoothing_curve(report: "Report", model: str, sigma: str, grid: np.ndarray) -> np.ndarray | None:
    rec = report.records
    pk, rk = f"smooth_pred|{sigma}", f"smooth_radius|{sigma}"
    if pk not in rec:
        return None
    sel = [i for i, m in enumerate(rec["model"]) if m == model and rec[pk][i] is not None]
    if not sel:
        return None
    pred = np.asarray([rec[pk][i] for i in sel])
    rad = np.asarray([rec[rk][i] for i in sel], dtype=float)
    lab = np.asarray([rec["label"][i] for i in sel])
    correct = (pred == lab) & (pred != -1)
    return np.asarray([(correct & (rad >= r)).mean() for r in grid])


def plot_smoothing_radius(reports: Sequence["Report"], path: str | Path, names: Sequence[str] | None = None) -> Path | None:
    """Certified accuracy of the smoothed classifier vs L2 radius, one line per (model, sigma)."""
    plt = _plt()
    lines = []
    rmax = 0.0
    for ri, rep in enumerate(reports):
        for k in rep.records:
            if k.startswith("smooth_radius|"):
                vals = [v for v in rep.records[k] if v is not None]
                rmax = max([rmax] + vals)
    grid = np.linspace(0, max(rmax * 1.05, 0.1), 200)
    for ri, rep in enumerate(reports):
        sigmas = [k.split("|")[1] for k in rep.records if k.startswith("smooth_pred|")]
        for model in rep.models:
            for s in sigmas:
                curve = _smoothing_curve(rep, model, s, grid)
                if curve is not None:
                    label = (model if names is None else f"{names[ri]}: {model}") + f", sigma={s}"
                    lines.append((label, curve))
    if not lines:
        return None
    fig, ax = plt.subplots(figsize=(6, 4))
    for label, curve in lines:
        ax.plot(grid, curve, label=label)
    ax.set_xlabel("L2 radius r (pixel units)")
    ax.set_ylabel("certified accuracy (correct and radius >= r)")
    ax.set_title("Randomized smoothing: certified accuracy vs L2 radius")
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, Path(path))


def plot_asr(reports: Sequence["Report"], path: str | Path, names: Sequence[str] | None = None) -> Path | None:
    """Attack success rate (over clean-correct samples) per attack and set, grouped by model."""
    plt = _plt()
    groups, keys = [], []
    for ri, rep in enumerate(reports):
        for model in rep.models:
            label = model if names is None else f"{names[ri]}: {model}"
            vals = {k: m for k, m in rep.metrics.get(model, {}).items() if k.startswith("asr|")}
            groups.append((label, vals))
            keys += [k for k in vals if k not in keys]
    if not keys:
        return None
    fig, ax = plt.subplots(figsize=(max(6, 1.2 * len(keys) * len(groups) ** 0.5 + 2), 4))
    width = 0.8 / len(groups)
    xs = np.arange(len(keys))
    for gi, (label, vals) in enumerate(groups):
        means = [vals.get(k, {}).get("mean") for k in keys]
        stds = [vals.get(k, {}).get("std", 0.0) or 0.0 for k in keys]
        ys = [np.nan if v is None else v for v in means]
        ax.bar(xs + (gi - (len(groups) - 1) / 2) * width, ys, width, label=label,
               **({"yerr": stds, "capsize": 3} if any(s > 0 for s in stds) else {}))
    ax.set_xticks(xs)
    ax.set_xticklabels([k.split("|", 1)[1].replace("|", "\n") for k in keys], fontsize=8)
    ax.set_ylabel("attack success rate")
    ax.set_ylim(0, 1.05)
    ax.set_title("Attack success rate per attack and threat set (over clean-correct samples)")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, Path(path))


#: the statuses of complete verification, bottom to top, and their colours
COMPLETE_STATUSES = (("verified", "tab:green"), ("unknown", "tab:gray"), ("falsified", "tab:red"))


def complete_shares(report: "Report") -> list[tuple[str, str, dict[str, float]]]:
    """``[(model, set, {status: share})]`` from the ``status|METHOD|SET`` columns (repeat 0)."""
    rec = report.records
    out = []
    for key in rec:
        if not key.startswith("status|"):
            continue
        set_id = key.split("|")[2]
        for model in report.models:
            vals = [rec[key][i] for i, m in enumerate(rec["model"]) if m == model and rec[key][i] is not None
                    and rec["repeat"][i] == 0]
            if vals:
                out.append((model, set_id, {s: vals.count(s) / len(vals) for s, _ in COMPLETE_STATUSES}))
    return out


def plot_complete(reports: Sequence["Report"], path: str | Path, names: Sequence[str] | None = None) -> Path | None:
    """Complete verification: one stacked bar per (model, radius), verified / unknown / falsified."""
    bars = []
    for ri, rep in enumerate(reports):
        for model, set_id, shares in complete_shares(rep):
            label = model if names is None else f"{names[ri]}: {model}"
            bars.append((f"{label}\n{set_id}", shares))
    if not bars:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(max(5, 1.1 * len(bars) + 2), 4))
    xs = np.arange(len(bars))
    bottom = np.zeros(len(bars))
    for status, colour in COMPLETE_STATUSES:
        ys = np.asarray([b[1][status] for b in bars])
        ax.bar(xs, ys, 0.6, bottom=bottom, color=colour, label=status)
        for x, y0, y in zip(xs, bottom, ys):
            if y >= 0.04:
                ax.text(x, y0 + y / 2, f"{y:.3f}", ha="center", va="center", fontsize=7)
        bottom += ys
    ax.set_xticks(xs)
    ax.set_xticklabels([b[0] for b in bars], fontsize=8)
    ax.set_ylabel("share of the samples")
    ax.set_ylim(0, 1.02)
    ax.set_title("Complete verification: verified / unknown (time limit) / falsified")
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    return _save(fig, Path(path))


def plot_budgets(report: "Report", out_dir: Path) -> list[Path]:
    """Learned-budget heatmaps of the budget models (stored in ``report.extras['budgets']``)."""
    import torch
    from ..budgets.plots import plot_budget_grid
    paths = []
    from ..files import safe_name
    for model, b in (report.extras.get("budgets") or {}).items():
        p = out_dir / f"budgets_{safe_name(model, 'report model name')}.png"  # a loaded report is untrusted
        plot_budget_grid(torch.tensor(b["x"]), torch.tensor(b["budgets"]), eps=b["eps"], rho=b["rho"], path=p,
                         labels=torch.tensor(b["labels"]), n=len(b["x"]),
                         title=f"{model}: learned per-pixel budgets (eps={b['eps']}, rho={b['rho']})")
        paths.append(p)
    return paths


def report_plots(report: "Report", out_dir: str | Path) -> list[Path]:
    """Every plot that applies to the report, into ``out_dir``."""
    out = Path(out_dir)
    paths = [plot_robust_vs_eps([report], out / "robust_vs_eps.png"),
             plot_smoothing_radius([report], out / "smoothing_radius.png"),
             plot_asr([report], out / "asr.png"),
             plot_complete([report], out / "complete.png")]
    paths += plot_budgets(report, out)
    return [p for p in paths if p is not None]
