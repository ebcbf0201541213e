"""Output files and folders (robustsuite.files): umask, write faults, stale temporary files, the
folder lock, folder swaps and the one name validator."""
from __future__ import annotations

import errno
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from robustsuite import files
from robustsuite.errors import ConfigError, OutputError, RobustSuiteError

ROOT = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------------ atomic files
def test_written_files_follow_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        files.atomic_write_text(tmp_path / "a.txt", "x")
        files.atomic_torch_save(tmp_path / "b.pt", {"w": torch.zeros(2)})
    finally:
        os.umask(old)
    for name in ("a.txt", "b.pt"):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o644, name  # mkstemp gave 0600


@pytest.mark.parametrize("code,cause", [(errno.ENOSPC, "no space left on device"),
                                        (errno.EACCES, "permission denied"),
                                        (errno.EROFS, "read-only file system")])
def test_a_failed_write_is_a_clear_error_and_the_previous_file_stays(tmp_path, monkeypatch, code, cause):
    path = tmp_path / "last.pt"
    files.atomic_torch_save(path, {"w": torch.arange(3)})

    class Full:  # a file object whose writes fail half-way, like a disk that fills up
        def __init__(self, f):
            self.f, self.n = f, 0

        def write(self, b):
            self.n += 1
            if self.n > 1:
                raise OSError(code, os.strerror(code))
            return self.f.write(b)

        def __getattr__(self, k):
            return getattr(self.f, k)

    real_save = torch.save
    monkeypatch.setattr(torch, "save", lambda obj, f: real_save(obj, Full(f)))
    with pytest.raises(OutputError) as err:
        files.atomic_torch_save(path, {"w": torch.arange(10 ** 5)})
    msg = str(err.value)
    assert str(path) in msg and cause in msg and "fix:" in msg and "Errno" not in msg
    assert isinstance(err.value, RobustSuiteError) and isinstance(err.value, OSError)
    assert err.value.errno == code
    monkeypatch.undo()
    assert torch.load(path, weights_only=True)["w"].tolist() == [0, 1, 2]  # still loadable
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]  # no temporary file left


def test_writing_below_a_file_names_the_path_and_the_fix(tmp_path):
    (tmp_path / "f").write_text("a file")
    with pytest.raises(OutputError, match=r"cannot create the folder .*f'.*fix: a file of that name is in the way"):
        files.atomic_write_json(tmp_path / "f" / "x.json", {})
    with pytest.raises(OutputError, match="not a directory"):
        files.ensure_dir(tmp_path / "f" / "sub")


def test_stale_temporary_files_of_dead_writers_are_removed(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()
    stale = tmp_path / f".best.pt.{dead}.0123456789abcdef.tmp"
    live = tmp_path / f".best.pt.{os.getpid()}.0123456789abcdef.tmp"
    other = tmp_path / ".best.pt.abc.tmp"  # not our pattern: never touched
    for p in (stale, live, other):
        p.write_text("partial")
    with files.output_lock(tmp_path):
        pass
    assert not stale.exists() and live.exists() and other.exists()


# ------------------------------------------------------------------------------------ lock
_HOLD = textwrap.dedent("""
    import sys, time
    from robustsuite.files import output_lock
    with output_lock(sys.argv[1]):
        print("locked", flush=True)
        time.sleep(60)
""")


def hold_lock(folder: Path) -> subprocess.Popen:
    """A second process that holds the lock of ``folder`` until killed."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    p = subprocess.Popen([sys.executable, "-c", _HOLD, str(folder)], stdout=subprocess.PIPE, text=True, env=env)
    assert p.stdout.readline().strip() == "locked"
    return p


def test_a_locked_folder_refuses_a_second_process_and_names_its_pid(tmp_path):
    holder = hold_lock(tmp_path / "out")
    try:
        with pytest.raises(OutputError, match=rf"in use by process {holder.pid}.*fix: wait"):
            with files.output_lock(tmp_path / "out"):
                pass
    finally:
        holder.kill()
        holder.wait()
    with files.output_lock(tmp_path / "out"):  # released when its holder died
        with files.output_lock(tmp_path / "out"):  # and re-entrant within a process
            pass


# ------------------------------------------------------------------------------------ folders
def test_replace_folder_swaps_whole_and_recovers_after_a_kill(tmp_path):
    out = tmp_path / "report"
    files.replace_folder(out, lambda d: (d / "a").write_text("1"))
    files.replace_folder(out, lambda d: (d / "b").write_text("2"))
    assert [p.name for p in out.iterdir()] == ["b"]  # nothing of the old version survives

    def crash(d):
        (d / "c").write_text("3")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        files.replace_folder(out, crash)
    assert [p.name for p in out.iterdir()] == ["b"] and sorted(p.name for p in tmp_path.iterdir()) == ["report"]
    # killed between the two renames (a dead writer): the old version comes back at the next start
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()
    os.rename(out, tmp_path / f".report.old-{dead}-0123456789abcdef")
    (tmp_path / f".report.new-{dead}-0123456789abcdef").mkdir()
    files.recover_folder(out)
    assert [p.name for p in out.iterdir()] == ["b"] and sorted(p.name for p in tmp_path.iterdir()) == ["report"]


# ------------------------------------------------------------------------------------ names
@pytest.mark.parametrize("name", ["crown_ibp", "pgd-at", "cnn.v2", "model 1", "a+b", "Modèle", "x" * 100])
def test_names_real_configs_use_are_valid(name):
    assert files.safe_name(name, "f") == name


@pytest.mark.parametrize("name", ["", ".", "..", "q/../../x", "a/b", "a\\b", ".hidden", "a|b", "a,b", "a\0b",
                                  "x" * 101, "trailing.", " lead", 3])
def test_names_that_could_leave_the_folder_are_refused(name):
    with pytest.raises(ConfigError, match="field: name"):
        files.safe_name(name, "field")
