"""The unified evaluator: certified bounds, attacks and randomized smoothing in one report.

Example::

    from robustsuite.eval import evaluate, load_suite
    report = evaluate({"crown-ibp": m1, "pgd-at": m2}, (x_test, y_test), load_suite("configs/suites/demo.yaml"))
    print(report.table())
    report.save("runs/demo/eval")

Every item of the suite (:meth:`Suite.items`: one per entry, radius and EOT variant) runs on every
model it applies to; the evaluator knows items only through their protocol
(:mod:`robustsuite.eval.items`: ``applies(info)``, ``run(ctx)``). Items that do not apply (bounds of
a stochastic model, learned budgets of a model without a budget generator, a model the bound method
cannot parse, EOT on a deterministic model) are listed in ``report.not_applicable`` with the reason.
A model is stochastic when it declares a noise layer or fails the determinism probe (two forward
passes differ); stochastic models are evaluated ``suite.repeats`` times with fresh randomness
(attacks with and without EOT); bounds (not applicable there anyway) and smoothing run once. Before
any item runs, every model is probed (:mod:`robustsuite.eval.checks`): undeclared noise, softmax or
log-softmax outputs and zero input gradients go to the report's warnings. Every metric is computed
from the per-sample records (:func:`~robustsuite.eval.metrics.metrics_from_records`), and every run
is checked for consistency (:func:`~robustsuite.eval.metrics.check_consistency`).

Random numbers: repeat r's clean pass runs on the global torch stream seeded ``seed + r``, and each
item of repeat r on its own (:func:`item_seed`), so an item's columns do not depend on which items
ran before it (or were finished in an earlier, interrupted call); seeded attacks get ``seed + r``.

Resuming: with ``resume_dir`` every finished (model, item, repeat) is written there as it completes
and reused by a later call while everything it depends on is unchanged (:mod:`robustsuite.eval.resume`);
``robustsuite eval --out DIR`` and ``robustsuite run`` keep them in the report folder's ``partial/``.

Distributed (``torchrun ... -m robustsuite eval``): the samples are sharded by batch of
``suite.batch_size`` (rank r evaluates batches r, r + world, ...), so every batch holds the same
samples as in one process; the records are gathered and put back in single-process order, and every
rank returns the same report. Bit-equal to one process: clean predictions, certified bounds,
deterministic attacks and attacks seeded per call (each batch sees the same seed and samples).
Not equal: randomized smoothing and stochastic models (their random streams run across batches).
Timings are the slowest rank's. Nothing is kept for resuming under torchrun (``resume_dir`` is not used).
"""
from __future__ import annotations

import contextlib
import logging
import os
import platform
import time
from typing import Any, Iterator, Mapping

import torch
from torch import Tensor, nn

from ..errors import InputError, InputTypeError
from ..files import safe_name
from ..progress import bar, summary
from ..runtime import derived_seed, resolve_device
from .checks import probe_model
from .items import ModelInfo, NotApplicable, RunContext
from .report import Report
from .resume import ColumnStore, Finished, column_fingerprint, data_digest, model_digest
from .suite import EvalItem, Suite, suite_from_dict

log = logging.getLogger(__name__)

__all__ = ["evaluate", "select_samples", "item_seed", "BASE_COLUMNS"]


def select_samples(data, suite: Suite) -> tuple[Tensor, Tensor, list[int]]:
    """The suite's subset of ``data`` (a Dataset or an ``(x, y)`` pair): (x, y, indices in data)."""
    every = suite.subset.every or 1
    first = suite.subset.first
    if isinstance(data, (tuple, list)) and len(data) == 2 and isinstance(data[0], Tensor):
        x, y = data
        if not isinstance(y, Tensor) or y.dim() != 1 or y.shape[0] != x.shape[0]:
            raise InputError(f"data: y must be a (N,) label tensor matching x's {x.shape[0]} samples")
        idx = list(range(0, x.shape[0], every))[:first]
        sel = torch.as_tensor(idx, dtype=torch.long)
        x, y = x[sel], y[sel]
    elif isinstance(data, torch.utils.data.Dataset):
        from ..data import as_tensors, subset
        idx = list(range(0, len(data), every))[:first]
        x, y = as_tensors(subset(data, n=first, every=every))
    else:
        raise InputTypeError(f"data: expected a Dataset or an (x, y) tuple of tensors, got {type(data).__name__}")
    if len(idx) == 0:
        raise InputError("data: the subset selects no samples")
    if x.dim() != 4 or not x.is_floating_point():
        raise InputError(f"data: expected float images (N, C, H, W), got {x.dtype} {tuple(x.shape)}")
    if not torch.isfinite(x).all() or x.min() < 0 or x.max() > 1:
        raise InputError("data: images must be finite and in [0, 1]")
    return x.float(), y.long(), idx


def _environment(device: torch.device, seed: int) -> dict[str, Any]:
    import numpy
    env = {"python": platform.python_version(), "torch": torch.__version__, "numpy": numpy.__version__,
           "platform": platform.platform(), "device": str(device), "seed": seed,
           "threads": torch.get_num_threads()}
    try:
        from importlib.metadata import version
        env["robustsuite"] = version("robustsuite")
    except Exception:  # noqa: BLE001 - not installed as a distribution
        env["robustsuite"] = "unknown"
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
    return env



def evaluate(models: Mapping[str, nn.Module] | nn.Module, data, suite: Suite | Mapping | str,
             device: str | torch.device = "auto", seed: int = 0, *,
             data_description: Mapping[str, Any] | None = None,
             resume_dir: str | os.PathLike | None = None, fresh: bool = False, quiet: bool = False) -> Report:
    """Evaluate ``models`` on the suite's subset of ``data`` and return the :class:`Report`.

    Args:
        models: ``{name: model}`` (or one model, named ``model``); models map [0, 1] images to logits.
            Their mode is set to eval (noise layers of stochastic models stay on).
        data: a Dataset of ``(image, label)`` or an ``(x, y)`` pair of tensors.
        suite: a :class:`Suite`, a mapping in the YAML form, or a path to a suite YAML file.
        device: ``auto`` | ``cpu`` | ``cuda``.
        seed: seeds the attacks, smoothing and the stochastic models' repeats: repeat r's clean pass
            draws from seed + r, each item of repeat r from its own stream (``derived_seed(seed,
            "eval", r, item key)``), and seeded attacks get ``seed: seed + r``.
        data_description: what ``data`` is (name, split...), stored in the report.
        resume_dir: keep every finished (model, item, repeat) here as it completes, and reuse the
            finished ones that still fit (see :mod:`robustsuite.eval.resume`): a call killed midway
            and repeated with the same arguments returns the same records and metrics as one
            uninterrupted call. Locked while in use. Not used under torchrun.
        fresh: with ``resume_dir``, remove its finished columns first and run everything.
        quiet: no progress bars (one per model over its items; shown only on a terminal anyway).

    Logs one INFO line per finished item and one summary line per model (``robustsuite.progress``).
    """
    from pathlib import Path
    if isinstance(suite, (str, Path)):
        from .suite import load_suite
        suite = load_suite(suite)
    elif isinstance(suite, Mapping):
        suite = suite_from_dict(dict(suite))
    elif not isinstance(suite, Suite):
        raise InputTypeError(f"suite: expected a Suite, a mapping or a YAML path, got {type(suite).__name__}")
    if isinstance(models, nn.Module):
        models = {"model": models}
    if not isinstance(models, Mapping) or not models:
        raise InputTypeError("models: expected a non-empty mapping {name: nn.Module}")
    for name, m in models.items():
        if not isinstance(m, nn.Module):
            raise InputTypeError(f"models[{name!r}]: expected a torch.nn.Module, got {type(m).__name__}")
        safe_name(name, "models")  # names plot files, store folders and record keys ('|' separates those)
    for ai, a in enumerate(suite.attacks):
        if a.name == "transfer" and a.source not in models:
            from ..errors import ConfigError
            raise ConfigError(f"suite attacks[{ai}].source: unknown model {a.source!r}; the models are: "
                              f"{', '.join(map(str, models))}")
    from ..training import distributed as dist_utils
    dist_utils.init_from_env()
    dev = dist_utils.device_for_rank(resolve_device(device))
    models = {str(n): m.to(dev).eval() for n, m in models.items()}
    x_all, y_all, indices = select_samples(data, suite)
    x_mine, y_mine, idx_mine = _shard(x_all, y_all, indices, suite.batch_size)
    log.info("evaluating %d model(s) on %d samples with suite %r on %s", len(models), len(indices), suite.name, dev)

    items = suite.items()
    columns: dict[str, list] = {k: [] for k in BASE_COLUMNS}
    for it in items:
        for k in it.columns:
            columns[k] = []
    not_applicable: dict[str, dict[str, str]] = {}
    timings: dict[str, dict[str, float]] = {}
    extras: dict[str, Any] = {}
    warnings: list[str] = []
    t_total = time.perf_counter()
    with _column_store(resume_dir, fresh) as store:
        resume = _Resume(store, models, x_all, y_all, indices) if store is not None else None
        # every model probed before any is evaluated: its warnings show before hours of attacks
        infos = {}
        for name, model in models.items():
            infos[name], found = probe_model(name, model, x_all, y_all, batch_size=suite.batch_size, device=dev,
                                             seed=seed, gradient_check=_uses_gradients(suite))
            warnings += found
            # what the items say about running on this model (e.g. AutoAttack standard on a stochastic one)
            notes = list(dict.fromkeys(n for it in items for n in it.notes(infos[name])))
            for w in notes:
                log.warning(w)
            warnings += notes
        for name, model in models.items():
            t_model = time.perf_counter()
            if idx_mine:
                out = _evaluate_model(name, model, infos[name], x_mine, y_mine, idx_mine, suite, items, dev, seed,
                                      models, resume, quiet=quiet or not dist_utils.is_main())
            else:  # fewer batches than ranks: nothing here, but take part in the gather
                out = ({k: [] for k in columns}, {}, {}, {})
            rows, na, times, extra = _gather(out, indices, items) if dist_utils.is_distributed() else out
            for k in columns:
                columns[k].extend(rows.get(k, [None] * len(rows["index"])))
            not_applicable[name] = na
            timings[name] = times
            if extra:
                extras.setdefault("budgets", {})[name] = extra
            if dist_utils.is_main():
                _summarize(name, rows, na, items, time.perf_counter() - t_model)
    timings["total"] = {"total": time.perf_counter() - t_total}
    eot_missing = [f"model {n}: stochastic, evaluated without EOT (set `eot:` in the suite); attacks "
                   "may underestimate its vulnerability" for n in models
                   if infos[n].stochastic and suite.eot is None and any(a.eot_applies for a in suite.attacks)]
    for w in eot_missing:
        log.warning(w)
    warnings += eot_missing
    if warnings:
        extras["warnings"] = warnings
    samples = {"n": len(indices), "indices": indices, "subset": suite.subset.model_dump(),
               "data": dict(data_description or {})}
    report = Report.build(suite=suite.resolved(), models=list(models), items=[it.describe() for it in items],
                          records=columns, not_applicable=not_applicable, timings=timings,
                          environment=_environment(dev, seed), samples=samples, extras=extras)
    from .metrics import CLEAN_RULE, attack_strength_warnings
    strength = attack_strength_warnings(report.metrics)
    for w in strength:
        log.warning(w)
    if strength:
        report.extras.setdefault("warnings", []).extend(strength)
    if report.violations:
        for v in report.violations:
            what = ("misclassified without perturbation" if v["attack"] == CLEAN_RULE
                    else f"broken by {v['attack']}")
            log.error("SOUNDNESS VIOLATION: model %s: %d sample(s) certified by %s under %s are %s (indices %s)",
                      v["model"], v["count"], v["method"], v["set"], what, v["indices"])
    return report


def _summarize(name: str, rows: dict[str, list], na: dict[str, str], items: list[EvalItem], seconds: float) -> None:
    """The summary line of one evaluated model: clean accuracy (over its repeats), what ran, the time."""
    n = len(rows["index"])
    correct = sum(p == t for p, t in zip(rows["clean_pred"], rows["label"]))
    repeats = len(set(rows["repeat"]))
    ran = sum(1 for it in items if it.key not in na)
    summary("evaluated %s: clean accuracy %.3f, %d of %d items%s%s in %.1f s", name, correct / max(n, 1), ran,
            len(items), f" x {repeats} repeats" if repeats > 1 else "",
            f" ({len(items) - ran} not applicable)" if ran < len(items) else "", seconds)


#: the record columns of every row, before the items' columns
BASE_COLUMNS = ("model", "repeat", "index", "label", "clean_pred")


def _uses_gradients(suite: Suite) -> bool:
    """Whether the suite has attacks that follow the model's gradient (then the zero-gradient check runs)."""
    return any(a.gradient for a in suite.attacks)


def item_seed(seed: int, repeat: int, key: str) -> int:
    """The global torch seed an item runs under (its own stream: whether and in which order the
    other items run, or were finished earlier, changes none of its random numbers)."""
    return derived_seed(seed, "eval", repeat, key)


@contextlib.contextmanager
def _column_store(resume_dir, fresh: bool) -> Iterator[ColumnStore | None]:
    """The locked :class:`ColumnStore` of ``resume_dir`` for the block (cleared when ``fresh``), or
    None without one."""
    if resume_dir is None:
        yield None
        return
    from ..training import distributed as dist_utils
    if dist_utils.is_distributed():
        log.info("resume_dir %s: not used under torchrun; every item runs", resume_dir)
        yield None
        return
    from ..files import output_lock
    with output_lock(resume_dir) as folder:
        store = ColumnStore(folder)
        store.clean_temps()
        if fresh:
            removed = store.clear()
            if removed:
                log.info("fresh evaluation: removed %d finished column file(s) from %s", removed, folder)
        yield store


class _Resume:
    """The column store of an evaluation and the digests its fingerprints are built from (each
    model hashed once, when first needed)."""

    def __init__(self, store: ColumnStore, models: Mapping[str, nn.Module], x: Tensor, y: Tensor,
                 indices: list[int]):
        self.store, self._models = store, models
        self._digests: dict[str, str] = {}
        self.data = data_digest(x, y, indices)

    def digest(self, name: str) -> str:
        if name not in self._digests:
            self._digests[name] = model_digest(self._models[name])
        return self._digests[name]

    def fingerprint(self, it: EvalItem, ctx: RunContext) -> str:
        return column_fingerprint(it.fingerprint(ctx.suite), model=self.digest(ctx.name),
                                  models_used={m: self.digest(m) for m in it.uses_models()}, data=self.data,
                                  seed=ctx.seed, repeat=ctx.repeat, batch_size=ctx.suite.batch_size,
                                  device=ctx.device)


def _shard(x: Tensor, y: Tensor, indices: list[int], bs: int):
    """This rank's batches (r, r + world, ...) of the selected samples; everything with one process."""
    from ..training import distributed as dist_utils
    if not dist_utils.is_distributed():
        return x, y, indices
    r, w = dist_utils.rank(), dist_utils.world()
    pos = [p for b in range(r * bs, len(indices), w * bs) for p in range(b, min(b + bs, len(indices)))]
    sel = torch.as_tensor(pos, dtype=torch.long)
    return x[sel], y[sel], [indices[p] for p in pos]


def _gather(out, indices: list[int], items: list[EvalItem]):
    """Every rank's (rows, not applicable, timings, extra) of one model merged in single-process order:
    rows sorted by (repeat, position of the sample); reasons united; the slowest rank's timings;
    rank 0's extra (it holds the first batch)."""
    from ..training import distributed as dist_utils
    parts = dist_utils.all_gather_objects(out)
    position = {ix: p for p, ix in enumerate(indices)}
    keys = list(parts[0][0])
    entries = []
    for rows, _, _, _ in parts:
        for j in range(len(rows["index"])):
            entries.append(((rows["repeat"][j], position[rows["index"][j]]), [rows[k][j] for k in keys]))
    entries.sort(key=lambda e: e[0])
    merged = {k: [e[1][c] for e in entries] for c, k in enumerate(keys)}
    na: dict[str, str] = {}
    times: dict[str, float] = {}
    for _, n, t, _ in parts:
        na.update(n)
        for k, v in t.items():
            times[k] = max(times.get(k, 0.0), v)
    columns_of = {it.key: it.columns for it in items}
    for k in na:  # an item one rank could not run is not applicable anywhere
        for col in columns_of.get(k, ()):
            if col in merged:
                merged[col] = [None] * len(merged[col])
    return merged, na, times, parts[0][3]


def _batched_predict(model, x: Tensor, bs: int, dev) -> Tensor:
    with torch.no_grad():
        return torch.cat([model(x[i:i + bs].to(dev)).argmax(1).cpu() for i in range(0, x.shape[0], bs)])


def _run_item(it: EvalItem, ctx: RunContext, resume: _Resume | None) -> tuple[Finished, bool]:
    """The item's columns for ``ctx``: finished earlier (from the store) or computed now on the item's
    own random stream (and then stored). Returns them and whether they were reused."""
    fingerprint = None
    if resume is not None:
        fingerprint = resume.fingerprint(it, ctx)
        done = resume.store.load(ctx.name, ctx.repeat, it.key, fingerprint, it.columns, ctx.n)
        if done is not None:
            return done, True
    torch.manual_seed(item_seed(ctx.seed, ctx.repeat, it.key))
    t0 = time.perf_counter()
    try:
        cols, reason = it.run(ctx), None
    except NotApplicable as e:
        cols, reason = {k: [None] * ctx.n for k in it.columns}, str(e)
    if list(cols) != list(it.columns) or any(len(v) != ctx.n for v in cols.values()):
        raise RuntimeError(f"item {it.key}: run() returned columns {list(cols)} of lengths "
                           f"{[len(v) for v in cols.values()]}; expected {it.columns} of {ctx.n} values each")
    done = Finished(columns=cols, not_applicable=reason, seconds=time.perf_counter() - t0)
    if resume is not None:
        resume.store.save(ctx.name, ctx.repeat, it.key, fingerprint, done, item=it.describe())
    return done, False


def _evaluate_model(name: str, model: nn.Module, info: ModelInfo, x: Tensor, y: Tensor, indices: list[int],
                    suite: Suite, items: list[EvalItem], dev: torch.device, seed: int,
                    models: Mapping[str, nn.Module], resume: _Resume | None, *, quiet: bool = False):
    """One model's (rows, not applicable reasons, timings, budget extra); the items run in order,
    ``suite.repeats`` times on a stochastic model (``once`` items in repeat 0 only), under one
    progress bar over all of them (the running item's stage in its postfix)."""
    R = suite.repeats if info.stochastic else 1
    n = x.shape[0]
    rows: dict[str, list] = {k: [] for k in BASE_COLUMNS}
    for it in items:
        for k in it.columns:
            rows[k] = []
    # applicability, decided once per model
    na: dict[str, str] = {it.key: reason for it in items if (reason := it.applies(info))}
    times: dict[str, float] = {}
    cache: dict[Any, Any] = {}
    reused = 0
    progress = bar(desc=f"eval {name}", total=R * len(items), quiet=quiet, unit="item")
    for r in range(R):
        torch.manual_seed(seed + r)
        t0 = time.perf_counter()
        clean = _batched_predict(model, x, suite.batch_size, dev)
        times["clean"] = times.get("clean", 0.0) + time.perf_counter() - t0
        rows["model"] += [name] * n
        rows["repeat"] += [r] * n
        rows["index"] += list(indices)
        rows["label"] += y.tolist()
        rows["clean_pred"] += clean.tolist()
        ctx = RunContext(name=name, model=model, info=info, x=x, y=y, repeat=r, seed=seed, device=dev, suite=suite,
                         models=models, cache=cache)
        for it in items:
            if it.key in na or (it.once and r > 0):
                for k in it.columns:
                    rows[k] += [None] * n
                progress.update()
                continue
            progress.set_postfix_str(it.stage + (f" (repeat {r + 1}/{R})" if R > 1 else ""))
            done, was_reused = _run_item(it, ctx, resume)
            reused += was_reused
            if done.not_applicable is not None:
                na[it.key] = done.not_applicable
                log.warning("model %s: %s", name, na[it.key])
            for k in it.columns:
                rows[k] += done.columns[k]
            times[it.stage] = times.get(it.stage, 0.0) + done.seconds
            # progress on long evaluations
            log.info("model %s: %s %s in %.1f s", name, it.stage,
                     "finished earlier (resumed)" if was_reused else "done", done.seconds)
            progress.update()
    progress.close()
    if reused:
        log.info("model %s: %d finished item run(s) reused from %s", name, reused, resume.store.folder)
    extra = _budget_extra(model, items, na, x, y, dev) if info.budget_model else {}
    return rows, na, times, extra


def _budget_extra(model: nn.Module, items: list[EvalItem], na: dict[str, str], x: Tensor, y: Tensor,
                  dev: torch.device) -> dict[str, Any]:
    """The learned budgets of the first samples at the largest learned radius (for the budget plot)."""
    learned = [it for it in items if getattr(it, "budgets", None) == "learned" and it.key not in na]
    if not learned:
        return {}
    it = max(learned, key=lambda i: i.radius)  # the largest radius: usually the test radius
    k = min(12, x.shape[0])
    with torch.no_grad():
        b = model.budgets(x[:k].to(dev), it.radius, it.rho).cpu()
    return {"eps": it.radius, "rho": it.rho, "x": x[:k].tolist(), "budgets": b.tolist(), "labels": y[:k].tolist()}
