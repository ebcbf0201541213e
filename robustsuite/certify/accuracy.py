"""Certified accuracy of a model per bound method and radius, beside PGD robust accuracy.

``certified_table`` is what ``robustsuite verify`` prints and what the demo shows. It checks the
basic soundness relations per sample on every call: a certified sample is classified correctly
without perturbation (always checked, so certified accuracy can never exceed clean accuracy
unflagged), and survives PGD in the same set (when PGD runs); a violation is logged as an error and
counted in the result (``violations``: samples breaking either rule).
"""
from __future__ import annotations

import time
from typing import Sequence

import torch
from torch import Tensor, nn

from ..threats import LinfBall
from .bounds import canonical_method
from .checks import soundness_violations
from .verifier import Verifier


def pgd_robust(model: nn.Module, x: Tensor, y: Tensor, eps: float, steps: int, *, batch: int = 256,
               seed: int = 0) -> Tensor:
    """(B,) bool on ``x``'s device: the prediction at PGD's returned point is correct (L-inf PGD,
    random start, ``steps`` steps; the clean prediction is not looked at, ``certified_table``
    checks it separately)."""
    from ..attacks import PGD, per_sample_robust

    torch.manual_seed(seed)
    atk = PGD(model, threat=LinfBall(eps), steps=steps, step_size=max(eps / 4, 2.5 * eps / max(steps, 1)),
              random_start=True)
    rec = per_sample_robust(model, x, y, atk, batch_size=batch, device=x.device, clean="none")
    return (~rec.success).to(x.device)


def _method(m: str) -> str:
    """A bound method's canonical name, or ``milp``; unknown names list both."""
    from ..errors import UnknownNameError, unknown
    from .bounds import METHODS
    if isinstance(m, str) and m.strip().lower() == "milp":
        return "milp"
    try:
        return canonical_method(m)
    except UnknownNameError:
        raise unknown("method", m, [*METHODS, "milp"]) from None


def certified_table(model: nn.Module, x: Tensor, y: Tensor, *, eps: Sequence[float],
                    methods: Sequence[str], pgd_steps: int = 40, device: str | torch.device = "auto",
                    seed: int = 0, time_limit: float = 60.0, quiet: bool = True) -> list[dict]:
    """One row per (eps, method): clean accuracy, certified accuracy, PGD accuracy, timing.

    Args:
        model: a deterministic classifier on [0, 1] images; x (N, C, H, W) in [0, 1]; y (N,) labels.
        eps: L-inf radii (pixel units).
        methods: bound methods (``ibp``, ``crown-ibp``, ``crown``, ``alpha-crown``) or ``milp``
            (complete verification: its rows add the counts ``verified``, ``falsified``, ``unknown``).
        pgd_steps: PGD steps of the empirical check (0 turns it off).
        time_limit: ``milp``: MILP seconds per sample.
        quiet: ``milp``: no progress bar.
    """
    from ..settings import check_linf_radii
    eps = check_linf_radii(list(eps), "eps")
    methods = [_method(m) for m in methods]
    model.eval()
    rows = []
    milp = {"time_limit": time_limit, "quiet": quiet}
    verifiers = {m: Verifier(model, tuple(x.shape[1:]), method=m, device=device, **(milp if m == "milp" else {}))
                 for m in methods}
    dev = next(iter(verifiers.values())).device if verifiers else torch.device("cpu")
    x, y = x.to(dev), y.to(dev)
    with torch.no_grad():
        clean = (model(x).argmax(1) == y)
    for e in eps:
        robust = pgd_robust(model, x, y, e, pgd_steps, seed=seed) if pgd_steps > 0 else None
        for m, v in verifiers.items():
            t0 = time.perf_counter()
            res = v.verify(x, y, LinfBall(e))
            dt = time.perf_counter() - t0
            row = {"eps": float(e), "method": m, "n": int(x.shape[0]),
                   "clean_acc": float(clean.float().mean()),
                   "certified_acc": float(res.certified.float().mean()),
                   "seconds": round(dt, 3)}
            if res.status is not None:
                row.update({s: res.status.count(s) for s in ("verified", "falsified", "unknown")})
            if robust is not None:
                row.update(pgd_acc=float(robust.float().mean()), pgd_steps=int(pgd_steps))
            row.update(soundness_violations(clean, res.certified.to(clean.device), robust, what=f"{m} at eps {e:g}"))
            rows.append(row)
    return rows


def format_table(rows: list[dict]) -> str:
    """A plain-text table of :func:`certified_table` rows."""
    has_pgd = any("pgd_acc" in r for r in rows)
    has_status = any("unknown" in r for r in rows)
    head = f"{'eps':>7}  {'method':<12} {'clean':>7} {'certified':>10}" + (f" {'PGD':>7}" if has_pgd else "")
    if has_status:
        head += f" {'verified':>9} {'falsified':>9} {'unknown':>8}"
    head += f" {'time':>8}"
    lines = [head, "-" * len(head)]
    for r in rows:
        line = f"{r['eps']:>7.4g}  {r['method']:<12} {100 * r['clean_acc']:>6.2f}% {100 * r['certified_acc']:>9.2f}%"
        if has_pgd:
            line += f" {100 * r['pgd_acc']:>6.2f}%" if "pgd_acc" in r else f" {'-':>7}"
        if has_status:
            line += (f" {r['verified']:>9d} {r['falsified']:>9d} {r['unknown']:>8d}" if "unknown" in r
                     else f" {'-':>9} {'-':>9} {'-':>8}")
        line += f" {r['seconds']:>7.2f}s"
        if r.get("violations"):
            line += f"  !! {r['violations']} SOUNDNESS VIOLATIONS"
        lines.append(line)
    return "\n".join(lines)
