"""Complete verification (method milp) in the evaluator, the report, the consistency check and the CLI."""
from __future__ import annotations

import pytest
import torch

from robustsuite import data as rdata
from robustsuite.eval import evaluate, suite_from_dict
from robustsuite.eval.metrics import check_consistency, metrics_from_records
from robustsuite.errors import ConfigError
from robustsuite.models import build

try:
    from test_attacks_support import fit_natural
except ImportError:
    from tests.test_attacks_support import fit_natural


@pytest.fixture(scope="module")
def digits_model():
    """A small CNN on the 8x8 digits, trained naturally for a few seconds."""
    x, y = rdata.as_tensors(rdata.load("digits", "train"))
    xt, yt = rdata.as_tensors(rdata.load("digits", "test"))
    torch.manual_seed(0)
    m = fit_natural(build("cnn_small", (1, 8, 8), 10, width=0.25, linear=16), x, y, epochs=6)
    return m, xt, yt


SUITE = {"certify": [{"method": "milp", "eps": [0.02, 0.05], "time_limit": 10}, {"method": "crown", "eps": [0.02, 0.05]}],
         "attacks": [{"name": "pgd", "eps": [0.02, 0.05], "steps": 10}], "repeats": 1, "subset": {"first": 24}}


def test_complete_item_columns_metrics_plot_and_resume(digits_model, tmp_path):
    model, xt, yt = digits_model
    rep = evaluate({"m": model}, (xt, yt), SUITE, device="cpu", resume_dir=tmp_path / "resume", quiet=True)
    rec = rep.records
    for eps in ("0.02", "0.05"):
        status = rec[f"status|milp|linf@{eps}"]
        assert set(status) <= {"verified", "falsified", "unknown"} and len(status) == 24
        assert rec[f"cert|milp|linf@{eps}"] == [s == "verified" for s in status]
        ms = rep.metrics["m"]
        shares = [ms[f"{k}|milp|linf@{eps}"]["mean"] for k in ("certified", "falsified", "unknown")]
        assert abs(sum(shares) - 1) < 1e-9
        # exact verification is at least as strong as CROWN and never above PGD's robust accuracy
        assert ms[f"certified|milp|linf@{eps}"]["mean"] >= ms[f"certified|crown|linf@{eps}"]["mean"]
        assert ms[f"certified|milp|linf@{eps}"]["mean"] <= ms[f"robust|pgd|linf@{eps}"]["mean"]
        # falsified covers every sample PGD broke or the model misclassifies
        broken = [a or p != l for a, p, l in zip(rec[f"atk|pgd|linf@{eps}"], rec["clean_pred"], rec["label"])]
        assert all(s == "falsified" for s, b in zip(status, broken) if b)
    assert "falsified" in rec["status|milp|linf@0.05"]
    assert rep.violations == []
    assert "Complete verification" in rep.markdown()
    rep.save(tmp_path / "report")
    assert (tmp_path / "report" / "plots" / "complete.png").is_file()
    # resume: the finished MILP columns are reused as they are (no MILP runs again)
    import robustsuite.certify.complete as complete
    calls = []
    orig = complete.CompleteVerifier.verify
    complete.CompleteVerifier.verify = lambda self, *a, **k: calls.append(1) or orig(self, *a, **k)
    try:
        again = evaluate({"m": model}, (xt, yt), SUITE, device="cpu", resume_dir=tmp_path / "resume", quiet=True)
    finally:
        complete.CompleteVerifier.verify = orig
    assert calls == [] and again.records == rec


def test_consistency_check_covers_complete_verification():
    base = {"model": ["m"] * 3, "repeat": [0] * 3, "index": [0, 1, 2], "label": [1, 1, 1], "clean_pred": [1, 1, 1]}
    ok = dict(base, **{"cert|milp|linf@0.1": [True, False, False], "status|milp|linf@0.1": ["verified", "falsified", "unknown"],
                       "cert|crown|linf@0.1": [True, False, False], "atk|pgd|linf@0.1": [False, True, False]})
    assert check_consistency(ok) == []
    m = metrics_from_records(ok)["m"]
    assert m["falsified|milp|linf@0.1"]["mean"] == pytest.approx(1 / 3)
    assert m["unknown|milp|linf@0.1"]["mean"] == pytest.approx(1 / 3)
    # a bound certifying a sample the MILP falsified, and a verified sample an attack broke
    bad = dict(ok, **{"cert|crown|linf@0.1": [True, True, False], "atk|pgd|linf@0.1": [True, True, False]})
    found = {(v["method"], v["attack"]) for v in check_consistency(bad)}
    assert ("crown", "milp-counterexample") in found and ("milp", "pgd") in found


def test_suite_refuses_milp_settings_that_do_not_fit():
    with pytest.raises(ConfigError, match="norm: linf"):
        suite_from_dict({"certify": [{"method": "milp", "norm": "l2", "eps": 0.5}]})
    with pytest.raises(ConfigError, match="time_limit"):
        suite_from_dict({"certify": [{"method": "crown", "eps": 0.1, "time_limit": 5}]})
    with pytest.raises(ConfigError, match="time_limit"):
        suite_from_dict({"certify": [{"method": "milp", "eps": 0.1, "time_limit": 0}]})
