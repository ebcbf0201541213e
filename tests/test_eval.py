"""The unified evaluator: metrics from records, consistency check, reports, suite, CLI."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from robustsuite import data as rdata
from robustsuite.errors import ConfigError
from robustsuite.eval import (Report, Suite, evaluate, load_suite, metrics_from_records, smoothing_summary,
                              suite_from_dict)
from robustsuite.models import build

try:
    from test_attacks_support import NoisyInput as Noisy, fit_natural  # noqa: F401
except ImportError:  # pragma: no cover
    from tests.test_attacks_support import NoisyInput as Noisy, fit_natural  # noqa: F401


# ------------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def digits():
    torch.manual_seed(0)
    x, y = rdata.as_tensors(rdata.load("digits", "train"))
    xt, yt = rdata.as_tensors(rdata.load("digits", "test"))
    return x, y, xt, yt


@pytest.fixture(scope="module")
def model(digits):
    """A small CNN trained naturally for a few seconds (about 90% clean accuracy)."""
    x, y, _, _ = digits
    torch.manual_seed(0)
    return fit_natural(build("cnn_small", (1, 8, 8), 10, width=0.5, linear=32), x, y, epochs=8)


SUITE = {
    "name": "test",
    "certify": [{"method": "ibp", "norm": "linf", "eps": [0.02, 0.05]}, {"method": "crown", "eps": 0.05}],
    "attacks": [{"name": "pgd", "norm": "linf", "eps": [0.02, 0.05], "steps": 5},
                {"name": "fgsm", "norm": "linf", "eps": [0.05]},
                {"name": "pgd", "norm": "l2", "eps": [0.5], "steps": 5}],
    "eot": {"samples": 2},
    "repeats": 3,
    "smoothing": {"sigmas": [0.25], "n0": 20, "n": 100, "alpha": 0.01, "radii": [0, 0.1, 0.3]},
    "subset": {"first": 40, "every": 2},
}


@pytest.fixture(scope="module")
def report(model, digits):
    _, _, xt, yt = digits
    return evaluate({"det": model, "noisy": Noisy(model)}, (xt, yt), suite_from_dict(SUITE), device="cpu", seed=0)


# ------------------------------------------------------------------------------------ metrics
def _direct(rec, model, repeat):
    rows = [i for i in range(len(rec["index"])) if rec["model"][i] == model and rec["repeat"][i] == repeat]
    col = lambda k: np.asarray([rec[k][i] for i in rows])  # noqa: E731
    return rows, col


def test_metrics_equal_direct_computation_from_records(report):
    rec = report.records
    rows, col = _direct(rec, "det", 0)
    label, clean = col("label"), col("clean_pred") == col("label")
    m = report.metrics["det"]
    assert m["clean_accuracy"]["mean"] == pytest.approx(clean.mean())
    for sid in ("linf@0.02", "linf@0.05"):
        cert = col(f"cert|ibp|{sid}").astype(bool)
        assert m[f"certified|ibp|{sid}"]["mean"] == pytest.approx(cert.mean())
        assert m[f"verified_error|ibp|{sid}"]["mean"] == pytest.approx(1 - cert.mean())
    broken = {}
    for key in [k for k in rec if k.startswith("atk|") and rec[k][rows[0]] is not None]:
        _, atk, sid = key.split("|")
        s = col(key).astype(bool)
        assert m[f"robust|{atk}|{sid}"]["mean"] == pytest.approx((clean & ~s).mean())
        assert m[f"asr|{atk}|{sid}"]["mean"] == pytest.approx((clean & s).sum() / clean.sum())
        broken.setdefault(sid, []).append(s)
    assert m["worst|linf@0.05"]["mean"] == pytest.approx((clean & ~(broken["linf@0.05"][0] | broken["linf@0.05"][1])).mean())
    linf = np.logical_or.reduce(broken["linf@0.02"] + broken["linf@0.05"])
    l2 = np.logical_or.reduce(broken["l2@0.5"])
    assert m["worst|linf"]["mean"] == pytest.approx((clean & ~linf).mean())
    assert m["worst|l2"]["mean"] == pytest.approx((clean & ~l2).mean())
    assert m["union"]["mean"] == pytest.approx((clean & ~(linf | l2)).mean())
    assert m["average"]["mean"] == pytest.approx(((clean & ~linf).mean() + (clean & ~l2).mean()) / 2)
    # smoothing agrees with smoothing_summary on the same records
    summ = smoothing_summary(torch.as_tensor(col("smooth_pred|0.25")), torch.as_tensor(col("smooth_radius|0.25")),
                             torch.as_tensor(label), radii=[0, 0.1, 0.3])
    for r, acc in zip(("0", "0.1", "0.3"), summ.certified_accuracy):
        assert m[f"smooth|0.25|certified@{r}"]["mean"] == pytest.approx(acc)
    assert m["smooth|0.25|abstention"]["mean"] == pytest.approx(summ.abstention_rate)
    assert m["smooth|0.25|mcr"]["mean"] == pytest.approx(summ.mean_certified_radius)
    # and the function recomputes the same numbers from the records alone
    assert metrics_from_records(rec, {"0.25": [0, 0.1, 0.3]}) == report.metrics


def test_union_below_every_norm_and_certified_below_robust(report):
    for model, m in report.metrics.items():
        norms = [k for k in m if k.startswith("worst|") and "@" not in k]
        assert len(norms) == 2
        assert m["union"]["mean"] <= min(m[k]["mean"] for k in norms) + 1e-12
        for k, v in m.items():
            if k.startswith("certified|"):
                sid = k.split("|")[2]
                assert v["mean"] <= m[f"worst|{sid}"]["mean"] + 1e-12
                assert v["mean"] <= m["clean_accuracy"]["mean"] + 1e-12
    assert report.ok and report.violations == []


def test_subset_indices_recorded(report):
    assert report.samples["indices"] == list(range(0, 80, 2))
    assert report.records["index"][:40] == list(range(0, 80, 2))


def test_stochastic_model_repeats_eot_and_not_applicable(report):
    na = report.not_applicable
    assert na["noisy"]["cert|ibp|linf@0.05"] == "stochastic model: bounds do not apply"
    assert "EOT not needed" in na["det"]["atk|pgd+eot|linf@0.05"]
    assert "atk|pgd+eot|linf@0.05" not in na["noisy"] and "atk|fgsm+eot|linf@0.05" in report.records
    rec = report.records
    assert sorted(set(r for r, m in zip(rec["repeat"], rec["model"]) if m == "noisy")) == [0, 1, 2]
    assert sorted(set(r for r, m in zip(rec["repeat"], rec["model"]) if m == "det")) == [0]
    m = report.metrics["noisy"]
    vals = []
    for r in range(3):
        rows, col = _direct(rec, "noisy", r)
        vals.append(((col("clean_pred") == col("label")) & ~col("atk|pgd+eot|linf@0.05").astype(bool)).mean())
    assert m["robust|pgd+eot|linf@0.05"]["values"] == pytest.approx(vals)
    assert m["robust|pgd+eot|linf@0.05"]["mean"] == pytest.approx(np.mean(vals))
    assert m["robust|pgd+eot|linf@0.05"]["std"] == pytest.approx(np.std(vals))
    assert "certified|ibp|linf@0.05" not in m
    assert "+-" in report.table()
    assert len(m["smooth|0.25|abstention"]["values"]) == 1  # smoothing runs once


# ------------------------------------------------------------------------------------ consistency
def test_violation_check_fires_on_a_wrong_bound(model, digits, monkeypatch, tmp_path, caplog):
    """A deliberately unsound bound (every sample 'certified') must be caught by the check."""
    from robustsuite.certify import Verifier

    real = Verifier.verify

    def wrong(self, x, y, threat):
        res = real(self, x, y, threat)
        res.certified = torch.ones_like(res.certified)
        return res

    monkeypatch.setattr(Verifier, "verify", wrong)
    _, _, xt, yt = digits
    suite = {"certify": [{"method": "ibp", "eps": 0.3}], "attacks": [{"name": "pgd", "eps": 0.3, "steps": 10}],
             "subset": {"first": 30}}
    with caplog.at_level("ERROR"):
        rep = evaluate({"m": model}, (xt, yt), suite, device="cpu")
    assert not rep.ok
    v = next(v for v in rep.violations if v["attack"] == "pgd")
    assert (v["model"], v["method"], v["attack"], v["set"]) == ("m", "ibp", "pgd", "linf@0.3") and v["count"] > 0
    assert "SOUNDNESS VIOLATION" in caplog.text
    rep.save(tmp_path, plots=False)
    assert (tmp_path / "report.md").read_text().splitlines()[2] == "## SOUNDNESS VIOLATION"
    assert Report.load(tmp_path).violations == rep.violations


# ------------------------------------------------------------------------------------ reports
def test_report_json_round_trip_and_files(report, tmp_path):
    report.save(tmp_path)
    for f in ("report.json", "records.csv", "report.md", "plots/robust_vs_eps.png", "plots/asr.png",
              "plots/smoothing_radius.png"):
        assert (tmp_path / f).is_file(), f
    back = Report.load(tmp_path)
    assert back.to_dict() == json.loads(json.dumps(report.to_dict()))
    assert back.metrics == report.metrics and back.records == report.records
    assert back.recompute().metrics == report.metrics
    assert set(json.loads((tmp_path / "report.json").read_text())) >= {
        "suite", "environment", "timings", "metrics", "records", "violations", "not_applicable"}
    lines = (tmp_path / "records.csv").read_text().splitlines()
    assert len(lines) == 1 + len(report.records["index"]) and lines[0].startswith("model,repeat,index,label")
    assert not [p for p in tmp_path.rglob("*.tmp")]


def test_interrupted_report_write_leaves_no_partial_file(report, tmp_path, monkeypatch):
    import robustsuite.files as files

    def crash(fd):
        raise KeyboardInterrupt("killed mid-write")

    out = tmp_path / "rep"
    monkeypatch.setattr(files.os, "fsync", crash)
    with pytest.raises(KeyboardInterrupt):
        report.save(out, plots=False)
    # neither the target nor a temporary file (the lock file is not part of the report)
    assert [p.name for p in out.iterdir()] == [files.LOCK_NAME] and list(tmp_path.iterdir()) == [out]
    monkeypatch.undo()
    report.save(out, plots=False)
    before = (out / "report.json").read_bytes()
    monkeypatch.setattr(files.os, "fsync", crash)
    with pytest.raises(KeyboardInterrupt):
        report.save(out, plots=False)
    assert (out / "report.json").read_bytes() == before  # the old report is intact
    assert sorted(p.name for p in out.iterdir()) == [files.LOCK_NAME, "records.csv", "report.json", "report.md"]
    assert list(tmp_path.iterdir()) == [out]


def test_a_report_folder_is_replaced_whole_or_not_at_all(report, tmp_path, monkeypatch):
    """Killed half-way through the plots, the previous report stays as it was (no new plot beside an
    old report.json); a complete write replaces it whole (a stale plot of an earlier run vanishes)."""
    import robustsuite.eval.plots as plots

    out = tmp_path / "rep"
    report.save(out)
    (out / "plots" / "stale_old_run.png").write_bytes(b"an earlier run's plot")
    before = {p.relative_to(out): (p.stat().st_ino, p.read_bytes()) for p in out.rglob("*") if p.is_file()}

    def killed(*a, **k):
        raise KeyboardInterrupt("killed while plotting")

    monkeypatch.setattr(plots, "plot_smoothing_radius", killed)  # the 2nd plot
    with pytest.raises(KeyboardInterrupt):
        report.save(out)
    after = {p.relative_to(out): (p.stat().st_ino, p.read_bytes()) for p in out.rglob("*") if p.is_file()}
    assert after == before and list(tmp_path.iterdir()) == [out]  # untouched; no partial folder beside it
    monkeypatch.undo()
    report.save(out)
    assert not (out / "plots" / "stale_old_run.png").exists()
    assert {"robust_vs_eps.png", "asr.png", "smoothing_radius.png"} == {p.name for p in (out / "plots").iterdir()}
    assert Report.load(out).to_dict() == json.loads(json.dumps(report.to_dict()))


# ------------------------------------------------------------------------------------ suite
def test_suite_yaml_and_errors_name_the_key_path(tmp_path):
    p = tmp_path / "s.yaml"
    p.write_text("certify:\n  - {method: crown-ibp, eps: 0.1}\nattacks:\n  - {name: pgd, eps: [0.1], steps: 3}\n"
                 "subset: {every: 3}\n")
    s = load_suite(p)
    assert isinstance(s, Suite) and s.attacks[0].settings == {"steps": 3} and s.certify[0].eps == [0.1]
    assert load_suite(p, ["subset.first=5"]).subset.first == 5
    cases = [({"attacks": [{"name": "pgd", "eps": 0.1, "stepz": 3}]}, "attacks[0]: unknown setting(s) 'stepz'"),
             ({"attacks": [{"name": "cw", "eps": 0.1}]}, "does not support norm 'linf'"),
             ({"certify": [{"method": "nope", "eps": 0.1}]}, "certify[0].method"),
             ({"smoothing": {"sigmas": [0.25], "nn": 3}}, "smoothing.nn: unknown key"),
             ({"certify": [{"method": "ibp", "eps": [-1]}]}, "certify[0].eps"),
             ({"bogus": 1}, "bogus: unknown key"),
             # every attack setting is checked at load, with its key path (not when the item runs)
             ({"attacks": [{"name": "pgd", "eps": 0.1}, {"name": "pgd", "eps": 0.1, "steps": True}]},
              "attacks[1].steps: expected an integer, got bool True"),
             ({"attacks": [{"name": "pgd", "eps": 0.1, "steps": "ten"}]}, "attacks[0].steps: expected an integer"),
             ({"attacks": [{"name": "pgd", "eps": 0.1, "loss": "nope"}]}, "attacks[0].loss: unknown value 'nope'"),
             ({"attacks": [{"name": "cw", "norm": "l2", "eps": 1, "steps": 0}]}, "attacks[0].steps: must be"),
             ({"repeats": True}, "repeats: expected a number, got the boolean True")]
    for raw, msg in cases:
        with pytest.raises(ConfigError, match=__import__("re").escape(msg)):
            suite_from_dict(raw)
    assert load_suite("configs/suites/demo.yaml").name == "demo"


def test_learned_budgets_not_applicable_without_generator(model, digits):
    _, _, xt, yt = digits
    rep = evaluate(model, (xt, yt), {"certify": [{"method": "ibp", "eps": 0.05, "budgets": "learned"}],
                                     "subset": {"first": 5}}, device="cpu")
    assert rep.not_applicable["model"]["cert|ibp|learned-rho4@0.05"].startswith("learned budgets")
    assert rep.metrics["model"].keys() == {"clean_accuracy"}


# ------------------------------------------------------------------------------------ CLI
def test_cli_eval_and_compare(model, tmp_path, capsys):
    import argparse

    from robustsuite.cli import compare as compare_command
    from robustsuite.cli import eval as eval_command
    from robustsuite.training.checkpoint import save_checkpoint

    ck = tmp_path / "cnn" / "best.pt"
    save_checkpoint(ck, kind="natural", model_spec=model.spec, model_state=model.state_dict(),
                    config={"data": {"name": "digits"}})
    suite = tmp_path / "suite.yaml"
    suite.write_text("certify: [{method: ibp, eps: 0.05}]\nattacks: [{name: pgd, eps: 0.05, steps: 3}]\n"
                     "subset: {first: 20}\n")
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="command")
    eval_command.add_parser(sub)
    compare_command.add_parser(sub)
    run = lambda argv: p.parse_args(argv).func(p.parse_args(argv))  # noqa: E731
    assert run(["eval", str(ck), "--suite", str(suite), "--out", str(tmp_path / "a"), "--device", "cpu"]) == 0
    assert run(["eval", str(ck), "--suite", str(suite), "--out", str(tmp_path / "b"), "--device", "cpu",
                "--set", "subset.first=10", "--names", "small"]) == 0
    out = capsys.readouterr().out
    assert "certified ibp linf@0.05" in out and "cnn" in out
    assert run(["compare", str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(tmp_path / "cmp")]) == 0
    captured = capsys.readouterr()
    assert "a:cnn" in captured.out and "b:small" in captured.out
    assert "different samples" in captured.err
    assert "WARNING: different samples" in (tmp_path / "cmp" / "compare.md").read_text()
    assert (tmp_path / "cmp" / "plots" / "robust_vs_eps.png").is_file()

    # a violation makes the command exit 3
    from robustsuite.certify import Verifier
    real = Verifier.verify

    def wrong(self, x, y, threat):
        res = real(self, x, y, threat)
        res.certified = torch.ones_like(res.certified)
        return res

    Verifier.verify = wrong
    try:
        args = p.parse_args(["eval", str(ck), "--suite", str(suite), "--out", str(tmp_path / "c"), "--device", "cpu",
                             "--set", "certify=[{method: ibp, eps: 0.4}]",
                             "--set", "attacks=[{name: pgd, eps: 0.4, steps: 10}]"])
        assert eval_command.cmd_eval(args) == 3
    finally:
        Verifier.verify = real
    assert "SOUNDNESS VIOLATION" in (tmp_path / "c" / "report.md").read_text()


def test_learned_budgets_on_a_budget_model(model, digits, tmp_path):
    from robustsuite.budgets import BudgetGenerator, BudgetModel

    _, _, xt, yt = digits
    torch.manual_seed(0)
    bm = BudgetModel(model, BudgetGenerator((1, 8, 8), width=8)).eval()
    suite = {"certify": [{"method": "ibp", "eps": 0.05, "budgets": "learned", "rho": 2}],
             "attacks": [{"name": "pgd", "eps": 0.05, "budgets": "learned", "rho": 2, "steps": 5}],
             "subset": {"first": 20}}
    rep = evaluate({"bm": bm}, (xt, yt), suite, device="cpu")
    m = rep.metrics["bm"]
    assert rep.not_applicable["bm"] == {} and rep.ok
    assert m["certified|ibp|learned-rho2@0.05"]["mean"] <= m["robust|pgd|learned-rho2@0.05"]["mean"]
    rep.save(tmp_path)
    assert (tmp_path / "plots" / "budgets_bm.png").is_file()


def test_stochastic_model_without_eot_is_warned(model, digits, caplog):
    _, _, xt, yt = digits
    with caplog.at_level("WARNING"):
        rep = evaluate({"noisy": Noisy(model)}, (xt, yt), {"attacks": [{"name": "fgsm", "eps": 0.05}], "repeats": 2,
                                                           "subset": {"first": 10}}, device="cpu")
    assert "without EOT" in caplog.text and "without EOT" in rep.markdown()
    assert len(rep.metrics["noisy"]["robust|fgsm|linf@0.05"]["values"]) == 2


def test_transfer_attack_from_a_named_source_model(model, digits):
    _, _, xt, yt = digits
    suite = {"attacks": [{"name": "transfer", "source": "det", "attack": "pgd", "eps": 0.1, "steps": 5},
                         {"name": "pgd", "eps": 0.1, "steps": 5}],
             "repeats": 1, "subset": {"first": 20}}
    rep = evaluate({"det": model, "noisy": Noisy(model, 0.05)}, (xt, yt), suite, device="cpu")
    key = "atk|pgd-transfer-from-det|linf@0.1"
    assert rep.not_applicable["det"][key].startswith("the transfer source itself")
    assert "robust|pgd-transfer-from-det|linf@0.1" in rep.metrics["noisy"]
    with pytest.raises(ConfigError, match=r"attacks\[0\].source: unknown model 'nope'"):
        evaluate(model, (xt, yt), {"attacks": [{"name": "transfer", "source": "nope", "attack": "pgd", "eps": 0.1}]})
    with pytest.raises(ConfigError, match="needs 'source'"):
        suite_from_dict({"attacks": [{"name": "transfer", "eps": 0.1}]})


def test_compare_notes_only_real_differences(report):
    from robustsuite.eval.compare import sample_differences

    other = Report.from_dict(report.to_dict())
    assert sample_differences([report, other], ["a", "b"]) == []
    other.samples = {**other.samples, "indices": other.samples["indices"][:10]}
    assert "different samples" in sample_differences([report, other], ["a", "b"])[0]


def test_a_gradient_free_attack_beating_the_gradient_attacks_is_flagged():
    from robustsuite.eval.metrics import attack_strength_warnings

    metrics = {"m": {"robust|cw|l2@1": {"mean": 0.77}, "robust|boundary|l2@1": {"mean": 0.54},
                     "robust|pgd|linf@0.1": {"mean": 0.90}},
               "n": {"robust|cw|l2@1": {"mean": 0.70}, "robust|boundary|l2@1": {"mean": 0.85}}}
    warns = attack_strength_warnings(metrics)
    assert len(warns) == 1 and "model m" in warns[0] and "boundary" in warns[0] and "l2@1" in warns[0]


def test_square_and_boundary_run_again_with_eot_on_a_stochastic_model(model, digits):
    """The label/score oracle of the black-box attacks is the majority vote over the EOT draws wherever
    gradient attacks get EOT (a single noisy draw measures the noise, not the model)."""
    _, _, xt, yt = digits
    suite = {"attacks": [{"name": "square", "eps": 0.1, "n_queries": 20},
                         {"name": "boundary", "norm": "l2", "eps": 1.0, "max_queries": 60},
                         {"name": "pgd", "eps": 0.1, "steps": 3}],
             "eot": {"samples": 3}, "subset": {"first": 6}}
    rep = evaluate({"noisy": Noisy(model), "det": model}, (xt, yt), suite, device="cpu")
    keys = set(rep.metrics["noisy"])
    for atk, sid in (("square", "linf@0.1"), ("boundary", "l2@1"), ("pgd", "linf@0.1")):
        assert f"robust|{atk}|{sid}" in keys and f"robust|{atk}+eot|{sid}" in keys, (atk, sorted(keys))
    assert rep.metrics["det"].get("robust|square+eot|linf@0.1", {}).get("mean") is None  # not for a deterministic model


def test_eot_runs_of_query_budgeted_attacks_make_as_many_decisions(model, digits, monkeypatch):
    """Every EOT draw is a query: the EOT run's budget is the one-draw budget times the samples."""
    from robustsuite.attacks import registry

    seen = []
    real = registry.make_attack

    def spy(name, m, threat, **settings):
        seen.append((name, settings.get("eot", 1), settings.get("n_queries"), settings.get("max_queries")))
        return real(name, m, threat, **settings)

    monkeypatch.setattr(registry, "make_attack", spy)
    import robustsuite.attacks as atk_pkg
    monkeypatch.setattr(atk_pkg, "make_attack", spy)
    _, _, xt, yt = digits
    suite = {"attacks": [{"name": "square", "eps": 0.1, "n_queries": 20},
                         {"name": "boundary", "norm": "l2", "eps": 1.0}],
             "eot": {"samples": 3}, "subset": {"first": 4}}
    evaluate({"noisy": Noisy(model)}, (xt, yt), suite, device="cpu")
    assert ("square", 1, 20, None) in seen and ("square", 3, 60, None) in seen
    assert ("boundary", 1, None, None) in seen and ("boundary", 3, None, 3 * 5000) in seen


def test_square_counts_as_gradient_free_in_the_masking_check():
    from robustsuite.eval.metrics import attack_strength_warnings

    metrics = {"m": {"robust|square|linf@0.1": {"mean": 0.2}, "robust|pgd|linf@0.1": {"mean": 0.6}}}
    (w,) = attack_strength_warnings(metrics)
    assert "square" in w and "masked" in w
