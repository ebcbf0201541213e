"""AutoAttack: the cascade (each attack sees only what the earlier ones left), broken_by, the versions'
randomness checks, bad settings, the suite item (worst column = the cascade, by| column, per_attack
columns, the EOT run = rand, resume) and the CLI; the cross-check against the reference ensemble
(``pyautoattack`` 0.2.0) is in test_attacks_autoattack_ref.py."""
from __future__ import annotations

import json
import warnings

import pytest
import torch
import torch.nn as nn

from robustsuite.attacks import ATTACKS, Attack, AttackResult, AutoAttack, make_attack
from robustsuite.attacks.autoattack import CLEAN_MISCLASSIFIED, NOT_BROKEN
from robustsuite.errors import ConfigError, InputError, InputTypeError
from robustsuite.eval import evaluate
from robustsuite.eval.suite import suite_from_dict
from robustsuite.threats import Box, L1Ball, L2Ball, LinfBall

try:
    from test_attacks_support import NoisyInput, held_out, one_thread, trained_cnn  # noqa: F401
except ImportError:
    from tests.test_attacks_support import NoisyInput, held_out, one_thread, trained_cnn  # noqa: F401

QUICK = {"steps": 3, "n_queries": 10, "n_target_classes": 1}


class Rule(Attack):
    """A stand-in component: 'breaks' the samples whose label satisfies ``rule`` (returning x itself)
    and records every batch it is run on."""

    def __init__(self, model, threat, rule, name):
        super().__init__(model, threat)
        self.rule, self.label, self.seen = rule, name, []

    def _perturb(self, x, y, generator):  # pragma: no cover - run is overridden
        raise AssertionError

    def run(self, x, y):
        self.seen.append(y.clone())
        ok = self.rule(y)
        return AttackResult(x_adv=x.clone(), success=ok, distance=torch.zeros(len(y)),
                            queries=torch.full((len(y),), 7), steps=1, pred=torch.where(ok, (y + 1) % 10, y))


def _rules(model, threat):
    return [Rule(model, threat, lambda y: y % 2 == 0, "even"), Rule(model, threat, lambda y: y % 3 == 0, "three"),
            Rule(model, threat, lambda y: torch.ones_like(y, dtype=torch.bool), "all")]


def test_each_attack_runs_only_on_the_samples_still_robust_and_broken_by_names_the_first():
    model = trained_cnn()
    x, y = held_out(60)
    with torch.no_grad():
        clean = model(x).argmax(1) == y
    assert not clean.all()  # the test needs misclassified samples
    a, b, c = _rules(model, LinfBall(0.1))
    res = AutoAttack(model, LinfBall(0.1), version="custom", attacks=[a, b, c]).run(x, y)
    # the cascade: clean-misclassified never attacked, each attack only on what the earlier ones left
    assert torch.equal(a.seen[0], y[clean])
    assert torch.equal(b.seen[0], y[clean & (y % 2 != 0)])
    assert torch.equal(c.seen[0], y[clean & (y % 2 != 0) & (y % 3 != 0)])
    expect = torch.full_like(y, 2)
    expect[clean & (y % 3 == 0)] = 1
    expect[clean & (y % 2 == 0)] = 0
    expect[~clean] = CLEAN_MISCLASSIFIED
    assert torch.equal(res.extras["broken_by"], expect)
    assert res.extras["names"] == ["rule", "rule-1", "rule-2"]  # unregistered classes: by class name
    assert res.success.all()
    assert res.extras["component_attacked"] == [int(clean.sum()), len(b.seen[0]), len(c.seen[0])]
    assert res.extras["component_queries"] == [7 * len(a.seen[0]), 7 * len(b.seen[0]), 7 * len(c.seen[0])]
    assert res.extras["records"]["by"] == [
        {CLEAN_MISCLASSIFIED: "clean", 0: "rule", 1: "rule-1", 2: "rule-2"}[i] for i in expect.tolist()]
    # queries: the probe's two passes, the clean pass, and each attack's where it ran
    assert torch.equal(res.queries, 3 + 7 * ((expect >= 0).long() + (expect >= 1).long() + (expect >= 2).long()))


def test_a_sample_no_attack_breaks_stays_clean_and_robust_and_later_attacks_are_skipped():
    model = trained_cnn()
    x, y = held_out(40)
    none = Rule(model, LinfBall(0.1), lambda y: torch.zeros_like(y, dtype=torch.bool), "none")
    every = Rule(model, LinfBall(0.1), lambda y: torch.ones_like(y, dtype=torch.bool), "every")
    never = Rule(model, LinfBall(0.1), lambda y: torch.zeros_like(y, dtype=torch.bool), "never")
    res = AutoAttack(model, LinfBall(0.1), version="custom", attacks=[none, every, never]).run(x, y)
    assert never.seen == []  # nothing left to attack
    assert res.extras["component_attacked"][2] == 0
    res = AutoAttack(model, LinfBall(0.1), version="custom", attacks=[none]).run(x, y)
    with torch.no_grad():
        clean = model(x).argmax(1) == y
    assert torch.equal(res.extras["broken_by"], torch.where(clean, NOT_BROKEN, CLEAN_MISCLASSIFIED))
    assert torch.equal(res.x_adv, x) and torch.equal(res.success, ~clean)


def test_per_attack_gives_each_components_own_success_on_every_clean_correct_sample():
    model = trained_cnn()
    x, y = held_out(60)
    with torch.no_grad():
        clean = model(x).argmax(1) == y
    a, b, c = _rules(model, LinfBall(0.1))
    res = AutoAttack(model, LinfBall(0.1), version="custom", attacks=[a, b, c], per_attack=True).run(x, y)
    own = res.extras["per_attack_success"]
    assert torch.equal(own["rule"], clean & (y % 2 == 0))
    assert torch.equal(own["rule-1"], clean & (y % 3 == 0))
    assert torch.equal(own["rule-2"], clean)
    # the extra runs cover exactly the clean-correct samples the cascade did not give the component
    assert torch.equal(torch.cat(b.seen).sort().values, y[clean].sort().values)


def test_standard_runs_the_references_components_in_order_and_breaks_more_than_apgd_ce_alone():
    model = trained_cnn()
    x, y = held_out(48)
    aa = AutoAttack(model, LinfBall(0.1), steps=10, n_queries=50, n_target_classes=3)
    assert aa.names == ["apgd-ce", "apgd-t", "fab-t", "square"]
    comps = aa.components()
    assert [(type(c).__name__, getattr(c, "loss", None), c.targeted) for c in comps] == [
        ("APGD", "ce", False), ("APGD", "dlr", True), ("FAB", None, True), ("Square", "margin", False)]
    assert comps[1].n_target_classes == comps[2].n_target_classes == 3 and comps[3].n_queries == 50
    defaults = AutoAttack(model, LinfBall(0.1)).components()
    assert defaults[0].steps == defaults[1].steps == defaults[2].steps == 100
    assert defaults[0].restarts == defaults[1].restarts == defaults[2].restarts == 1
    assert defaults[1].n_target_classes == defaults[2].n_target_classes == 9 and defaults[3].n_queries == 5000
    assert defaults[0].rho == 0.75 and defaults[3].p_init == 0.8
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a deterministic model: no randomness warning
        res = aa.run(x, y)
    alone = comps[0].run(x, y)
    with torch.no_grad():
        clean = model(x).argmax(1) == y
    assert bool((alone.success & clean).le(res.success).all())  # the cascade keeps APGD-CE's successes
    assert bool(((res.x_adv - x).abs().amax((1, 2, 3)) <= 0.1 + 1e-6).all())
    assert torch.equal(aa(x, y), res.x_adv)  # __call__: the same points
    with torch.no_grad():  # success is the top-1 label at the returned point (deterministic model)
        assert torch.equal(model(res.x_adv).argmax(1) != y, res.success)


def test_rand_refuses_a_deterministic_model_and_runs_apgd_with_eot_on_a_random_one():
    model = trained_cnn()
    x, y = held_out(8)
    with pytest.raises(InputError, match="deterministic.*version='standard'"):
        AutoAttack(model, LinfBall(0.1), version="rand", steps=2).run(x, y)
    noisy = NoisyInput(model, 0.1)
    aa = AutoAttack(noisy, LinfBall(0.1), version="rand", steps=2)
    assert aa.names == ["apgd-ce", "apgd-dlr"]
    assert [(c.loss, c.eot, c.targeted) for c in aa.components()] == [("ce", 20, False), ("dlr", 20, False)]
    assert [c.eot for c in AutoAttack(noisy, LinfBall(0.1), version="rand", eot=3).components()] == [3, 3]
    res = aa.run(x, y)
    assert set(res.extras["broken_by"].tolist()) <= {-2, -1, 0, 1}


def test_standard_warns_on_a_random_model():
    noisy = NoisyInput(trained_cnn(), 0.1)
    x, y = held_out(8)
    with pytest.warns(UserWarning, match="version='rand'"):
        AutoAttack(noisy, LinfBall(0.1), **QUICK).run(x, y)


@pytest.mark.parametrize("settings,error,needle", [
    ({"version": "plus"}, InputError, "version: unknown value 'plus'"),
    ({"version": "standard", "attacks": ["apgd-ce"]}, InputError, "use version='custom'"),
    ({"version": "custom"}, InputError, "needs a list of attacks"),
    ({"version": "custom", "attacks": []}, InputError, "the list is empty"),
    ({"version": "custom", "attacks": "apgd-ce"}, InputError, "needs a list"),
    ({"version": "custom", "attacks": ["apgd-ce", "pgd"]}, InputError, "attacks[1]: unknown attack 'pgd'"),
    ({"version": "custom", "attacks": ["square", "square"]}, InputError, "listed twice"),
    ({"version": "custom", "attacks": [3]}, InputTypeError, "attacks[0]: expected a name"),
    ({"targeted": True}, InputError, "untargeted"),
    ({"steps": 0}, InputError, "steps"),
    ({"n_queries": 1.5}, InputTypeError, "n_queries"),
    ({"eot": 0}, InputError, "eot"),
    ({"per_attack": "yes"}, InputTypeError, "per_attack"),
    ({"seed": -1}, InputError, "seed"),
])
def test_bad_settings_are_refused_with_the_setting_named(settings, error, needle):
    with pytest.raises(error) as e:
        make_attack("autoattack", trained_cnn(), LinfBall(0.1), **settings)
    assert needle in str(e.value)


def test_unsupported_threats_and_foreign_components_are_refused():
    model = trained_cnn()
    for threat in (L1Ball(2.0), Box(torch.zeros(1, 1, 8, 8), torch.ones(1, 1, 8, 8))):
        with pytest.raises(InputError, match="choose one of: LinfBall, L2Ball"):
            AutoAttack(model, threat)
    other = trained_cnn(seed=1)
    with pytest.raises(InputError, match="another model"):
        AutoAttack(model, LinfBall(0.1), version="custom", attacks=[make_attack("pgd", other, LinfBall(0.1))])
    with pytest.raises(InputError, match="targeted on the given labels"):
        AutoAttack(model, LinfBall(0.1), version="custom",
                   attacks=[make_attack("pgd", model, LinfBall(0.1), targeted=True)])


def test_registry_declares_autoattack():
    cls = ATTACKS["autoattack"]
    assert cls is AutoAttack and cls.threats == ("linf", "l2") and cls.uses_gradient
    assert cls.eot_kind() == "gradient"  # the suite's EOT run exists: version rand
    assert cls.eot_settings(10, {}) == {"version": "rand", "eot": 10}
    assert cls.eot_settings(20, {"version": "standard"}) == {"version": "rand", "eot": 20}
    assert cls.eot_settings(10, {"version": "custom"}) == {"version": "custom", "eot": 10}
    assert cls.record_names({}) == ["by"]
    assert cls.record_names({"per_attack": True, "version": "rand"}) == ["by", "atk/apgd-ce", "atk/apgd-dlr"]


# --- the suite ---------------------------------------------------------------------------------------

def _suite(**item):
    return {"attacks": [{"name": "autoattack", "norm": "linf", "eps": [0.1], **QUICK, **item}], "batch_size": 16}


def test_suite_item_worst_column_is_the_cascade_and_by_names_the_breaking_component():
    model = trained_cnn()
    x, y = held_out(40)
    rep = evaluate({"det": model}, (x, y), _suite(per_attack=True), device="cpu", quiet=True)
    direct = AutoAttack(model, LinfBall(0.1), per_attack=True, **QUICK)
    res = [direct.run(x[i:i + 16], y[i:i + 16]) for i in range(0, 40, 16)]  # the suite's batches
    success = torch.cat([r.success for r in res])
    with torch.no_grad():
        clean = model(x).argmax(1) == y
    robust = float((clean & ~success).float().mean())
    m = rep.metrics["det"]
    assert m["worst|linf@0.1"]["mean"] == pytest.approx(robust) == m["robust|autoattack|linf@0.1"]["mean"]
    assert rep.records["atk|autoattack|linf@0.1"] == success.tolist()
    by = [b for r in res for b in r.extras["records"]["by"]]
    assert rep.records["by|autoattack|linf@0.1"] == by
    assert set(by) <= {"apgd-ce", "apgd-t", "fab-t", "square", "robust", "clean"} and "apgd-ce" in by
    # per-component counts: the share each component broke first; they add up to the broken clean-correct ones
    shares = {k.rsplit("|", 1)[1]: v["mean"] for k, v in m.items() if k.startswith("broken|autoattack|linf@0.1|")}
    assert shares["apgd-ce"] == pytest.approx(by.count("apgd-ce") / 40)
    assert sum(shares.values()) == pytest.approx(m["clean_accuracy"]["mean"] - robust)
    # per_attack: each component's own column, an attack column like the others
    for comp in ("apgd-ce", "apgd-t", "fab-t", "square"):
        own = torch.cat([r.extras["per_attack_success"][comp] for r in res])
        assert rep.records[f"atk|autoattack/{comp}|linf@0.1"] == own.tolist()
        assert f"robust|autoattack/{comp}|linf@0.1" in m
    assert "AutoAttack: share of all samples each component broke first" in rep.markdown()


def test_suite_eot_run_is_rand_and_standard_on_a_random_model_warns_in_the_report():
    model = trained_cnn()
    x, y = held_out(12)
    suite = {**_suite(steps=2), "eot": {"samples": 2}, "repeats": 1}
    off = NoisyInput(model, 0.0)  # declares noise, but its outputs do not vary: rand does not apply
    rep = evaluate({"noisy": NoisyInput(model, 0.1), "off": off}, (x, y), suite, device="cpu", quiet=True)
    assert set(rep.records["by|autoattack+eot|linf@0.1"][:12]) <= {"apgd-ce", "apgd-dlr", "robust", "clean"}
    assert rep.records["by|autoattack+eot|linf@0.1"][12:] == [None] * 12
    assert "two forward passes" in rep.not_applicable["off"]["atk|autoattack+eot|linf@0.1"]
    # with rand running, standard applies to deterministic models only (a random one gets rand); a model
    # whose declared noise is off gets standard, with the warning
    assert "rand, is this item's EOT run" in rep.not_applicable["noisy"]["atk|autoattack|linf@0.1"]
    assert rep.records["by|autoattack|linf@0.1"][:12] == [None] * 12
    assert set(rep.records["by|autoattack|linf@0.1"][12:]) <= {"apgd-ce", "apgd-t", "fab-t", "square", "robust", "clean"}
    warned = [w for w in rep.extras["warnings"] if "AutoAttack 'standard' on a stochastic model" in w]
    assert [w.split(":")[0] for w in warned] == ["model off"]
    det = evaluate({"det": model}, (x, y), suite, device="cpu", quiet=True)
    assert not any("AutoAttack" in w for w in det.extras.get("warnings", []))
    assert det.records["by|autoattack|linf@0.1"][0] is not None


def test_without_an_eot_run_standard_runs_on_a_random_model_and_warns():
    model = trained_cnn()
    x, y = held_out(8)
    rep = evaluate({"noisy": NoisyInput(model, 0.1)}, (x, y), {**_suite(steps=2), "repeats": 1},
                   device="cpu", quiet=True)
    assert None not in rep.records["by|autoattack|linf@0.1"]
    assert any(w.startswith("model noisy: AutoAttack 'standard'") for w in rep.extras["warnings"])


def test_suite_checks_autoattack_settings_at_load_and_takes_custom_lists():
    s = suite_from_dict(_suite(version="custom", attacks=["apgd-ce", "square"]))
    item = s.items()[0]
    assert item.columns == ["atk|autoattack|linf@0.1", "dist|autoattack|linf@0.1", "by|autoattack|linf@0.1"]
    with pytest.raises(ConfigError, match=r"attacks\[0\].*needs a list of attacks"):
        suite_from_dict(_suite(version="custom"))
    with pytest.raises(ConfigError, match=r"attacks\[0\].version.*unknown value 'plus'"):
        suite_from_dict(_suite(version="plus"))
    with pytest.raises(ConfigError, match="does not support norm 'l1'"):
        suite_from_dict({"attacks": [{"name": "autoattack", "norm": "l1", "eps": [1.0]}]})


def test_resume_keeps_the_by_column_and_refuses_a_forged_label(tmp_path, monkeypatch):
    model = trained_cnn()
    x, y = held_out(20)
    store = tmp_path / "store"
    first = evaluate({"det": model}, (x, y), _suite(), device="cpu", quiet=True, resume_dir=store)
    calls = []
    real_run = AutoAttack.run
    monkeypatch.setattr(AutoAttack, "run", lambda self, *a: calls.append(1) or real_run(self, *a))
    again = evaluate({"det": model}, (x, y), _suite(), device="cpu", quiet=True, resume_dir=store)
    assert calls == [] and again.records == first.records  # reused, by| column included
    (f,) = [p for p in store.rglob("*.json") if "autoattack" in p.name]
    d = json.loads(f.read_text())
    d["columns"]["by|autoattack|linf@0.1"][0] = "__import__('os')"  # not a label the column holds
    f.write_text(json.dumps(d))
    third = evaluate({"det": model}, (x, y), _suite(), device="cpu", quiet=True, resume_dir=store)
    assert calls and third.records == first.records  # ignored and recomputed


def test_resume_reruns_an_eot_column_when_the_eot_settings_hook_changes(tmp_path, monkeypatch):
    model = trained_cnn()
    x, y = held_out(6)
    suite = {**_suite(steps=2), "eot": {"samples": 2}, "repeats": 1}
    store = tmp_path / "store"
    evaluate({"noisy": NoisyInput(model, 0.1)}, (x, y), suite, device="cpu", quiet=True, resume_dir=store)
    seen = []
    real_run = AutoAttack.run
    monkeypatch.setattr(AutoAttack, "run", lambda self, *a: seen.append(self.eot) or real_run(self, *a))
    evaluate({"noisy": NoisyInput(model, 0.1)}, (x, y), suite, device="cpu", quiet=True, resume_dir=store)
    assert seen == []  # unchanged: reused
    monkeypatch.setattr(AutoAttack, "eot_settings",
                        classmethod(lambda cls, samples, settings: {"version": "rand", "eot": 3}))
    evaluate({"noisy": NoisyInput(model, 0.1)}, (x, y), suite, device="cpu", quiet=True, resume_dir=store)
    assert seen and set(seen) == {3}  # the hook's new draws: recomputed, not the stale column


# --- what reaches the components, and the cascade's bookkeeping (pinned by mutation testing:
# --- docs/mutation-attacks.md) -------------------------------------------------------------------

def test_every_component_gets_the_references_settings_and_the_runs_seed_eot_and_max_batch():
    model = trained_cnn()
    aa = AutoAttack(model, L2Ball(0.5), version="custom", attacks=["APGD_CE", "apgd-dlr", "fab", "square", "apgd-t",
                                                                     "fab-t"],
                    steps=4, n_queries=11, n_target_classes=2, eot=3, max_batch=7, seed=5)
    assert aa.names == ["apgd-ce", "apgd-dlr", "fab", "square", "apgd-t", "fab-t"]  # names normalised
    ce, dlr, fab, square, apgd_t, fab_t = aa.components()
    for apgd, loss, targeted in ((ce, "ce", False), (dlr, "dlr", False), (apgd_t, "dlr", True)):
        assert type(apgd).__name__ == "APGD" and (apgd.loss, apgd.targeted) == (loss, targeted)
        assert (apgd.steps, apgd.restarts, apgd.rho, apgd.eot, apgd.max_batch, apgd.seed) == (4, 1, 0.75, 3, 7, 5)
        assert apgd.threat is aa.threat and apgd.model is model
    assert apgd_t.n_target_classes == 2
    assert type(fab).__name__ == type(fab_t).__name__ == "FAB"
    assert (fab.targeted, fab.steps, fab.restarts, fab.seed) == (False, 4, 5, 5)  # plus: untargeted, 5 restarts
    assert (fab_t.targeted, fab_t.steps, fab_t.restarts, fab_t.n_target_classes, fab_t.seed) == (True, 4, 1, 2, 5)
    assert (fab.alpha_max, fab.eta, fab.beta) == (fab_t.alpha_max, fab_t.eta, fab_t.beta) == (0.1, 1.05, 0.9)
    assert type(square).__name__ == "Square"
    assert (square.n_queries, square.p_init, square.loss, square.eot, square.max_batch, square.seed) == (
        11, 0.8, "margin", 3, 7, 5)
    # seed None: every component draws from the global stream
    assert {c.seed for c in AutoAttack(model, LinfBall(0.1), seed=None).components()} == {None}


def test_eot_draws_are_one_except_for_rand_and_an_explicit_count():
    model = trained_cnn()
    draws = lambda aa: [c.eot for c in aa.components() if hasattr(c, "eot")]  # noqa: E731  (FAB has no EOT)
    assert draws(AutoAttack(model, LinfBall(0.1))) == [1, 1, 1]
    assert draws(AutoAttack(model, LinfBall(0.1), version="custom", attacks=["apgd-dlr", "square"])) == [1, 1]
    assert draws(AutoAttack(model, LinfBall(0.1), version="rand")) == [20, 20]
    assert draws(AutoAttack(model, LinfBall(0.1), eot=2)) == [2, 2, 2]


def test_component_names_follow_the_version_and_the_custom_list():
    assert AutoAttack.component_names() == ["apgd-ce", "apgd-t", "fab-t", "square"]
    assert AutoAttack.component_names("RAND") == ["apgd-ce", "apgd-dlr"]
    assert AutoAttack.component_names("custom", ["Square", "APGD_T"]) == ["square", "apgd-t"]
    assert AutoAttack.record_names({"version": "custom", "attacks": ["fab", "apgd_ce"], "per_attack": True}) == [
        "by", "atk/fab", "atk/apgd-ce"]


def test_the_cascade_sums_steps_and_counts_nothing_for_components_it_skipped():
    model = trained_cnn()
    x, y = held_out(20)
    a, b, c = _rules(model, LinfBall(0.1))
    every = Rule(model, LinfBall(0.1), lambda y: torch.ones_like(y, dtype=torch.bool), "every")
    res = AutoAttack(model, LinfBall(0.1), version="custom", attacks=[a, b, every, c]).run(x, y)
    assert res.steps == 3  # one step per component that ran; the fourth had nothing left
    assert res.queries.dtype == torch.long
    assert res.extras["component_queries"][3] == 0 and res.extras["component_attacked"][3] == 0
    seconds = res.extras["component_seconds"]
    assert seconds[3] == 0.0 and all(0.0 <= s < 60.0 for s in seconds[:3])


def test_labels_outside_the_models_classes_are_refused_with_the_count():
    model = trained_cnn()
    x, y = held_out(4)
    y[1] = 10  # the CNN has 10 classes: 10 is one too many
    with pytest.raises(InputError, match=r"^y: class indices must be < the model's 10 classes, got max 10$"):
        AutoAttack(model, LinfBall(0.1), **QUICK).run(x, y)


def test_randomness_messages_name_the_version_to_use_and_rand_does_not_warn_on_a_random_model():
    model = trained_cnn()
    noisy = NoisyInput(model, 0.1)
    x, y = held_out(4)
    with pytest.raises(InputError) as e:
        AutoAttack(model, LinfBall(0.1), version="rand", steps=1).run(x, y)
    assert str(e.value) == ("version: 'rand' is for randomized models, but two forward passes on the same batch gave "
                            "the same outputs (the model is deterministic); fix: use version='standard'")
    with pytest.warns(UserWarning) as rec:
        AutoAttack(noisy, LinfBall(0.1), **QUICK).run(x, y)
    assert [str(w.message) for w in rec] == [
        "AutoAttack version 'standard' on a randomized model (two forward passes on the same batch differ): its "
        "attacks follow single draws of the randomness and may overestimate robustness; use version='rand' (APGD "
        "with EOT over 20 draws)"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        AutoAttack(noisy, LinfBall(0.1), version="rand", steps=1, eot=2).run(x, y)


@pytest.mark.parametrize("settings,error,message", [
    ({"targeted": True}, InputError, "targeted: AutoAttack is untargeted (APGD-T and FAB-T pick their own targets "
                                     "from the true labels); use targeted=False"),
    ({"version": "plus"}, InputError, "version: unknown value 'plus'; choose one of: standard, rand, custom"),
    ({"attacks": ["apgd-ce"]}, InputError, "attacks: the version 'standard' fixes its attacks (apgd-ce, apgd-t, "
                                           "fab-t, square); to choose them use version='custom'"),
    ({"version": "custom", "attacks": {"apgd-ce"}}, InputError, "attacks: version 'custom' needs a list of attacks, "
                                                                "names among apgd-ce, apgd-dlr, fab, square, apgd-t, "
                                                                "fab-t (or Attack instances); got {'apgd-ce'}"),
    ({"version": "custom", "attacks": 5}, InputError, "attacks: version 'custom' needs a list of attacks"),
    ({"version": "custom", "attacks": []}, InputError,
     "attacks: the list is empty; give at least one of apgd-ce, apgd-dlr, fab, square, apgd-t, fab-t"),
    ({"version": "custom", "attacks": ["pgd"]}, InputError,
     "attacks[0]: unknown attack 'pgd'; choose from: apgd-ce, apgd-dlr, fab, square, apgd-t, fab-t"),
    ({"version": "custom", "attacks": [3.0]}, InputTypeError,
     "attacks[0]: expected a name among apgd-ce, apgd-dlr, fab, square, apgd-t, fab-t or an Attack, got float"),
    ({"steps": 0}, InputError, "steps: must be an integer >= 1, got 0"),
    ({"n_queries": 0}, InputError, "n_queries: must be an integer >= 1, got 0"),
    ({"n_target_classes": 0}, InputError, "n_target_classes: must be an integer >= 1, got 0"),
    ({"eot": 0}, InputError, "eot: must be an integer >= 1, got 0"),
    ({"max_batch": 0}, InputError, "max_batch: must be an integer >= 1, got 0"),
    ({"per_attack": 1}, InputTypeError, "per_attack: expected a bool"),
])
def test_bad_settings_get_the_exact_message_naming_the_setting(settings, error, message):
    with pytest.raises(error) as e:
        AutoAttack(trained_cnn(), LinfBall(0.1), **settings)
    assert str(e.value).startswith(message)


def test_the_smallest_settings_are_accepted():
    aa = AutoAttack(trained_cnn(), LinfBall(0.1), steps=1, n_queries=1, n_target_classes=1, eot=1, max_batch=1)
    assert (aa.steps, aa.n_queries, aa.n_target_classes, aa.eot, aa.max_batch) == (1, 1, 1, 1, 1)


def test_refused_component_instances_are_named_by_class():
    model = trained_cnn()
    with pytest.raises(InputError, match=r"^attacks\[1\]: PGD is targeted on the given labels; the cascade needs "
                                         r"untargeted attacks \(or ones picking their own targets\)$"):
        AutoAttack(model, LinfBall(0.1), version="custom",
                   attacks=["square", make_attack("pgd", model, LinfBall(0.1), targeted=True)])
    with pytest.raises(InputError, match=r"^attacks\[0\]: PGD attacks another model; build it on the model "
                                         r"AutoAttack evaluates$"):
        AutoAttack(model, LinfBall(0.1), version="custom", attacks=[make_attack("pgd", trained_cnn(seed=1),
                                                                                LinfBall(0.1))])
