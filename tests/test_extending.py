"""docs/extending.md, executed: a toy attack defined here, inside the
test, registered once, and then found by everything else: the registry, suite validation, EOT, the
evaluator, the gradient-masking check and the command line. If adding an attack ever needs a second
place again, these tests fail.

The toy attack is the walk-through's: one steepest-ascent step of ``scale * eps`` (FGSM with a
scale). It is registered inside a fixture and unregistered afterwards, so no other test sees it.
"""
from __future__ import annotations

import pytest
import torch
from torch import nn

from robustsuite.attacks import (ATTACKS, EOT, FGSM, GradientAttack, attack_names, make_attack, register_attack,
                                 robust_accuracy)
from robustsuite.attacks.base import Perturbation, check_float
from robustsuite.attacks.geometry import geometry_for
from robustsuite.errors import ConfigError
from robustsuite.threats import L1Ball, LinfBall

try:
    from test_attacks_support import NoisyInput as Noisy  # noqa: F401
except ImportError:  # pragma: no cover
    from tests.test_attacks_support import NoisyInput as Noisy  # noqa: F401

N = 8  # samples: the tests check wiring, not strength


# ------------------------------------------------------------------------------- the toy attack
@pytest.fixture
def toy_attack():
    """The toy attack of docs/extending.md, registered as ``toy`` for one test."""
    saved = dict(ATTACKS)

    @register_attack("toy")
    class ToyAttack(GradientAttack):
        r"""One steepest-ascent step of ``scale * eps`` from ``x`` (FGSM with a scale).

        Arguments:
            model (nn.Module): model returning logits; its mode is left as it is.
            threat (LinfBall | L2Ball): the perturbation set.
            scale (float): step length in units of eps, > 0. (Default: 1.0)
            loss, targeted, eot, max_batch: as every gradient attack.
        """

        threats = ("linf", "l2")

        def __init__(self, model, threat, *, scale: float = 1.0, loss: str = "ce", targeted: bool = False,
                     eot: int = 1, max_batch: int | None = None):
            super().__init__(model, threat, loss=loss, targeted=targeted, eot=eot, max_batch=max_batch, seed=None)
            self.scale = check_float("scale", scale, minimum=0.0, strict=True)

        def _perturb(self, x, y, generator):
            geo = geometry_for(self.threat, x)
            _, grad, _ = self._loss_and_grad(x, y, check_labels=True)
            # the base class projects onto the set and [0, 1] and scores success and distance
            return Perturbation(geo.step(x, grad, self.scale * self.threat.eps), queries=self.eot, steps=1)

    yield ToyAttack
    ATTACKS.clear()
    ATTACKS.update(saved)


@pytest.fixture(scope="module")
def model_and_data():
    from robustsuite import data as rdata
    from robustsuite.models import build

    torch.manual_seed(0)
    model = build("cnn_small", (1, 8, 8), 10, width=0.5, linear=32).eval()
    x, y = rdata.as_tensors(rdata.load("digits", "test"))
    return model, x[:N], y[:N]


def test_the_toy_attack_is_registered_once_and_read_everywhere(toy_attack, model_and_data):
    model, x, y = model_and_data
    # the registry: name, what it declares, what is derived from the class
    assert ATTACKS["toy"] is toy_attack and toy_attack.name == "toy" and "toy" in attack_names()
    assert toy_attack.uses_gradient and toy_attack.eot_kind() == "gradient" and "toy" in attack_names(eot=True)
    assert toy_attack.default_settings()["scale"] == 1.0
    # by name, as the CLI and the suite build it; settings are checked by the constructor
    atk = make_attack("Toy", model, LinfBall(0.1), scale=1.0)
    assert isinstance(atk, toy_attack)
    with pytest.raises(Exception, match="scale"):
        make_attack("toy", model, LinfBall(0.1), scale=-1.0)
    # the base class's guarantees: the output lies in the set; with scale 1 the toy is FGSM
    res = atk.run(x, y)
    assert bool(LinfBall(0.1).contains(x, res.x_adv).all())
    assert torch.equal(res.x_adv, FGSM(model, LinfBall(0.1)).run(x, y).x_adv)
    # EOT takes it (it is a gradient attack); robust accuracy runs it in batches
    EOT(atk, n=2).run(x, y)
    out = robust_accuracy(model, x, y, atk, batch_size=3)
    assert out["n"] == N and out["robust_accuracy"] <= out["clean_accuracy"]
    # the masking check counts it as a gradient attack: a gradient-free attack beating it is flagged
    from robustsuite.eval.metrics import attack_strength_warnings
    (warning,) = attack_strength_warnings({"m": {"robust|toy|linf@0.1": {"mean": 0.6},
                                                 "robust|square|linf@0.1": {"mean": 0.2}}})
    assert "square" in warning and "toy" in warning


def test_the_toy_attack_in_a_suite_and_through_the_evaluator(toy_attack, model_and_data):
    from robustsuite.eval import evaluate, suite_from_dict

    model, x, y = model_and_data
    suite = {"attacks": [{"name": "toy", "norm": "linf", "eps": [0.1], "scale": 0.5}], "eot": {"samples": 2}}
    assert suite_from_dict(suite).attacks[0].settings == {"scale": 0.5}
    # suite validation reads the class: its settings (checked at load, by key path) and its threat sets
    with pytest.raises(ConfigError, match=r"attacks\[0\]\.scale"):
        suite_from_dict({"attacks": [{"name": "toy", "eps": [0.1], "scale": -1}]})
    with pytest.raises(ConfigError, match="does not support norm 'l1'"):
        suite_from_dict({"attacks": [{"name": "toy", "norm": "l1", "eps": [0.1]}]})
    with pytest.raises(ConfigError, match="unknown setting"):
        suite_from_dict({"attacks": [{"name": "toy", "eps": [0.1], "steps": 3}]})
    # the evaluator runs it, and again with EOT on the stochastic model only
    rep = evaluate({"noisy": Noisy(model), "det": model}, (x, y), suite, device="cpu")
    assert "robust|toy|linf@0.1" in rep.metrics["noisy"] and "robust|toy+eot|linf@0.1" in rep.metrics["noisy"]
    assert rep.metrics["det"]["robust|toy|linf@0.1"]["mean"] <= rep.metrics["det"]["clean_accuracy"]["mean"]
    assert rep.metrics["det"].get("robust|toy+eot|linf@0.1", {}).get("mean") is None


def test_the_toy_attack_from_the_command_line(toy_attack, model_and_data, tmp_path, capsys):
    from robustsuite.cli import build_parser, main
    from robustsuite.training.checkpoint import save_checkpoint

    model, _, _ = model_and_data
    ckpt = tmp_path / "cnn" / "best.pt"
    save_checkpoint(ckpt, kind="natural", model_spec=model.spec, model_state=model.state_dict(),
                    config={"data": {"name": "digits"}})
    argv = ["attack", str(ckpt), "--attack", "toy", "--norm", "linf", "--eps", "0.1", "--option", "scale=0.5",
            "--subset", str(N), "--device", "cpu"]
    assert build_parser().parse_args(argv).attack == "toy"
    assert main(argv) == 0
    assert "toy (linf, eps=0.1)" in capsys.readouterr().out
    # an unsupported threat set is one clear error (exit 2) naming the sets the toy supports
    assert main(argv[:4] + ["--norm", "l1"] + argv[6:]) == 2
    err = capsys.readouterr().err
    assert "ToyAttack: threat L1Ball (l1) is not supported; choose one of: LinfBall, L2Ball" in err, err
    assert "Traceback" not in err
    # and --help lists it, among the attacks that take EOT
    with pytest.raises(SystemExit):
        build_parser().parse_args(["attack", "--help"])
    helptext = " ".join(capsys.readouterr().out.split())
    assert "toy" in helptext.split("EOT for a stochastic model")[0] and "toy" in helptext.split("eot=N")[1]


def test_the_walk_through_shows_the_toy_attack_of_these_tests(toy_attack):
    """docs/extending.md's toy attack is this file's, line for line (so the page cannot rot)."""
    import inspect
    import re
    from pathlib import Path

    page = (Path(__file__).resolve().parents[1] / "docs" / "extending.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", page, flags=re.S)
    source = inspect.cleandoc(inspect.getsource(toy_attack)) + "\n"
    assert any(source in b for b in blocks), "update the toy attack in docs/extending.md (or here)"


def test_the_toy_attack_leaves_no_trace(model_and_data):
    """Run after the others (file order): the fixture unregistered the toy."""
    assert "toy" not in ATTACKS and "toy" not in attack_names(by_name=False)
    assert make_attack("pgd", model_and_data[0], L1Ball(1.0), steps=1).name == "pgd"
