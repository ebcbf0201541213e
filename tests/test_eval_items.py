"""The evaluator's typed items (applies / run, one class per kind), its random streams per item, the
stochastic-model detection and the AutoAttack-style self-checks in the report's warnings."""
from __future__ import annotations

from typing import ClassVar

import pytest
import torch
from torch import nn

from robustsuite.eval import evaluate, suite_from_dict
from robustsuite.eval.items import ModelInfo, NotApplicable, RunContext
from robustsuite.eval.suite import AttackItem, CertifyItem, EvalItem, SmoothingItem, Suite

try:
    from test_attacks_support import NoisyInput  # noqa: F401
except ImportError:  # pragma: no cover
    from tests.test_attacks_support import NoisyInput  # noqa: F401


@pytest.fixture(scope="module")
def data():
    g = torch.Generator().manual_seed(0)
    return torch.rand(24, 1, 8, 8, generator=g), torch.randint(0, 10, (24,), generator=g)


@pytest.fixture(scope="module")
def net():
    """A random linear classifier: its predictions spread over the classes and flip under input noise."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 10)).eval()


class Noisy(NoisyInput):
    """Declares its noise: Gaussian noise of std 0.3 on the input."""

    def __init__(self, inner: nn.Module, sigma: float = 0.3):
        super().__init__(inner, sigma)


class HiddenNoise(Noisy):
    """Random but declares nothing: only the determinism probe can tell."""

    is_stochastic = False


class Head(nn.Module):
    def __init__(self, inner: nn.Module, head: nn.Module):
        super().__init__()
        self.inner, self.head = inner, head

    def forward(self, x):
        return self.head(self.inner(x))


class Quantized(nn.Module):
    """Rounds its input to 4 levels first: the input gradient is exactly zero everywhere."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return self.inner(torch.round(x * 3) / 3)


INFO = dict(name="m", declares_noise=False, varies=False, budget_model=False, num_classes=10)


# ------------------------------------------------------------------------------------ the protocol
def test_items_decide_applicability_themselves():
    suite = suite_from_dict({"certify": [{"method": "ibp", "eps": [0.1]},
                                         {"method": "ibp", "eps": 0.1, "budgets": "learned"}],
                             "attacks": [{"name": "pgd", "eps": 0.1, "steps": 2},
                                         {"name": "transfer", "source": "m", "attack": "fgsm", "eps": 0.1}],
                             "eot": {"samples": 2}, "smoothing": {"sigmas": [0.25]}})
    items = {it.key: it for it in suite.items()}
    assert list(items) == ["cert|ibp|linf@0.1", "cert|ibp|learned-rho4@0.1", "atk|pgd|linf@0.1", "atk|pgd+eot|linf@0.1",
                           "atk|fgsm-transfer-from-m|linf@0.1", "smooth|0.25"]
    det, noisy = ModelInfo(**INFO), ModelInfo(**{**INFO, "name": "n", "declares_noise": True})
    hidden = ModelInfo(**{**INFO, "name": "h", "varies": True})
    assert items["cert|ibp|linf@0.1"].applies(det) is None
    assert items["cert|ibp|linf@0.1"].applies(noisy) == "stochastic model: bounds do not apply"
    assert items["cert|ibp|linf@0.1"].applies(hidden) == "stochastic model: bounds do not apply"
    assert items["cert|ibp|learned-rho4@0.1"].applies(det).startswith("learned budgets: the model has no budget")
    assert items["atk|pgd|linf@0.1"].applies(det) is None and items["atk|pgd|linf@0.1"].applies(noisy) is None
    assert items["atk|pgd+eot|linf@0.1"].applies(det).startswith("deterministic model: EOT not needed")
    assert items["atk|pgd+eot|linf@0.1"].applies(hidden) is None
    assert items["atk|fgsm-transfer-from-m|linf@0.1"].applies(det).startswith("the transfer source itself")
    assert items["atk|fgsm-transfer-from-m|linf@0.1"].applies(noisy) is None
    assert items["smooth|0.25"].applies(noisy) is None
    assert [type(it) for it in items.values()] == [CertifyItem] * 2 + [AttackItem] * 3 + [SmoothingItem]
    assert all(it.once for it in items.values() if not isinstance(it, AttackItem))
    assert not any(it.once for it in items.values() if isinstance(it, AttackItem))


def test_report_items_keep_their_format():
    suite = suite_from_dict({"certify": [{"method": "crown-ibp", "eps": [0.05, 0.1]}],
                             "attacks": [{"name": "pgd", "norm": "l2", "eps": 0.5, "steps": 7}],
                             "eot": {"samples": 3}, "smoothing": {"sigmas": [0.25]}})
    described = [it.describe() for it in suite.items()]
    assert described[1] == {"kind": "certify", "entry": 0, "method": "crown-ibp", "norm": "linf", "eps": 0.1,
                            "budgets": "uniform", "rho": 4.0, "set": "linf@0.1", "key": "cert|crown-ibp|linf@0.1",
                            "columns": ["cert|crown-ibp|linf@0.1"]}
    assert described[3] == {"kind": "attack", "entry": 0, "attack": "pgd+eot", "name": "pgd", "norm": "l2",
                            "source": None, "inner": None, "eps": 0.5, "budgets": "uniform", "rho": 4.0,
                            "set": "l2@0.5", "eot": True, "settings": {"steps": 7}, "key": "atk|pgd+eot|l2@0.5",
                            "columns": ["atk|pgd+eot|l2@0.5", "dist|pgd+eot|l2@0.5"]}
    assert described[4] == {"kind": "smoothing", "sigma": 0.25, "key": "smooth|0.25",
                            "columns": ["smooth_pred|0.25", "smooth_radius|0.25"]}


class Toy(EvalItem):
    """A new kind of item defined here: the evaluator runs it through the protocol alone."""

    kind: ClassVar[str] = "toy"
    offset: int = 1
    runs: ClassVar[list] = []

    def expand(self, suite, entry):
        return [self]

    @property
    def key(self):
        return f"toy|{self.offset}"

    @property
    def columns(self):
        return [f"toy|{self.offset}"]

    @property
    def stage(self):
        return "toy"

    def describe(self):
        return {"kind": self.kind, "key": self.key, "columns": self.columns}

    def applies(self, info):
        return "toy: not for stochastic models" if info.stochastic else None

    def run(self, ctx: RunContext):
        Toy.runs.append((ctx.name, ctx.repeat))
        if ctx.name == "refused":
            raise NotApplicable("toy: refused at run time")
        return {self.columns[0]: (ctx.y + self.offset).tolist()}


def test_a_new_item_kind_is_one_class(net, data, monkeypatch):
    base = Suite.items
    monkeypatch.setattr(Suite, "items", lambda self: base(self) + [Toy(offset=3)])
    Toy.runs.clear()
    x, y = data
    rep = evaluate({"det": net, "noisy": Noisy(net), "refused": net}, (x, y),
                   {"attacks": [{"name": "fgsm", "eps": 0.1}], "repeats": 2, "subset": {"first": 5}}, device="cpu")
    rows = [i for i, m in enumerate(rep.records["model"]) if m == "det"]
    assert [rep.records["toy|3"][i] for i in rows] == (y[:5] + 3).tolist()
    assert rep.not_applicable["noisy"]["toy|3"] == "toy: not for stochastic models"
    assert rep.not_applicable["refused"]["toy|3"] == "toy: refused at run time"
    assert all(v is None for v, m in zip(rep.records["toy|3"], rep.records["model"]) if m != "det")
    assert Toy.runs == [("det", 0), ("refused", 0)]
    assert rep.items[-1] == {"kind": "toy", "key": "toy|3", "columns": ["toy|3"]}
    assert "toy" in rep.timings["det"] and "robust|fgsm|linf@0.1" in rep.metrics["det"]


# ------------------------------------------------------------------------------------ random streams
def test_each_item_draws_from_its_own_stream(net, data):
    """On a stochastic model an item's columns do not depend on which items ran before it."""
    x, _ = data
    with torch.no_grad():
        y = net(x).argmax(1)  # labels the noise-free model gets right: the attacks' outcomes vary
    pgd = {"name": "pgd", "eps": 0.03, "steps": 3}
    common = {"eot": {"samples": 2}, "repeats": 2, "subset": {"first": 16}}
    alone = evaluate({"n": Noisy(net)}, (x, y), {"attacks": [pgd], **common}, device="cpu")
    after = evaluate({"n": Noisy(net)}, (x, y), {"attacks": [{"name": "fgsm", "eps": 0.05}, pgd], **common},
                     device="cpu")
    for key in ("atk|pgd|linf@0.03", "dist|pgd|linf@0.03", "atk|pgd+eot|linf@0.03", "clean_pred"):
        assert alone.records[key] == after.records[key], key
    # the noise matters here: another seed draws other noise and other outcomes
    other = evaluate({"n": Noisy(net)}, (x, y), {"attacks": [pgd], **common}, device="cpu", seed=1)
    assert other.records["atk|pgd|linf@0.03"] != alone.records["atk|pgd|linf@0.03"]
    assert other.records["clean_pred"] != alone.records["clean_pred"]


# ------------------------------------------------------------------------------------ stochastic detection
def test_a_model_with_undeclared_noise_is_evaluated_as_stochastic(net, data):
    x, y = data
    rep = evaluate({"hidden": HiddenNoise(net), "det": net}, (x, y),
                   {"certify": [{"method": "ibp", "eps": 0.05}], "attacks": [{"name": "fgsm", "eps": 0.05}],
                    "eot": {"samples": 2}, "repeats": 2, "subset": {"first": 6}}, device="cpu")
    assert rep.not_applicable["hidden"]["cert|ibp|linf@0.05"] == "stochastic model: bounds do not apply"
    assert "atk|fgsm+eot|linf@0.05" not in rep.not_applicable["hidden"]
    assert len(rep.metrics["hidden"]["robust|fgsm+eot|linf@0.05"]["values"]) == 2   # the repeats
    warns = rep.extras["warnings"]
    assert any("model hidden: declares no noise layer" in w and "evaluated as stochastic" in w for w in warns)
    assert not any("model det" in w for w in warns)
    assert "declares no noise layer" in rep.markdown()


def test_a_declared_noise_layer_is_not_warned_about(net, data):
    x, y = data
    rep = evaluate({"noisy": Noisy(net)}, (x, y), {"attacks": [{"name": "fgsm", "eps": 0.05}], "eot": {"samples": 2},
                                                   "repeats": 2, "subset": {"first": 6}}, device="cpu")
    assert rep.extras.get("warnings", []) == []


# ------------------------------------------------------------------------------------ self-checks
@pytest.mark.parametrize("head, what", [(nn.Softmax(dim=1), "look like probabilities"),
                                        (nn.LogSoftmax(dim=1), "look like log-probabilities"),
                                        (nn.Identity(), None)])
def test_probability_outputs_are_warned_about(net, data, head, what, caplog):
    x, y = data
    with caplog.at_level("WARNING"):
        rep = evaluate({"m": Head(net, head)}, (x, y), {"attacks": [{"name": "fgsm", "eps": 0.05}],
                                                         "subset": {"first": 8}}, device="cpu")
    warns = [w for w in rep.extras.get("warnings", []) if "look like" in w]
    if what is None:
        assert warns == []
    else:
        assert len(warns) == 1 and warns[0].startswith("model m: its outputs " + what) and "fix: remove" in warns[0]
        assert what in caplog.text


def test_zero_gradients_are_warned_about(net, data):
    x, y = data
    suite = {"attacks": [{"name": "fgsm", "eps": 0.05}], "subset": {"first": 8}}
    rep = evaluate({"q": Quantized(net), "m": net}, (x, y), suite, device="cpu")
    (w,) = [w for w in rep.extras.get("warnings", []) if "gradient" in w and "exactly zero" in w]
    assert w.startswith("model q: the cross-entropy gradient w.r.t. the input is exactly zero on 8 of 8 samples")
    # only gradient attacks are misled by zero gradients: no check without them
    rep = evaluate({"q": Quantized(net)}, (x, y), {"attacks": [{"name": "square", "eps": 0.05, "n_queries": 5}],
                                                   "subset": {"first": 8}}, device="cpu")
    assert not any("exactly zero" in w for w in rep.extras.get("warnings", []))


def test_self_checks_leave_the_random_streams_alone(net, data, monkeypatch):
    """The probes draw noise too; they run on isolated streams, so the records do not depend on them."""
    from robustsuite.eval import checks

    x, y = data
    suite = {"attacks": [{"name": "pgd", "eps": 0.1, "steps": 2}], "repeats": 2, "subset": {"first": 8}}
    ref = evaluate({"n": Noisy(net)}, (x, y), suite, device="cpu")
    monkeypatch.setattr(checks, "zero_gradient_count", lambda *a, **k: 0)
    again = evaluate({"n": Noisy(net)}, (x, y), suite, device="cpu")
    assert again.records == ref.records


def test_an_item_kind_must_implement_the_protocol():
    """EvalItem is abstract: a kind that forgets ``run`` (or any other part of the protocol) cannot be
    built, instead of failing in the middle of an evaluation."""

    class Incomplete(EvalItem):
        kind: ClassVar[str] = "incomplete"

        def expand(self, suite, entry):
            return [self]

        key = columns = stage = property(lambda self: "x")

        def describe(self):
            return {}

    with pytest.raises(TypeError, match="abstract.*run"):
        Incomplete()
    with pytest.raises(TypeError, match="abstract"):
        EvalItem()
