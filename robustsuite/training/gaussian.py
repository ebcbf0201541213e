"""Gaussian noise augmentation (Cohen et al. 2019): the base classifier of randomized smoothing.

``method: gaussian`` trains on ``x + N(0, sigma^2 I)`` in [0, 1] pixel space, without clamping, with
the plain cross-entropy; smooth the result at the same ``sigma`` (:class:`robustsuite.eval.Smooth`).
Model selection (``best.pt``) uses the accuracy of the base classifier on noisy copies of the
validation images (``val_noise_draws`` per image, a fixed seeded generator, so epochs compare on the
same noise); clean accuracy breaks ties.

The training noise comes from the global torch RNG, whose state every resumable checkpoint holds, so
a resumed run reaches the same weights as an uninterrupted one.

Config::

    train:
      method: gaussian
      sigma: 0.25
      epochs: 30
      batch_size: 64
      optim: {name: adam, lr: 0.001}
"""
from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor

from .config import TrainBase
from .loop import Trainer
from .registry import register_trainer

__all__ = ["GaussianTrainConfig", "GaussianTrainer", "add_gaussian_noise"]


class GaussianTrainConfig(TrainBase):
    """Gaussian noise augmentation at ``sigma`` (``method: gaussian``), plus the shared settings."""

    method: Literal["gaussian"] = "gaussian"
    sigma: float = Field(..., gt=0, le=10, description="noise std in [0, 1] pixel units (smooth at the same sigma)")
    val_noise_draws: int = Field(4, ge=1, description="noisy copies per validation image for model selection")


def add_gaussian_noise(x: Tensor, sigma: float, generator: torch.Generator | None = None) -> Tensor:
    """``x + sigma * N(0, I)``, no clamping (noisy images may leave [0, 1], as in the paper)."""
    noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    return x + sigma * noise


@register_trainer("gaussian", config=GaussianTrainConfig)
class GaussianTrainer(Trainer):
    """Cross-entropy on Gaussian-noise-augmented images (one fresh draw per image and step)."""

    kind = "gaussian"

    def _noisy_ce(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        logits = self.model(add_gaussian_noise(x, self.tcfg.sigma))
        return F.cross_entropy(logits, y), logits

    def train_step(self, x: Tensor, y: Tensor, step: int) -> dict[str, Tensor]:
        loss, logits = self.loss_call(self._noisy_ce, x, y)
        self.clip_and_step(loss)
        return {"loss": loss.detach(), "noisy_acc": (logits.detach().argmax(1) == y).float().mean()}

    def validate(self) -> dict[str, float]:
        if self.val_set is None or len(self.val_set) == 0:
            return {}
        from ..data import as_tensors

        x, y = as_tensors(self.val_set)
        x, y = x.to(self.device), y.to(self.device)
        gen = torch.Generator(device=self.device).manual_seed(int(self.cfg.seed) + 7919)
        bs = max(self.tcfg.batch_size, 256)
        clean = noisy = 0
        with torch.no_grad():
            for i in range(0, len(x), bs):
                xb, yb = x[i:i + bs], y[i:i + bs]
                clean += int((self.model(xb).argmax(1) == yb).sum())
                for _ in range(self.tcfg.val_noise_draws):
                    noisy += int((self.model(add_gaussian_noise(xb, self.tcfg.sigma, gen)).argmax(1) == yb).sum())
        clean_acc = clean / len(x)
        noisy_acc = noisy / (len(x) * self.tcfg.val_noise_draws)
        return {"clean_acc": clean_acc, "noisy_acc": noisy_acc, "select": noisy_acc + 1e-3 * clean_acc}

