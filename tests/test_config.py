"""Configs: validation errors name the key path and the allowed values; overrides; round trip."""
from __future__ import annotations

import pytest
import yaml

from robustsuite.settings import apply_overrides, parse_override
from robustsuite.training.config import dump_yaml, load_config, validate
from robustsuite.errors import ConfigError

BASE = {"train": {"method": "crown-ibp", "eps": 0.1}}


def _err(raw) -> str:
    with pytest.raises(ConfigError) as e:
        validate(raw)
    return str(e.value)


def test_unknown_key_is_an_error_naming_the_path_and_allowed_keys():
    msg = _err({"train": {"method": "crown-ibp", "eps": 0.1, "schedule": {"ramp": 3}}})
    assert "train.schedule.ramp: unknown key" in msg and "ramp_epochs" in msg
    msg = _err({**BASE, "dataa": {}})
    assert "dataa: unknown key" in msg and "data" in msg


def test_wrong_type_and_out_of_range_values_name_the_field():
    assert "train.epochs" in _err({"train": {**BASE["train"], "epochs": "many"}})
    assert "train.eps" in _err({"train": {"method": "ibp", "eps": -0.1}})
    assert "data.val_fraction" in _err({**BASE, "data": {"val_fraction": 1.5}})
    assert "device" in _err({**BASE, "device": "tpu"})


def test_unknown_model_and_data_set_names_are_refused_at_load(tmp_path, capsys):
    """A typo in model.name or data.name is a config error naming the field and the registered names,
    before anything runs: the CLI exits 2 and takes no output folder."""
    msg = _err({**BASE, "model": {"name": "cnn_smal"}})
    assert "model.name: unknown model; choose one of: " in msg and "cnn_small" in msg and "'cnn_smal'" in msg
    msg = _err({**BASE, "data": {"name": "mnistt"}})
    assert "data.name: unknown data set; choose one of: digits, " in msg and "'mnistt'" in msg
    assert validate({**BASE, "model": {"name": "mlp"}, "data": {"name": "mnist"}}).model.name == "mlp"
    from robustsuite.cli import main
    cfg = tmp_path / "typo.yaml"
    cfg.write_text(yaml.safe_dump({**BASE, "name": "typo", "model": {"name": "cnn_smal"}}))
    assert main(["train", str(cfg), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "model.name: unknown model" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_booleans_are_not_numbers_but_ints_are_floats():
    """Strict numbers: ``true`` is refused where a number belongs (lax pydantic read it as 1), in
    any config class (stochastic trainers' too) and inside lists; an int still fills a float field."""
    for section, key in [("train", "epochs"), ("train", "eps"), ("data", "train_subset"), ("verify", "eps")]:
        raw = {**BASE, section: {**BASE.get(section, {}), key: True if key != "eps" or section == "train" else [True]}}
        assert f"{section}.{key}: expected a number, got the boolean" in _err(raw)
    assert "train.optim.milestones: expected a number" in _err(apply_overrides(BASE, ["train.optim.milestones=[true]"]))
    assert "train.epochs: expected a number" in _err({"train": {"method": "pgd_at", "epochs": True}})
    cfg = validate(apply_overrides(BASE, ["train.eps=1", "train.optim.lr=1", "data.download=true"]))
    assert cfg.train.eps == 1.0 and isinstance(cfg.train.optim.lr, float) and cfg.data.download is True


def test_linf_radii_are_capped_at_1_and_names_stay_inside_folders():
    assert "train.eps: an L-inf radius must be in (0, 1]" in _err({"train": {"method": "ibp", "eps": 5}})
    assert "verify.eps" in _err({**BASE, "verify": {"eps": [0.1, 2]}})
    assert "name: name '../x' is not allowed" in _err({**BASE, "name": "../x"})


def test_missing_and_unknown_train_method():
    assert "train: required section" in _err({"data": {}})
    msg = _err({"train": {"method": "magic"}})
    assert "train.method" in msg and "crown-ibp" in msg
    assert "train.eps: required key is missing" in _err({"train": {"method": "ibp"}})


def test_overrides_set_nested_keys_with_yaml_values():
    raw = apply_overrides(BASE, ["train.epochs=5", "train.optim.milestones=[2, 4]", "model.options.width=2"])
    cfg = validate(raw)
    assert cfg.train.epochs == 5 and cfg.train.optim.milestones == [2, 4]
    assert cfg.model.options == {"width": 2}
    assert BASE["train"] == {"method": "crown-ibp", "eps": 0.1}  # the input is not mutated
    with pytest.raises(ConfigError, match="key.path=value"):
        parse_override("train.epochs")


def test_resolved_config_round_trips_through_yaml(tmp_path):
    cfg = validate(apply_overrides(BASE, ["train.eps_test=0.05"]))
    path = tmp_path / "c.yaml"
    path.write_text(dump_yaml(cfg))
    again = load_config(path)
    assert again.resolved() == cfg.resolved() and again.train.eps_test == 0.05
    assert yaml.safe_load(path.read_text())["train"]["schedule"]["kind"] == "smoothed"


def test_eps_test_defaults_to_the_training_eps():
    assert validate(BASE).train.eps_test == 0.1


def test_bad_files_give_clear_errors(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)


def test_shipped_configs_validate():
    from pathlib import Path
    from robustsuite.study import load_study
    for path in sorted(Path(__file__).resolve().parents[1].glob("configs/*.yaml")):
        if "models" in yaml.safe_load(path.read_text()):  # a study of several run configs
            load_study(path)
        else:
            load_config(path)
