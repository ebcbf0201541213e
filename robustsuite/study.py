"""The study pipeline: train every model of a study config, then evaluate them together in one report.

``robustsuite run CONFIG`` and :func:`run` do the whole job::

    from robustsuite.study import run
    result = run("configs/digits_study.yaml")
    print(result.report.table(transpose=True))      # also saved: result.report_dir

A study config (YAML, validated; unknown keys are errors naming the key path)::

    name: digits_study
    seed: 0                    # every model's seed (unless its `set` says otherwise) and the evaluation seed
    device: auto               # training and evaluation device
    out: null                  # default runs/<name>
    checkpoint: best           # which checkpoint of each model is evaluated: best | last
    models:                    # label -> a run config and --set style overrides of it
      crown_ibp: {config: configs/digits_crown_ibp.yaml, set: [train.epochs=10]}
      pgd_at:    {config: configs/digits_pgd_at.yaml, set: [train.epochs=3]}
    suite: configs/suites/demo.yaml     # a suite file, or the suite inline as a mapping
    suite_set: [subset.first=200]       # overrides of the suite
    data: null                 # the evaluation data (a `data` section); default: the first model's, test split

Relative paths (``models.*.config``, ``suite``, ``out``) are resolved against the current directory;
a model config or suite file not found there is looked for beside the study file, then in its
parent folder (so ``configs/x.yaml`` works from the repository root and from inside ``configs/``).

Outputs: ``<out>/study.yaml`` (the resolved study, every model config and the suite inlined),
``<out>/models/<label>/`` (``best.pt``, ``last.pt``, ``config.yaml``, ``history.json``, ``train.log`` of
each model; a finished one is skipped, an interrupted one resumes from its ``last.pt``), ``<out>/report/``
(``report.json``, ``records.csv``, ``report.md``, ``plots/``, ``eval.log``) and ``<out>/run.log`` (every
INFO line of the study). One summary line per trained model and per evaluated model goes to the
``robustsuite.progress`` logger (:mod:`robustsuite.progress`).
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional, Union

import yaml
from pydantic import Field, ValidationError

from .progress import run_log, summary
from .settings import DeviceName, SafeName, Strict, _format_error, apply_overrides, load_yaml
from .training.config import DataConfig, RunConfig, validate
from .errors import ConfigError

log = logging.getLogger(__name__)

__all__ = ["ModelEntry", "StudyConfig", "StudyResult", "load_study", "study_from_dict", "run"]


class ModelEntry(Strict):
    """One model of a study: a run config file and ``key.path=value`` overrides of it."""

    config: str = Field(..., description="path of a run config (configs/*.yaml)")
    set: list[str] = Field(default_factory=list, description="overrides, e.g. train.epochs=10")


class StudyConfig(Strict):
    """A study: the models to train and the suite that evaluates them together."""

    name: SafeName = Field("study", description="names the default output folder runs/<name>")
    seed: int = 0
    device: DeviceName = "auto"
    out: Optional[str] = None
    checkpoint: Literal["best", "last"] = "best"
    models: dict[SafeName, ModelEntry] = Field(..., min_length=1, description="label -> model; a label names "
                                               "a folder (models/<label>) and a report column")
    suite: Union[str, dict[str, Any]] = "configs/suites/demo.yaml"
    suite_set: list[str] = Field(default_factory=list)
    data: Optional[DataConfig] = None



@dataclass
class ResolvedStudy:
    """A validated study with every reference loaded: run configs per label and the suite."""

    config: StudyConfig
    runs: dict[str, RunConfig]
    suite: Any  # robustsuite.eval.Suite
    out: Path
    source: Optional[Path] = None

    def resolved(self) -> dict:
        """The study with every model config and the suite inlined (written to ``<out>/study.yaml``)."""
        out = self.config.model_dump(mode="json")
        out["out"] = str(self.out)
        out["resolved"] = {"models": {k: r.resolved() for k, r in self.runs.items()},
                           "suite": self.suite.resolved()}
        return out


@dataclass
class StudyResult:
    """What :func:`run` did: per-model checkpoints and status, the report and where it was saved."""

    out: Path
    checkpoints: dict[str, Path]
    status: dict[str, str]                    # label -> trained | resumed | skipped
    report: Any = None                        # robustsuite.eval.Report (None when stopped early)
    report_dir: Optional[Path] = None
    timings: dict[str, float] = field(default_factory=dict)


# ------------------------------------------------------------------------------------- loading
def _find(path: str, base: Optional[Path], what: str) -> Path:
    p = Path(path)
    candidates = [p]
    if not p.is_absolute() and base is not None:
        candidates += [base / p, base.parent / p]
    for c in candidates:
        if c.is_file():
            return c
    looked = ", ".join(str(c) for c in dict.fromkeys(candidates))
    raise ConfigError(f"{what}: file {path!r} does not exist (looked at: {looked})")


def _prefixed(err: ConfigError, key: str, path: Optional[Path]) -> ConfigError:
    """A run config's error with every key path under the study's ``models.<label>`` key."""
    text = str(err)
    for head in ("invalid config:\n  ", "invalid suite:\n  "):
        if text.startswith(head):
            lines = [f"{key}{'' if line.startswith('[') else '.'}{line}" for line in text[len(head):].split("\n  ")]
            where = f" ({key}: {path})" if path is not None else ""
            return ConfigError(f"invalid study config{where}:\n  " + "\n  ".join(lines))
    return ConfigError(f"{key}{f' ({path})' if path is not None else ''}: {text}")


def study_from_dict(raw: dict, overrides: list[str] | None = None, *, base: str | Path | None = None) -> ResolvedStudy:
    """Validate a study mapping (plus ``key.path=value`` overrides), load every model config and the
    suite, and check the references; raise :class:`ConfigError` naming the key path on any problem."""
    from .eval.suite import load_suite, suite_from_dict

    if not isinstance(raw, dict):
        raise ConfigError(f"study: expected a mapping (name, models, suite, ...), got {type(raw).__name__}")
    raw = apply_overrides(raw, overrides)
    try:
        study = StudyConfig.model_validate(raw)
    except ValidationError as e:
        raise _format_error(e, StudyConfig) from None
    base = Path(base) if base is not None else None
    runs: dict[str, RunConfig] = {}
    for label, entry in study.models.items():
        path = _find(entry.config, base, f"models.{label}.config")
        try:
            cfg_raw = apply_overrides(load_yaml(path), [f"seed={study.seed}", f"device={study.device}", *entry.set])
            runs[label] = validate(cfg_raw)
        except ConfigError as e:
            raise _prefixed(e, f"models.{label}", path) from None
    suite_path = _find(study.suite, base, "suite") if isinstance(study.suite, str) else None
    try:
        suite = (load_suite(suite_path, study.suite_set) if suite_path is not None
                 else suite_from_dict(study.suite, study.suite_set))
    except ConfigError as e:
        raise _prefixed(e, "suite", suite_path) from None
    for i, a in enumerate(suite.attacks):
        if a.name == "transfer" and a.source not in study.models:
            raise ConfigError(f"suite attacks[{i}].source: unknown model label {a.source!r}; the study's models are: "
                              f"{', '.join(study.models)}")
    if study.data is None:
        first = next(iter(runs.values())).data
        for label, r in runs.items():
            if (r.data.name, r.data.options) != (first.name, first.options):
                raise ConfigError(f"models.{label}: trained on data {r.data.name} {r.data.options} but "
                                  f"{next(iter(runs))} on {first.name} {first.options}; one study evaluates "
                                  "models of one data set (or give the study a `data` section)")
    out = Path(study.out) if study.out else Path("runs") / study.name
    return ResolvedStudy(config=study, runs=runs, suite=suite, out=out, source=base)


def load_study(path: str | Path, overrides: list[str] | None = None) -> ResolvedStudy:
    """Read a study YAML file (see the module docstring) and resolve it."""
    path = Path(path)
    return study_from_dict(load_yaml(path), overrides, base=path.parent)


# ------------------------------------------------------------------------------------- running
def _status(last: Path, cfg: RunConfig, label: str) -> str:
    """``new``, ``finished`` (skipped) or ``partial`` (resumes) for a model folder; reads only.

    The same rule as a training run's resume (:func:`robustsuite.training.loop.check_same_run`): a
    ``last.pt`` trained with a different config (other than a longer ``train.epochs``, the device, the
    ``verify`` checks or ``train.checkpoint_every``) is a :class:`ConfigError` naming the model and the keys.
    """
    from .training.checkpoint import load_checkpoint
    from .training.loop import check_same_run
    if not last.is_file():
        return "new"
    ckpt = load_checkpoint(last)
    saved = ckpt.get("config")
    if not isinstance(saved, dict):
        raise ConfigError(f"models.{label}: {str(last)!r} holds no config to compare with; fix: another out (--set out=DIR), "
                          "or --no-resume (resume=False) to retrain every model")
    try:
        check_same_run(saved, cfg.resolved(), last)
    except ConfigError as e:
        # a study's output folder is its `out` setting, not a --out option
        raise ConfigError(f"models.{label}: " + str(e).replace("(--out DIR)", "(--set out=DIR)")) from None
    if ckpt.get("finished") and int(ckpt.get("epoch", 0)) >= cfg.train.epochs:
        return "finished"
    return "partial"


def _eval_data(rs: ResolvedStudy):
    from . import data as rdata
    d = rs.config.data or next(iter(rs.runs.values())).data
    test = rdata.load(d.name, "test", root=d.root, download=d.download, **d.options)
    if d.test_subset:
        test = rdata.subset(test, n=d.test_subset)
    return d, test


def run(study: "str | Path | dict | ResolvedStudy", *, resume: bool = True, quiet: bool = False,
        overrides: list[str] | None = None, stop_after: int | None = None) -> StudyResult:
    """Train every model of ``study`` (a YAML path, a mapping, or a :func:`load_study` result), then
    evaluate them together and save the report to ``<out>/report``.

    Args:
        study: the study config.
        resume: continue interrupted models from their ``last.pt`` and skip finished ones (a finished
            model with the same resolved config), and reuse the finished items of an interrupted
            evaluation (``<out>/report/partial``); ``False`` retrains and evaluates everything.
        quiet: no progress bars (they show only on a terminal anyway).
        overrides: ``key.path=value`` overrides of the study (e.g. ``out=runs/x``).
        stop_after: train only the first N models, then return without evaluating (``report`` is None);
            a later call picks up from there.
    """
    if isinstance(study, ResolvedStudy):
        rs = study if not overrides else study_from_dict(study.config.model_dump(mode="json"), overrides,
                                                         base=study.source)
    elif isinstance(study, dict):
        rs = study_from_dict(study, overrides)
    else:
        rs = load_study(study, overrides)
    from .files import output_lock, writes_outputs

    # The study folder is locked for the whole run; each model folder and the report folder are
    # locked again (distinct folders) by train() and Report.save().
    with output_lock(rs.out, enabled=writes_outputs()) as out, run_log(out / "run.log", enabled=writes_outputs()):
        return _run(rs, resume=resume, quiet=quiet, stop_after=stop_after)


def _run(rs: ResolvedStudy, *, resume: bool, quiet: bool, stop_after: int | None) -> StudyResult:
    from .eval.loading import load_models
    from .eval.evaluator import evaluate
    from .eval.report import LOG_NAME, PARTIAL_DIR
    from .files import atomic_write_text, writes_outputs
    from .training.run import train

    cfg = rs.config
    labels = list(rs.runs)
    if stop_after is not None:
        labels = labels[:stop_after]
    # every model folder checked before anything is written or trained: a refused resume changes nothing
    states = {label: _status(rs.out / "models" / label / "last.pt", rs.runs[label], label) if resume else "new"
              for label in labels}
    if writes_outputs():
        rs.out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(rs.out / "study.yaml", yaml.safe_dump(rs.resolved(), sort_keys=False))

    result = StudyResult(out=rs.out, checkpoints={}, status={})
    for i, label in enumerate(labels, 1):
        rcfg = rs.runs[label]
        mdir = rs.out / "models" / label
        state = states[label]
        t0 = time.perf_counter()
        if state == "finished":
            if writes_outputs():  # under torchrun rank 0 speaks for all
                summary("[%d/%d] %s: finished checkpoint in %s, skipped", i, len(rs.runs), label, mdir)
            result.status[label] = "skipped"
        else:
            log.info("[%d/%d] %s: %s %s (%s, %d epochs) -> %s", i, len(rs.runs), label,
                     "resuming" if state == "partial" else "training", rcfg.name, rcfg.train.method,
                     rcfg.train.epochs, mdir)
            history = train(rcfg, mdir, device=cfg.device, resume=resume, quiet=quiet).history
            result.status[label] = "resumed" if state == "partial" else "trained"
            last = history[-1] if history else {}
            shown = ", ".join(f"{k[4:]} {last[k]:.3f}" for k in last if k.startswith("val_") and k != "val_select"
                              and isinstance(last[k], float))
            if writes_outputs():
                summary("[%d/%d] %s: %s %d epochs (%s) in %.1f s%s", i, len(rs.runs), label, result.status[label],
                        len(history), rcfg.train.method, time.perf_counter() - t0,
                        f"; validation: {shown}" if shown else "")
        result.timings[f"train|{label}"] = round(time.perf_counter() - t0, 3)
        result.checkpoints[label] = mdir / f"{cfg.checkpoint}.pt"
    if stop_after is not None and len(labels) < len(rs.runs):
        log.info("stopped after %d of %d models (stop_after); run again to finish", len(labels), len(rs.runs))
        return result

    t0 = time.perf_counter()
    models, _ = load_models([str(result.checkpoints[k]) for k in labels], labels)
    d, test = _eval_data(rs)
    report_dir = rs.out / "report"
    if writes_outputs():
        report_dir.mkdir(parents=True, exist_ok=True)
    # the evaluation's lines also go to the report's own log (kept by Report.save), besides run.log
    with run_log(report_dir / LOG_NAME, enabled=writes_outputs()):
        log.info("evaluating %d models with suite %r", len(models), rs.suite.name)
        report = evaluate(models, test, rs.suite, device=cfg.device, seed=cfg.seed,
                          data_description={"name": d.name, "split": "test", "options": d.options,
                                            "study": cfg.name,
                                            "checkpoints": {k: str(v) for k, v in result.checkpoints.items()}},
                          resume_dir=report_dir / PARTIAL_DIR, fresh=not resume, quiet=quiet)
        result.timings["evaluate"] = round(time.perf_counter() - t0, 3)
        result.report = report
        # under torchrun every rank holds the same report; rank 0 writes it
        result.report_dir = report.save(report_dir) if writes_outputs() else report_dir
    return result
