"""Randomized smoothing (Cohen, Rosenfeld, Kolter, ICML 2019): PREDICT and CERTIFY, batched.

The smoothed classifier of a base classifier ``f`` is ``g(x) = argmax_c P(f(x + e) = c)`` with
``e ~ N(0, sigma^2 I)``. If the top class has probability ``p_A >= 1/2`` then ``g`` is constant on
the L2 ball of radius ``sigma * Phi^-1(p_A)`` around ``x`` (Theorem 1). :class:`Smooth` estimates
both from Monte Carlo samples with the paper's two algorithms:

* :meth:`Smooth.predict` (PREDICT): the top class of ``n`` noisy samples, or abstain unless a
  two-sided binomial test of ``n_A`` out of ``n_A + n_B`` at p = 1/2 rejects at level ``alpha``;
* :meth:`Smooth.certify` (CERTIFY): the class chosen from ``n0`` samples, counted again in ``n``
  fresh samples; a one-sided Clopper-Pearson lower bound ``p_A`` (level ``1 - alpha``); abstain if
  ``p_A < 1/2``, else the radius ``sigma * Phi^-1(p_A)``.

Noise is added in [0, 1] pixel space (normalization is a layer inside the model) without clamping,
as in the paper. Radii are L2 distances in pixel units over all C*H*W values.

Many images are handled at once: the ``B * n`` noisy samples of a batch of images are laid out
image after image and cut into forward passes of ``batch`` rows, so a pass mixes images; the
predictions are counted with one ``scatter_add_`` on the flat (image, class) index. There is no
Python loop over images or samples around the model, and one host transfer per call.

Reproducibility: with a ``seed`` (or a ``torch.Generator``) the noise of sample ``j`` of image
``i`` is row ``i * n + j`` of the generator's stream, whatever ``batch`` is. On CPU the draws are
bit-identical across ``batch`` when C*H*W is a multiple of 16 (how the CPU sampler fills tensors);
elsewhere they differ but are identically distributed.

Example::

    smooth = Smooth(model.eval(), num_classes=10, sigma=0.25, seed=0)
    cert = smooth.certify(x_test, n0=100, n=100_000, alpha=0.001, batch=1000)
    summary = smoothing_summary(cert.prediction, cert.radius, y_test, radii=(0.25, 0.5))
"""
from __future__ import annotations

import math
import numbers
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Callable, NamedTuple, Sequence

import numpy as np
import torch
from scipy.stats import beta as beta_dist
from scipy.stats import binom, norm
from torch import Tensor

from ..errors import InputError, InputTypeError
from ..runtime import resolve_device
from ..threats import check_images

__all__ = ["ABSTAIN", "Certificate", "Smooth", "SmoothingSummary", "certified_radius",
           "clopper_pearson_lower", "smoothing_summary", "two_sided_binomial_pvalue"]

#: The class index returned where the smoothed classifier abstains.
ABSTAIN = -1

DEFAULT_N0 = 100
DEFAULT_N = 100_000
DEFAULT_ALPHA = 0.001
DEFAULT_BATCH = 1000


# ---------------------------------------------------------------------------------- statistics
def clopper_pearson_lower(n_a, n, alpha):
    """One-sided Clopper-Pearson lower confidence bound of a binomial proportion.

    With probability at least ``1 - alpha`` over ``n_a ~ Binomial(n, p)``, ``p >= bound``. The bound is
    the ``alpha`` quantile of Beta(n_a, n - n_a + 1), and 0 where ``n_a = 0``; for ``n_a = n`` it is
    ``alpha ** (1 / n)``. (statsmodels' ``proportion_confint(n_a, n, alpha=2 * alpha,
    method="beta")[0]``, the reference code's call, gives the same number.)

    Args:
        n_a: successes, integers in [0, n] (scalar or array).
        n: trials, integers >= 1 (broadcast against ``n_a``).
        alpha: in (0, 1).

    Returns:
        float64 of the broadcast shape (a NumPy scalar for scalar inputs).
    """
    n_a, n = np.asarray(n_a, dtype=np.float64), np.asarray(n, dtype=np.float64)
    alpha = _check_alpha(alpha)
    if np.any(n < 1) or np.any(n_a < 0) or np.any(n_a > n):
        raise InputError("clopper_pearson_lower: need 0 <= n_a <= n and n >= 1")
    with np.errstate(invalid="ignore"):
        bound = beta_dist.ppf(alpha, n_a, n - n_a + 1)
    return np.where(n_a > 0, bound, 0.0)[()]


def certified_radius(p_a_lower, sigma: float):
    """L2 radius ``sigma * Phi^-1(p_A)`` certified by a lower bound ``p_A`` of the top-class probability.

    Theorem 1 of Cohen et al. with ``p_B = 1 - p_A``. Where ``p_A < 1/2`` nothing is certified and the
    radius is 0 (CERTIFY abstains there). Float64 of ``p_a_lower``'s shape (a NumPy scalar for a scalar).
    """
    sigma = _check_sigma(sigma)
    p = np.asarray(p_a_lower, dtype=np.float64)
    if np.any(~np.isfinite(p)) or np.any(p < 0) or np.any(p > 1):
        raise InputError("certified_radius: p_a_lower must lie in [0, 1]")
    with np.errstate(divide="ignore"):
        r = sigma * norm.ppf(np.where(p >= 0.5, p, 0.5))
    return np.where(p >= 0.5, r, 0.0)[()]


def two_sided_binomial_pvalue(n_a, n_b):
    """P-value of the exact two-sided binomial test of ``n_a`` successes in ``n_a + n_b`` trials at p = 1/2.

    At p = 1/2 the distribution is symmetric, so the two-sided p-value (the total probability of the
    outcomes no more likely than the observed one) is ``min(1, 2 * P(X <= min(n_a, n_b)))``,
    X ~ Binomial(n_a + n_b, 1/2): the same number as ``scipy.stats.binomtest(n_a, n_a + n_b,
    0.5).pvalue``, vectorized. 1 where ``n_a + n_b = 0``.
    """
    n_a, n_b = np.asarray(n_a), np.asarray(n_b)
    if np.any(n_a < 0) or np.any(n_b < 0):
        raise InputError("two_sided_binomial_pvalue: counts must be >= 0")
    total = n_a + n_b
    p = np.minimum(1.0, 2.0 * binom.cdf(np.minimum(n_a, n_b), total, 0.5))
    return np.where(total > 0, p, 1.0)[()]


# ---------------------------------------------------------------------------------- the classifier
class Certificate(NamedTuple):
    """What :meth:`Smooth.certify` returns, per image; unpacks as ``prediction, radius = cert``.

    Attributes:
        prediction: (B,) int64, the certified class, or ``ABSTAIN`` (-1).
        radius: (B,) float64, the certified L2 radius in pixel units; 0 where abstaining.
    """

    prediction: Tensor
    radius: Tensor


class Smooth:
    """The smoothed classifier ``g`` of a base classifier, with the paper's PREDICT and CERTIFY.

    Args:
        model: the base classifier, pixels in [0, 1] (B, C, H, W) -> logits (B, num_classes).
            Its mode is never changed: call ``model.eval()`` first for a deterministic base classifier
            (a model left in train mode keeps its dropout / batch statistics / noise layers).
        num_classes: K >= 2.
        sigma: noise level, > 0 (pixel units).
        device: where noisy samples are built and the model runs; default the device of the model's
            first parameter or buffer, else that of the images. The model is not moved.
        seed: seeds a private generator on that device (created on first use); successive calls
            continue its stream, so every call draws fresh noise.
        generator: a ``torch.Generator`` to draw from instead (on the same device).
            Without ``seed`` or ``generator`` the global torch RNG is used.
        autocast_dtype: run the model under ``torch.autocast`` with this dtype (e.g. ``torch.bfloat16``);
            default off (the images' dtype).

    The guarantees below hold per image (each with probability at least ``1 - alpha`` over the noise),
    not simultaneously for the whole batch.
    """

    ABSTAIN = ABSTAIN

    def __init__(self, model: Callable[[Tensor], Tensor], num_classes: int, sigma: float, *,
                 device: str | torch.device | None = None, seed: int | None = None,
                 generator: torch.Generator | None = None, autocast_dtype: torch.dtype | None = None):
        if not callable(model):
            raise InputTypeError(f"model: expected a callable (nn.Module), got {type(model).__name__}")
        self.model = model
        self.num_classes = _check_int("num_classes", num_classes, minimum=2)
        self.sigma = _check_sigma(sigma)
        if seed is not None and generator is not None:
            raise InputError("Smooth: give seed or generator, not both")
        if generator is not None and not isinstance(generator, torch.Generator):
            raise InputTypeError(f"generator: expected a torch.Generator, got {type(generator).__name__}")
        self.seed = None if seed is None else _check_int("seed", seed, minimum=0)
        self._generator = generator
        self.device = None if device is None else resolve_device(device)
        self.autocast_dtype = autocast_dtype

    # ------------------------------------------------------------------------------ the paper's algorithms
    def predict(self, x: Tensor, n: int = DEFAULT_N, alpha: float = DEFAULT_ALPHA,
                batch: int = DEFAULT_BATCH) -> Tensor:
        """PREDICT: the smoothed classifier's class for each image, or abstain.

        With probability at least ``1 - alpha`` over the noise, the returned class (when it is not
        ``ABSTAIN``) is ``g(x)``, the most probable class of the base classifier under noise: abstain
        unless the two-sided binomial test of the top count ``n_A`` out of ``n_A + n_B`` (the two top
        classes of ``n`` noisy samples) at p = 1/2 rejects at level ``alpha`` (p-value <= alpha).

        Args:
            x: images (B, C, H, W) in [0, 1] (one image: ``x[None]``).
            n: noisy samples per image.
            alpha: test level, in (0, 1).
            batch: noisy samples per forward pass (images are mixed in a pass).

        Returns:
            (B,) int64 on ``x``'s device: class indices, ``ABSTAIN`` (-1) where abstaining.
        """
        n, alpha, batch = _check_int("n", n), _check_alpha(alpha), _check_int("batch", batch)
        counts = self._counts(self._prepare(x), n, batch)
        top = counts.topk(2, dim=1)
        pvalue = two_sided_binomial_pvalue(*top.values.cpu().numpy().T)
        abstain = torch.as_tensor(np.asarray(pvalue) > alpha, device=counts.device)
        return torch.where(abstain, ABSTAIN, top.indices[:, 0]).to(x.device)

    def certify(self, x: Tensor, n0: int = DEFAULT_N0, n: int = DEFAULT_N, alpha: float = DEFAULT_ALPHA,
                batch: int = DEFAULT_BATCH) -> Certificate:
        """CERTIFY: the smoothed classifier's class for each image and an L2 radius around it, or abstain.

        With probability at least ``1 - alpha`` over the noise, if the returned class is not
        ``ABSTAIN`` then ``g(x + delta)`` equals it for every ``||delta||_2 < radius``. The class is
        the most frequent of ``n0`` noisy samples (selection); it is then counted in ``n`` fresh,
        independent samples (estimation), ``p_A`` = the one-sided Clopper-Pearson lower bound at
        level ``1 - alpha``; abstain where ``p_A < 1/2``, else radius ``sigma * Phi^-1(p_A)``.

        Args:
            x: images (B, C, H, W) in [0, 1] (one image: ``x[None]``).
            n0: selection samples per image.
            n: estimation samples per image.
            alpha: failure probability, in (0, 1).
            batch: noisy samples per forward pass (images are mixed in a pass).

        Returns:
            :class:`Certificate` ``(prediction (B,) int64, radius (B,) float64)`` on ``x``'s device;
            prediction ``ABSTAIN`` (-1) and radius 0 where abstaining.
        """
        n0, n = _check_int("n0", n0), _check_int("n", n)
        alpha, batch = _check_alpha(alpha), _check_int("batch", batch)
        xs = self._prepare(x)
        selected = self._counts(xs, n0, batch).argmax(1)
        counts = self._counts(xs, n, batch)  # fresh, independent draws: the generator stream moves on
        n_a = counts.gather(1, selected[:, None]).squeeze(1).cpu().numpy()
        p_a = np.atleast_1d(clopper_pearson_lower(n_a, n, alpha))
        radius = np.atleast_1d(certified_radius(p_a, self.sigma))
        abstain = torch.as_tensor(p_a < 0.5)
        prediction = torch.where(abstain, ABSTAIN, selected.cpu())
        radius_t = torch.where(abstain, 0.0, torch.as_tensor(radius, dtype=torch.float64))
        return Certificate(prediction.to(x.device), radius_t.to(x.device))

    # ------------------------------------------------------------------------------ sampling
    def counts(self, x: Tensor, num: int, batch: int = DEFAULT_BATCH) -> Tensor:
        """Class counts of the base classifier over ``num`` noisy copies of each image.

        Args:
            x: images (B, C, H, W) in [0, 1].
            num: noisy samples per image.
            batch: noisy samples per forward pass.

        Returns (B, num_classes) int64 on the sampling device; each row sums to ``num``.
        """
        num, batch = _check_int("num", num), _check_int("batch", batch)
        return self._counts(self._prepare(x), num, batch)

    def _counts(self, x: Tensor, num: int, batch: int) -> Tensor:
        dev, gen, K = x.device, self._generator_for(x.device), self.num_classes
        B, total = x.shape[0], x.shape[0] * num
        counts = torch.zeros(B * K, dtype=torch.long, device=dev)
        ones = torch.ones(min(batch, max(total, 1)), dtype=torch.long, device=dev)
        amp = (torch.autocast(dev.type, dtype=self.autocast_dtype) if self.autocast_dtype is not None
               else nullcontext())
        with torch.no_grad(), amp:
            for start in range(0, total, batch):
                stop = min(start + batch, total)
                image = torch.arange(start, stop, device=dev) // num  # which image each noisy row is of
                noisy = torch.randn((stop - start, *x.shape[1:]), generator=gen, device=dev, dtype=x.dtype)
                noisy.mul_(self.sigma).add_(x.index_select(0, image))
                label = self._labels(noisy)
                counts.scatter_add_(0, image * K + label, ones[:stop - start])
        return counts.view(B, K)

    def _labels(self, noisy: Tensor) -> Tensor:
        logits = self.model(noisy)
        if not isinstance(logits, Tensor) or logits.dim() != 2 or logits.shape != (noisy.shape[0], self.num_classes):
            shape = tuple(logits.shape) if isinstance(logits, Tensor) else type(logits).__name__
            raise InputError(f"model: expected logits of shape ({noisy.shape[0]}, {self.num_classes}) "
                             f"(batch, num_classes), got {shape}")
        return logits.argmax(1).to(device=noisy.device)

    def _prepare(self, x: Tensor) -> Tensor:
        check_images(x, "x")
        return x.to(self._device_for(x))

    def _device_for(self, x: Tensor) -> torch.device:
        if self.device is not None:
            return self.device
        if isinstance(self.model, torch.nn.Module):
            for t in self.model.parameters():
                return t.device
            for t in self.model.buffers():
                return t.device
        return x.device

    def _generator_for(self, device: torch.device) -> torch.Generator | None:
        if self._generator is None and self.seed is not None:
            self._generator = torch.Generator(device=device).manual_seed(self.seed)
        g = self._generator
        if g is not None and torch.device(g.device).type != device.type:
            raise InputError(f"generator: it lives on {g.device} but noise is drawn on {device}; "
                             "give a generator on the sampling device (or a seed)")
        return g


# ---------------------------------------------------------------------------------- summaries
@dataclass(frozen=True)
class SmoothingSummary:
    """Certified accuracy at each radius, abstention rate and mean certified radius of one CERTIFY run.

    ``certified_accuracy[i]`` is the fraction of samples whose prediction is correct with radius
    >= ``radii[i]``; ``mean_certified_radius`` averages the radius over all samples, counting 0 for
    wrong or abstained ones (the ACR of MACER); ``abstention_rate`` is the fraction that abstained.
    """

    radii: tuple[float, ...]
    certified_accuracy: tuple[float, ...]
    abstention_rate: float
    mean_certified_radius: float
    num_samples: int

    def as_dict(self) -> dict:
        return {"radii": list(self.radii), "certified_accuracy": list(self.certified_accuracy),
                "abstention_rate": self.abstention_rate, "mean_certified_radius": self.mean_certified_radius,
                "num_samples": self.num_samples}


def smoothing_summary(prediction: Tensor, radius: Tensor, labels: Tensor,
                      radii: Sequence[float] = (0.0, 0.25, 0.5, 0.75, 1.0)) -> SmoothingSummary:
    """Summarize per-sample CERTIFY results (B,) against the true labels (B,)."""
    pred = torch.as_tensor(prediction).detach().cpu().long()
    rad = torch.as_tensor(radius).detach().cpu().double()
    lab = torch.as_tensor(labels).detach().cpu().long()
    if pred.dim() != 1 or pred.shape != rad.shape or pred.shape != lab.shape:
        raise InputError(f"smoothing_summary: prediction, radius and labels must be (B,) of one length, got "
                         f"{tuple(pred.shape)}, {tuple(rad.shape)}, {tuple(lab.shape)}")
    radii = tuple(float(r) for r in radii)
    if any(not math.isfinite(r) or r < 0 for r in radii):
        raise InputError(f"smoothing_summary: radii must be finite and >= 0, got {radii}")
    b = pred.shape[0]
    correct = (pred == lab) & (pred != ABSTAIN)
    acc = tuple(float((correct & (rad >= r)).sum()) / b if b else math.nan for r in radii)
    abst = float((pred == ABSTAIN).sum()) / b if b else math.nan
    mcr = float(torch.where(correct, rad, 0.0).sum()) / b if b else math.nan
    return SmoothingSummary(radii, acc, abst, mcr, b)


# ---------------------------------------------------------------------------------- validation
def _check_int(field: str, value, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise InputTypeError(f"{field}: expected an integer >= {minimum}, got {value!r}")
    if value < minimum:
        raise InputError(f"{field}: must be an integer >= {minimum}, got {value}")
    return int(value)


def _check_alpha(alpha) -> float:
    if isinstance(alpha, bool) or not isinstance(alpha, numbers.Real):
        raise InputTypeError(f"alpha: expected a number in (0, 1), got {alpha!r}")
    if not 0.0 < float(alpha) < 1.0:
        raise InputError(f"alpha: must lie strictly between 0 and 1, got {alpha}")
    return float(alpha)


def _check_sigma(sigma) -> float:
    if isinstance(sigma, Tensor) and sigma.numel() == 1:
        sigma = float(sigma)
    if isinstance(sigma, bool) or not isinstance(sigma, numbers.Real):
        raise InputTypeError(f"sigma: expected a number > 0, got {sigma!r}")
    if not math.isfinite(float(sigma)) or float(sigma) <= 0:
        raise InputError(f"sigma: must be a finite number > 0, got {sigma}")
    return float(sigma)
