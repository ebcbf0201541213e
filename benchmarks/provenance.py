"""What every benchmark result file records about where it came from: the commit, whether the tree
had uncommitted changes, the software and the machine, and when. A result is only comparable with
another of the same commit and settings; a result without them cannot be told from a stale one."""
from __future__ import annotations

import platform
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent


def _git(*args: str) -> str | None:
    try:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=10,
                              check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None


def provenance() -> dict:
    """``commit`` (HEAD, or None outside a git checkout), ``dirty`` (uncommitted changes to tracked
    files of the package or the benchmarks), torch, threads, machine, python, date."""
    status = _git("status", "--porcelain", "--untracked-files=no", "--", "robustsuite", "benchmarks", "configs")
    return {"commit": _git("rev-parse", "HEAD"), "dirty": None if status is None else bool(status),
            "torch": torch.__version__, "threads": torch.get_num_threads(), "machine": platform.machine(),
            "python": sys.version.split()[0], "date": time.strftime("%Y-%m-%d %H:%M:%S")}
