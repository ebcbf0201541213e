"""Several reports side by side: one table, shared plots, and a warning where samples differ."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

from ..files import atomic_write_json, atomic_write_text
from .report import Report, _md_table, _metric_order, format_value, metric_label

log = logging.getLogger(__name__)

__all__ = ["compare_reports", "sample_differences"]


def _data_key(d) -> dict:
    """What identifies the data of a report (not which checkpoints were evaluated on it)."""
    return {k: v for k, v in (d or {}).items() if k != "checkpoints"}


def sample_differences(reports: Sequence[Report], names: Sequence[str]) -> list[str]:
    """Human-readable notes where the reports were evaluated on different samples or data."""
    notes = []
    ref = reports[0].samples
    for name, rep in zip(names[1:], reports[1:]):
        s = rep.samples
        if s.get("indices") != ref.get("indices"):
            a, b = set(ref.get("indices") or []), set(s.get("indices") or [])
            notes.append(f"{name} was evaluated on different samples than {names[0]} "
                         f"({len(b)} vs {len(a)} samples, {len(a & b)} in common)")
        else:
            a, b = _data_key(ref.get("data")), _data_key(s.get("data"))
            if a and b and a != b:
                notes.append(f"{name} was evaluated on different data than {names[0]} ({b} vs {a})")
    return notes


def compare_reports(reports: Sequence[Report], names: Sequence[str], out_dir: str | Path | None = None
                    ) -> tuple[str, list[str]]:
    """A side-by-side table (metrics x report:model) and, with ``out_dir``, compare.md, compare.json
    and plots/. Returns ``(table text, notes about differing samples)``."""
    if len(reports) != len(names) or not reports:
        raise ValueError("compare_reports: give one name per report, at least one report")
    notes = sample_differences(reports, names)
    for n in notes:
        log.warning("compare: %s", n)
    cols = [(rep, m, f"{name}:{m}") for rep, name in zip(reports, names) for m in rep.models]
    metrics = sorted({k for rep in reports for mm in rep.metrics.values() for k in mm
                      if not k.startswith("verified_error")}, key=_metric_order)
    header = ["metric"] + [c[2] for c in cols]
    body = [[metric_label(k)] + [format_value(rep.metrics.get(m, {}).get(k)) for rep, m, _ in cols] for k in metrics]
    from .report import _text_table
    text = _text_table(header, body)
    if out_dir is not None:
        out = Path(out_dir)
        from .plots import plot_asr, plot_robust_vs_eps, plot_smoothing_radius
        plot_robust_vs_eps(reports, out / "plots" / "robust_vs_eps.png", names)
        plot_smoothing_radius(reports, out / "plots" / "smoothing_radius.png", names)
        plot_asr(reports, out / "plots" / "asr.png", names)
        md = ["# Comparison of evaluation reports", ""]
        if notes:
            md += ["## WARNING: different samples", ""] + [f"- {n}" for n in notes] + [""]
        viol = [(name, v) for rep, name in zip(reports, names) for v in rep.violations]
        if viol:
            md += ["## SOUNDNESS VIOLATION", ""] + [f"- {name}: model {v['model']}, {v['count']} sample(s) "
                                                    f"certified by {v['method']} broken by {v['attack']} under {v['set']}"
                                                    for name, v in viol] + [""]
        md += [_md_table(header, body), ""]
        atomic_write_text(out / "compare.md", "\n".join(md))
        atomic_write_json(out / "compare.json", {
            "reports": list(names), "notes": notes,
            "metrics": {label: {k: rep.metrics.get(m, {}).get(k) for k in metrics} for rep, m, label in cols},
        })
    return text, notes
