"""Finished record columns kept on disk as they complete, so an evaluation resumes after a kill.

Layout of a store folder (``<report folder>/partial`` for ``robustsuite eval --out`` and
``robustsuite run``)::

    partial/
      .robustsuite.lock                     held while an evaluation writes here
      <model>/r<repeat>/<item>-<hash>.json  one file per finished (model, item, repeat)

Each file (written atomically) holds the item's columns (one value per evaluated sample), the
not-applicable reason when the item found at run time that it does not fit the model, the seconds
it took, and the *fingerprint* of everything the columns depend on: the item's settings
(:meth:`EvalItem.fingerprint <robustsuite.eval.suite.EvalItem.fingerprint>`), the model's
weights and structure (:func:`model_digest`: a hash of every parameter and buffer and of the
module tree, not of the checkpoint file, so a checkpoint rewritten with the same weights still
matches) and those of the other models the item uses (a transfer attack's source), the evaluated
samples (:func:`data_digest`), the seed, the repeat, the batch size, the device type and the torch
version. A column is reused only when its fingerprint is equal, so a changed item or model reruns
exactly its own columns. A file that does not parse or does not fit (a foreign, truncated or
edited file) is ignored and rewritten.

The files are data only (JSON): nothing read here executes code.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import Tensor, nn

from ..files import atomic_write_text

log = logging.getLogger(__name__)

__all__ = ["ColumnStore", "Finished", "model_digest", "data_digest", "column_fingerprint", "foreign_entries",
           "FORMAT", "VERSION"]

FORMAT = "robustsuite-eval-column"
VERSION = 1

_FILE = re.compile(r"^[\w.@+-]{0,80}-[0-9a-f]{16}\.json$")
_REPEAT_DIR = re.compile(r"^r\d+$")


def _update_tensor(h: "hashlib._Hash", name: str, t: Tensor) -> None:
    t = t.detach().to("cpu").contiguous()
    h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
    h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")


def model_digest(model: nn.Module) -> str:
    """SHA-256 of the model's module tree (``repr``, memory addresses removed) and of every
    parameter and buffer (name, dtype, shape, bytes)."""
    h = hashlib.sha256()
    h.update(f"{type(model).__module__}.{type(model).__qualname__}\n".encode())
    h.update(re.sub(r"0x[0-9a-fA-F]+", "0x", repr(model)).encode())
    for name, t in [*model.named_parameters(), *model.named_buffers()]:
        _update_tensor(h, name, t)
    return h.hexdigest()


def data_digest(x: Tensor, y: Tensor, indices: Sequence[int]) -> str:
    """SHA-256 of the evaluated samples: images, labels and their positions in the data set."""
    h = hashlib.sha256()
    _update_tensor(h, "x", x)
    _update_tensor(h, "y", y)
    h.update(json.dumps([int(i) for i in indices]).encode())
    return h.hexdigest()


def column_fingerprint(item_fingerprint: dict[str, Any], *, model: str, models_used: dict[str, str], data: str,
                       seed: int, repeat: int, batch_size: int, device: torch.device) -> str:
    """The hash of everything a (model, item, repeat)'s columns depend on (see the module docstring);
    ``model`` and ``models_used`` are :func:`model_digest` values, ``data`` a :func:`data_digest`."""
    what = {"format": VERSION, "item": item_fingerprint, "model": model, "models_used": models_used, "data": data,
            "seed": int(seed), "repeat": int(repeat), "batch_size": int(batch_size),
            "device": torch.device(device).type, "torch": torch.__version__}
    return hashlib.sha256(json.dumps(what, sort_keys=True, default=str).encode()).hexdigest()


@dataclass
class Finished:
    """One finished (model, item, repeat): its columns, or None values and the reason it did not apply."""

    columns: dict[str, list]
    not_applicable: str | None
    seconds: float


#: a label cell (AutoAttack's ``by|...`` columns: the component that broke a sample, ``robust``, ``clean``)
_LABEL = re.compile(r"^[A-Za-z0-9][\w.+-]{0,63}$")
#: the only strings a ``status|...`` column holds: complete verification's statuses (``status|milp|SET``)
_STATUS_CELLS = frozenset({"verified", "falsified", "unknown"})


def _cell_ok(v: Any) -> bool:
    return v is None or isinstance(v, (bool, int, float))


def _column_ok(key: str, values: list) -> bool:
    """Every cell a value the column holds: numbers (or None), in a ``by|`` column short labels, in a
    ``status|`` column the three statuses of complete verification."""
    if key.startswith("by|"):
        return all(v is None or (isinstance(v, str) and _LABEL.match(v)) for v in values)
    if key.startswith("status|"):
        return all(v is None or (isinstance(v, str) and v in _STATUS_CELLS) for v in values)
    return all(map(_cell_ok, values))


class ColumnStore:
    """The finished columns of one evaluation in ``folder`` (see the module docstring).

    The caller holds the folder's :func:`~robustsuite.files.output_lock` while it writes.
    """

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)

    def path(self, model: str, repeat: int, key: str) -> Path:
        """The file of one (model, item, repeat); ``model`` is a safe name (checked by the evaluator)."""
        slug = re.sub(r"[^\w.@+-]", "_", key)[:80]
        tag = hashlib.sha256(key.encode()).hexdigest()[:16]
        return self.folder / model / f"r{int(repeat)}" / f"{slug}-{tag}.json"

    def load(self, model: str, repeat: int, key: str, fingerprint: str, columns: Sequence[str],
             n: int) -> Finished | None:
        """The finished columns, or None when there are none with this fingerprint (or the file is
        unreadable or malformed: it is then ignored, and rewritten when the item finishes)."""
        p = self.path(model, repeat, key)
        if not p.is_file():
            return None
        try:
            d = json.loads(p.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
            log.warning("resume: ignoring unreadable %s (%s); the item runs again", p, e)
            return None
        if not isinstance(d, dict) or d.get("format") != FORMAT or d.get("version") != VERSION:
            log.warning("resume: ignoring %s: not a column file of this version; the item runs again", p)
            return None
        if d.get("fingerprint") != fingerprint or d.get("model") != model or d.get("repeat") != repeat \
                or d.get("key") != key:
            log.info("resume: model %s, repeat %d, %s changed since it was saved (item, model, samples or "
                     "seed); it runs again", model, repeat, key)
            return None
        cols, reason, seconds = d.get("columns"), d.get("not_applicable"), d.get("seconds")
        if not (isinstance(cols, dict) and list(cols) == list(columns)
                and all(isinstance(v, list) and len(v) == n and _column_ok(k, v) for k, v in cols.items())
                and (reason is None or isinstance(reason, str))
                and isinstance(seconds, (int, float)) and not isinstance(seconds, bool) and seconds >= 0):
            log.warning("resume: ignoring malformed %s; the item runs again", p)
            return None
        return Finished(columns=cols, not_applicable=reason, seconds=float(seconds))

    def save(self, model: str, repeat: int, key: str, fingerprint: str, finished: Finished,
             item: dict[str, Any] | None = None) -> Path:
        """Write one finished (model, item, repeat) atomically."""
        record = {"format": FORMAT, "version": VERSION, "model": model, "repeat": int(repeat), "key": key,
                  "fingerprint": fingerprint, "item": item, "not_applicable": finished.not_applicable,
                  "seconds": finished.seconds, "columns": finished.columns}
        # compact: a CIFAR evaluation holds thousands of values per column and hundreds of columns
        # (floats are written in their shortest round-trip form, so they read back bit-equal)
        return atomic_write_text(self.path(model, repeat, key), json.dumps(record, separators=(",", ":")) + "\n")

    def clear(self) -> int:
        """Remove every column file of ours (names of our pattern in ``<model>/r<k>/``) and the
        folders they leave empty; anything else stays. Returns how many files were removed."""
        removed = 0
        if not self.folder.is_dir():
            return removed
        for mdir in self.folder.iterdir():
            if not mdir.is_dir() or mdir.is_symlink():
                continue
            for rdir in mdir.iterdir():
                if not (_REPEAT_DIR.match(rdir.name) and rdir.is_dir() and not rdir.is_symlink()):
                    continue
                for f in rdir.iterdir():
                    if _FILE.match(f.name) and f.is_file() and not f.is_symlink():
                        f.unlink()
                        removed += 1
                _rmdir_if_empty(rdir)
            _rmdir_if_empty(mdir)
        return removed

    def clean_temps(self) -> None:
        """Remove the temporary files that killed writers left in the ``<model>/r<k>/`` folders."""
        from ..files import clean_stale_temps
        if self.folder.is_dir():
            for rdir in self.folder.glob("*/r*"):
                if rdir.is_dir() and not rdir.is_symlink() and _REPEAT_DIR.match(rdir.name):
                    clean_stale_temps(rdir)


def foreign_entries(folder: str | os.PathLike) -> list[str]:
    """The entries of a store folder that are not the store's (its lock, ``<model>/r<k>/`` folders of
    column files, temporary files of its writers), as paths relative to ``folder``; a path that is
    not a folder is foreign itself (``["."]``); none when it does not exist."""
    from ..files import _TMP_FILE, LOCK_NAME  # one definition of our temporary files' names

    folder = Path(folder)
    if not folder.exists() and not folder.is_symlink():
        return []
    if folder.is_symlink() or not folder.is_dir():
        return ["."]
    out = []
    for mdir in folder.iterdir():
        if mdir.name in (LOCK_NAME,) or _TMP_FILE.match(mdir.name):
            continue
        if mdir.is_symlink() or not mdir.is_dir():
            out.append(mdir.name)
            continue
        for rdir in mdir.iterdir():
            if rdir.is_symlink() or not rdir.is_dir() or not _REPEAT_DIR.match(rdir.name):
                out.append(f"{mdir.name}/{rdir.name}")
                continue
            out += [f"{mdir.name}/{rdir.name}/{f.name}" for f in rdir.iterdir()
                    if not ((_FILE.match(f.name) or _TMP_FILE.match(f.name)) and f.is_file() and not f.is_symlink())]
    return sorted(out)


def _rmdir_if_empty(d: Path) -> None:
    try:
        d.rmdir()
    except OSError:
        pass
