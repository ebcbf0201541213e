"""Output files and folders: atomic writes, one writer per folder, names that stay inside it.

* :func:`atomic_write_text` / :func:`atomic_write_json` / :func:`atomic_torch_save` /
  :func:`atomic_save_figure`: a crash never leaves a half-written file behind; the previous file
  stays intact until the new one is complete. Files follow the umask (like ``open``).
* :func:`output_lock`: an exclusive lock on an output folder, so two runs cannot write one folder.
* :func:`replace_folder`: a whole folder (a report) written aside and swapped in with renames.
* :func:`safe_name`: the one check of every user-given name that becomes part of a path.

Every ``OSError`` of our writers (disk full, no permission, a path component that is a file, a
read-only file system) becomes an :class:`~robustsuite.errors.OutputError` that names the path, the
cause and the fix.
"""
from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import secrets
import shutil
from pathlib import Path
from typing import Any, Callable, Iterator

import torch

from .errors import OutputError
from .runtime import is_distributed, is_main
# the name rules live with the settings (SafeName validates config fields with them); here they are
# part of the file API
from .settings import MAX_NAME, name_problem, safe_name

__all__ = ["atomic_write_text", "atomic_write_json", "atomic_torch_save", "atomic_save_figure", "output_error",
           "ensure_dir", "output_lock", "clean_stale_temps", "replace_folder", "safe_name", "name_problem",
           "MAX_NAME", "LOCK_NAME", "writes_outputs", "recover_folder"]

#: the lock file every locked output folder holds (see :func:`output_lock`)
LOCK_NAME = ".robustsuite.lock"

# Temporary files of our writers: ``.<name>.<pid>.<16 hex>.tmp``. The PID tells a live writer's file
# (kept) from a killed one's (removed at the next start, see clean_stale_temps).
_TMP_FILE = re.compile(r"^\..+\.(\d+)\.[0-9a-f]{16}\.tmp$")


# ---------------------------------------------------------------------------------------- errors
_FIXES = {
    errno.ENOSPC: "free some space on that disk or write to another folder (--out)",
    errno.EDQUOT: "free some space within your quota or write to another folder (--out)",
    errno.EACCES: "make the folder writable for this user or write to another folder (--out)",
    errno.EPERM: "make the folder writable for this user or write to another folder (--out)",
    errno.EROFS: "the file system is read-only; write to another folder (--out)",
    errno.ENOTDIR: "a part of the path is a file, not a folder; choose another output path (--out)",
    errno.EEXIST: "a file of that name is in the way; remove it or choose another output path (--out)",
    errno.EISDIR: "a folder of that name is in the way; remove it or choose another output path (--out)",
    errno.ENAMETOOLONG: "choose a shorter output path",
}


def output_error(err: OSError, path: str | os.PathLike, action: str = "write", fix: str | None = None) -> OutputError:
    """``err`` (an OSError while writing ``path``) as an :class:`OutputError`: path, cause, fix
    (``fix`` given, or the one for the error code)."""
    if isinstance(err, OutputError):
        return err
    code = err.errno
    cause = os.strerror(code).lower() if code else (str(err) or type(err).__name__)
    fix = fix or _FIXES.get(code, "check the path and its permissions, or write to another folder (--out)")
    msg = f"cannot {action} {str(path)!r}: {cause}; fix: {fix}"
    out = OutputError(code or errno.EIO, msg)
    out.filename = os.fspath(path)
    return out


@contextlib.contextmanager
def _as_output_error(path: str | os.PathLike, action: str = "write") -> Iterator[None]:
    try:
        yield
    except OutputError:
        raise
    except OSError as e:
        raise output_error(e, path, action) from None


def ensure_dir(path: str | os.PathLike) -> Path:
    """Create the folder ``path`` (and its parents); an :class:`OutputError` when that is impossible
    (a file in the way, no permission, ...)."""
    path = Path(path)
    with _as_output_error(path, "create the folder"):
        if path.exists() and not path.is_dir():
            raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), os.fspath(path))
        path.mkdir(parents=True, exist_ok=True)
    return path


# ---------------------------------------------------------------------------------------- atomic files
def _tmp_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(8)}.tmp")


def _atomic(path: str | os.PathLike, write: Callable[[str], None]) -> Path:
    """Write through a temporary file in the same folder, then ``os.replace`` (atomic on POSIX)."""
    path = Path(path)
    ensure_dir(path.parent)
    tmp = _tmp_name(path)
    try:
        with _as_output_error(path):
            # O_EXCL with mode 0o666: a fresh file that follows the umask (mkstemp would force 0600)
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
            try:
                write(os.fspath(tmp))
            except RuntimeError as e:
                # torch.save reports a failed write as RuntimeError; the OSError is its cause (if any)
                cause = e.__cause__ or e.__context__
                if isinstance(cause, OSError):
                    raise cause from None
                raise
            os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return path


def _write_text(tmp: str, text: str) -> None:
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` to ``path`` via a temporary file in the same folder and ``os.replace``."""
    return _atomic(path, lambda tmp: _write_text(tmp, text))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    """JSON (indented, keys in insertion order) written atomically."""
    return atomic_write_text(path, json.dumps(obj, indent=2, default=_json_default) + "\n")


def _torch_save(obj: Any, tmp: str) -> None:
    # through a Python file object, so a failing write surfaces as the OSError (ENOSPC, ...)
    with open(tmp, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())


def atomic_torch_save(path: str | os.PathLike, obj: Any) -> Path:
    """``torch.save`` written atomically."""
    return _atomic(path, lambda tmp: _torch_save(obj, tmp))


def atomic_save_figure(path: str | os.PathLike, fig) -> Path:
    """A matplotlib figure saved atomically (format from the suffix of ``path``)."""
    fmt = Path(path).suffix.lstrip(".") or "png"
    return _atomic(path, lambda tmp: fig.savefig(tmp, format=fmt, dpi=120, bbox_inches="tight"))


def _json_default(o: Any):
    if isinstance(o, torch.Tensor):
        return o.tolist()
    if hasattr(o, "tolist"):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serializable: {type(o).__name__}")


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    except OverflowError:
        return False
    return True


def clean_stale_temps(folder: str | os.PathLike) -> list[Path]:
    """Remove the temporary files that killed writers left in ``folder``: only names of our exact
    pattern (``.<name>.<pid>.<16 hex>.tmp``) whose writer's PID is gone. Returns what was removed."""
    removed = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    for entry in entries:
        m = _TMP_FILE.match(entry.name)
        if m and not _pid_alive(int(m.group(1))) and entry.is_file(follow_symlinks=False):
            with contextlib.suppress(OSError):
                os.unlink(entry.path)
                removed.append(Path(entry.path))
    return removed


# ---------------------------------------------------------------------------------------- locks
def writes_outputs() -> bool:
    """Whether this process writes the outputs: rank 0 under torchrun (also before the process group
    is joined: ``RANK`` is in the environment then), else True."""
    return is_main() if is_distributed() else os.environ.get("RANK", "0") == "0"


# folder (resolved) -> [open lock file descriptor, depth]: a process may lock a folder again
# (e.g. ``eval`` holds its --out and Report.save locks it too); flock on a second descriptor of
# the same file would block against ourselves.
_HELD: dict[str, list[int]] = {}


def _holder(lock_path: Path) -> str:
    try:
        pid = lock_path.read_text(encoding="utf-8").strip()
    except OSError:
        pid = ""
    return f"process {pid}" if pid.isdigit() else "another process"


@contextlib.contextmanager
def output_lock(folder: str | os.PathLike, *, enabled: bool = True) -> Iterator[Path]:
    """Hold an exclusive lock on the output folder ``folder`` (created if needed) for the block.

    The lock is ``fcntl.flock`` on ``<folder>/.robustsuite.lock``, which holds the holder's PID; the
    OS releases it when the process ends, however it ends. A second process raises
    :class:`OutputError` naming the holder's PID at once (no waiting). Re-entrant within a process.
    Stale temporary files of killed writers in ``folder`` are removed once the lock is taken.
    ``enabled=False`` (e.g. ranks other than 0 under torchrun) only creates the folder.
    """
    folder = ensure_dir(folder)
    if not enabled:
        yield folder
        return
    import fcntl

    key = os.path.realpath(folder)
    if key in _HELD:
        _HELD[key][1] += 1
        try:
            yield folder
        finally:
            _HELD[key][1] -= 1
        return
    lock_path = folder / LOCK_NAME
    with _as_output_error(lock_path, "lock"):
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise OutputError(errno.EBUSY, f"output folder {str(folder)!r} is in use by {_holder(lock_path)} "
                                           f"(lock file {str(lock_path)!r}); two runs cannot write one folder; fix: "
                                           "wait for that run to end, or choose another output folder (--out)") from None
        with _as_output_error(lock_path, "lock"):
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        _HELD[key] = [fd, 1]
        clean_stale_temps(folder)
        try:
            yield folder
        finally:
            del _HELD[key]
    finally:
        os.close(fd)  # closing the last descriptor releases the flock


# ---------------------------------------------------------------------------------------- folders
# ``.<name>.<kind>-<pid>-<16 hex>`` beside the folder: kind ``new`` (being written) or ``old`` (the
# previous version, between the two renames of a swap).
_TMP_DIR = re.compile(r"^\.(?P<name>.+)\.(?P<kind>new|old)-(?P<pid>\d+)-[0-9a-f]{16}$")


def recover_folder(folder: str | os.PathLike) -> None:
    """Clean up what a killed :func:`replace_folder` of ``folder`` left beside it (dead writers only):
    a partial new version is removed; the previous version is renamed back when ``folder`` is
    missing (killed between the two renames), else removed."""
    folder = Path(folder)
    try:
        entries = [(e.path, m.group("kind")) for e in os.scandir(folder.parent) if (m := _TMP_DIR.match(e.name))
                   and m.group("name") == folder.name and not _pid_alive(int(m.group("pid")))]
    except OSError:
        return
    for path, kind in sorted(entries, key=lambda e: e[1] != "old"):  # restore an old version first
        with contextlib.suppress(OSError):
            if kind == "old" and not folder.exists():
                os.rename(path, folder)
            else:
                shutil.rmtree(path)


def replace_folder(folder: str | os.PathLike, fill: Callable[[Path], None]) -> Path:
    """Write a whole folder at once: ``fill(tmp)`` writes the new content into a fresh sibling folder,
    which then replaces ``folder``; nothing of the old version survives (stale files vanish with it).

    Order (POSIX ``rename`` cannot exchange two folders atomically): (1) fill the new folder; (2)
    rename ``folder`` to ``.<name>.old-PID-X``; (3) rename the new folder to ``folder``; (4) delete
    the old one. A crash in (1) leaves ``folder`` untouched (the partial new folder is removed at the
    next start); between (2) and (3) ``folder`` is missing for an instant, and the next start
    (:func:`recover_folder`) renames the old one back. A held :func:`output_lock` of ``folder``
    stays held: its lock file is hard-linked into the new folder before the swap (the same file).
    """
    folder = Path(folder)
    parent = ensure_dir(folder.parent)
    recover_folder(folder)
    with _as_output_error(folder):
        if folder.exists() and not folder.is_dir():
            raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), os.fspath(folder))
    tag = f"{os.getpid()}-{secrets.token_hex(8)}"
    new, old = parent / f".{folder.name}.new-{tag}", parent / f".{folder.name}.old-{tag}"
    try:
        with _as_output_error(new, "create the folder"):
            os.mkdir(new, 0o777)  # follows the umask (mkdtemp would force 0700)
        fill(new)
        with _as_output_error(folder):
            if (folder / LOCK_NAME).is_file():
                with contextlib.suppress(OSError):  # no hard links here: the lock is not carried over
                    os.link(folder / LOCK_NAME, new / LOCK_NAME)
            if folder.is_dir():
                os.rename(folder, old)
            os.rename(new, folder)
    except BaseException:
        if old.is_dir() and not folder.exists():
            with contextlib.suppress(OSError):
                os.rename(old, folder)
        shutil.rmtree(new, ignore_errors=True)
        raise
    shutil.rmtree(old, ignore_errors=True)
    return folder
