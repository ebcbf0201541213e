"""The walk-through of ``docs/extending.md``, run: a toy defined here is registered, built or loaded by name,
trained from a config through the command line, saved and loaded through a checkpoint, and listed by the CLI.

Each toy is registered by a fixture and unregistered when its test ends, so no other test sees it.
"""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from torch import nn

from robustsuite import data, models
from robustsuite.cli import build_parser, main
from robustsuite.errors import ConfigError, UnknownNameError
from robustsuite.training import load_checkpoint
from robustsuite.training.checkpoint import model_from_checkpoint

ROOT = Path(__file__).resolve().parents[1]

# A tiny PGD-AT run: the quickest trainer that runs an attack, one epoch on 40 digits.
TRAIN = {"method": "pgd_at", "epochs": 1, "batch_size": 20, "attack": {"eps": 0.1, "steps": 1},
         "val_attack_steps": 1, "optim": {"name": "sgd", "lr": 0.05}}


def _write_config(path: Path, model: dict, data_section: dict) -> Path:
    path.write_text(yaml.safe_dump({"name": "toy", "seed": 0, "device": "cpu", "data": data_section,
                                    "model": model, "train": TRAIN}))
    return path


def _train_help(capsys) -> str:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "--help"])
    return capsys.readouterr().out


# ================================================================================ adding a model
@pytest.fixture
def toy_model():
    """``docs/extending.md``, "Adding a model": the class and its one decorator."""

    @models.register_model("toy_net", certifiable=True, summary="toy: Normalize -> Flatten -> Linear(hidden) -> "
                                                                   "ReLU -> Linear(K)")
    class ToyNet(nn.Sequential):
        """Normalize -> Flatten -> Linear(C*H*W, hidden) -> ReLU -> Linear(hidden, K); (B, C, H, W) -> (B, K)."""

        def __init__(self, in_shape, num_classes, hidden: int = 16, mean=None, std=None):
            c, h, w = in_shape
            super().__init__()
            self.normalize = models.Normalize(0.0 if mean is None else mean, 1.0 if std is None else std, c)
            self.flatten = nn.Flatten()
            self.fc1 = nn.Linear(c * h * w, hidden)
            self.relu = nn.ReLU()
            self.fc2 = nn.Linear(hidden, num_classes)

    try:
        yield ToyNet
    finally:
        models.unregister_model("toy_net")
    assert "toy_net" not in models.available()


class TestToyModel:
    def test_registered_built_by_name_and_rebuilt_from_its_spec(self, toy_model):
        assert "toy_net" in models.available()
        entry = models.info("toy_net")
        assert entry.factory is toy_model and entry.certifiable and entry.defaults() == \
            {"hidden": 16, "mean": None, "std": None}
        model = models.build("toy_net", (1, 8, 8), 10, hidden=4, mean=0.3, std=0.4)
        assert isinstance(model, toy_model) and model(torch.rand(3, 1, 8, 8)).shape == (3, 10)
        assert model.spec == {"name": "toy_net", "in_shape": [1, 8, 8], "num_classes": 10,
                              "options": {"hidden": 4, "mean": [0.3], "std": [0.4]}}
        twin = models.build_from_spec(model.spec)
        assert isinstance(twin, toy_model) and twin.fc1.out_features == 4
        # certifiable=True is the registrant's claim (the verifier checks the traced graph of whatever it
        # bounds); the instance check trusts only the zoo's own containers, whose forward it knows
        assert models.is_certifiable("toy_net") and models.unsupported_layers(model) == ["<model> (ToyNet)"]
        with pytest.raises(ConfigError, match="no option.*'depth'.*allowed: hidden, mean, std"):
            models.build("toy_net", (1, 8, 8), 10, depth=3)

    def test_trained_from_a_config_by_the_cli_and_loaded_from_its_checkpoint(self, toy_model, tmp_path, capsys):
        cfg = _write_config(tmp_path / "toy.yaml", {"name": "toy_net", "options": {"hidden": 8}},
                            {"name": "digits", "train_subset": 40, "val_fraction": 0.25})
        assert main(["train", str(cfg), "--out", str(tmp_path / "run"), "--quiet"]) == 0
        assert "trained toy: 1 epochs" in capsys.readouterr().out
        ckpt = load_checkpoint(tmp_path / "run" / "best.pt")
        assert ckpt["model_spec"]["name"] == "toy_net" and ckpt["model_spec"]["options"]["hidden"] == 8
        model = model_from_checkpoint(ckpt)
        assert isinstance(model, toy_model) and not model.training
        for key, value in model.state_dict().items():
            assert torch.equal(value, ckpt["model_state"][key]), key
        # the digits' statistics went into the model's Normalize layer (the config gave none)
        assert model.spec["options"]["mean"] == list(data.info("digits").mean)

    def test_listed_by_the_cli_and_in_the_unknown_name_error(self, toy_model, tmp_path, capsys):
        assert "toy_net" in _train_help(capsys).split("model.name:")[1].split("data.name:")[0]
        cfg = _write_config(tmp_path / "bad.yaml", {"name": "toy_nett"}, {"name": "digits", "train_subset": 40})
        assert main(["train", str(cfg), "--out", str(tmp_path / "run"), "--quiet"]) == 2
        err = capsys.readouterr().err
        assert "model.name: unknown model" in err and "'toy_nett'" in err  # refused at load, before the run starts
        assert "toy_net" in err.split("choose one of:")[1]
        assert not (tmp_path / "run").exists()

    def test_a_checkpoint_of_an_unregistered_model_is_a_clear_error(self, toy_model, tmp_path):
        from robustsuite.training.checkpoint import save_checkpoint

        model = models.build("toy_net", (1, 8, 8), 10)
        path = save_checkpoint(tmp_path / "toy.pt", model_spec=model.spec, model_state=model.state_dict())
        models.unregister_model("toy_net")
        try:
            with pytest.raises(UnknownNameError, match="model: unknown value 'toy_net'; choose one of: cnn7"):
                model_from_checkpoint(path)
        finally:  # the fixture unregisters it again
            models.register_model("toy_net", certifiable=True, summary="again")(toy_model)


class TestModelRegistration:
    """What ``register_model`` refuses, each with the names that explain it."""

    def test_a_name_taken_by_another_class_is_an_error_naming_both(self):
        class Other(nn.Module):
            def __init__(self, in_shape, num_classes, mean=None, std=None):
                super().__init__()

        with pytest.raises(ValueError, match=r"'cnn7' is already registered to robustsuite\.models\.cnn\.CNN7; "
                                             r"cannot register .*Other under the same name"):
            models.register_model("cnn7", certifiable=False, summary="clash")(Other)
        assert models.info("cnn7").factory is models.CNN7

    def test_the_same_class_registered_again_replaces_its_entry(self):
        before = models.info("mlp")
        models.register_model("mlp", certifiable=before.certifiable, summary=before.summary)(models.MLP)
        assert models.info("mlp") == before

    @pytest.mark.parametrize("signature, needle", [
        ("(self, shape, classes, mean=None, std=None)", "first parameters must be \\(in_shape, num_classes\\)"),
        ("(self, in_shape, num_classes, **options)", "\\*\\*kwargs"),
        ("(self, in_shape, num_classes, hidden, mean=None, std=None)", "option\\(s\\) hidden need a default"),
        ("(self, in_shape, num_classes, hidden=4)", "must take the options mean and std"),
    ])
    def test_a_factory_whose_options_cannot_be_recorded_is_refused(self, signature, needle):
        namespace: dict = {}
        exec(f"class Bad:\n    def __init__{signature}:\n        pass\n", namespace)
        with pytest.raises(ValueError, match=f"register_model\\('bad'\\): .*Bad: .*{needle}"):
            models.register_model("bad", certifiable=False, summary="bad")(namespace["Bad"])
        assert "bad" not in models.available()

    @pytest.mark.parametrize("kwargs", [{"name": "Bad Name"}, {"certifiable": "yes"}, {"summary": ""}])
    def test_bad_arguments_are_refused(self, kwargs):
        args = {"name": "bad", "certifiable": False, "summary": "s", **kwargs}
        with pytest.raises(ValueError, match="register_model"):
            models.register_model(args.pop("name"), **args)

    def test_a_model_without_its_normalize_layer_fails_at_build_naming_it(self):
        @models.register_model("no_norm", certifiable=False, summary="no normalize")
        def no_norm(in_shape, num_classes, mean=None, std=None):
            return nn.Sequential(nn.Flatten(), nn.LazyLinear(num_classes))

        try:
            with pytest.raises(TypeError, match=r"model 'no_norm' \(.*no_norm \(line \d+\)\) has no Normalize layer"):
                models.build("no_norm", (1, 4, 4), 3)
        finally:
            models.unregister_model("no_norm")


# ============================================================================= adding a data set
def _toy_blobs(split: str, num_classes: int, side: int):
    """Class k: an image of value (k + 1) / (K + 1) plus small noise; 20 train / 10 test images, fixed seed."""
    g = torch.Generator().manual_seed(0 if split == "train" else 1)
    n = 20 if split == "train" else 10
    labels = torch.arange(n) % num_classes
    level = (labels.float() + 1) / (num_classes + 1)
    images = (level.view(n, 1, 1, 1) + 0.05 * torch.randn(n, 1, side, side, generator=g)).clamp(0, 1)
    return data.ImageTensorDataset(images, labels, name="toy_blobs", split=split)


@pytest.fixture
def toy_dataset():
    """``docs/extending.md``, "Adding a data set": one register_dataset call beside the loader."""
    from robustsuite.data.registry import positive_int

    entry = data.register_dataset(
        "toy_blobs", options={"side": positive_int}, num_classes=3, mean=(0.5,), std=(0.25,),
        shape=lambda opts: (1, opts["side"] or 6, opts["side"] or 6),
        build=lambda split, root, download, opts: _toy_blobs(split, 3, opts["side"] or 6))
    try:
        yield entry
    finally:
        data.unregister_dataset("toy_blobs")
    assert "toy_blobs" not in data.available()


class TestToyDataset:
    def test_registered_loaded_by_name_with_checked_options(self, toy_dataset):
        assert data.available()[0] == "digits" and data.available()[-1] == "toy_blobs"
        test = data.load("toy_blobs", "test", side=4)
        assert test.info == data.info("toy_blobs", side=4) == data.DatasetInfo("toy_blobs", (1, 4, 4), 3, (0.5,),
                                                                               (0.25,))
        x, y = data.as_tensors(test)
        assert x.shape == (10, 1, 4, 4) and y.tolist() == [0, 1, 2, 0, 1, 2, 0, 1, 2, 0]
        with pytest.raises(ConfigError, match="toy_blobs: option 'side' must be an integer > 0, got 0"):
            data.load("toy_blobs", "train", side=0)
        with pytest.raises(ConfigError, match="toy_blobs: unknown option 'size'; allowed options: side"):
            data.info("toy_blobs", size=4)

    def test_trained_on_from_a_config_and_listed_by_the_cli(self, toy_dataset, tmp_path, capsys):
        assert "toy_blobs" in _train_help(capsys).split("data.name:")[1]
        with pytest.raises(SystemExit):
            build_parser().parse_args(["verify", "--help"])
        assert "toy_blobs" in " ".join(capsys.readouterr().out.split())
        cfg = _write_config(tmp_path / "toy.yaml", {"name": "mlp", "options": {"hidden": [8]}},
                            {"name": "toy_blobs", "options": {"side": 4}, "val_fraction": 0.25})
        assert main(["train", str(cfg), "--out", str(tmp_path / "run"), "--quiet"]) == 0
        spec = load_checkpoint(tmp_path / "run" / "best.pt")["model_spec"]
        assert spec["in_shape"] == [1, 4, 4] and spec["num_classes"] == 3
        assert spec["options"]["mean"] == [0.5] and spec["options"]["std"] == [0.25]


class TestDatasetRegistration:
    def test_a_name_taken_by_another_loader_is_an_error_naming_both(self):
        def build(split, root, download, opts):
            raise AssertionError("never called")

        with pytest.raises(ValueError, match=r"'digits' is already registered to robustsuite\.data\.digits\.<lambda> \(line \d+\); "
                                             r"cannot register .*build \(line \d+\) under the same name"):
            data.register_dataset("digits", num_classes=10, mean=(0.5,), std=(0.5,), shape=(1, 8, 8), build=build)
        assert data.info("digits").mean == (0.3052,)

    @pytest.mark.parametrize("kwargs, needle", [
        ({"name": "Toy"}, "lower-case"),
        ({"options": {"side": 3}}, "options must map option names to checks"),
        ({"num_classes": 1}, "num_classes must be an integer >= 2"),
        ({"mean": (0.5, 0.5)}, "one value per channel each, got 2 and 1"),
        ({"std": "0.5"}, "std must be a tuple of numbers"),
        ({"describe": lambda opts: (2, (0.5,), (0.5,))}, "either num_classes, mean and std, or describe"),
        ({"build": None}, "build must be callable"),
    ])
    def test_bad_registrations_are_refused(self, kwargs, needle):
        args = {"name": "toy", "num_classes": 2, "mean": (0.5,), "std": (0.5,), "shape": (1, 2, 2),
                "build": lambda split, root, download, opts: None, **kwargs}
        with pytest.raises(ValueError, match=needle):
            data.register_dataset(args.pop("name"), **args)
        assert "toy" not in data.available()

    def test_unregistering_an_unknown_name_lists_the_names(self):
        with pytest.raises(UnknownNameError, match="data set: unknown value 'nope'; choose one of: cifar10"):
            data.unregister_dataset("nope")
        with pytest.raises(UnknownNameError, match="model: unknown value 'nope'; choose one of: cnn7"):
            models.unregister_model("nope")


# ======================================================================== the registries' own shape
@pytest.mark.parametrize("registry, helpers", [
    ("models/registry.py", {"_checks", "normalize"}),
    ("data/registry.py", set()),
])
def test_a_registry_holds_the_mechanics_and_imports_no_entry(registry, helpers):
    """Entries register where they are defined: the registry module imports none of the modules that
    define them (only the helpers named here), so a new model or data set never edits it."""
    import ast

    tree = ast.parse((ROOT / "robustsuite" / registry).read_text(encoding="utf-8"))
    siblings = {alias.name if node.module is None else node.module
                for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.level == 1
                for alias in node.names}
    assert siblings <= helpers, f"{registry} imports {sorted(siblings - helpers)}"


# ============================================================================= the page runs as written
def _docs_file_block(header: str) -> str:
    """The python block of docs/extending.md that starts with the comment ``# <header>``, its relative
    imports dropped (the test provides those names; the rest runs as written)."""
    import re

    text = (ROOT / "docs" / "extending.md").read_text(encoding="utf-8")
    block = next(b for b in re.findall(r"```python\n(.*?)```", text, flags=re.S) if b.startswith(f"# {header}\n"))
    return "\n".join(line for line in block.splitlines() if not line.startswith("from ."))


def test_the_pages_example_model_file_runs_as_written():
    from robustsuite.models.normalize import Normalize

    namespace = {"Normalize": Normalize, "register_model": models.register_model}
    exec(compile(_docs_file_block("robustsuite/models/toy.py"), "docs/extending.md", "exec"), namespace)
    try:
        model = models.build("toy_net", (1, 8, 8), 10, hidden=32)
        assert type(model) is namespace["ToyNet"] and model(torch.rand(2, 1, 8, 8)).shape == (2, 10)
        assert models.build_from_spec(model.spec).spec == model.spec
    finally:
        models.unregister_model("toy_net")


def test_the_pages_example_data_set_file_runs_as_written():
    from robustsuite.data.registry import positive_int

    namespace = {"positive_int": positive_int, "register_dataset": data.register_dataset,
                 "ImageTensorDataset": data.ImageTensorDataset}
    exec(compile(_docs_file_block("robustsuite/data/toy_blobs.py"), "docs/extending.md", "exec"), namespace)
    try:
        train = data.load("toy_blobs", "train", side=4)
        assert train.info == data.info("toy_blobs", side=4) and train.info.shape == (1, 4, 4)
        x, y = data.as_tensors(train)
        assert x.shape == (20, 1, 4, 4) and 0 <= x.min() and x.max() <= 1 and set(y.tolist()) == {0, 1, 2}
    finally:
        data.unregister_dataset("toy_blobs")
