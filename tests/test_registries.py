"""One registry per kind, filled where the thing is defined: trainers (method -> config class +
trainer class), noise layer kinds, and the model builders that rebuild extended specs from checkpoints.

A toy trainer and a toy noise layer defined inside the tests register like the built-in ones and then
run through the same code paths (config validation, ``train``, the command line, checkpoint loading),
so adding one really is: its class, its config, the decorator.
"""
from __future__ import annotations

import typing
from pathlib import Path
from typing import Any, Literal

import pytest
import torch
import torch.nn.functional as F
import yaml
from pydantic import Field
from torch import Tensor

import robustsuite.stochastic as S
from robustsuite import models
from robustsuite.cli import main
from robustsuite.errors import ConfigError, UnknownNameError
from robustsuite.stochastic import noise as noise_mod
from robustsuite.training import load_checkpoint, model_from_checkpoint
from robustsuite.training import registry
from robustsuite.training.config import TrainBase, validate
from robustsuite.training.loop import Trainer

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def clean_registries():
    """Whatever a test registers is gone afterwards (the tests share a process)."""
    trainers, kinds, defaults = dict(registry._TRAINERS), dict(noise_mod._KINDS), dict(noise_mod.KINDS)
    yield
    for table, before in ((registry._TRAINERS, trainers), (noise_mod._KINDS, kinds), (noise_mod.KINDS, defaults)):
        table.clear()
        table.update(before)


def _toy_trainer():
    """A new training method, defined as docs/extending.md ("Adding a trainer") shows, that very block
    executed as written (so the page cannot drift): a config class, a trainer, the decorator."""
    import re

    text = (ROOT / "docs" / "extending.md").read_text(encoding="utf-8")
    block = next(b for b in re.findall(r"```python\n(.*?)```", text, flags=re.S) if b.startswith("# toy_trainer.py\n"))
    namespace: dict[str, Any] = {"__name__": "toy_trainer"}
    exec(compile(block, "docs/extending.md", "exec", dont_inherit=True), namespace)
    return namespace["ToyConfig"], namespace["ToyTrainer"]


def _toy_run(tmp_path: Path, **train: Any) -> dict:
    return {"name": "toy", "seed": 0, "device": "cpu",
            "data": {"name": "digits", "train_subset": 64, "val_fraction": 0.25},
            "model": {"name": "mlp", "options": {"hidden": [16]}},
            "train": {"method": "toy_ce", "epochs": 1, "batch_size": 16, **train}}


def test_a_new_trainer_registers_once_and_validates_trains_and_runs_from_the_cli(clean_registries, tmp_path, capsys):
    ToyConfig, ToyTrainer = _toy_trainer()
    assert registry.trainer_class("toy_ce") is ToyTrainer and registry.train_config_class("toy_ce") is ToyConfig
    assert ToyTrainer.kind == "toy_ce"  # the checkpoint's kind defaults to the method
    assert "toy_ce" in registry.methods()

    cfg = validate(_toy_run(tmp_path, scale=2.0))
    assert isinstance(cfg.train, ToyConfig) and cfg.train.scale == 2.0
    with pytest.raises(ConfigError, match=r"train\.scale"):  # the toy's own field rules apply
        validate(_toy_run(tmp_path, scale=-1))
    with pytest.raises(ConfigError, match=r"train\.nope: unknown key"):
        validate(_toy_run(tmp_path, nope=1))
    with pytest.raises(ConfigError, match=r"choose one of: .*toy_ce"):  # the error lists the registry
        validate({**_toy_run(tmp_path), "train": {"method": "toy_cee"}})

    path = tmp_path / "toy.yaml"
    path.write_text(yaml.safe_dump(_toy_run(tmp_path)))
    out = tmp_path / "run"
    assert main(["train", str(path), "--out", str(out), "--set", "train.scale=3", "--quiet"]) == 0
    assert "trained toy: 1 epochs" in capsys.readouterr().out
    ckpt = load_checkpoint(out / "best.pt")
    assert ckpt["kind"] == "toy_ce" and ckpt["config"]["train"]["scale"] == 3.0
    assert model_from_checkpoint(ckpt)(torch.rand(2, 1, 8, 8)).shape == (2, 10)


def test_a_method_is_registered_to_one_trainer(clean_registries):
    before = registry.entries()

    class Other(Trainer):
        def train_step(self, x, y, step):
            return {}

    with pytest.raises(ValueError, match="'pgd_at' is already registered to PGDATTrainer"):
        registry.register_trainer("pgd_at", config=S.PGDATConfig)(Other)
    with pytest.raises(ValueError, match="one or more method names"):
        registry.register_trainer(config=S.PGDATConfig)
    assert registry.entries() == before
    with pytest.raises(UnknownNameError, match=r"train\.method: unknown value 'nope'; choose one of: anis2, budgets"):
        registry.trainer_class("nope")


def test_every_shipped_method_is_in_the_one_table():
    """The built-in trainers registered themselves (import robustsuite imports their parts); the
    stochastic exports are read from the table; every shipped config names a registered method."""
    assert registry.methods() == sorted(["crown-ibp", "ibp", "budgets", "gaussian", "pgd_at", "pni", "learn2perturb",
                                         "trades", "anis2", "mng_ac"])
    for method, entry in registry.entries().items():
        assert method in typing.get_args(entry.config.model_fields["method"].annotation), method
    assert set(S.METHODS) == {"pgd_at", "pni", "learn2perturb", "trades", "anis2", "mng_ac"}
    assert S.TRAINER_CLASSES["trades"] is S.TradesTrainer and S.TRAIN_CONFIGS["mng_ac"] is S.MNGACConfig
    for f in sorted((ROOT / "configs").glob("*.yaml")):
        raw = yaml.safe_load(f.read_text())
        if isinstance(raw.get("train"), dict):
            assert raw["train"]["method"] in registry.methods(), f.name


# --------------------------------------------------------------------------------- noise kinds
def test_a_new_noise_kind_is_inserted_and_rebuilt_from_a_checkpoint(clean_registries, tmp_path):
    from robustsuite.training.checkpoint import save_checkpoint

    @noise_mod.register_noise("toy_scale", sites="noise_sites")
    class ToyScale(noise_mod.NoiseLayer):
        """``x * (1 + sigma N(0, 1))`` with a learnable scalar sigma."""

        def __init__(self, sigma: float = 0.1, shared: bool = False) -> None:
            super().__init__(shared)
            self.sigma = torch.nn.Parameter(torch.tensor(float(sigma)))

        def forward(self, x: Tensor) -> Tensor:
            return x * (1 + self.sigma * torch.randn_like(x)) if self.noise_on else x

        def noise_scale(self) -> Tensor:
            return self.sigma.detach().abs()

    assert S.KINDS["toy_scale"] == {"sigma": 0.1, "shared": False}  # options read from __init__
    model = S.build_stochastic("toy_scale", models.build("resnet_small", (1, 8, 8), 10).spec, sigma=0.3)
    layers = S.noise_layers(model)
    assert layers and all(isinstance(m, ToyScale) and float(m.sigma.detach()) == pytest.approx(0.3) for _, m in layers)
    assert model.spec["stochastic"] == {"kind": "toy_scale", "sigma": 0.3, "shared": False}
    with pytest.raises(ConfigError, match="'toy_scale' has no option"):
        S.add_noise(models.build("resnet_small", (1, 8, 8), 10), "toy_scale", alpha=1)

    # a checkpoint rebuilds it through the zoo's build_from_spec (the stochastic part registered the builder)
    save_checkpoint(tmp_path / "m.pt", kind="toy", model_spec=model.spec, model_state=model.state_dict(), config={})
    twin = model_from_checkpoint(tmp_path / "m.pt")
    x = torch.rand(3, 1, 8, 8)
    with S.noise_disabled(model), S.noise_disabled(twin):
        assert torch.equal(model.eval()(x), twin(x))
    assert [type(m) for _, m in S.noise_layers(twin)] == [ToyScale] * len(layers)


def test_noise_kinds_and_spec_builders_refuse_bad_input():
    with pytest.raises(UnknownNameError, match=r"stochastic\.kind: unknown value 'nois'; choose one of: anis2, "
                                               r"learn2perturb, pni"):
        S.add_noise(models.build("resnet_small", (1, 8, 8), 10), "nois")
    spec = {**models.build("resnet_small", (1, 8, 8), 10).spec, "stochastic": ["pni"]}
    with pytest.raises(ConfigError, match="spec.stochastic: expected a mapping"):
        models.build_from_spec(spec)
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['other'\]"):  # no builder for it: refused
        models.build_from_spec({**models.build("mlp", (1, 8, 8), 10).spec, "other": {}})
    with pytest.raises(ValueError, match="a key of every zoo spec"):
        models.register_spec_builder("options", lambda spec: None)
    with pytest.raises(ValueError, match="already rebuilt by"):
        models.register_spec_builder("stochastic", lambda spec: None)


def test_every_module_that_registers_is_imported_by_import_robustsuite():
    """A registration runs when its module is imported: a trainer, noise layer or spec builder in a
    module that ``import robustsuite`` does not reach would be missing from its table (no error, just
    'unknown train.method'). Every such module must be imported by its part's ``__init__``."""
    import ast
    import subprocess
    import sys

    registering = []
    for path in sorted((ROOT / "robustsuite").rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        names = {n.func.id if isinstance(n.func, ast.Name) else getattr(n.func, "attr", "")
                 for n in ast.walk(tree) if isinstance(n, ast.Call)}
        if names & {"register_trainer", "register_noise", "register_spec_builder"} and path.stem != "registry":
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            registering.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    assert len(registering) >= 8, registering  # the trainers' modules, noise.py, builders.py
    code = f"import sys, robustsuite; print([m for m in {registering!r} if m not in sys.modules])"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout
