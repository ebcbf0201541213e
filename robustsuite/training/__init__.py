"""What every trainer shares: the loop, checkpoints and resume, schedules."""
from .checkpoint import load_checkpoint, model_from_checkpoint, save_checkpoint
from .loop import Trainer, build_optimizer
from .schedules import eps_at, mix_factor

__all__ = ["Trainer", "build_optimizer", "save_checkpoint", "load_checkpoint", "model_from_checkpoint",
           "eps_at", "mix_factor"]
