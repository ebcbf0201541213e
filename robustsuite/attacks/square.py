"""The Square attack: score-based black-box random search (L-inf, L2 and per-element Box)."""
from __future__ import annotations

import math

import torch
from torch import Tensor

from ..errors import unknown
from ..threats import L2Ball, ThreatModel
from .base import Attack, Perturbation, check_bool, check_float, check_int, check_optional_int
from .eot import eot_logits, majority_vote
from .gradients import check_label_range
from .losses import get_loss
from .registry import register_attack

__all__ = ["Square", "square_p", "square_side", "meta_pattern"]

# The piecewise-constant schedule of p (the fraction of pixels a square covers) from the paper's
# reference code, written for 10,000 queries: p = p_init / divisor once the (rescaled) iteration
# passes each bound.
_P_SCHEDULE: tuple[tuple[int, int], ...] = (
    (10, 1), (50, 2), (200, 4), (500, 8), (1000, 16), (2000, 32), (4000, 64), (6000, 128),
    (8000, 256))


def square_p(it: int, n_queries: int, p_init: float = 0.8) -> float:
    """The fraction ``p`` of the image a square covers at iteration ``it`` (0-based).

    The schedule is defined over 10,000 queries and rescaled to ``n_queries``: with
    ``t = int(it / n_queries * 10000)``, ``p = p_init`` for ``t <= 10``, halved at each of
    t > 10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000 (``p_init / 512`` beyond 8000).
    """
    t = int(it / n_queries * 10000)
    for bound, divisor in _P_SCHEDULE:
        if t <= bound:
            return p_init / divisor
    return p_init / 512


def square_side(p: float, height: int, width: int, *, l2: bool = False) -> int:
    """Side of the square covering a fraction ``p`` of the ``height x width`` pixels.

    ``round(sqrt(p * h * w))``, at least 1 (L-inf) or 3 and odd (L2, so the meta pattern has a
    centre), at most ``min(h, w)``.
    """
    s = int(round(math.sqrt(p * height * width)))
    if l2:
        s = max(s, 3)
        s += 1 - s % 2
    return max(1, min(s, height, width))


def meta_pattern(s: int, *, device=None, dtype=torch.float32) -> Tensor:
    """The L2 attack's ``(s, s)`` update pattern, unit L2 norm.

    Two halves of opposite sign (rows ``[0, s//2)`` positive, the rest negative), each the sum of
    concentric rectangles around its centre with weight ``1 / (k + 1)^2`` for the ``k``-th ring,
    so a cell at Chebyshev distance ``d`` from its half's centre has value
    ``sum_{k >= d} 1 / (k + 1)^2`` before normalization (paper, Sec. 3.2 and Fig. 2).
    """
    def half(a: int) -> Tensor:
        if a == 0:
            return torch.zeros(0, s, device=device, dtype=dtype)
        i = torch.arange(a, device=device).view(-1, 1)
        j = torch.arange(s, device=device).view(1, -1)
        d = torch.maximum((i - a // 2).abs(), (j - s // 2).abs())
        rings = max(a // 2, s // 2) + 1
        w = 1.0 / (torch.arange(rings, device=device, dtype=dtype) + 1) ** 2
        tail = w.flip(0).cumsum(0).flip(0)                     # tail[d] = sum_{k >= d} w_k
        r = tail[d]
        return r / torch.linalg.vector_norm(r)

    eta = torch.cat([half(s // 2), -half(s - s // 2)])
    return eta / torch.linalg.vector_norm(eta)


def _window(top: Tensor, left: Tensor, s: int, height: int, width: int) -> Tensor:
    """(B, 1, H, W) bool masks of the ``s x s`` squares with per-sample corners ``(top, left)``."""
    r = torch.arange(height, device=top.device)
    c = torch.arange(width, device=top.device)
    rows = (r >= top[:, None]) & (r < top[:, None] + s)
    cols = (c >= left[:, None]) & (c < left[:, None] + s)
    return (rows[:, :, None] & cols[:, None, :]).unsqueeze(1)


def _sq_norm(t: Tensor, dims) -> Tensor:
    return (t * t).sum(dim=dims, keepdim=True)


@register_attack("square")
class Square(Attack):
    r"""Square Attack in the paper 'Square Attack: a query-efficient black-box adversarial attack
    via random search' (Andriushchenko, Croce, Flammarion, Hein, ECCV 2020)
    [https://arxiv.org/abs/1912.00049]

    Distance Measure : Linf, L2 (and a per-element ``Box``, searched like L-inf).

    Score-based random search (Algorithm 1): keep a current point and, per query, change one
    random square window of it; keep the change when the loss improves (or the sample becomes
    adversarial). The square's side follows the fraction ``p`` of :func:`square_p` (the paper's
    piecewise-constant schedule, defined for 10,000 queries and rescaled to ``n_queries``).

    * L-inf / Box: start from vertical stripes (each column of each channel at ``x - eps`` or
      ``x + eps``, random sign); an update sets the window, per channel, to one random vertex
      (``x - eps`` or ``x + eps``; for a ``Box`` its lower or upper bound), side
      :func:`square_side` (at least 1).
    * L2: start from a grid of ``h//5``-sized windows filled with the meta pattern of random sign
      (:func:`meta_pattern`), scaled to norm ``eps``; an update moves the perturbation's mass
      from a second random window into the first, adding a fresh meta pattern (random sign per
      channel, randomly transposed) and rescaling so the whole perturbation keeps norm ``eps``;
      side odd and at least 3.

    Loss (maximized here): ``'margin'`` (the paper's default: ``max_{j != y} z_j - z_y``) or
    ``'ce'``; targeted: ``z_t - max_{j != t} z_j`` or ``-CE(z, t)``.

    Batched over samples, each sample with its own random square positions, signs and pattern
    orientation per query; the loop is over queries. Only samples not yet adversarial are
    queried, so ``queries`` is per sample (1 for the start plus 1 per iteration, each times
    ``eot``); the attack stops when every sample is adversarial.

    EOT mode (``eot=n > 1``, for stochastic models): every oracle call evaluates the model ``n``
    times; the score is the loss averaged over the ``n`` draws (the mean margin, an unbiased
    estimate of the expected margin) and success is the majority vote of the draws' top-1 labels
    (:func:`~robustsuite.attacks.eot.majority_vote`); ``predict`` and the final success check
    use the same vote. Queries count every draw.

    Differences from the reference implementation (``square.py`` of AutoAttack / pyautoattack
    0.2.0): square positions, signs and the pattern's transposition are drawn per sample (the
    reference draws one position per query for the whole batch); corners are uniform over every
    position where the square fits, as in the paper (the reference code draws them from
    ``[0, h - s)``, so its squares never reach the last row and column unless they span the
    image; ``reference_positions=True`` does the same, for cross-checks: on 8x8 digits this
    alone leaves 5-8 points more robust accuracy);
    success is the top-1 label (the reference counts a zero margin as success); the L2 start
    grid keeps only windows that fit in the image; there are no restarts (run again with
    another seed).

    Arguments:
        model (callable): returns logits (B, K); only its outputs are used (no gradients).
        threat (LinfBall | L2Ball | Box): the perturbation set.
        n_queries (int): iterations per sample, >= 1 (the start is one more query). (Default: 5000)
        p_init (float): initial fraction of pixels a square covers, in (0, 1]. (Default: 0.8)
        loss (str): 'margin' or 'ce'. (Default: 'margin')
        targeted (bool): ``y`` are target labels. (Default: False)
        eot (int): model draws per query (majority vote, mean loss), >= 1. (Default: 1)
        max_batch (int | None): most rows per model call under EOT. (Default: None = all)
        reference_positions (bool): draw square corners as the reference code does (see
            above). (Default: False)
        seed (int | None): seed of the start and the squares. (Default: 0)

    Shape:
        - x: :math:`(N, C, H, W)` in [0, 1].
        - y: :math:`(N)` class indices.
        - output: :math:`(N, C, H, W)`, inside the threat set and [0, 1].

    Examples::
        >>> atk = Square(model, LinfBall(8/255), n_queries=1000)
        >>> res = atk.run(x, y)   # res.queries: per-sample queries spent
    """

    threats = ("linf", "l2", "box")
    query_budgets = ("n_queries",)
    losses = ("margin", "ce")

    def __init__(self, model, threat: ThreatModel, *, n_queries: int = 5000, p_init: float = 0.8,
                 loss: str = "margin", targeted: bool = False, eot: int = 1,
                 max_batch: int | None = None, reference_positions: bool = False,
                 seed: int | None = 0):
        super().__init__(model, threat, targeted=targeted, seed=seed)
        self.reference_positions = check_bool("reference_positions", reference_positions)
        self.n_queries = check_int("n_queries", n_queries, minimum=1)
        self.p_init = check_float("p_init", p_init, minimum=0.0, maximum=1.0, strict=True)
        if not isinstance(loss, str) or loss.lower() not in self.losses:
            raise unknown("loss", loss, self.losses)
        self.loss = loss.lower()
        self.eot = check_int("eot", eot, minimum=1)
        self.max_batch = check_optional_int("max_batch", max_batch, minimum=1)

    # --- the oracle ---------------------------------------------------------------------------
    def predict(self, x: Tensor) -> Tensor:
        """Top-1 labels (B,); with ``eot > 1`` the majority vote of ``eot`` draws."""
        return majority_vote(eot_logits(self.model, x, self.eot, self.max_batch))

    def _oracle(self, x: Tensor, y: Tensor, check_labels: bool = False) -> tuple[Tensor, Tensor]:
        """Loss to maximize (B,), averaged over the draws, and success (B,) by majority vote."""
        logits = eot_logits(self.model, x, self.eot, self.max_batch)      # (B, n, K)
        B, n, K = logits.shape
        if check_labels:
            check_label_range(logits[:, 0], y)
        loss = get_loss(self.loss)(logits.reshape(B * n, K), y.repeat_interleave(n),
                                   self.targeted).view(B, n).mean(1)
        return loss, self._is_success(majority_vote(logits), y)

    # --- the algorithm ------------------------------------------------------------------------
    @torch.no_grad()
    def _perturb(self, x, y, generator):
        B = x.shape[0]
        l2 = isinstance(self.threat, L2Ball)
        if l2:
            lo = hi = None
            x_best = self._l2_start(x, generator)
        else:
            lo, hi = (b.detach().expand_as(x).contiguous() for b in self.threat.bounds(x))
            x_best = self._linf_start(x, lo, hi, generator)
        loss_best, done = self._oracle(x_best, y, check_labels=True)
        queries = torch.full((B,), self.eot, dtype=torch.long, device=x.device)

        # The working set: the samples still to fool, compacted (one host sync per iteration,
        # where success is checked anyway) so that no query is spent on a finished sample.
        idx = (~done).nonzero().squeeze(1)
        xs, xb, ys, lb = x[idx], x_best[idx], y[idx], loss_best[idx]
        los, his = (lo[idx], hi[idx]) if lo is not None else (None, None)
        steps = 0
        for it in range(self.n_queries):
            if idx.numel() == 0:
                break
            p = square_p(it, self.n_queries, self.p_init)
            cand = (self._l2_step(xs, xb, p, generator) if l2
                    else self._linf_step(xb, los, his, p, generator))
            loss, ok = self._oracle(cand, ys)
            queries.index_add_(0, idx, torch.full_like(idx, self.eot))
            take = ok | (loss > lb)
            xb = torch.where(take.view(-1, 1, 1, 1), cand, xb)
            lb = torch.maximum(loss, lb)
            steps = it + 1
            if bool(ok.any()):
                x_best[idx] = xb
                keep = ~ok
                idx, xs, xb, ys, lb = idx[keep], xs[keep], xb[keep], ys[keep], lb[keep]
                if los is not None:
                    los, his = los[keep], his[keep]
        if idx.numel():
            x_best[idx] = xb
        return Perturbation(x_best, queries, steps)

    def _corners(self, n: int, s: int) -> int:
        """How many corner positions a side-``s`` square has along an axis of ``n`` pixels."""
        # the reference code draws from [0, n - s): its squares never reach the last row/column
        return max(n - s, 1) if self.reference_positions else n - s + 1

    # --- L-inf / Box ------------------------------------------------------------------------
    def _signs(self, shape, x: Tensor, generator) -> Tensor:
        return torch.randint(0, 2, shape, generator=generator, device=x.device).bool()

    def _linf_start(self, x: Tensor, lo: Tensor, hi: Tensor, generator) -> Tensor:
        """Vertical stripes: each (sample, channel, column) at its lower or upper bound."""
        B, C, _, W = x.shape
        up = self._signs((B, C, 1, W), x, generator)
        return torch.where(up, hi, lo)

    def _linf_step(self, xb: Tensor, lo: Tensor, hi: Tensor, p: float, generator) -> Tensor:
        """``xb`` with one random square per sample set, per channel, to a random vertex."""
        B, C, H, W = xb.shape
        s = square_side(p, H, W)
        top = torch.randint(0, self._corners(H, s), (B,), generator=generator, device=xb.device)
        left = torch.randint(0, self._corners(W, s), (B,), generator=generator, device=xb.device)
        win = _window(top, left, s, H, W)
        up = self._signs((B, C, 1, 1), xb, generator)
        return torch.where(win, torch.where(up, hi, lo), xb)

    # --- L2 ---------------------------------------------------------------------------------
    def _l2_start(self, x: Tensor, generator) -> Tensor:
        """A grid of ``h//5``-sized meta patterns, random sign and orientation per window and
        channel, scaled to L2 norm eps."""
        B, C, H, W = x.shape
        s = max(H // 5, 1)
        nh, nw = H // s, W // s
        top, left = (H - 5 * s) // 2, (W - 5 * s) // 2
        top, left = max(top, 0), max(left, 0)
        nh, nw = min(nh, (H - top) // s), min(nw, (W - left) // s)  # windows that fit
        eta = meta_pattern(s, device=x.device, dtype=x.dtype)
        flip = self._signs((B, 1, nh, nw, 1, 1), x, generator)
        pat = torch.where(flip, eta.t(), eta)                          # (B, 1, nh, nw, s, s)
        sign = self._signs((B, C, nh, nw, 1, 1), x, generator).to(x.dtype) * 2 - 1
        tiles = (pat * sign).permute(0, 1, 2, 4, 3, 5).reshape(B, C, nh * s, nw * s)
        delta = torch.zeros_like(x)
        delta[:, :, top:top + nh * s, left:left + nw * s] = tiles
        return self._l2_point(x, delta)

    def _l2_point(self, x: Tensor, delta: Tensor) -> Tensor:
        norm = _sq_norm(delta, (1, 2, 3)).sqrt()
        return (x + delta * (float(self.threat.eps) / (norm + 1e-12))).clamp(0, 1)

    def _l2_step(self, x: Tensor, xb: Tensor, p: float, generator) -> Tensor:
        """Move the perturbation's mass from a second random window into the first, plus a fresh
        meta pattern, keeping the total L2 norm at eps (then clipped to [0, 1])."""
        B, C, H, W = x.shape
        s = square_side(p, H, W, l2=True)
        eps2 = float(self.threat.eps) ** 2
        dev = x.device
        top1, left1, top2, left2 = (torch.randint(0, self._corners(n, s), (B,), generator=generator, device=dev)
                                    for n in (H, W, H, W))
        w1 = _window(top1, left1, s, H, W)
        w2 = _window(top2, left2, s, H, W)
        delta = xb - x
        in_w1 = delta * w1
        norm_w1 = _sq_norm(in_w1, (2, 3)).sqrt()                       # (B, C, 1, 1)
        norm_both = _sq_norm(delta * (w1 | w2), (2, 3))                 # squared
        room = (eps2 - _sq_norm(delta, (1, 2, 3))).clamp_min(0)         # unused budget, squared
        # the meta pattern placed at each sample's window, optionally transposed
        eta = meta_pattern(s, device=dev, dtype=x.dtype)
        pats = torch.stack([eta, eta.t()])
        flip = self._signs((B,), x, generator).long()
        r = (torch.arange(H, device=dev) - top1[:, None]).clamp(0, s - 1)
        c = (torch.arange(W, device=dev) - left1[:, None]).clamp(0, s - 1)
        placed = pats[flip[:, None, None], r[:, :, None], c[:, None, :]].unsqueeze(1) * w1
        sign = self._signs((B, C, 1, 1), x, generator).to(x.dtype) * 2 - 1
        new = placed * sign + in_w1 / (norm_w1 + 1e-12)
        target = (room / C + norm_both).sqrt()
        new = new * (target / (_sq_norm(new, (2, 3)).sqrt() + 1e-12))
        delta = torch.where(w1, new, delta.masked_fill(w2, 0))
        return self._l2_point(x, delta)
