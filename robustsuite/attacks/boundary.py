"""The boundary attack: decision-based (top-1 labels only), minimal L2, batched over samples."""
from __future__ import annotations

import torch
from torch import Tensor

from ..errors import InputError, InputTypeError
from ..threats import ThreatModel, check_images
from .base import Attack, Perturbation, check_float, check_int, check_optional_int
from .eot import vote_labels
from .registry import register_attack

__all__ = ["BoundaryAttack"]


@register_attack("boundary")
class BoundaryAttack(Attack):
    r"""Boundary attack in the paper 'Decision-Based Adversarial Attacks: Reliable Attacks Against
    Black-Box Machine Learning Models' [https://arxiv.org/abs/1712.04248]

    Distance Measure : L2

    Decision-based: the model is only asked for its top-1 label (``model(x).argmax(1)``; a model
    that returns one-hot labels or any scores works). Per sample:

    1. Start from an adversarial point: ``x`` itself if already adversarial, else the first of up
       to ``init_attempts`` uniform-noise images that is adversarial (or ``starting_points``),
       then a binary line search (``line_search_steps``) towards ``x``.
    2. Each step proposes an orthogonal step on the sphere around ``x`` (relative size
       ``spherical_step``) followed by a step towards ``x`` (relative size ``source_step``); both
       proposals are labelled in one model call; the candidate is accepted when adversarial and
       closer, so the distance never increases.
    3. Step-size adaptation from success rates (every ``update_every`` steps): spherical success
       rate over the last 100 steps > 0.5 multiplies both steps by ``step_adaptation``, < 0.2
       divides them; candidate success rate over the last 30 steps > 0.25 / < 0.1 scales the source
       step. A sample stops when its source step falls below ``source_step_convergence`` or its
       query budget is spent.

    All samples advance together in batched tensor code; the loop syncs with the host only every
    100 steps, to stop when every sample is done. ``queries`` counts labels asked per sample.

    EOT mode (``eot=n > 1``, for stochastic models): the label oracle is the majority vote of
    ``n`` draws (:func:`~robustsuite.attacks.eot.majority_vote`), for the start, the line
    search, every proposal and the final success check; every draw counts as a query, so a
    label costs ``n`` of ``max_queries``. With ``eot=1`` a noisy model's single draw decides,
    and the attack mostly measures the noise.

    Threat: ``None`` (default) is minimal-perturbation mode (``distance`` = L2 of the adversarial
    found). With ``L2Ball(eps)`` a sample also stops once within eps, and the result is projected
    onto the ball: ``success`` = adversarial with L2 <= eps.

    Arguments:
        model (callable): returns scores (B, K); only their argmax is used.
        threat (L2Ball | None): optional L2 budget. (Default: None)
        max_queries (int): label queries per sample, initialization included, >= 1. (Default: 5000)
        spherical_step (float): initial relative orthogonal step, > 0. (Default: 1e-2)
        source_step (float): initial relative step towards x, > 0. (Default: 1e-2)
        step_adaptation (float): factor of the step-size updates, > 1. (Default: 1.5)
        source_step_convergence (float): a sample stops below this source step. (Default: 1e-7)
        update_every (int): steps between step-size updates, >= 1. (Default: 10)
        init_attempts (int): uniform-noise draws to find a start, >= 1. (Default: 100)
        line_search_steps (int): bisection steps from the start towards x, >= 0 (12 steps leave
            the start within 0.03 % of the segment from the boundary). (Default: 12)
        starting_points (Tensor | None): adversarial starts (B, C, H, W) in [0, 1], e.g. images of
            the target classes for a targeted attack. (Default: None = uniform noise)
        targeted (bool): ``y`` are target labels. (Default: False)
        eot (int): model draws per label (majority vote), >= 1. (Default: 1)
        max_batch (int | None): most rows per model call under EOT. (Default: None = all)
        record_every (int): steps between entries of ``extras['distance_history']``. (Default: 10)
        seed (int | None): seed of the noise and proposals. (Default: 0)

    Shape:
        - x: :math:`(N, C, H, W)` in [0, 1].
        - y: :math:`(N)` class indices.
        - output: :math:`(N, C, H, W)` in [0, 1]; unchanged where no adversarial start was found.

    Examples::
        >>> atk = BoundaryAttack(model, max_queries=5000)
        >>> res = atk.run(x, y)   # res.distance (L2), res.queries, res.extras['distance_history']
    """

    threats = ("l2", "none")
    query_budgets = ("max_queries",)

    def __init__(self, model, threat: ThreatModel | None = None, *, max_queries: int = 5000,
                 spherical_step: float = 1e-2, source_step: float = 1e-2, step_adaptation: float = 1.5,
                 source_step_convergence: float = 1e-7, update_every: int = 10,
                 init_attempts: int = 100, line_search_steps: int = 12,
                 starting_points: Tensor | None = None, targeted: bool = False, eot: int = 1,
                 max_batch: int | None = None, record_every: int = 10, seed: int | None = 0):
        super().__init__(model, threat, targeted=targeted, seed=seed)
        self.max_queries = check_int("max_queries", max_queries, minimum=1)
        self.spherical_step = check_float("spherical_step", spherical_step, strict=True)
        self.source_step = check_float("source_step", source_step, strict=True)
        self.step_adaptation = check_float("step_adaptation", step_adaptation, minimum=1.0, strict=True)
        self.source_step_convergence = check_float("source_step_convergence", source_step_convergence)
        self.update_every = check_int("update_every", update_every, minimum=1)
        self.init_attempts = check_int("init_attempts", init_attempts, minimum=1)
        self.line_search_steps = check_int("line_search_steps", line_search_steps, minimum=0)
        if starting_points is not None and not isinstance(starting_points, Tensor):
            raise InputTypeError(f"starting_points: expected a tensor or None, got {type(starting_points).__name__}")
        self.starting_points = starting_points
        self.record_every = check_int("record_every", record_every, minimum=1)
        self.eot = check_int("eot", eot, minimum=1)
        self.max_batch = check_optional_int("max_batch", max_batch, minimum=1)

    # --- helpers ------------------------------------------------------------------------------
    def predict(self, x: Tensor) -> Tensor:
        """The label oracle (B,): top-1, or with ``eot > 1`` the majority vote of ``eot`` draws."""
        return vote_labels(self.model, x, self.eot, self.max_batch)

    def _is_adv(self, labels: Tensor, y: Tensor) -> Tensor:
        return labels == y if self.targeted else labels != y

    def _start(self, x: Tensor, y: Tensor, generator, queries: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """An adversarial start per sample (x where already adversarial); and which were found."""
        already = self._is_adv(self.predict(x), y)
        queries += self.eot
        if self.starting_points is not None:
            sp = self.starting_points.to(device=x.device, dtype=x.dtype)
            if sp.shape != x.shape:
                raise InputError(f"starting_points: expected shape {tuple(x.shape)}, got {tuple(sp.shape)}")
            check_images(sp, "starting_points")
            ok = self._is_adv(self.predict(sp), y)
            queries += (~already).long() * self.eot
            found = already | ok
            x0 = torch.where(_col(ok & ~already, x), sp, x)
            return x0, found, already
        x0 = x.clone()
        found = already.clone()
        for _ in range(self.init_attempts):
            todo = (~found).nonzero().squeeze(1)  # one host sync per attempt (initialization only)
            if todo.numel() == 0:
                break
            noise = torch.rand((todo.numel(),) + tuple(x.shape[1:]), generator=generator,
                               device=x.device, dtype=x.dtype)
            ok = self._is_adv(self.predict(noise), y[todo])
            queries[todo] += self.eot
            x0[todo[ok]] = noise[ok]
            found[todo[ok]] = True
        return x0, found, already

    def _line_search(self, x: Tensor, y: Tensor, x0: Tensor) -> Tensor:
        """Binary search on the segment [x, x0] (x0 adversarial) for the adversarial point closest
        to x; ``line_search_steps`` label queries per sample."""
        lo = x.new_zeros(x.shape[0])
        hi = x.new_ones(x.shape[0])
        diff = x0 - x
        for _ in range(self.line_search_steps):
            mid = (lo + hi) / 2
            ok = self._is_adv(self.predict(torch.addcmul(x, diff, _col(mid, x))), y)
            hi = torch.where(ok, mid, hi)
            lo = torch.where(ok, lo, mid)
        return torch.addcmul(x, diff, _col(hi, x))

    # --- the attack -------------------------------------------------------------------------------
    @torch.no_grad()
    def _perturb(self, x, y, generator):
        B = x.shape[0]
        queries = torch.zeros(B, dtype=torch.long, device=x.device)
        x0, found, already = self._start(x, y, generator, queries)
        # Line search and walk run only on the samples with an adversarial start that is not x
        # itself: compacted once here (one host sync), so no model row is spent on the others.
        live = (found & ~already).nonzero().squeeze(1)
        final = x.clone()
        dist0 = x.new_zeros(B)
        history: list[Tensor] = []
        steps_run = 0
        if live.numel() > 0:
            xl, yl = x[live], y[live]
            start = self._line_search(xl, yl, x0[live])
            dist0[live] = torch.linalg.vector_norm((start - xl).flatten(1), dim=1)
            q_l = queries[live] + self.line_search_steps * self.eot
            adv_l, q_l, steps_run, hist_l = self._walk(xl, yl, start, q_l, generator)
            final[live] = adv_l
            queries[live] = q_l
            for h in hist_l:
                d = dist0.clone()
                d[live] = h
                history.append(d)
        extras = {"distance_history": torch.stack([dist0] + history), "start_found": found}
        return Perturbation(final, queries, steps_run, extras)

    def _walk(self, x: Tensor, y: Tensor, x_adv: Tensor, queries: Tensor, generator):
        """The boundary walk on samples that all start adversarial (x_adv != x).

        Per step and sample (foolbox's proposal, written with few passes over the data): with
        ``diff = x - x_adv`` and ``eta ~ N(0, I)``, the orthogonal part ``eta' = eta - c diff``
        (``c = <eta, diff> / |diff|^2``) is rescaled to ``sph * |diff|``, and
        ``sph_c = clip(x - d (diff - eta'), 0, 1)`` with ``d = 1 / sqrt(1 + sph^2)``; then
        ``cand = x - k (x - sph_c)`` with ``k = clip((1 - src) |diff| / |x - sph_c|, 0, 1)``, a point
        of the segment from ``sph_c`` to ``x`` (so in [0, 1]) whose distance to ``x`` is exactly
        ``k |x - sph_c|``.
        """
        B = x.shape[0]
        xf = x.flatten(1)
        diff = (xf - x_adv.flatten(1)).contiguous()      # x - x_adv: the state of the walk
        dist = torch.linalg.vector_norm(diff, dim=1)      # = ||x_adv - x||
        dist2 = dist * dist
        sph = x.new_full((B,), self.spherical_step)
        src = x.new_full((B,), self.source_step)
        d_fac, sph_dfac, one_m_src = self._derived(sph, src)
        sph_stats = torch.zeros((100, B), dtype=torch.bool, device=x.device)
        step_stats = torch.zeros((30, B), dtype=torch.bool, device=x.device)
        sph_since = torch.zeros(B, dtype=torch.long, device=x.device)   # step of the last clear
        step_since = torch.zeros(B, dtype=torch.long, device=x.device)
        eps = float(self.threat.eps) if self.threat is not None else None
        # each sample's last step within its query budget (2 labels of eot draws per step)
        per_step = 2 * self.eot
        last_step = (self.max_queries - queries).div(per_step, rounding_mode="floor")
        n_steps = max(0, int(last_step.max()))
        all_within_budget = max(0, int(last_step.min()))  # before this step no budget runs out
        running = torch.ones(B, dtype=torch.bool, device=x.device)      # not converged / not within eps
        if eps is not None:
            running &= dist > eps
        active = running
        active_steps = torch.zeros(B, dtype=torch.long, device=x.device)
        eta = torch.empty_like(xf)                        # work buffers, reused every step
        new_dir = torch.empty_like(xf)
        cand_diff = torch.empty_like(xf)
        proposals = torch.empty((2 * B, xf.shape[1]), dtype=x.dtype, device=x.device)
        sph_c, cand = proposals[:B], proposals[B:]
        images = proposals.view((2 * B,) + tuple(x.shape[1:]))
        fac, conv = self.step_adaptation, self.source_step_convergence
        history = []
        steps_run = 0

        for t in range(n_steps):
            if t >= all_within_budget:
                active = running & (last_step > t)
            # orthogonal step of relative size sph on the sphere around x
            eta.normal_(generator=generator)
            e_d = torch.linalg.vecdot(eta, diff)
            coef = e_d / dist2.clamp_min(1e-24)
            orth2 = torch.linalg.vecdot(eta, eta).sub_(coef * e_d).clamp_min_(1e-24)  # |eta'|^2
            scale = (sph_dfac * dist).mul_(orth2.rsqrt_())
            torch.addcmul(xf, eta, scale.unsqueeze(1), out=sph_c)
            sph_c.addcmul_(diff, torch.addcmul(d_fac, scale, coef).unsqueeze(1), value=-1).clamp_(0, 1)
            # then a step of relative size src towards x
            torch.sub(xf, sph_c, out=new_dir)
            new_norm = torch.linalg.vector_norm(new_dir, dim=1).clamp_min_(1e-12)
            keep = (one_m_src * dist).div_(new_norm).clamp_(0, 1)
            torch.mul(new_dir, keep.unsqueeze(1), out=cand_diff)
            torch.sub(xf, cand_diff, out=cand)

            labels = self.predict(images).view(2, B)           # the labels only
            is_adv = (labels == y) if self.targeted else (labels != y)
            cand_dist = keep.mul_(new_norm)
            accept = is_adv[1] & (cand_dist < dist) & active
            torch.where(accept.unsqueeze(1), cand_diff, diff, out=diff)
            dist = torch.where(accept, cand_dist, dist)
            dist2 = dist * dist
            active_steps += active
            sph_stats[t % 100] = is_adv[0]
            step_stats[t % 30] = is_adv[1]
            steps_run = t + 1
            if steps_run % self.update_every == 0:
                sph, src = self._adapt(sph, src, sph_stats, step_stats, sph_since, step_since, steps_run, fac)
                d_fac, sph_dfac, one_m_src = self._derived(sph, src)
                running = running & (src >= conv)
                if eps is not None:
                    running &= dist > eps
                active = running & (last_step > t) if t >= all_within_budget else running
            if steps_run % self.record_every == 0:
                history.append(dist)
            if steps_run % 100 == 0 and not bool((running & (last_step > steps_run)).any()):
                break

        if steps_run % self.record_every != 0:
            history.append(dist)  # the history always ends at the final distance
        x_out = (xf - diff).view_as(x)
        return x_out, queries + per_step * active_steps, steps_run, history

    @staticmethod
    def _derived(sph: Tensor, src: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Per-sample factors that change only with the step sizes."""
        d_fac = torch.rsqrt(sph * sph + 1)
        return d_fac, sph * d_fac, 1 - src

    @staticmethod
    def _adapt(sph, src, sph_stats, step_stats, sph_since, step_since, t, fac):
        """Step-size adaptation from the success rates of full windows (then cleared)."""
        full = (t - sph_since) >= sph_stats.shape[0]
        p = sph_stats.float().mean(0)
        up, down = full & (p > 0.5), full & (p < 0.2)
        scale = torch.where(up, fac, torch.where(down, 1 / fac, 1.0)).to(sph.dtype)
        sph, src = sph * scale, src * scale
        sph_since.masked_fill_(up | down, t)
        full = (t - step_since) >= step_stats.shape[0]
        p = step_stats.float().mean(0)
        up, down = full & (p > 0.25), full & (p < 0.1)
        src = src * torch.where(up, fac, torch.where(down, 1 / fac, 1.0)).to(src.dtype)
        step_since.masked_fill_(up | down, t)
        return sph, src


def _col(mask: Tensor, like: Tensor) -> Tensor:
    return mask.view(-1, *([1] * (like.dim() - 1)))

