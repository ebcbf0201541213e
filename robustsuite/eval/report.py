"""The evaluation report: records, metrics, violations; saved as JSON, CSV, Markdown and plots.

``Report.save(dir)`` writes the whole report into a fresh folder beside ``dir`` and swaps it in
(:func:`robustsuite.files.replace_folder`), under the folder's lock: a crash leaves the previous
report complete or the new one complete, never a mix, and nothing of an earlier report (e.g. a plot
that no longer applies) survives. It holds:

* ``report.json``: format/version, suite (config), environment, timings, samples, items, metrics,
  not-applicable items with reasons, violations, and the per-sample records (columns);
* ``records.csv``: the records in *wide* format, one row per (model, repeat, sample), one column per
  record key (see :mod:`robustsuite.eval.metrics`); empty cells are not applicable;
* ``report.md``: the tables, with a ``SOUNDNESS VIOLATION`` section at the top when the check fired;
* ``plots/*.png`` (see :mod:`robustsuite.eval.plots`);
* while an evaluation into the folder runs (``robustsuite eval --out``, ``robustsuite run``):
  ``partial/``, its finished columns (:mod:`robustsuite.eval.resume`), which the final save removes.
* ``eval.log``: the log of the evaluation (every INFO line, appended by ``robustsuite eval`` and
  ``robustsuite run``: :func:`robustsuite.progress.run_log`); a save carries it over into the new folder.

``Report.load(dir)`` reads ``report.json`` back into an equal ``Report``.
"""
from __future__ import annotations

import csv
import errno
import io
import json
import math
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..errors import CheckpointError, ConfigError, OutputError
from ..files import LOCK_NAME, atomic_write_json, atomic_write_text, output_lock, replace_folder
from .metrics import check_consistency, metrics_from_records

FORMAT = "robustsuite-report"
VERSION = 1

__all__ = ["Report", "FORMAT", "VERSION", "format_value", "metric_label", "REPORT_ENTRIES", "PARTIAL_DIR", "LOG_NAME"]

#: the folder of a report folder where an evaluation keeps its finished columns until the report is saved
PARTIAL_DIR = "partial"
#: the log file of the evaluation that writes a report folder (kept by a save)
LOG_NAME = "eval.log"
#: what a report folder holds (besides the lock file); anything else there stops a save
REPORT_ENTRIES = ("report.json", "records.csv", "report.md", "plots", PARTIAL_DIR, LOG_NAME)


def format_value(m: dict[str, Any] | None, digits: int = 3) -> str:
    """``0.912`` or ``0.912 +- 0.004`` (several repeats) or ``n/a``."""
    if m is None or m.get("mean") is None or (isinstance(m["mean"], float) and math.isnan(m["mean"])):
        return "n/a"
    if len(m.get("values", [])) > 1:
        return f"{m['mean']:.{digits}f} +- {m['std']:.{digits}f}"
    return f"{m['mean']:.{digits}f}"


def metric_label(name: str) -> str:
    """A readable column name: ``robust|pgd|linf@0.1`` -> ``robust pgd linf@0.1``."""
    return name.replace("|", " ")


def _metric_order(name: str) -> tuple:
    head = name.split("|", 1)[0]
    order = ["clean_accuracy", "certified", "falsified", "unknown", "verified_error", "robust", "asr", "broken",
             "worst", "union", "average", "smooth"]
    return (order.index(head) if head in order else len(order), name)


@dataclass
class Report:
    """One evaluation: what ran (``suite``, ``items``), on what (``samples``), per-sample ``records``,
    the ``metrics`` computed from them, ``not_applicable`` reasons, consistency ``violations``."""

    suite: dict[str, Any]
    models: list[str]
    items: list[dict[str, Any]]
    records: dict[str, list]
    metrics: dict[str, dict[str, dict[str, Any]]]
    not_applicable: dict[str, dict[str, str]]
    violations: list[dict[str, Any]]
    timings: dict[str, dict[str, float]]
    environment: dict[str, Any]
    samples: dict[str, Any]
    extras: dict[str, Any] = field(default_factory=dict)

    # ------------------------------------------------------------------------------ building
    @classmethod
    def build(cls, *, suite, models, items, records, not_applicable, timings, environment, samples,
              extras=None) -> "Report":
        """A report whose metrics and violations are computed from ``records``."""
        return cls(suite=suite, models=models, items=items, records=records,
                   metrics=metrics_from_records(records, cls._radii(suite)), not_applicable=not_applicable,
                   violations=check_consistency(records), timings=timings, environment=environment,
                   samples=samples, extras=extras or {})

    @staticmethod
    def _radii(suite: dict) -> dict[str, list[float]]:
        from .suite import fmt_num
        sm = suite.get("smoothing") or {}
        return {fmt_num(s): list(sm.get("radii", [0.0])) for s in sm.get("sigmas", [])}

    def recompute(self) -> "Report":
        """Metrics and violations recomputed from the records (e.g. after editing them in a test)."""
        self.metrics = metrics_from_records(self.records, self._radii(self.suite))
        self.violations = check_consistency(self.records)
        return self

    @property
    def ok(self) -> bool:
        """True when the consistency check found no violation."""
        return not self.violations

    # ------------------------------------------------------------------------------ tables
    def metric_names(self, prefix: str | None = None) -> list[str]:
        names = {k for m in self.metrics.values() for k in m}
        if prefix:
            names = {k for k in names if k.split("|", 1)[0] == prefix}
        return sorted(names, key=_metric_order)

    def rows(self, metrics: list[str] | None = None) -> list[dict[str, Any]]:
        """One dict per model: ``model`` and the mean of each metric (None where not applicable)."""
        names = metrics or self.metric_names()
        return [{"model": m, **{k: self.metrics.get(m, {}).get(k, {}).get("mean") for k in names}}
                for m in self.models]

    def table(self, metrics: list[str] | None = None, digits: int = 3, *, transpose: bool = False) -> str:
        """A plain-text table: one row per model, one column per metric (mean +- std for stochastic
        models); ``transpose`` gives one row per metric instead (narrower, for terminals)."""
        names = metrics or [k for k in self.metric_names() if not k.startswith("verified_error")]
        if transpose:
            header = ["metric"] + list(self.models)
            body = [[metric_label(k)] + [format_value(self.metrics.get(m, {}).get(k), digits) for m in self.models]
                    for k in names]
        else:
            header = ["model"] + [metric_label(k) for k in names]
            body = [[m] + [format_value(self.metrics.get(m, {}).get(k), digits) for k in names] for m in self.models]
        return _text_table(header, body)

    def markdown(self) -> str:
        """The report as Markdown (what ``report.md`` holds)."""
        out = [f"# Evaluation report: {self.suite.get('name', 'suite')}", ""]
        if self.violations:
            out += ["## SOUNDNESS VIOLATION", "",
                    "**Samples certified under a threat set were broken by an attack under the same set, or "
                    "are misclassified without perturbation (attack `clean`). A bound is unsound or an attack "
                    "is broken; no number below can be trusted.**", "",
                    "| model | repeat | bound | attack | set | samples | indices |", "|---|---|---|---|---|---|---|"]
            out += [f"| {v['model']} | {v['repeat']} | {v['method']} | {v['attack']} | {v['set']} | {v['count']} | "
                    f"{', '.join(map(str, v['indices']))} |" for v in self.violations]
            out.append("")
        else:
            out += ["Consistency check passed: no certified sample was broken by an attack in the same set.", ""]
        data = dict(self.samples.get("data") or {})
        ckpts = data.pop("checkpoints", None)
        what = " ".join(f"{k} {v}" for k, v in data.items() if v not in (None, {}, []))
        out += [f"{self.samples.get('n')} samples" + (f" ({what})" if what else "")
                + f"; subset {self.samples.get('subset')}; device {self.environment.get('device')}, "
                f"seed {self.environment.get('seed')}.", ""]
        if ckpts:
            out += ["Models: " + ", ".join(f"`{k}` = `{v}`" for k, v in ckpts.items()), ""]
        for w in self.extras.get("warnings", []):
            out += [f"**Warning:** {w}", ""]
        sections = [("Accuracy and certified accuracy", ["clean_accuracy", "certified"]),
                    ("Complete verification (falsified and unknown shares; certified milp = verified)",
                     ["falsified", "unknown"]),
                    ("Robust accuracy under attack (over all samples)", ["robust"]),
                    ("Attack success rate (over clean-correct samples)", ["asr"]),
                    ("AutoAttack: share of all samples each component broke first (the cascade)", ["broken"]),
                    ("Worst case per set and norm, union and average over norms", ["worst", "union", "average"]),
                    ("Randomized smoothing (certified accuracy at L2 radius, abstention, mean certified radius)", ["smooth"])]
        for title, prefixes in sections:
            names = [k for p in prefixes for k in self.metric_names(p)]
            if not names:
                continue
            out += [f"## {title}", "", _md_table(["metric"] + self.models,
                                                  [[metric_label(k)] + [format_value(self.metrics.get(m, {}).get(k))
                                                                        for m in self.models] for k in names]), ""]
        na = [(m, k, r) for m, d in self.not_applicable.items() for k, r in d.items()]
        if na:
            out += ["## Not applicable", "", _md_table(["model", "item", "reason"], [[m, k, r] for m, k, r in na]), ""]
        timing_rows = [[m, s, f"{t:.2f}"] for m, d in self.timings.items() for s, t in d.items()]
        out += ["## Timings (seconds)", "", _md_table(["model", "stage", "seconds"], timing_rows), ""]
        out += ["Metrics with +- are mean +- std over repeats with fresh randomness (stochastic models). "
                "Records: `records.csv` (one row per model, repeat and sample)."]
        return "\n".join(out) + "\n"

    def records_csv(self) -> str:
        """The records in wide format (one row per model, repeat and sample; empty = not applicable)."""
        buf = io.StringIO()
        w = csv.writer(buf)
        keys = list(self.records)
        w.writerow(keys)
        n = len(self.records["index"])
        for i in range(n):
            w.writerow(["" if self.records[k][i] is None else self.records[k][i] for k in keys])
        return buf.getvalue()

    # ------------------------------------------------------------------------------ files
    def to_dict(self) -> dict[str, Any]:
        return {"format": FORMAT, "version": VERSION, **asdict(self)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Report":
        if not isinstance(d, dict) or d.get("format") != FORMAT:
            raise ConfigError(f"not a robustsuite report (no 'format: {FORMAT}' entry)")
        fields = cls.__dataclass_fields__
        return cls(**{k: d[k] for k in fields if k in d})

    def save(self, out_dir: str | Path, *, plots: bool = True) -> Path:
        """Write report.json, records.csv, report.md and plots/ as the folder ``out_dir``, replacing a
        previous report there as a whole (see the module docstring); its ``eval.log`` is kept.

        Raises:
            OutputError: ``out_dir`` is in use by another process, holds files that are not part of a
                report (they would be lost: choose another folder), or cannot be written.
        """
        out = Path(out_dir)
        with output_lock(out):
            check_report_folder(out)

            def fill(tmp: Path) -> None:
                if plots:
                    from .plots import report_plots
                    report_plots(self, tmp / "plots")
                atomic_write_text(tmp / "records.csv", self.records_csv())
                atomic_write_text(tmp / "report.md", self.markdown())
                atomic_write_json(tmp / "report.json", _jsonable(self.to_dict()))
                if (out / LOG_NAME).is_file():  # the log of this evaluation (and of earlier ones) stays
                    shutil.copy2(out / LOG_NAME, tmp / LOG_NAME)

            replace_folder(out, fill)
        return out

    @classmethod
    def load(cls, path: str | Path) -> "Report":
        """Read a report folder (or its ``report.json``)."""
        p = Path(path)
        if p.is_dir():
            p = p / "report.json"
        if not p.is_file():
            raise CheckpointError(f"report {str(p)!r} does not exist; write one with `robustsuite eval ... --out DIR`")
        try:
            d = json.loads(p.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise CheckpointError(f"report {str(p)!r} is not valid JSON ({e})") from None
        return cls.from_dict(d)


def check_report_folder(out: str | Path) -> None:
    """Raise :class:`OutputError` when the folder ``out`` holds anything besides a report: saving a
    report there replaces the folder whole, so those files would be lost."""
    from .resume import foreign_entries

    out = Path(out)
    if not out.is_dir():
        return
    foreign = sorted(e.name for e in out.iterdir() if e.name not in REPORT_ENTRIES and e.name != LOCK_NAME)
    # partial/ is ours only when it holds nothing but finished columns
    foreign += [f"{PARTIAL_DIR}/{name}" for name in foreign_entries(out / PARTIAL_DIR)]
    if foreign:
        shown = ", ".join(foreign[:5]) + (", ..." if len(foreign) > 5 else "")
        raise OutputError(errno.EEXIST, f"output folder {str(out)!r} holds files that are not part of a report "
                                        f"({shown}); a report replaces its folder whole, so they would be lost; fix: "
                                        "choose a new folder or a previous report folder (--out)")


def _jsonable(o):
    """NaN -> None so the JSON is standard; everything else unchanged."""
    if isinstance(o, float) and math.isnan(o):
        return None
    if isinstance(o, dict):
        return {str(k): _jsonable(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_jsonable(v) for v in o]
    return o


def _text_table(header: list[str], body: list[list[str]]) -> str:
    widths = [max(len(str(r[i])) for r in [header] + body) for i in range(len(header))]
    line = lambda r: "  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip()  # noqa: E731
    return "\n".join([line(header), "  ".join("-" * w for w in widths)] + [line(r) for r in body])


def _md_table(header: list[str], body: list[list[str]]) -> str:
    esc = lambda c: str(c).replace("|", "\\|")  # noqa: E731
    lines = ["| " + " | ".join(map(esc, header)) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(map(esc, r)) + " |" for r in body]
    return "\n".join(lines)
