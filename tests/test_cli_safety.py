"""The command line against unsafe situations: two runs on one folder, names that would leave --out,
write faults, a lying certifier, and the small argument checks (issue 14)."""
from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest
import torch
import yaml

from robustsuite.cli import build_parser, main
from robustsuite.files import LOCK_NAME
from robustsuite.models import build
from robustsuite.training.checkpoint import save_checkpoint

from test_files import hold_lock

ROOT = Path(__file__).resolve().parents[1]
SUITE = "certify: [{method: ibp, eps: 0.05}]\nattacks: [{name: pgd, eps: 0.05, steps: 2}]\nsubset: {first: 8}\n"


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    """An untrained tiny digits checkpoint (1x8x8, 10 classes: about 10% clean accuracy) and a suite."""
    d = tmp_path_factory.mktemp("safety")
    torch.manual_seed(0)
    m = build("cnn_small", (1, 8, 8), 10, width=0.5, linear=32)
    save_checkpoint(d / "cnn" / "best.pt", kind="natural", model_spec=m.spec, model_state=m.state_dict(),
                    config={"data": {"name": "digits"}})
    (d / "suite.yaml").write_text(SUITE)
    return {"ckpt": str(d / "cnn" / "best.pt"), "suite": str(d / "suite.yaml")}


def _error(capsys, rc: int, *needles: str) -> str:
    """The command exited 2 with one error paragraph holding every needle."""
    err = capsys.readouterr().err
    assert rc == 2, err
    assert "Traceback" not in err and err.count("error:") == 1, err
    for n in needles:
        assert n in err, err
    return err


@pytest.fixture
def lying_verifier(monkeypatch):
    """Every sample 'certified', whatever the bound says (a broken certifier)."""
    from robustsuite.certify import Verifier
    real = Verifier.verify

    def lie(self, x, y, threat):
        res = real(self, x, y, threat)
        res.certified = torch.ones_like(res.certified)
        return res

    monkeypatch.setattr(Verifier, "verify", lie)


# ------------------------------------------------------------------------------------ item 3
def test_verify_without_pgd_flags_a_certified_sample_that_is_misclassified(ckpt, capsys, tmp_path, lying_verifier):
    out = tmp_path / "v.json"
    rc = main(["verify", ckpt["ckpt"], "--eps", "0.05", "--method", "ibp", "--pgd-steps", "0", "--subset", "20",
               "--device", "cpu", "--out", str(out)])
    text = capsys.readouterr().out
    assert rc == 3 and "SOUNDNESS VIOLATIONS" in text
    row = yaml.safe_load(out.read_text())["rows"][0]
    assert row["certified_acc"] > row["clean_acc"] and row["violations"] == row["violations_clean"] > 0


def test_eval_without_attacks_flags_a_certified_sample_that_is_misclassified(ckpt, capsys, tmp_path, lying_verifier):
    rc = main(["eval", ckpt["ckpt"], "--suite", ckpt["suite"], "--set", "attacks=[]", "--out", str(tmp_path / "ev"),
               "--device", "cpu"])
    assert rc == 3 and "SOUNDNESS VIOLATION" in capsys.readouterr().err
    rep = yaml.safe_load((tmp_path / "ev" / "report.json").read_text())
    assert [(v["attack"], v["method"]) for v in rep["violations"]] == [("clean", "ibp")]


def test_budget_certification_flags_a_certified_sample_that_is_misclassified(lying_verifier):
    from robustsuite import data as rdata
    from robustsuite.budgets import BudgetGenerator, BudgetModel
    from robustsuite.budgets.certification import certify_budgets

    torch.manual_seed(0)
    x, y = rdata.as_tensors(rdata.subset(rdata.load("digits", "test"), n=16))
    bm = BudgetModel(build("cnn_small", (1, 8, 8), 10, width=0.5, linear=32), BudgetGenerator((1, 8, 8), width=4))
    out = certify_budgets(bm, x, y, eps=0.05, rho=2.0, methods=["ibp"], pgd_steps=0, device="cpu")
    row = out["rows"][0]
    assert row["certified_uniform"] > out["clean_acc"] and row["violations"] == row["violations_clean"] > 0


# ------------------------------------------------------------------------------------ item 6
def test_a_second_run_on_a_locked_folder_exits_2_naming_the_pid(ckpt, capsys, tmp_path):
    study = tmp_path / "study.yaml"
    study.write_text(yaml.safe_dump({"out": str(tmp_path / "busy"), "suite": ckpt["suite"],
                                     "models": {"a": {"config": str(ROOT / "configs/digits_pgd_at.yaml")}}}))
    holder = hold_lock(tmp_path / "busy")
    try:
        for argv in (["train", str(ROOT / "configs/digits_crown_ibp.yaml"), "--out", str(tmp_path / "busy")],
                     ["eval", ckpt["ckpt"], "--suite", ckpt["suite"], "--out", str(tmp_path / "busy")],
                     ["run", str(study)]):
            _error(capsys, main(argv), f"in use by process {holder.pid}", "fix: wait")
    finally:
        holder.kill()
        holder.wait()
    assert sorted(p.name for p in (tmp_path / "busy").iterdir()) == [LOCK_NAME]  # nothing was written


# ------------------------------------------------------------------------------------ item 7
def test_eval_refuses_to_replace_a_folder_that_is_not_a_report(ckpt, capsys, tmp_path):
    (tmp_path / "best.pt").write_bytes(b"precious")
    rc = main(["eval", ckpt["ckpt"], "--suite", ckpt["suite"], "--out", str(tmp_path), "--device", "cpu"])
    _error(capsys, rc, "holds files that are not part of a report (best.pt)")
    assert (tmp_path / "best.pt").read_bytes() == b"precious"


# ------------------------------------------------------------------------------------ item 8
def test_names_cannot_escape_the_output_folder(ckpt, capsys, tmp_path):
    work = tmp_path / "a" / "b"
    rc = main(["eval", ckpt["ckpt"], "--suite", ckpt["suite"], "--out", str(work / "out"), "--names", "q/../../x",
               "--device", "cpu"])
    _error(capsys, rc, "--names: name 'q/../../x' is not allowed")
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == []  # nothing written anywhere
    rc = main(["train", str(ROOT / "configs/digits_crown_ibp.yaml"), "--set", "name=../../x"])
    _error(capsys, rc, "name: name '../../x' is not allowed")


# ------------------------------------------------------------------------------------ item 9
def test_out_that_is_a_file_is_a_clear_error(ckpt, capsys, tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    rc = main(["train", str(ROOT / "configs/digits_crown_ibp.yaml"), "--out", str(f)])
    _error(capsys, rc, f"cannot create the folder '{f}': file exists", "fix:")
    rc = main(["eval", ckpt["ckpt"], "--suite", ckpt["suite"], "--out", str(f / "sub")])
    _error(capsys, rc, "not a directory", "fix:")


@pytest.mark.parametrize("code,cause", [(errno.ENOSPC, "no space left on device"),
                                        (errno.EACCES, "permission denied")])
def test_a_failing_disk_is_a_clear_error_and_the_previous_report_stays(ckpt, capsys, tmp_path, monkeypatch, code,
                                                                       cause):
    out = tmp_path / "ev"
    argv = ["eval", ckpt["ckpt"], "--suite", ckpt["suite"], "--out", str(out), "--device", "cpu"]
    assert main(argv) == 0
    before = (out / "report.json").read_bytes()
    capsys.readouterr()
    real = os.replace

    def full(src, dst, *a, **k):
        if str(dst).endswith("report.json"):
            raise OSError(code, os.strerror(code))
        return real(src, dst, *a, **k)

    monkeypatch.setattr(os, "replace", full)
    _error(capsys, main(argv), cause, "report.json", "fix:")
    monkeypatch.undo()
    assert (out / "report.json").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ev"]  # no partial folder beside it


# ------------------------------------------------------------------------------------ item 10
@pytest.mark.parametrize("argv,needle", [
    (["--eps", "5"], "argument --eps: an L-inf radius must be in (0, 1]"),
    (["--eps", "0.1,0"], "argument --eps: an L-inf radius must be in (0, 1]"),
    (["--eps", "0.1", "--subset", "0"], "argument --subset: must be >= 1"),
])
def test_verify_refuses_radii_above_1_and_an_empty_subset(ckpt, capsys, argv, needle):
    with pytest.raises(SystemExit) as e:
        main(["verify", ckpt["ckpt"], *argv])
    assert e.value.code == 2 and needle in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["attack", ckpt["ckpt"], "--eps", "0.1", "--subset", "0"])


@pytest.mark.parametrize("cmd", [["train", "c.yaml"], ["eval", "c.pt", "--suite", "s", "--out", "o"],
                                 ["compare", "r"], ["run", "s.yaml"]])
def test_the_global_quiet_flag_is_not_overridden_by_the_subcommand(cmd):
    p = build_parser()
    assert p.parse_args(["--quiet", *cmd]).quiet is True
    assert p.parse_args([*cmd, "--quiet"]).quiet is True
    assert p.parse_args(cmd).quiet is False


def test_a_boolean_where_a_number_belongs_is_refused(capsys, tmp_path):
    rc = main(["train", str(ROOT / "configs/digits_crown_ibp.yaml"), "--set", "train.epochs=true",
               "--out", str(tmp_path / "o")])
    _error(capsys, rc, "train.epochs: expected a number, got the boolean True")
    assert not (tmp_path / "o").exists()


def test_any_os_error_reaching_the_command_line_is_one_paragraph(capsys, monkeypatch):
    import robustsuite.cli.attack as cli_attack

    def denied(args):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), "/data/x.npz")

    monkeypatch.setattr(cli_attack, "cmd_attack", denied)
    _error(capsys, main(["attack", "c.pt", "--eps", "0.1"]), "'/data/x.npz': permission denied", "fix:")
