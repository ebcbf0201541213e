"""The unified evaluator: certified bounds, attacks and randomized smoothing in one report.

Example::

    from robustsuite.eval import evaluate, load_suite
    report = evaluate({"crown-ibp": m1, "pgd-at": m2}, (x_test, y_test), load_suite("configs/suites/demo.yaml"))
    print(report.table())
    report.save("runs/demo/eval")

Every item of the suite runs on every model it applies to; items that do not apply (bounds of a
stochastic model, learned budgets of a model without a budget generator, a model the bound method
cannot parse, EOT on a deterministic model) are listed in ``report.not_applicable`` with the reason.
Stochastic models are evaluated ``suite.repeats`` times with fresh randomness (attacks with and
without EOT); bounds (not applicable there anyway) and smoothing run once. Every metric is computed
from the per-sample records (:func:`~robustsuite.eval.metrics.metrics_from_records`), and every run
is checked for consistency (:func:`~robustsuite.eval.metrics.check_consistency`).

Distributed (``torchrun ... -m robustsuite eval``): the samples are sharded by batch of
``suite.batch_size`` (rank r evaluates batches r, r + world, ...), so every batch holds the same
samples as in one process; the records are gathered and put back in single-process order, and every
rank returns the same report. Bit-equal to one process: clean predictions, certified bounds,
deterministic attacks and attacks seeded per call (each batch sees the same seed and samples).
Not equal: randomized smoothing and stochastic models (their random streams run across batches).
Timings are the slowest rank's.
"""
from __future__ import annotations

import logging
import platform
import sys
import time
from typing import Any, Mapping

import torch
from torch import Tensor, nn

from ..errors import InputError, InputTypeError, UnsupportedModelError
from ..files import safe_name
from ..runtime import resolve_device
from .report import Report
from .suite import AttackItem, CertifyItem, Suite, fmt_num, suite_from_dict

log = logging.getLogger(__name__)

__all__ = ["evaluate", "select_samples"]


def _progress(iterable, desc: str, total: int | None = None):
    try:
        from tqdm.auto import tqdm
    except ImportError:  # pragma: no cover
        return iterable
    return tqdm(iterable, desc=desc, total=total, leave=False, disable=not sys.stderr.isatty())


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


def _set_id(item: CertifyItem | AttackItem, eps: float) -> str:
    if item.budgets == "learned":
        return f"learned-rho{fmt_num(item.rho)}@{fmt_num(eps)}"
    return f"{item.norm}@{fmt_num(eps)}"


def _threat(model: nn.Module, item: dict, eps: float, x: Tensor):
    from ..threats import threat_from_name
    if item["budgets"] == "learned":
        with torch.no_grad():
            return model.box(x, eps, item["rho"])
    return threat_from_name(item["norm"], eps)


def _is_budget_model(model) -> bool:
    return callable(getattr(model, "box", None)) and callable(getattr(model, "budgets", None))


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
             data_description: Mapping[str, Any] | None = None) -> Report:
    """Evaluate ``models`` on the suite's subset of ``data`` and return the :class:`Report`.

    Args:
        models: ``{name: model}`` (or one model, named ``model``); models map [0, 1] images to logits.
            Their mode is set to eval (noise layers of stochastic models stay on).
        data: a Dataset of ``(image, label)`` or an ``(x, y)`` pair of tensors.
        suite: a :class:`Suite`, a mapping in the YAML form, or a path to a suite YAML file.
        device: ``auto`` | ``cpu`` | ``cuda``.
        seed: seeds the attacks, smoothing and the stochastic models' repeats (repeat r uses seed + r).
        data_description: what ``data`` is (name, split...), stored in the report.
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
        safe_name(name, "models")  # names plot files and record keys ('|' separates those)
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

    columns: dict[str, list] = {k: [] for k in ("model", "repeat", "index", "label", "clean_pred")}
    items = _items(suite)
    for it in items:
        for k in it["columns"]:
            columns[k] = []
    not_applicable: dict[str, dict[str, str]] = {}
    timings: dict[str, dict[str, float]] = {}
    extras: dict[str, Any] = {}
    t_total = time.perf_counter()
    for name, model in models.items():
        if idx_mine:
            out = _evaluate_model(str(name), model, x_mine, y_mine, idx_mine, suite, items, dev, seed, models)
        else:  # fewer batches than ranks: nothing here, but take part in the gather
            out = ({k: [] for k in columns}, {}, {}, {})
        rows, na, times, extra = _gather(out, indices) if dist_utils.is_distributed() else out
        for k in columns:
            columns[k].extend(rows.get(k, [None] * len(rows["index"])))
        not_applicable[str(name)] = na
        timings[str(name)] = times
        if extra:
            extras.setdefault("budgets", {})[str(name)] = extra
    timings["total"] = {"total": time.perf_counter() - t_total}
    from ..certify import is_stochastic
    warnings = [f"model {n}: stochastic, evaluated without EOT (set `eot:` in the suite); attacks "
                "may underestimate its vulnerability" for n, m in models.items()
                if is_stochastic(m) and suite.eot is None and any(a.eot_applies for a in suite.attacks)]
    for w in warnings:
        log.warning(w)
    if warnings:
        extras["warnings"] = warnings
    samples = {"n": len(indices), "indices": indices, "subset": suite.subset.model_dump(),
               "data": dict(data_description or {})}
    report = Report.build(suite=suite.resolved(), models=[str(n) for n in models], items=items,
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


def _shard(x: Tensor, y: Tensor, indices: list[int], bs: int):
    """This rank's batches (r, r + world, ...) of the selected samples; everything with one process."""
    from ..training import distributed as dist_utils
    if not dist_utils.is_distributed():
        return x, y, indices
    r, w = dist_utils.rank(), dist_utils.world()
    pos = [p for b in range(r * bs, len(indices), w * bs) for p in range(b, min(b + bs, len(indices)))]
    sel = torch.as_tensor(pos, dtype=torch.long)
    return x[sel], y[sel], [indices[p] for p in pos]


def _gather(out, indices: list[int]):
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
    for k in na:  # an item one rank could not run is not applicable anywhere
        for col in (k, "dist|" + k[len("atk|"):] if k.startswith("atk|") else k):
            if col in merged:
                merged[col] = [None] * len(merged[col])
    return merged, na, times, parts[0][3]


def _items(suite: Suite) -> list[dict[str, Any]]:
    """The suite expanded into items, one per (entry, eps[, EOT variant]), with their record columns."""
    items: list[dict[str, Any]] = []
    for ci, c in enumerate(suite.certify):
        for e in c.eps:
            sid = _set_id(c, e)
            items.append({"kind": "certify", "entry": ci, "method": c.method, "norm": c.norm, "eps": e,
                          "budgets": c.budgets, "rho": c.rho, "set": sid, "key": f"cert|{c.method}|{sid}",
                          "columns": [f"cert|{c.method}|{sid}"]})
    for ai, a in enumerate(suite.attacks):
        variants = [False] + ([True] if suite.eot is not None and a.eot_applies else [])
        for e in a.eps:
            sid = _set_id(a, e)
            for eot in variants:
                label = a.name + ("+eot" if eot else "")
                if a.name == "transfer":
                    label = f"{a.attack}-transfer-from-{a.source}"
                items.append({"kind": "attack", "entry": ai, "attack": label, "name": a.name, "norm": a.norm,
                              "source": a.source, "inner": a.attack,
                              "eps": e, "budgets": a.budgets, "rho": a.rho, "set": sid, "eot": eot,
                              "settings": a.settings, "key": f"atk|{label}|{sid}",
                              "columns": [f"atk|{label}|{sid}", f"dist|{label}|{sid}"]})
    if suite.smoothing is not None:
        for s in suite.smoothing.sigmas:
            k = fmt_num(s)
            items.append({"kind": "smoothing", "sigma": s, "key": f"smooth|{k}",
                          "columns": [f"smooth_pred|{k}", f"smooth_radius|{k}"]})
    return items


def _batched_predict(model, x: Tensor, bs: int, dev) -> Tensor:
    with torch.no_grad():
        return torch.cat([model(x[i:i + bs].to(dev)).argmax(1).cpu() for i in range(0, x.shape[0], bs)])


def _evaluate_model(name: str, model: nn.Module, x: Tensor, y: Tensor, indices: list[int], suite: Suite,
                    items: list[dict], dev: torch.device, seed: int, models: Mapping[str, nn.Module]):
    from ..certify import Verifier, is_stochastic

    stochastic = is_stochastic(model)
    budget_model = _is_budget_model(model)
    R = suite.repeats if stochastic else 1
    n = x.shape[0]
    bs = suite.batch_size
    with torch.no_grad():
        num_classes = int(model(x[:1].to(dev)).shape[1])
    na: dict[str, str] = {}
    times: dict[str, float] = {}
    rows: dict[str, list] = {k: [] for k in ("model", "repeat", "index", "label", "clean_pred")}
    for it in items:
        for k in it["columns"]:
            rows[k] = []

    def tick(stage: str, t0: float) -> None:
        dt = time.perf_counter() - t0
        times[stage] = times.get(stage, 0.0) + dt
        log.info("model %s: %s done in %.1f s", name, stage, dt)  # progress on long evaluations

    # applicability, decided once per model
    for it in items:
        reason = None
        if it["kind"] == "certify":
            if stochastic:
                reason = "stochastic model: bounds do not apply"
            elif it["budgets"] == "learned" and not budget_model:
                reason = "learned budgets: the model has no budget generator"
        elif it["kind"] == "attack":
            if it["budgets"] == "learned" and not budget_model:
                reason = "learned budgets: the model has no budget generator"
            elif it["eot"] and not stochastic:
                reason = "deterministic model: EOT not needed (same as the attack without EOT)"
            elif it["name"] == "transfer" and it["source"] == name:
                reason = "the transfer source itself (its white-box attack is a separate item)"
            elif it["name"] == "transfer" and it["budgets"] == "learned":
                reason = "transfer attacks use uniform sets only"
        if reason:
            na[it["key"]] = reason
    verifiers: dict[str, Any] = {}
    extra: dict[str, Any] = {}
    for r in range(R):
        torch.manual_seed(seed + r)
        t0 = time.perf_counter()
        clean = _batched_predict(model, x, bs, dev)
        tick("clean", t0)
        rows["model"] += [name] * n
        rows["repeat"] += [r] * n
        rows["index"] += list(indices)
        rows["label"] += y.tolist()
        rows["clean_pred"] += clean.tolist()
        for it in _progress(items, desc=f"{name} run {r + 1}/{R}"):
            key = it["key"]
            once = it["kind"] in ("certify", "smoothing") and r > 0
            if key in na or once:
                for k in it["columns"]:
                    rows[k] += [None] * n
                continue
            t0 = time.perf_counter()
            if it["kind"] == "certify":
                stage = f"certify|{it['method']}"
                m = it["method"]
                try:
                    if m not in verifiers:
                        verifiers[m] = Verifier(model, tuple(x.shape[1:]), method=m, device=dev)
                    v = verifiers[m]
                    cert = []
                    for i in range(0, n, bs):
                        xb, yb = x[i:i + bs].to(dev), y[i:i + bs].to(dev)
                        cert.append(v.verify(xb, yb, _threat(model, it, it["eps"], xb)).certified.cpu())
                    rows[key] += torch.cat(cert).tolist()
                except UnsupportedModelError as e:
                    na[key] = f"bound method {m!r} does not apply: {e}"
                    log.warning("model %s: %s", name, na[key])
                    rows[key] += [None] * n
            elif it["kind"] == "attack":
                stage = f"attack|{it['attack']}"
                settings = dict(it["settings"])
                from ..attacks import attack_class
                cls = attack_class(it["inner"] or it["name"])
                known = cls.default_settings()
                if "seed" in known:
                    settings.setdefault("seed", seed + r)
                if it["eot"]:
                    settings["eot"] = suite.eot.samples
                    # query budgets count model evaluations, every EOT draw included: scale them so the
                    # EOT run makes as many decisions (iterations) as the one-draw run, as gradient
                    # attacks keep their steps under EOT
                    for budget in cls.query_budgets:
                        if budget in known:
                            settings[budget] = int(settings.get(budget, known[budget])) * suite.eot.samples
                succ, dist = [], []
                for i in range(0, n, bs):
                    xb, yb = x[i:i + bs].to(dev), y[i:i + bs].to(dev)
                    from ..attacks import TransferAttack, make_attack
                    if it["name"] == "transfer":
                        src = make_attack(it["inner"], models[it["source"]], _threat(model, it, it["eps"], xb),
                                          **settings)
                        atk = TransferAttack(src, model)
                    else:
                        atk = make_attack(it["name"], model, _threat(model, it, it["eps"], xb), **settings)
                    res = atk.run(xb, yb)
                    succ.append(res.success.cpu())
                    dist.append(res.distance.detach().double().cpu())
                rows[key] += torch.cat(succ).tolist()
                rows[it["columns"][1]] += torch.cat(dist).tolist()
            else:
                from .smoothing import Smooth
                stage = f"smoothing|{fmt_num(it['sigma'])}"
                cfg = suite.smoothing
                sm = Smooth(model, num_classes, it["sigma"], seed=seed)
                preds, radii = [], []
                for i in range(0, n, bs):
                    c = sm.certify(x[i:i + bs].to(dev), n0=cfg.n0, n=cfg.n, alpha=cfg.alpha, batch=cfg.batch)
                    preds.append(c.prediction.cpu())
                    radii.append(c.radius.double().cpu())
                rows[it["columns"][0]] += torch.cat(preds).tolist()
                rows[it["columns"][1]] += torch.cat(radii).tolist()
            tick(stage, t0)
    if budget_model:
        learned = [it for it in items if it.get("budgets") == "learned" and it["key"] not in na]
        if learned:
            it = max(learned, key=lambda i: i["eps"])  # the largest radius: usually the test radius
            k = min(12, n)
            with torch.no_grad():
                b = model.budgets(x[:k].to(dev), it["eps"], it["rho"]).cpu()
            extra = {"eps": it["eps"], "rho": it["rho"], "x": x[:k].tolist(), "budgets": b.tolist(),
                     "labels": y[:k].tolist()}
    return rows, na, times, extra
