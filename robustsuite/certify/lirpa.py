"""The single place where robustsuite imports auto_LiRPA (after the compatibility patches).

Everything in the package that needs auto_LiRPA imports it from here::

    from robustsuite.certify.lirpa import BoundedModule, BoundedTensor, PerturbationLpNorm
"""
from __future__ import annotations

from . import lirpa_compat

auto_LiRPA = lirpa_compat.apply()

from auto_LiRPA import BoundedModule, BoundedTensor, CrossEntropyWrapper  # noqa: E402
from auto_LiRPA.perturbations import PerturbationLpNorm  # noqa: E402

APPLIED_PATCHES = lirpa_compat.APPLIED_PATCHES
VERSION = getattr(auto_LiRPA, "__version__", "unknown")

__all__ = ["BoundedModule", "BoundedTensor", "CrossEntropyWrapper", "PerturbationLpNorm",
           "APPLIED_PATCHES", "VERSION"]
