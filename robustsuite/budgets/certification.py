"""Certified evaluation under learned budgets, and the budget metrics of the synthetic sets.

``certify_budgets`` certifies each test image under its own learned box (the generator in eval mode
at the test radius e and range rho) and, for the same model, under the uniform L-inf ball of equal
volume (radius e); it reports the nominal log-mean radius (before the [0, 1] clip: log e by
construction) and the effective one ((upper - lower) / 2 per dimension after the clip) of both
sets, and checks soundness per sample: a sample certified under a set (its box, or the uniform
ball) must be classified correctly without perturbation (always checked), and one certified under
its box must never be broken by PGD in that box (when PGD runs); a violation is logged as an error
and counted. Every number comes from the per-sample records it returns.

``budget_ratio`` measures whether the budgets follow feature importance on a set with a known
label-irrelevant region: the ratio of the geometric-mean budget on the irrelevant region to that on
the relevant one, and the fraction of irrelevant pixels at the upper range limit ``rho * e``.
"""
from __future__ import annotations

import math
import time
from typing import Sequence

import torch
from torch import Tensor

from ..certify.bounds import canonical_method
from ..certify.checks import soundness_violations
from ..certify.verifier import Verifier
from ..errors import InputError
from ..threats import Box, LinfBall, check_images
from .budget_generator import BudgetModel
from .projection import check_rho


__all__ = ["certify_budgets", "radius_summary", "budget_ratio", "budget_spread", "pgd_in_box", "certified_curve",
           "format_budget_table", "eval_budgets"]

#: relative tolerance for "at the upper range limit"
AT_LIMIT_RTOL = 1e-4


def radius_summary(x: Tensor, budgets: Tensor) -> dict[str, Tensor]:
    """Per-sample (B,) log-mean radii of the box ``[x - budgets, x + budgets]``.

    ``nominal``: mean of ``log budgets`` (before the [0, 1] clip; the volume constraint fixes it);
    ``effective``: mean of ``log((upper - lower) / 2)`` after the clip (saturated pixels of digit
    backgrounds halve their half-width).
    """
    lo, hi = (x - budgets).clamp(0, 1), (x + budgets).clamp(0, 1)
    nominal = budgets.clamp_min(1e-30).log().flatten(1).mean(1)
    effective = ((hi - lo) / 2).clamp_min(1e-30).log().flatten(1).mean(1)
    return {"nominal": nominal, "effective": effective}


def pgd_in_box(model: torch.nn.Module, x: Tensor, y: Tensor, box: Box, *, steps: int = 40, restarts: int = 1,
               seed: int = 0, batch: int = 256) -> Tensor:
    """(B,) bool on ``x``'s device: the prediction at PGD's returned point inside ``box`` is correct
    (projection onto the box each step; signed-gradient steps of a fraction of each element's
    half-width; random start; the batch at offset ``i`` is seeded with ``seed + i``)."""
    from ..attacks import PGD, per_sample_robust

    def attack(xb: Tensor, yb: Tensor, rows: slice) -> PGD:
        return PGD(model, Box(box.lower[rows], box.upper[rows]), steps=steps, random_start=True,
                   restarts=restarts, seed=seed + rows.start)

    rec = per_sample_robust(model, x, y, attack, batch_size=batch, device=x.device, clean="none")
    return (~rec.success).to(x.device)


@torch.no_grad()
def eval_budgets(model: BudgetModel, x: Tensor, eps: float, rho: float, batch: int = 1024) -> Tensor:
    """The per-pixel budgets (shape of ``x``) of ``model``'s generator in eval mode at radius ``eps`` and
    range ``rho``, in batches of ``batch``; the model's mode is restored."""
    was = model.training
    model.eval()
    try:
        return torch.cat([model.budgets(x[i:i + batch], eps, rho) for i in range(0, x.shape[0], batch)])
    finally:
        model.train(was)


def certify_budgets(model: BudgetModel, x: Tensor, y: Tensor, *, eps: float, rho: float,
                    methods: Sequence[str] = ("ibp", "crown-ibp"), pgd_steps: int = 40, pgd_restarts: int = 1,
                    device: str | torch.device = "auto", seed: int = 0, records: bool = True) -> dict:
    """Certified accuracy of ``model`` under its learned boxes and under the uniform ball of equal volume.

    Args:
        model: a :class:`BudgetModel` (classifier + generator); used in eval mode.
        x: (N, C, H, W) images in [0, 1]; y: (N,) labels.
        eps: the target radius e (geometric mean of every sample's budgets; the uniform radius).
        rho: the range ratio of the budgets (>= 1).
        methods: bound methods (``ibp``, ``crown-ibp``, ``crown``, ``alpha-crown``).
        pgd_steps: PGD steps inside the learned box (0: no empirical check).
        records: include the per-sample records.

    Returns:
        A dict: ``eps``, ``rho``, ``n``, ``clean_acc``; ``radius`` (nominal and effective log-mean
        radii, learned and uniform, averaged over samples, with ``exp`` of each); ``rows``, one per
        method, with ``certified_learned``, ``certified_uniform``, ``violations``, ``seconds``;
        ``pgd_learned_acc``; ``records`` (one per sample: index, label, pred, per method certified
        under each set, PGD robust, nominal and effective log radii).
    """
    check_images(x, "x", ndim=4)
    rho = check_rho(rho)
    if not isinstance(eps, (int, float)) or isinstance(eps, bool) or not (math.isfinite(eps) and eps > 0):
        raise InputError(f"eps: the target radius must be a number > 0, got {eps!r}")
    methods = [canonical_method(m) for m in methods]
    if not methods:
        raise InputError("methods: give at least one bound method (ibp, crown-ibp, crown, alpha-crown)")
    model.eval()
    verifiers = {m: Verifier(model.classifier, tuple(x.shape[1:]), method=m, device=device) for m in methods}
    dev = next(iter(verifiers.values())).device
    model.to(dev)
    x, y = x.to(dev), y.to(dev)
    with torch.no_grad():
        pred = model(x).argmax(1)
    clean = pred == y
    b = eval_budgets(model, x, eps, rho)
    box = Box((x - b).clamp(0, 1), (x + b).clamp(0, 1))
    uniform = LinfBall(eps)
    r_learned = radius_summary(x, b)
    r_uniform = radius_summary(x, torch.full_like(x, float(eps)))

    robust = None
    if pgd_steps > 0:
        robust = pgd_in_box(model.classifier, x, y, box, steps=pgd_steps, restarts=pgd_restarts, seed=seed)
    rows, per_method = [], {}
    for m, v in verifiers.items():
        t0 = time.perf_counter()
        res_l = v.verify(x, y, box)
        res_u = v.verify(x, y, uniform)
        row = {"method": m, "certified_learned": float(res_l.certified.float().mean()),
               "certified_uniform": float(res_u.certified.float().mean()),
               "seconds": round(time.perf_counter() - t0, 3)}
        # the clean rule for both sets; PGD ran inside the learned box only
        row.update(soundness_violations(clean, res_l.certified | res_u.certified, robust, attacked=res_l.certified,
                                        what=f"{m} (eps {eps:g}, rho {rho:g}; learned box or uniform ball)"))
        rows.append(row)
        per_method[m] = (res_l.certified.cpu(), res_u.certified.cpu())

    def mean(t: Tensor) -> float:
        return float(t.mean())

    out = {
        "eps": float(eps), "rho": rho, "n": int(x.shape[0]),
        "clean_acc": float(clean.float().mean()),
        "radius": {
            "nominal_log_learned": mean(r_learned["nominal"]), "nominal_log_uniform": mean(r_uniform["nominal"]),
            "effective_log_learned": mean(r_learned["effective"]),
            "effective_log_uniform": mean(r_uniform["effective"]),
        },
        "rows": rows,
    }
    out["radius"].update({k.replace("_log", "") + "_geomean": math.exp(v) for k, v in list(out["radius"].items())})
    if robust is not None:
        out.update(pgd_learned_acc=float(robust.float().mean()), pgd_steps=int(pgd_steps))
    if records:
        # One transfer per column, then plain Python values (no per-element tensor indexing).
        yc, pc = y.tolist(), pred.tolist()
        nom, eff = r_learned["nominal"].tolist(), r_learned["effective"].tolist()
        cert = {m: (c[0].tolist(), c[1].tolist()) for m, c in per_method.items()}
        rob = robust.tolist() if robust is not None else None
        rec = []
        for i in range(x.shape[0]):
            r = {"index": i, "label": int(yc[i]), "pred": int(pc[i]),
                 "certified_learned": {m: bool(c[0][i]) for m, c in cert.items()},
                 "certified_uniform": {m: bool(c[1][i]) for m, c in cert.items()},
                 "nominal_log_radius": float(nom[i]), "effective_log_radius": float(eff[i])}
            if rob is not None:
                r["pgd_robust"] = bool(rob[i])
            rec.append(r)
        out["records"] = rec
    return out


def budget_ratio(budgets: Tensor, irrelevant_mask: Tensor, *, eps: float, rho: float) -> dict[str, float]:
    """How much more budget the label-irrelevant region gets than the relevant one.

    Args:
        budgets: (N, C, H, W) per-pixel radii (before the clip).
        irrelevant_mask: bool (C, H, W), True on the irrelevant region (both regions non-empty).
        eps, rho: the target radius and range ratio the budgets were produced with.

    Returns:
        ``ratio``: geometric-mean budget over all irrelevant pixels of all samples divided by that
        over the relevant ones (1 for uniform budgets, at most rho^2);
        ``frac_irrelevant_at_upper``: fraction of irrelevant pixels with budget at ``rho * eps``
        (relative tolerance 1e-4); ``frac_relevant_at_upper`` and ``frac_relevant_at_lower`` beside it;
        ``ratio_cap``: the largest ratio the volume and range constraints allow for this mask
        (``rho^2`` when the irrelevant region is at most half of the input; less when it is larger,
        since the relevant pixels cannot go below ``e / rho`` to pay for it).
    """
    if not isinstance(irrelevant_mask, Tensor) or irrelevant_mask.dtype != torch.bool:
        raise InputError("irrelevant_mask: expected a bool tensor (C, H, W)")
    if budgets.dim() != 4 or tuple(budgets.shape[1:]) != tuple(irrelevant_mask.shape):
        raise InputError(f"budgets: expected (N, {', '.join(map(str, irrelevant_mask.shape))}) to match the mask, "
                         f"got {tuple(budgets.shape)}")
    m = irrelevant_mask.to(budgets.device).expand_as(budgets)
    if bool(m.all()) or not bool(m.any()):
        raise InputError("irrelevant_mask: both the irrelevant and the relevant region must be non-empty")
    logb = budgets.clamp_min(1e-30).log()
    upper = budgets >= rho * eps * (1 - AT_LIMIT_RTOL)
    lower = budgets <= eps / rho * (1 + AT_LIMIT_RTOL)
    f, L = float(irrelevant_mask.float().mean()), math.log(check_rho(rho))
    cap = math.exp(min(L, (1 - f) * L / f) + min(L, f * L / (1 - f)))
    return {"ratio": math.exp(float(logb[m].mean() - logb[~m].mean())), "ratio_cap": cap,
            "geomean_irrelevant": math.exp(float(logb[m].mean())),
            "geomean_relevant": math.exp(float(logb[~m].mean())),
            "frac_irrelevant_at_upper": float(upper[m].float().mean()),
            "frac_relevant_at_upper": float(upper[~m].float().mean()),
            "frac_relevant_at_lower": float(lower[~m].float().mean())}


def budget_spread(budgets: Tensor, *, rho: float) -> dict[str, float]:
    """How contextual budgets are: the per-pixel spread of log-budgets across images.

    Args:
        budgets: (N, C, H, W) per-pixel radii of N images (before the clip), N >= 2.
        rho: the range ratio they were produced with; the range of every log-budget is ``2 log rho``.

    Returns:
        ``mean_pixel_std``: the standard deviation over images of each pixel's log-budget, averaged
        over pixels (0 for a fixed mask); ``max_pixel_std``; ``range``: ``2 log rho``;
        ``relative``: ``mean_pixel_std / range``; ``context_share``: the share of the total variance
        of log-budgets (over images and pixels) that lies between images at a pixel (0 for a fixed
        mask, 1 if the mean mask were uniform).
    """
    if budgets.dim() != 4 or budgets.shape[0] < 2:
        raise InputError(f"budgets: expected (N, C, H, W) with N >= 2 images, got {tuple(budgets.shape)}")
    u = budgets.detach().double().clamp_min(1e-30).log().flatten(1)  # (N, d)
    per_pixel = u.std(dim=0, unbiased=False)                          # (d,)
    within = float(per_pixel.pow(2).mean())
    total = float(u.var(unbiased=False))
    rng = 2 * math.log(check_rho(rho))
    return {"mean_pixel_std": float(per_pixel.mean()), "max_pixel_std": float(per_pixel.max()), "range": rng,
            "relative": float(per_pixel.mean()) / rng if rng > 0 else 0.0,
            "context_share": within / total if total > 0 else 0.0}


def certified_curve(model: torch.nn.Module, x: Tensor, y: Tensor, eps_list: Sequence[float], *,
                    rho: float | None = None, method: str = "ibp", device: str | torch.device = "auto") -> list[float]:
    """Certified accuracy at each radius: under the learned boxes (``model`` a :class:`BudgetModel`
    and ``rho`` given) or under uniform L-inf balls (a classifier, or ``rho`` None)."""
    clf = model.classifier if isinstance(model, BudgetModel) else model
    clf.eval()
    v = Verifier(clf, tuple(x.shape[1:]), method=method, device=device)
    x, y = x.to(v.device), y.to(v.device)
    out = []
    for e in eps_list:
        if rho is not None and isinstance(model, BudgetModel):
            model.to(v.device)
            b = eval_budgets(model, x, float(e), rho)
            threat = Box((x - b).clamp(0, 1), (x + b).clamp(0, 1))
        else:
            threat = LinfBall(float(e))
        out.append(v.verify(x, y, threat).certified_accuracy)
    return out


def format_budget_table(reports: Sequence[dict]) -> str:
    """Plain-text table of :func:`certify_budgets` results (one line per eps and method)."""
    head = (f"{'eps':>6} {'rho':>5}  {'method':<11} {'clean':>7} {'cert learned':>13} {'cert uniform':>13}"
            f" {'PGD box':>8}  {'radius nominal/eff.learned/eff.uniform':>40}")
    lines = [head, "-" * len(head)]
    for rep in reports:
        r = rep["radius"]
        radii = f"{r['nominal_learned_geomean']:.4f} / {r['effective_learned_geomean']:.4f} / " \
                f"{r['effective_uniform_geomean']:.4f}"
        for row in rep["rows"]:
            pgd = f"{100 * rep['pgd_learned_acc']:>7.2f}%" if "pgd_learned_acc" in rep else f"{'-':>8}"
            line = (f"{rep['eps']:>6.4g} {rep['rho']:>5.3g}  {row['method']:<11} {100 * rep['clean_acc']:>6.2f}%"
                    f" {100 * row['certified_learned']:>12.2f}% {100 * row['certified_uniform']:>12.2f}% {pgd}"
                    f"  {radii:>40}")
            if row.get("violations"):
                line += f"  !! {row['violations']} SOUNDNESS VIOLATIONS"
            lines.append(line)
    return "\n".join(lines)
