"""What every trainer shares: the loop, checkpoints and resume, schedules, the run config and the
trainer registry (``train.method`` -> config class + trainer class, filled with :func:`register_trainer`
where each trainer is defined)."""
from .checkpoint import load_checkpoint, model_from_checkpoint, save_checkpoint
from .config import RunConfig, load_config, validate
from .gaussian import GaussianTrainConfig, GaussianTrainer
from .loop import Trainer, build_optimizer
from .registry import register_trainer
from .schedules import eps_at, mix_factor

__all__ = ["Trainer", "build_optimizer", "save_checkpoint", "load_checkpoint", "model_from_checkpoint",
           "eps_at", "mix_factor", "RunConfig", "load_config", "validate", "register_trainer",
           "GaussianTrainConfig", "GaussianTrainer"]
