"""Few-pixel attack: change k pixels, found by differential evolution (score-based, black-box)."""
from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from ..threats import ThreatModel
from .base import Attack, Perturbation, check_float, check_int, check_optional_int
from .registry import register_attack

__all__ = ["PixelAttack"]


@register_attack("pixel")
class PixelAttack(Attack):
    r"""Few-pixel attack in the paper 'One Pixel Attack for Fooling Deep Neural Networks'
    [https://arxiv.org/abs/1710.08864]

    Distance Measure : L0 (number of pixel positions changed, all channels of a pixel together).

    For each image, ``scipy.optimize.differential_evolution`` searches ``pixels`` (row, column,
    value per channel) tuples minimizing the softmax probability of the true class (targeted:
    ``1 - p(target)``); it stops as soon as a member of the population is adversarial. The whole
    population of a generation is evaluated in one batched model call (``vectorized=True``,
    chunked by ``max_batch``). DE is a per-image optimizer, so this attack loops over the images
    of the batch in Python (the one attack that does); images already misclassified are skipped.

    A threat set restricts the new pixel values: with ``LinfBall(eps)`` or a ``Box`` each changed
    element stays inside its interval (values are searched as fractions of it); ``None`` allows
    any value in [0, 1].

    Arguments:
        model (nn.Module): model returning logits; only its softmax scores are used.
        threat (LinfBall | Box | None): allowed values of changed pixels. (Default: None)
        pixels (int): pixels changed, >= 1 (1, 2, 3 in the papers). (Default: 1)
        population (int): DE population size, >= 5. (Default: 400, as Learn2Perturb)
        iterations (int): DE generations, >= 1. (Default: 75, as Learn2Perturb)
        mutation (float): DE differential weight in (0, 2]. (Default: 0.5)
        recombination (float): DE crossover probability in [0, 1]. (Default: 1.0, as the paper)
        targeted (bool): ``y`` are target labels. (Default: False)
        max_batch (int | None): most images per model call. (Default: None = the population)
        seed (int | None): seed of DE's initial population and mutations (image i uses seed + i).
            (Default: 0)

    Shape:
        - x: :math:`(N, C, H, W)` in [0, 1].
        - y: :math:`(N)` class indices.
        - output: :math:`(N, C, H, W)`, differing from x in at most ``pixels`` pixel positions.

    Examples::
        >>> atk = PixelAttack(model, pixels=1, population=400, iterations=75)
        >>> res = atk.run(x, y)   # res.distance = pixels changed, res.queries = model evaluations
    """

    threats = ("none", "linf", "box")

    def __init__(self, model, threat: ThreatModel | None = None, *, pixels: int = 1, population: int = 400,
                 iterations: int = 75, mutation: float = 0.5, recombination: float = 1.0,
                 targeted: bool = False, max_batch: int | None = None, seed: int | None = 0):
        super().__init__(model, threat, targeted=targeted, seed=seed)
        self.pixels = check_int("pixels", pixels, minimum=1)
        self.population = check_int("population", population, minimum=5)
        self.iterations = check_int("iterations", iterations, minimum=1)
        self.mutation = check_float("mutation", mutation, minimum=0.0, maximum=2.0, strict=True)
        self.recombination = check_float("recombination", recombination, minimum=0.0, maximum=1.0)
        self.max_batch = check_optional_int("max_batch", max_batch, minimum=1)

    def _distance(self, x, x_adv):
        return ((x_adv - x).abs().amax(1) > 0).flatten(1).sum(1).to(x.dtype)

    def _apply(self, xi: Tensor, lo: Tensor, hi: Tensor, params: Tensor) -> Tensor:
        """Images (S, C, H, W): ``xi`` with the pixels encoded in ``params`` (S, pixels*(2+C))."""
        C, H, W = xi.shape
        S = params.shape[0]
        p = params.view(S, self.pixels, 2 + C)
        rows = p[..., 0].floor().long().clamp_(0, H - 1)
        cols = p[..., 1].floor().long().clamp_(0, W - 1)
        frac = p[..., 2:]                                          # (S, k, C)
        lo_px = lo[:, rows, cols].permute(1, 2, 0)                 # (S, k, C)
        hi_px = hi[:, rows, cols].permute(1, 2, 0)
        imgs = xi.expand(S, C, H, W).clone()
        imgs[torch.arange(S, device=xi.device)[:, None], :, rows, cols] = lo_px + frac * (hi_px - lo_px)
        return imgs

    def _scores(self, imgs: Tensor) -> Tensor:
        chunk = self.max_batch or imgs.shape[0]
        with torch.no_grad():
            return torch.cat([self.model(imgs[i:i + chunk]).softmax(1) for i in range(0, imgs.shape[0], chunk)])

    def _perturb(self, x, y, generator):
        B = x.shape[0]
        if self.threat is None:
            lo, hi = torch.zeros_like(x), torch.ones_like(x)
        else:
            lo, hi = (b.detach() for b in self.threat.bounds(x))
        already = self._is_success(self.predict(x), y).cpu()
        queries = torch.ones(B, dtype=torch.long)
        x_adv = x.clone()
        generations = 0
        for i in range(B):  # DE optimizes one image at a time (see the class docstring)
            if already[i]:
                continue
            seed = None if self.seed is None else self.seed + i
            x_adv[i], nfev, nit = self._attack_one(x[i], lo[i], hi[i], int(y[i]), seed)
            queries[i] += nfev
            generations += nit
        return Perturbation(x_adv, queries.to(x.device), generations)

    def _attack_one(self, xi: Tensor, lo: Tensor, hi: Tensor, yi: int, seed: int | None
                    ) -> tuple[Tensor, int, int]:
        """DE on one image: (adversarial or best image, model evaluations, generations)."""
        C, H, W = xi.shape
        bounds = ([(0.0, float(H)), (0.0, float(W))] + [(0.0, 1.0)] * C) * self.pixels
        low = np.array([b[0] for b in bounds])
        high = np.array([b[1] for b in bounds])
        rng = np.random.default_rng(seed)
        hit: dict[str, np.ndarray] = {}
        nfev = 0

        def objective(P: np.ndarray) -> np.ndarray:
            nonlocal nfev
            cand = np.asarray(P).T                                   # (S, n_params)
            params = torch.as_tensor(cand, dtype=xi.dtype, device=xi.device)
            probs = self._scores(self._apply(xi, lo, hi, params))    # one batched model call
            nfev += cand.shape[0]
            labels = probs.argmax(1)
            ok = labels == yi if self.targeted else labels != yi
            if "x" not in hit and bool(ok.any()):
                hit["x"] = cand[int(ok.nonzero()[0, 0])].copy()
            obj = 1 - probs[:, yi] if self.targeted else probs[:, yi]
            return obj.double().cpu().numpy()

        def stop(intermediate_result) -> bool:
            return "x" in hit

        # imported here: scipy.optimize costs about a second and adds global warning filters, and every
        # `import robustsuite` imports the attacks (the stochastic trainers use PGD)
        from scipy.optimize import differential_evolution

        init = rng.uniform(low, high, size=(self.population, len(bounds)))
        res = differential_evolution(objective, bounds, maxiter=self.iterations, init=init,
                                     mutation=self.mutation, recombination=self.recombination,
                                     rng=rng, polish=False, vectorized=True, updating="deferred",
                                     tol=0.0, atol=0.0, callback=stop)
        best = torch.as_tensor(hit.get("x", res.x), dtype=xi.dtype, device=xi.device)[None]
        return self._apply(xi, lo, hi, best)[0], nfev, int(res.nit)
