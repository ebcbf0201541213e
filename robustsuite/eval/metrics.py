"""Every metric of a report, computed from the per-sample records alone, and the consistency check.

Records are columns (a dict of equal-length lists), one row per (model, repeat, sample):

* ``model``, ``repeat``, ``index`` (position in the full data set), ``label``, ``clean_pred``;
* ``cert|METHOD|SET``: certified (bool) under a threat set with a bound method;
* ``status|milp|SET``: complete verification's ``verified`` / ``falsified`` / ``unknown`` per sample;
* ``atk|ATTACK|SET``: the attack changed the prediction (bool); ``dist|ATTACK|SET``: its
  perturbation norm (float; the set's norm); ``ATTACK`` is the attack name, ``+eot`` appended for
  the EOT run on a stochastic model;
* ``by|ATTACK|SET`` (AutoAttack): which component of the cascade broke the sample first (its name,
  ``robust`` when none did, ``clean`` when it is misclassified without perturbation, as the attack's
  own clean pass saw it); with the item's ``per_attack: true`` also ``atk|ATTACK/COMPONENT|SET``,
  each component's own success on every clean-correct sample (an attack column like the others);
* ``smooth_pred|SIGMA`` (class or -1 = abstain), ``smooth_radius|SIGMA`` (L2 radius, 0 if abstained).

``SET`` is ``NORM@EPS`` (``linf@0.1``) for a uniform ball, ``learned-rhoRHO@EPS`` for a learned
budget box. A cell is ``None`` where the item does not apply to the model (or, for smoothing and
bounds, in repeats > 0 of a stochastic model, which run once).

Metric names (each per model, as ``{"mean", "std", "values"}`` over the repeats):
``clean_accuracy``; ``certified|METHOD|SET`` and ``verified_error|METHOD|SET``; for complete
verification ``falsified|milp|SET`` and ``unknown|milp|SET`` (``certified|milp|SET`` is the verified share);
``robust|ATTACK|SET`` (correct and not broken, over all samples) and ``asr|ATTACK|SET`` (broken among
clean-correct samples); ``broken|ATTACK|SET|COMPONENT`` (share of all samples that a component of
an AutoAttack cascade broke first; over the components they add up to ``asr`` times the clean
accuracy of the attack's own clean pass); ``worst|SET`` (survives every attack of that set), ``worst|NORM`` (every
attack of that norm, any eps); ``union`` (every attack of the suite) and ``average`` (mean of the
``worst|NORM`` over norms); ``smooth|SIGMA|certified@R``, ``smooth|SIGMA|abstention``,
``smooth|SIGMA|mcr`` (mean certified radius, 0 for wrong/abstained samples).
"""
from __future__ import annotations

import math
from collections import defaultdict
from typing import Any, Sequence

import numpy as np

__all__ = ["metrics_from_records", "check_consistency", "set_norm", "split_key", "model_rows"]


def split_key(key: str) -> list[str]:
    return key.split("|")


def set_norm(set_id: str) -> str:
    """The norm group of a threat set id (``linf@0.1`` -> ``linf``; learned boxes -> ``learned``)."""
    head = set_id.split("@", 1)[0]
    return "learned" if head.startswith("learned") else head


def set_eps(set_id: str) -> float:
    return float(set_id.split("@", 1)[1])


def model_rows(records: dict[str, list], model: str, repeat: int | None = None) -> np.ndarray:
    """Row positions of one model (and one repeat)."""
    m = np.asarray(records["model"], dtype=object) == model
    if repeat is not None:
        m &= np.asarray(records["repeat"]) == repeat
    return np.nonzero(m)[0]


def _col(records: dict[str, list], key: str, rows: np.ndarray) -> np.ndarray | None:
    """The column's values at ``rows`` as a float array, or None when any cell there is None (N/A)."""
    if key not in records:
        return None
    vals = [records[key][i] for i in rows]
    if len(vals) == 0 or any(v is None for v in vals):
        return None
    return np.asarray(vals, dtype=np.float64)


def _one_run(records: dict[str, list], rows: np.ndarray, radii: dict[str, Sequence[float]]) -> dict[str, float]:
    out: dict[str, float] = {}
    label = np.asarray([records["label"][i] for i in rows])
    clean = np.asarray([records["clean_pred"][i] for i in rows]) == label
    n = len(rows)
    out["clean_accuracy"] = float(clean.mean())
    attack_cols: dict[str, list[np.ndarray]] = defaultdict(list)
    for key in records:
        parts = split_key(key)
        if parts[0] == "cert":
            c = _col(records, key, rows)
            if c is None:
                continue
            acc = float(c.astype(bool).mean())
            out[f"certified|{parts[1]}|{parts[2]}"] = acc
            out[f"verified_error|{parts[1]}|{parts[2]}"] = 1.0 - acc
        elif parts[0] == "status":
            vals = [records[key][i] for i in rows]
            if not vals or any(v is None for v in vals):
                continue
            st = np.asarray(vals, dtype=object)
            out[f"falsified|{parts[1]}|{parts[2]}"] = float((st == "falsified").mean())
            out[f"unknown|{parts[1]}|{parts[2]}"] = float((st == "unknown").mean())
        elif parts[0] == "atk":
            c = _col(records, key, rows)
            if c is None:
                continue
            success = c.astype(bool)
            robust = clean & ~success
            out[f"robust|{parts[1]}|{parts[2]}"] = float(robust.mean())
            n_clean = int(clean.sum())
            out[f"asr|{parts[1]}|{parts[2]}"] = float((clean & success).sum()) / n_clean if n_clean else math.nan
            attack_cols[parts[2]].append(success)
        elif parts[0] == "by":
            vals = [records[key][i] for i in rows]
            if len(vals) == 0 or any(v is None for v in vals):
                continue
            # every component named anywhere in the column gets a value (0 in a repeat where it broke none)
            components = sorted({v for v in records[key] if v is not None} - {"robust", "clean"})
            for comp in components:
                out[f"broken|{parts[1]}|{parts[2]}|{comp}"] = sum(v == comp for v in vals) / n
    # worst case per set, per norm; union and average over norms
    by_norm: dict[str, list[np.ndarray]] = defaultdict(list)
    for set_id, cols in attack_cols.items():
        broken = np.logical_or.reduce(cols)
        out[f"worst|{set_id}"] = float((clean & ~broken).mean())
        by_norm[set_norm(set_id)].append(broken)
    norm_acc = []
    all_broken = []
    for norm, cols in by_norm.items():
        broken = np.logical_or.reduce(cols)
        acc = float((clean & ~broken).mean())
        out[f"worst|{norm}"] = acc
        norm_acc.append(acc)
        all_broken.append(broken)
    if all_broken:
        out["union"] = float((clean & ~np.logical_or.reduce(all_broken)).mean())
        out["average"] = float(np.mean(norm_acc))
    # smoothing
    for key in records:
        parts = split_key(key)
        if parts[0] != "smooth_pred":
            continue
        sigma = parts[1]
        pred = _col(records, key, rows)
        rad = _col(records, f"smooth_radius|{sigma}", rows)
        if pred is None or rad is None:
            continue
        correct = (pred == label) & (pred != -1)
        for r in radii.get(sigma, (0.0,)):
            out[f"smooth|{sigma}|certified@{_fmt(r)}"] = float((correct & (rad >= r)).mean())
        out[f"smooth|{sigma}|abstention"] = float((pred == -1).mean())
        out[f"smooth|{sigma}|mcr"] = float(np.where(correct, rad, 0.0).sum() / n)
    return out


def _fmt(v: float) -> str:
    from .suite import fmt_num
    return fmt_num(v)


def metrics_from_records(records: dict[str, list], radii: dict[str, Sequence[float]] | None = None
                         ) -> dict[str, dict[str, dict[str, Any]]]:
    """All metrics per model from the records (see the module docstring for the names).

    Args:
        records: the report's columns.
        radii: smoothing radii per sigma key (``{"0.25": [0, 0.25, 0.5]}``); default radius 0 only.

    Returns:
        ``{model: {metric: {"mean": float, "std": float, "values": [one per repeat]}}}``; a metric
        that a repeat lacks (smoothing and bounds run in repeat 0 only) averages the repeats that have it.
    """
    radii = radii or {}
    out: dict[str, dict[str, dict[str, Any]]] = {}
    models = list(dict.fromkeys(records["model"]))
    reps_all = np.asarray(records["repeat"])
    model_col = np.asarray(records["model"], dtype=object)
    for model in models:
        reps = sorted(set(reps_all[model_col == model].tolist()))
        per: dict[str, list[float]] = defaultdict(list)
        for r in reps:
            rows = np.nonzero((model_col == model) & (reps_all == r))[0]
            for k, v in _one_run(records, rows, radii).items():
                per[k].append(v)
        out[model] = {k: {"mean": float(np.mean(v)), "std": float(np.std(v)) if len(v) > 1 else 0.0,
                          "values": [float(x) for x in v]} for k, v in per.items()}
    return out


#: the ``attack`` of a violation whose certified sample is misclassified without any perturbation
CLEAN_RULE = "clean"


def check_consistency(records: dict[str, list], max_indices: int = 20) -> list[dict[str, Any]]:
    """Soundness, per sample: a sample certified under a set is classified correctly without
    perturbation (``attack`` ``"clean"`` in the result; checked whatever attacks ran), and no attack
    under the same set breaks it. Complete verification adds the other direction: a sample it
    falsified (a checked counterexample in the set) is certified by no bound method under that set
    (``attack`` ``"milp-counterexample"``); its verified samples are ``cert|milp|SET`` and so are
    covered by the first two rules.

    Returns one entry per (model, repeat, method, attack or ``"clean"``, set) with violations: the
    count and the first sample indices. An empty list means the run is consistent.
    """
    cert_keys = [k for k in records if k.startswith("cert|")]
    atk_keys = [k for k in records if k.startswith("atk|")]
    out: list[dict[str, Any]] = []
    if not cert_keys:
        return out
    model_col = np.asarray(records["model"], dtype=object)
    reps = np.asarray(records["repeat"])
    index = np.asarray(records["index"])
    wrong = np.asarray(records["clean_pred"], dtype=object) != np.asarray(records["label"], dtype=object)

    def report(bad: np.ndarray, method: str, attack: str, set_id: str) -> None:
        for model in dict.fromkeys(model_col[bad].tolist()):
            for r in sorted(set(reps[bad & (model_col == model)].tolist())):
                sel = bad & (model_col == model) & (reps == r)
                out.append({"model": model, "repeat": int(r), "method": method, "attack": attack,
                            "set": set_id, "count": int(sel.sum()),
                            "indices": [int(i) for i in index[sel][:max_indices]]})

    for ck in cert_keys:
        _, method, set_id = split_key(ck)
        cert = np.asarray([bool(v) if v is not None else False for v in records[ck]])
        if (cert & wrong).any():
            report(cert & wrong, method, CLEAN_RULE, set_id)
        for ak in atk_keys:
            _, attack, aset = split_key(ak)
            if aset != set_id:
                continue
            broken = np.asarray([bool(v) if v is not None else False for v in records[ak]])
            if (cert & broken).any():
                report(cert & broken, method, attack, set_id)
        for sk in [k for k in records if k.startswith("status|")]:
            _, complete, sset = split_key(sk)
            if sset != set_id:
                continue
            falsified = np.asarray([v == "falsified" for v in records[sk]])
            if (cert & falsified).any():
                report(cert & falsified, method, f"{complete}-counterexample", set_id)
    return out


def _gradient_free(label: str) -> bool:
    """Whether the attack of a metric label (``square``, ``pgd+eot``) uses no gradient of the
    evaluated model (labels or scores only, or another model's gradient): the registry's
    ``uses_gradient``. A name not registered in this process counts as a gradient attack, as an
    unknown attack always has."""
    from ..attacks.registry import ATTACKS
    name = label.split("+")[0]
    # a component of an ensemble (AutoAttack's per-attack column autoattack/square) by its own name
    name = name.split("/", 1)[1] if "/" in name else name
    cls = ATTACKS.get(name)
    return cls is not None and not cls.uses_gradient


def attack_strength_warnings(metrics: dict[str, dict[str, dict[str, Any]]], margin: float = 0.02) -> list[str]:
    """AutoAttack's self-check: an attack that uses no gradient of the model should not beat the
    gradient attacks under the same threat set. When it does by more than ``margin`` (robust
    accuracy), the gradients are likely masked and the gradient attacks overestimate robustness."""
    out = []
    for model, ms in metrics.items():
        best: dict[str, dict[bool, tuple[float, str]]] = defaultdict(dict)
        for key, v in ms.items():
            parts = key.split("|")
            if parts[0] != "robust" or len(parts) != 3:
                continue
            attack, set_id = parts[1], parts[2]
            free = _gradient_free(attack)
            cur = best[set_id].get(free)
            if cur is None or v["mean"] < cur[0]:
                best[set_id][free] = (v["mean"], attack)
        for set_id, b in best.items():
            if True in b and False in b and b[True][0] < b[False][0] - margin:
                out.append(f"model {model}: the gradient-free attack {b[True][1]} beats every gradient attack under "
                           f"{set_id} (robust accuracy {b[True][0]:.3f} < {b[False][0]:.3f} of {b[False][1]}); "
                           "gradients may be masked or the gradient attacks too weak: add steps or restarts, or APGD")
    return out
