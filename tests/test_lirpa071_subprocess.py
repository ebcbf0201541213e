"""robustsuite.certify under upstream auto_LiRPA 0.7.1: the soundness subset passes, and its bounds
agree with 0.3's.

The wheel (``ROBUSTSUITE_LIRPA071_WHEEL``, or ``../shared/wheels/`` beside the repository) is
installed once into a cache folder keyed by its hash (``pip install --no-deps --target``, with
``graphviz``, which 0.7.1 imports at load), and the tests marked ``lirpa071`` run in a subprocess
with that folder first on ``PYTHONPATH``. Skipped, with the reason, where the wheel is absent or
cannot be installed (graphviz comes from PyPI: no network, no install).
"""
from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
WHEEL_NAME = "auto_lirpa-0.7.1-py3-none-any.whl"
SUBSET = ["tests/test_certify_lirpa071.py", "tests/test_certify_graph.py", "tests/test_lirpa_compat.py",
          "tests/test_crown_ibp_training.py"]


def _wheel() -> Path | None:
    given = os.environ.get("ROBUSTSUITE_LIRPA071_WHEEL")
    path = Path(given) if given else ROOT.parent / "shared" / "wheels" / WHEEL_NAME
    return path if path.is_file() else None


def _install(wheel: Path) -> Path:
    """The folder holding auto_LiRPA 0.7.1 and graphviz, installed on first use (a lock keeps two
    test processes from installing at once; the folder appears only when complete)."""
    digest = hashlib.sha256(wheel.read_bytes()).hexdigest()[:16]
    cache = Path(os.environ.get("ROBUSTSUITE_TEST_CACHE", tempfile.gettempdir())) / f"robustsuite-lirpa071-{digest}"
    if (cache / "auto_LiRPA" / "__init__.py").is_file():
        return cache
    cache.parent.mkdir(parents=True, exist_ok=True)
    with open(str(cache) + ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (cache / "auto_LiRPA" / "__init__.py").is_file():
            tmp = Path(tempfile.mkdtemp(prefix=cache.name + ".", dir=cache.parent))
            out = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps",
                                  "--disable-pip-version-check", "--target", str(tmp), str(wheel), "graphviz"],
                                 capture_output=True, text=True, timeout=300)
            if out.returncode != 0:
                shutil.rmtree(tmp, ignore_errors=True)
                pytest.skip(f"cannot install {wheel.name} and graphviz (pip: {out.stderr.strip()[-300:]})")
            os.replace(tmp, cache)
    return cache


@pytest.fixture(scope="module")
def lirpa071() -> Path:
    wheel = _wheel()
    if wheel is None:
        pytest.skip(f"auto_LiRPA 0.7.1 wheel not found (set ROBUSTSUITE_LIRPA071_WHEEL or put {WHEEL_NAME} "
                    f"in {ROOT.parent / 'shared' / 'wheels'})")
    return _install(wheel)


def _env(folder: Path) -> dict:
    return dict(os.environ, PYTHONPATH=os.pathsep.join([str(folder), str(ROOT)]), OMP_NUM_THREADS="1",
                ROBUSTSUITE_EXPECT_LIRPA="0.7.1", PYTHONDONTWRITEBYTECODE="1")


def test_soundness_subset_passes_under_auto_lirpa_071(lirpa071):
    out = subprocess.run([sys.executable, "-m", "pytest", "-o", "addopts=", "-q", "-n", "0", "-p", "no:cacheprovider",
                          "-p", "no:warnings", "-m", "lirpa071", *SUBSET],
                         cwd=ROOT, env=_env(lirpa071), capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]
    assert " passed" in out.stdout and " failed" not in out.stdout


def test_bounds_agree_with_auto_lirpa_03(lirpa071, tmp_path):
    """IBP, CROWN-IBP and CROWN: equal within 1e-5 (measured: bit-identical). alpha-CROWN optimizes
    the slopes with each release's own optimizer settings, so its bounds differ slightly (measured
    up to 6e-5); both must be at least CROWN's."""
    import lirpa_agreement
    from robustsuite.certify.lirpa import VERSION

    if VERSION == "0.7.1":
        pytest.skip("this process already runs 0.7.1")
    path = tmp_path / "bounds071.pt"
    out = subprocess.run([sys.executable, str(ROOT / "tests" / "lirpa_agreement.py"), str(path)],
                         env=_env(lirpa071), capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    other = torch.load(path, weights_only=True)
    assert other["version"] == "0.7.1"
    ours = lirpa_agreement.margin_table()
    assert set(ours) == set(other["bounds"])
    for key, a in ours.items():
        b = other["bounds"][key]
        scale = max(1.0, a.abs().max().item())
        if key.endswith("alpha-crown"):
            crown = ours[key.replace("alpha-crown", "crown")]
            assert (a >= crown - 1e-6).all() and (b >= crown - 1e-6).all(), key
            assert (a - b).abs().max().item() <= 1e-3 * scale, key
        else:
            assert (a - b).abs().max().item() <= 1e-5 * scale, f"{key}: 0.3 and 0.7.1 differ"
