"""robustsuite: certified and empirical adversarial robustness for PyTorch, side by side.

Images are NCHW float tensors in [0, 1]; normalization lives inside the model. Threat models
(``LinfBall``, ``L2Ball``, ``L1Ball``, ``Box``) are shared by attacks, bounds and budgets.
"""
from .errors import (CheckpointError, ConfigError, DataNotFoundError, InputError, InputTypeError,
                     RobustSuiteError, UnknownNameError, UnsupportedModelError)
from .runtime import resolve_device, seed_everything
from .threats import Box, L1Ball, L2Ball, LinfBall, ThreatModel, threat_from_name

__version__ = "0.1.0"


def run(study, **kwargs):
    """Run a whole study (train every model of a study config, then one report); see :func:`robustsuite.study.run`."""
    from .study import run as _run
    return _run(study, **kwargs)


# The parts that define trainers, noise layers and checkpoint model builders register them where they
# are defined; importing them here fills those registries before any use (``import robustsuite.x``
# runs this file first), so the lower layers that read the registries never import the parts.
from . import budgets, certify, stochastic, training  # noqa: E402,F401

__all__ = [
    "Box", "L1Ball", "L2Ball", "LinfBall", "ThreatModel", "threat_from_name",
    "resolve_device", "seed_everything", "run",
    "RobustSuiteError", "ConfigError", "InputError", "InputTypeError", "UnknownNameError",
    "UnsupportedModelError", "DataNotFoundError", "CheckpointError",
]
