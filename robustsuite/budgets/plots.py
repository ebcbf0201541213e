"""Pictures of learned budgets, readable without the code (PNG, written atomically).

* :func:`plot_budget_grid`: test images, each beside the heatmap of its per-pixel budgets (log color
  scale over the allowed range [e / rho, rho e]; the irrelevant region outlined when known).
* :func:`plot_log_budget_histogram`: distribution of the budgets (log axis), per region when a mask
  is given, with the uniform radius e and the range limits marked.
* :func:`plot_certified_vs_eps`: certified accuracy against the target radius e, one line per model
  and set (learned budgets, uniform ball).
* :func:`plot_budget_context`: the mean mask of a model's budgets beside a few images' deviations
  from it (what the context changes per image).

Figures are built with matplotlib's object API on the Agg canvas (no pyplot, no global backend
change) and saved with :func:`robustsuite.files.atomic_save_figure`.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import torch
from torch import Tensor

from ..files import atomic_save_figure

__all__ = ["plot_budget_grid", "plot_log_budget_histogram", "plot_certified_vs_eps", "plot_budget_context"]


def _figure(w: float, h: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(w, h))
    FigureCanvasAgg(fig)
    return fig


def _outline(ax, mask2d: np.ndarray) -> None:
    """Draw the border of the True region of a (H, W) mask."""
    H, W = mask2d.shape
    for i in range(H):
        for j in range(W):
            if not mask2d[i, j]:
                continue
            for di, dj, seg in ((-1, 0, ([j - .5, j + .5], [i - .5, i - .5])), (1, 0, ([j - .5, j + .5], [i + .5, i + .5])),
                                (0, -1, ([j - .5, j - .5], [i - .5, i + .5])), (0, 1, ([j + .5, j + .5], [i - .5, i + .5]))):
                ii, jj = i + di, j + dj
                if not (0 <= ii < H and 0 <= jj < W) or not mask2d[ii, jj]:
                    ax.plot(*seg, color="white", linewidth=1.0, linestyle="--")


def plot_budget_grid(x: Tensor, budgets: Tensor, *, eps: float, rho: float, path: str | Path,
                     labels: Tensor | None = None, mask: Tensor | None = None, n: int = 12, cols: int = 4,
                     title: str | None = None) -> Path:
    """A grid of ``n`` test images, each with its budget heatmap to the right.

    Args:
        x: (N, C, H, W) images in [0, 1] (the first channel is shown for C > 1 budgets: the mean).
        budgets: (N, C, H, W) per-pixel radii (before the clip).
        eps, rho: target radius and range ratio (fix the color range to [eps / rho, rho eps]).
        path: PNG to write.
        labels: optional (N,) labels for the titles.
        mask: optional bool (C, H, W) irrelevant region, outlined on the heatmaps.
    """
    from matplotlib.colors import LogNorm

    n = min(n, x.shape[0])
    cols = max(1, min(cols, n))
    rows = math.ceil(n / cols)
    H, W = x.shape[-2:]
    panel_w = 1.6 * W / max(H, W)
    panel_h = 1.6 * H / max(H, W)
    fig = _figure(2 * cols * (panel_w + 0.15) + 1.2, rows * (panel_h + 0.45) + 0.8)
    gs = fig.add_gridspec(rows, 2 * cols, wspace=0.08, hspace=0.35)
    lo, hi = eps / rho, eps * rho
    if lo == hi:
        lo, hi = eps / 1.01, eps * 1.01
    norm = LogNorm(vmin=lo, vmax=hi)
    img = x[:n].detach().float().cpu().mean(1).numpy()
    bud = budgets[:n].detach().float().cpu().mean(1).clamp(lo, hi).numpy()
    m2 = mask.any(0).cpu().numpy() if mask is not None else None
    im = None
    for k in range(n):
        r, c = divmod(k, cols)
        a1 = fig.add_subplot(gs[r, 2 * c])
        a1.imshow(img[k], cmap="gray", vmin=0, vmax=1, interpolation="nearest")
        a1.set_title(f"image (y={int(labels[k])})" if labels is not None else "image", fontsize=8)
        a2 = fig.add_subplot(gs[r, 2 * c + 1])
        im = a2.imshow(bud[k], cmap="viridis", norm=norm, interpolation="nearest")
        if m2 is not None:
            _outline(a2, m2)
        a2.set_title("budget eps_i", fontsize=8)
        for a in (a1, a2):
            a.set_xticks([])
            a.set_yticks([])
    cb = fig.colorbar(im, ax=fig.axes, fraction=0.02, pad=0.02)
    cb.set_label(f"per-pixel budget (log scale; range [e/rho, rho e] = [{lo:.3g}, {hi:.3g}])", fontsize=8)
    sub = " — dashed line: boundary of the label-irrelevant region" if mask is not None else ""
    fig.suptitle(title or f"Learned budgets at e = {eps:g}, rho = {rho:g} (geometric mean e per image){sub}",
                 fontsize=10)
    return atomic_save_figure(path, fig)


def plot_log_budget_histogram(budgets: Tensor, *, eps: float, rho: float, path: str | Path,
                              mask: Tensor | None = None, bins: int = 40, title: str | None = None) -> Path:
    """Histogram of the per-pixel budgets (log axis), per region when ``mask`` (bool (C, H, W)) is given."""
    b = budgets.detach().float().cpu()
    lo, hi = eps / rho, eps * rho
    pad = 1.05 if rho > 1 else 1.2
    edges = np.logspace(math.log10(lo / pad), math.log10(hi * pad), bins + 1)
    fig = _figure(6.4, 3.8)
    ax = fig.add_subplot(1, 1, 1)
    if mask is not None:
        m = mask.expand_as(b)
        groups = [("relevant region", b[~m]), ("irrelevant region", b[m])]
    else:
        groups = [("all pixels", b.flatten())]
    for name, vals in groups:
        v = vals.numpy()
        ax.hist(v, bins=edges, weights=np.full(v.shape, 1.0 / max(1, v.size)), alpha=0.6, label=name)
    ax.set_xscale("log")
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullFormatter
    ticks = sorted({lo, eps, hi})
    ax.xaxis.set_major_locator(FixedLocator(ticks))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:.3g}"))
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.axvline(eps, color="black", linestyle="-", linewidth=1, label=f"uniform radius e = {eps:g}")
    ax.axvline(lo, color="gray", linestyle="--", linewidth=1, label=f"range limits e/rho, rho e (rho = {rho:g})")
    ax.axvline(hi, color="gray", linestyle="--", linewidth=1)
    ax.set_xlabel("per-pixel budget eps_i (log scale)")
    ax.set_ylabel("fraction of pixels")
    ax.legend(fontsize=8)
    ax.set_title(title or f"Distribution of learned budgets (volume fixed at e = {eps:g})", fontsize=10)
    return atomic_save_figure(path, fig)


def plot_certified_vs_eps(curves: Mapping[str, tuple[Sequence[float], Sequence[float]]], *, path: str | Path,
                          title: str = "Certified accuracy vs target radius e",
                          errors: Mapping[str, Sequence[float]] | None = None) -> Path:
    """Certified accuracy (%) against the target radius e; ``curves`` maps a label to (eps, accuracy
    in [0, 1]); optional ``errors`` (same keys) give a standard deviation per point."""
    fig = _figure(6.4, 4.2)
    ax = fig.add_subplot(1, 1, 1)
    for name, (es, accs) in curves.items():
        accs = [100 * a for a in accs]
        if errors and name in errors:
            ax.errorbar(list(es), accs, yerr=[100 * s for s in errors[name]], marker="o", capsize=3, label=name)
        else:
            ax.plot(list(es), accs, marker="o", label=name)
    ax.set_xlabel("target radius e (uniform: L-inf radius; learned: geometric-mean budget)")
    ax.set_ylabel("certified accuracy (%)")
    ax.set_ylim(0, 100)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(title, fontsize=10)
    return atomic_save_figure(path, fig)


def plot_budget_context(x: Tensor, budgets: Tensor, *, eps: float, rho: float, path: str | Path, n: int = 4,
                        mask: Tensor | None = None, title: str | None = None) -> Path:
    """The mean mask beside per-image deviations: how contextual the budgets are.

    Left: the per-pixel mean of ``v = log(eps_i / e) / log rho`` over all N images (-1 = lower
    limit, +1 = upper). Then, for the first ``n`` images, the image and its deviation ``v - mean v``
    on a symmetric color scale shared by all deviations (0 = the fixed mask would do). A fixed mask
    has deviations of exactly 0.

    Args:
        x: (N, C, H, W) images in [0, 1]; budgets: (N, C, H, W) radii before the clip (mean over C shown).
        eps, rho: target radius and range ratio (rho > 1).
        mask: optional bool (C, H, W) irrelevant region, outlined on the mean mask.
    """
    L = math.log(max(float(rho), 1.0 + 1e-9))
    v = (budgets.detach().double().clamp_min(1e-30).log() - math.log(eps)).div(L).mean(1).float().cpu()  # (N, H, W)
    mean = v.mean(0)
    n = min(n, x.shape[0])
    dev = (v[:n] - mean).numpy()
    span = max(float(np.abs(dev).max()), 1e-3)
    img = x[:n].detach().float().cpu().mean(1).numpy()
    fig = _figure(2.0 * (1 + 2 * n) * 0.85 + 1.5, 2.6)
    gs = fig.add_gridspec(1, 1 + 2 * n, wspace=0.12)
    a0 = fig.add_subplot(gs[0, 0])
    im0 = a0.imshow(mean.numpy(), cmap="viridis", vmin=-1, vmax=1, interpolation="nearest")
    if mask is not None:
        _outline(a0, mask.any(0).cpu().numpy())
    a0.set_title(f"mean mask\n(over {v.shape[0]} images)", fontsize=8)
    im = None
    for k in range(n):
        a1 = fig.add_subplot(gs[0, 1 + 2 * k])
        a1.imshow(img[k], cmap="gray", vmin=0, vmax=1, interpolation="nearest")
        a1.set_title(f"image {k}", fontsize=8)
        a2 = fig.add_subplot(gs[0, 2 + 2 * k])
        im = a2.imshow(dev[k], cmap="RdBu_r", vmin=-span, vmax=span, interpolation="nearest")
        a2.set_title("deviation", fontsize=8)
    for a in fig.axes:
        a.set_xticks([])
        a.set_yticks([])
    cb0 = fig.colorbar(im0, ax=[a0], fraction=0.05, pad=0.04, location="left")
    cb0.set_label("log(eps_i / e) / log rho", fontsize=7)
    if im is not None:
        cb = fig.colorbar(im, ax=fig.axes[1:], fraction=0.02, pad=0.02)
        cb.set_label("image's v minus the mean mask's", fontsize=7)
    fig.suptitle(title or f"Budgets at e = {eps:g}, rho = {rho:g}: the mean mask and each image's deviation "
                          f"(max |deviation| {span:.2f} of the range [-1, 1])", fontsize=9)
    return atomic_save_figure(path, fig)
