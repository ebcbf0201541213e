"""Evaluation that resumes: every finished (model, item, repeat) is kept in the store as it completes;
a killed evaluation repeated gives exactly the uninterrupted report; a changed item or model reruns
only its own columns; ``--no-resume`` / ``fresh`` starts over; the CLI and the study resume by default."""
from __future__ import annotations

import argparse
import json

import pytest
import torch
from torch import nn

from robustsuite.eval import evaluate
from robustsuite.eval.resume import ColumnStore

try:
    from test_attacks_support import NoisyInput  # noqa: F401
except ImportError:  # pragma: no cover
    from tests.test_attacks_support import NoisyInput  # noqa: F401

SUITE = {
    "name": "resume",
    "certify": [{"method": "ibp", "eps": [0.02, 0.05]}],
    "attacks": [{"name": "pgd", "eps": [0.03], "steps": 3},
                {"name": "fgsm", "eps": [0.05]},
                {"name": "transfer", "source": "det", "attack": "fgsm", "eps": [0.05]}],
    "eot": {"samples": 2},
    "repeats": 2,
    "smoothing": {"sigmas": [0.25], "n0": 10, "n": 40, "alpha": 0.01},
    "subset": {"first": 12},
}
# per model, the (item, repeat) runs that compute something: det 2 bounds + pgd + fgsm (the transfer
# from itself and the EOT runs do not apply) + smoothing; noisy (2 repeats) pgd, pgd+eot, fgsm,
# fgsm+eot, transfer, and smoothing once
RUNS = {"det": 5, "noisy": 2 * 5 + 1}


class Noisy(NoisyInput):
    """Declares its noise: Gaussian noise of std 0.3 on the input."""

    def __init__(self, inner: nn.Module, sigma: float = 0.3):
        super().__init__(inner, sigma)


class Killed(Exception):
    """Stands in for a kill (SIGKILL, power cut) after some columns were written."""


class Saves(list):
    """The (model, repeat, key) the store wrote, in order; ``state["kill_after"]``: stop after that many."""

    def __init__(self):
        super().__init__()
        self.state = {"kill_after": None}


@pytest.fixture(scope="module")
def data():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(64, 10)).eval()
    x = torch.rand(20, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        y = net(x).argmax(1)  # the noise-free model is right: attacks and noise decide the outcomes
    return net, x, y


def _models(net, scale: float = 1.0):
    det = nn.Sequential(nn.Flatten(), nn.Linear(64, 10)).eval()
    det.load_state_dict(net.state_dict())
    with torch.no_grad():
        det[1].weight.mul_(scale)
    return {"det": det, "noisy": Noisy(net)}


@pytest.fixture(scope="module")
def reference(data):
    """The uninterrupted evaluation (no store)."""
    net, x, y = data
    return evaluate(_models(net), (x, y), SUITE, device="cpu", seed=0)


def _same(a, b) -> None:
    """Everything but the timings and the environment is equal."""
    assert a.records == b.records
    assert a.metrics == b.metrics
    assert a.not_applicable == b.not_applicable
    assert a.items == b.items and a.violations == b.violations and a.samples == b.samples
    assert a.extras == b.extras and a.suite == b.suite and a.models == b.models
    assert {m: set(t) for m, t in a.timings.items()} == {m: set(t) for m, t in b.timings.items()}


@pytest.fixture
def saves(monkeypatch):
    """Record every (model, repeat, key) the store writes; ``kill_after`` stops the evaluation after that
    many writes."""
    real = ColumnStore.save
    log = Saves()
    state = log.state

    def save(self, model, repeat, key, fingerprint, finished, item=None):
        out = real(self, model, repeat, key, fingerprint, finished, item)
        log.append((model, repeat, key))
        if state["kill_after"] is not None and len(log) >= state["kill_after"]:
            state["kill_after"] = None
            raise Killed
        return out

    monkeypatch.setattr(ColumnStore, "save", save)
    return log


@pytest.mark.parametrize("k", [3, 9])
def test_a_killed_evaluation_resumes_to_the_uninterrupted_report(data, reference, tmp_path, saves, k):
    """Killed after k finished runs (k=3: inside the first model; k=9: in the stochastic model's first
    repeat), repeated: the same records, metrics and warnings as one uninterrupted run, and only the
    unfinished work ran again."""
    net, x, y = data
    saves.state["kill_after"] = k
    with pytest.raises(Killed):
        evaluate(_models(net), (x, y), SUITE, device="cpu", seed=0, resume_dir=tmp_path / "store")
    assert len(saves) == k and len(list((tmp_path / "store").rglob("*.json"))) == k
    first = list(saves)
    saves.clear()
    resumed = evaluate(_models(net), (x, y), SUITE, device="cpu", seed=0, resume_dir=tmp_path / "store")
    _same(resumed, reference)
    assert len(saves) == sum(RUNS.values()) - k and not set(saves) & set(first)


def test_a_changed_item_reruns_only_its_columns(data, tmp_path, saves):
    net, x, y = data
    store = tmp_path / "store"
    evaluate(_models(net), (x, y), SUITE, device="cpu", seed=0, resume_dir=store)
    assert len(saves) == sum(RUNS.values())
    saves.clear()
    changed = json.loads(json.dumps(SUITE))
    changed["attacks"][0]["steps"] = 4              # PGD only
    changed["smoothing"]["radii"] = [0, 0.5]         # metrics only: no column changes
    changed["attacks"].reverse()                     # the order of the entries changes no column
    again = evaluate(_models(net), (x, y), changed, device="cpu", seed=0, resume_dir=store)
    assert sorted(saves) == [("det", 0, "atk|pgd|linf@0.03"), ("noisy", 0, "atk|pgd+eot|linf@0.03"),
                             ("noisy", 0, "atk|pgd|linf@0.03"), ("noisy", 1, "atk|pgd+eot|linf@0.03"),
                             ("noisy", 1, "atk|pgd|linf@0.03")]
    _same(again, evaluate(_models(net), (x, y), changed, device="cpu", seed=0))
    saves.clear()  # the seed changes every column
    evaluate(_models(net), (x, y), changed, device="cpu", seed=1, resume_dir=store)
    assert len(saves) == sum(RUNS.values())


def test_a_replaced_model_reruns_only_its_columns(data, tmp_path, saves):
    """New weights under the same name rerun that model's columns, and the columns of other models that
    use it (a transfer attack crafted on it); the other columns are reused."""
    net, x, y = data
    store = tmp_path / "store"
    evaluate(_models(net), (x, y), SUITE, device="cpu", seed=0, resume_dir=store)
    saves.clear()
    again = evaluate(_models(net, scale=1.5), (x, y), SUITE, device="cpu", seed=0, resume_dir=store)
    assert sorted(k for k in saves if k[0] == "det") == sorted(
        ("det", 0, key) for key in ("cert|ibp|linf@0.02", "cert|ibp|linf@0.05", "atk|pgd|linf@0.03",
                                    "atk|fgsm|linf@0.05", "smooth|0.25"))
    assert sorted(k for k in saves if k[0] == "noisy") == [("noisy", 0, "atk|fgsm-transfer-from-det|linf@0.05"),
                                                          ("noisy", 1, "atk|fgsm-transfer-from-det|linf@0.05")]
    _same(again, evaluate(_models(net, scale=1.5), (x, y), SUITE, device="cpu", seed=0))
    saves.clear()  # other samples: everything runs again
    evaluate(_models(net, scale=1.5), (x[1:], y[1:]), SUITE, device="cpu", seed=0, resume_dir=store)
    assert len(saves) == sum(RUNS.values())


def test_fresh_starts_over_and_bad_files_are_recomputed(data, reference, tmp_path, saves):
    net, x, y = data
    store = tmp_path / "store"
    (store / "notes").mkdir(parents=True)
    (store / "notes" / "keep.txt").write_text("not ours")
    evaluate(_models(net), (x, y), SUITE, device="cpu", seed=0, resume_dir=store)
    saves.clear()
    _same(evaluate(_models(net), (x, y), SUITE, device="cpu", seed=0, resume_dir=store, fresh=True), reference)
    assert len(saves) == sum(RUNS.values())
    assert (store / "notes" / "keep.txt").read_text() == "not ours"  # fresh removes only column files
    # damaged, edited or foreign column files are ignored and rewritten, never trusted
    files = {f.relative_to(store).as_posix(): f for f in store.rglob("*.json")}
    damaged = sorted(files)[:4]
    files[damaged[0]].write_text("{not json")
    files[damaged[1]].write_bytes(b"\xff\xfe\x00")
    d = json.loads(files[damaged[2]].read_text())
    d["columns"][next(iter(d["columns"]))] = d["columns"][next(iter(d["columns"]))][:-1]  # one value short
    files[damaged[2]].write_text(json.dumps(d))
    d = json.loads(files[damaged[3]].read_text())
    d["columns"][next(iter(d["columns"]))][0] = "__import__('os')"  # not a value a column holds
    files[damaged[3]].write_text(json.dumps(d))
    saves.clear()
    _same(evaluate(_models(net), (x, y), SUITE, device="cpu", seed=0, resume_dir=store), reference)
    assert len(saves) == 4


def _checkpoint(tmp_path, net, name="lin"):
    from robustsuite.training.checkpoint import save_checkpoint
    from robustsuite.models import build

    torch.manual_seed(0)
    m = build("cnn_small", (1, 8, 8), 10, width=0.5, linear=16)
    ck = tmp_path / name / "best.pt"
    save_checkpoint(ck, kind="natural", model_spec=m.spec, model_state=m.state_dict(),
                    config={"data": {"name": "digits"}})
    return ck


def test_cli_eval_resumes_by_default_and_no_resume_starts_over(data, tmp_path, saves, capsys):
    from robustsuite.cli.eval import add_parser as add_eval_parsers
    from robustsuite.eval.report import Report

    net, _, _ = data
    ck = _checkpoint(tmp_path, net)
    suite = tmp_path / "suite.yaml"
    suite.write_text("certify: [{method: ibp, eps: 0.05}]\nattacks: [{name: pgd, eps: [0.05, 0.1], steps: 2}, "
                     "{name: fgsm, eps: 0.1}]\nsubset: {first: 10}\n")
    p = argparse.ArgumentParser()
    add_eval_parsers(p.add_subparsers(dest="command"))

    def run(out, *extra):
        args = p.parse_args(["eval", str(ck), "--suite", str(suite), "--out", str(out), "--device", "cpu", *extra])
        return args.func(args)

    assert run(tmp_path / "ref") == 0
    assert not (tmp_path / "ref" / "partial").exists()  # the finished report does not keep its columns
    ref = Report.load(tmp_path / "ref")
    saves.clear()
    saves.state["kill_after"] = 2
    with pytest.raises(Killed):
        run(tmp_path / "out")
    assert not (tmp_path / "out" / "report.json").exists()
    assert len(list((tmp_path / "out" / "partial").rglob("*.json"))) == 2
    saves.clear()
    assert run(tmp_path / "out") == 0
    assert len(saves) == 4 - 2  # ibp, pgd x2, fgsm: two were finished
    got = Report.load(tmp_path / "out")
    assert (got.records, got.metrics, got.not_applicable) == (ref.records, ref.metrics, ref.not_applicable)
    assert sorted(e.name for e in (tmp_path / "out").iterdir()) == [".robustsuite.lock", "eval.log", "plots",
                                                                    "records.csv", "report.json", "report.md"]
    # a folder with a finished report evaluates everything again (as before)
    saves.clear()
    assert run(tmp_path / "out") == 0 and len(saves) == 4
    # --no-resume after a kill: everything runs again
    saves.state["kill_after"] = 3
    with pytest.raises(Killed):
        run(tmp_path / "out2")
    saves.clear()
    assert run(tmp_path / "out2", "--no-resume") == 0 and len(saves) == 4
    got = Report.load(tmp_path / "out2")
    assert (got.records, got.metrics) == (ref.records, ref.metrics)
    # partial/ holding something that is not ours stops the command before it evaluates (nothing is lost)
    (tmp_path / "out3" / "partial").mkdir(parents=True)
    (tmp_path / "out3" / "partial" / "mine.txt").write_text("x")
    from robustsuite.errors import OutputError
    with pytest.raises(OutputError, match=r"partial/mine.txt"):
        run(tmp_path / "out3")
    assert (tmp_path / "out3" / "partial" / "mine.txt").read_text() == "x"
    capsys.readouterr()
