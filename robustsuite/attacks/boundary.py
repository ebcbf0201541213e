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
       ``spherical_step``) followed by a step towards ``x`` (relative size ``source_step``). The
       candidate is labelled every step and accepted when adversarial and closer, so the distance
       never increases; the spherical candidate is labelled only every ``update_every`` steps,
       for the success-rate statistics (as foolbox's ``BoundaryAttack``).
    3. Step-size adaptation at those check steps (foolbox's rule): when the spherical success
       rate over the last 100 checks is > 0.5 both steps are multiplied by ``step_adaptation``,
       < 0.2 divided; when the candidate success rate over the last 30 checks is > 0.25 / < 0.1
       the source step is. A window is used only when full and is cleared after a change.

    Queries: every label the attack asks for counts, ``eot`` per label: the clean check, the
    start search, the line search, each step's candidate and each check step's spherical
    candidate; only samples still walking are forwarded, so the model sees exactly
    ``queries.sum()`` rows (plus ``run``'s final success check, which every attack makes). ``k``
    walk steps cost ``eot * (k + k // update_every)``. A sample walks until its next step would
    exceed ``max_queries`` (at most one label, ``eot`` queries, is left over), or stops earlier
    for one of two reasons: its source step fell below ``source_step_convergence`` (the walk has
    converged: foolbox's stop), or it got within eps of an ``L2Ball`` threat. The batch is
    compacted when samples stop (one host sync per check step that stops some), so stopped
    samples cost no model rows; the proposals' noise is drawn for the whole batch, so a sample's
    walk does not depend on which others still run.

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
        max_queries (int): queries per sample (labels times ``eot``), initialization included,
            >= 1. (Default: 5000)
        spherical_step (float): initial relative orthogonal step, > 0. (Default: 1e-2)
        source_step (float): initial relative step towards x, > 0. (Default: 1e-2)
        step_adaptation (float): factor of the step-size updates, > 1. (Default: 1.5)
        source_step_convergence (float): a sample stops below this source step. (Default: 1e-7)
        update_every (int): steps between check steps (spherical label, statistics, step-size
            update), >= 1. (Default: 10)
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
        >>> res.extras['converged']   # (N,) bool: stopped because the source step converged
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
            # only the starts of samples not adversarial already are labelled (and counted)
            todo = (~already).nonzero().squeeze(1)
            ok = torch.zeros_like(already)
            ok[todo] = self._is_adv(self.predict(sp[todo]), y[todo])
            queries[todo] += self.eot
            found = already | ok
            x0 = torch.where(_col(ok, x), sp, x)
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
        converged = torch.zeros(B, dtype=torch.bool, device=x.device)
        if live.numel() > 0:
            xl, yl = x[live], y[live]
            start = self._line_search(xl, yl, x0[live])
            dist0[live] = torch.linalg.vector_norm((start - xl).flatten(1), dim=1)
            q_l = queries[live] + self.line_search_steps * self.eot
            adv_l, q_l, steps_run, hist_l, conv_l = self._walk(xl, yl, start, q_l, generator)
            converged[live] = conv_l
            final[live] = adv_l
            queries[live] = q_l
            for h in hist_l:
                d = dist0.clone()
                d[live] = h
                history.append(d)
        extras = {"distance_history": torch.stack([dist0] + history), "start_found": found,
                  "converged": converged}
        return Perturbation(final, queries, steps_run, extras)

    def _affordable_steps(self, left: Tensor) -> Tensor:
        """Walk steps (B,) long that ``left`` queries (B,) pay for: step ``t`` (from 1) labels the
        candidate, and when ``t % update_every == 0`` the spherical candidate too, ``eot`` queries
        per label; so ``k`` steps cost ``eot * (k + k // update_every)``. At most one label
        (``eot`` queries) is left over, when the next step would be a check step."""
        labels = left.clamp_min(0).div(self.eot, rounding_mode="floor")
        per_block = self.update_every + 1                      # queries of update_every steps
        blocks, rest = labels.div(per_block, rounding_mode="floor"), labels.remainder(per_block)
        return blocks * self.update_every + rest.clamp_max(self.update_every - 1)

    @staticmethod
    def _step_factors(sph: Tensor, src: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Per-sample factors (B, 1) of the proposal that change only with the step sizes (at check
        steps): ``d = 1 / sqrt(1 + sph^2)``, ``sph * d`` and ``1 - src``."""
        sph, src = sph.unsqueeze(1), src.unsqueeze(1)
        d_fac = torch.rsqrt(sph * sph + 1)
        return d_fac, sph * d_fac, 1 - src

    def _walk(self, x: Tensor, y: Tensor, x_adv: Tensor, queries: Tensor, generator):
        """The boundary walk on samples that all start adversarial (x_adv != x).

        Per step and sample (foolbox's proposal, written with few passes over the data): with
        ``diff = x - x_adv`` and ``eta ~ N(0, I)``, the orthogonal part ``eta' = eta - c diff``
        (``c = <eta, diff> / |diff|^2``) is rescaled to ``sph * |diff|``, and
        ``sph_c = clip(x - d (diff - eta'), 0, 1)`` with ``d = 1 / sqrt(1 + sph^2)``; then
        ``cand = x - k (x - sph_c)`` with ``k = clip((1 - src) |diff| / |x - sph_c|, 0, 1)``, a point
        of the segment from ``sph_c`` to ``x`` (so in [0, 1]) whose distance to ``x`` is exactly
        ``k |x - sph_c|``.

        Only the samples still walking are forwarded: the batch is compacted when a sample's
        budget runs out (known in advance: every walking sample spends the same queries per
        step) and, at check steps, when it converged or got within eps. Returns the final points,
        the queries (B,), the steps run and the distance history (B,) every ``record_every``.

        Cost per step (why it is written this way): about 35 kernels besides the model's (13 of
        them over the (b, D) rows, the Gaussian draw the largest) and no host sync outside check
        steps. Per-sample values are (b, 1) columns, so they broadcast over the rows without
        reshaping ops; the factors that change only with the step sizes are kept between check
        steps, next to dist, so one multiplication gives dist^2, ``sph d dist`` and
        ``(1 - src) dist``; candidates and spherical candidates are written into one (2b, D)
        buffer, so a check step forwards both without a copy; the accepted moves are taken with
        ``lerp_`` by a 0/1 weight, which returns exactly one endpoint (``torch.where`` on (b, D)
        is several times slower on CPU); the success rates come from running counts. The
        arithmetic is that of foolbox's proposal as written above, op for op, so the results do
        not depend on these choices (``tests/test_attacks_boundary_speed.py`` pins them).
        """
        B = x.shape[0]
        ue, eot, rec = self.update_every, self.eot, self.record_every
        shape = (-1,) + tuple(x.shape[1:])
        xf_all = x.flatten(1)
        diff_all = (xf_all - x_adv.flatten(1)).contiguous()      # x - x_adv: the state of the walk
        dist_all = torch.linalg.vector_norm(diff_all, dim=1)      # = ||x_adv - x||
        done_steps = torch.zeros(B, dtype=torch.long, device=x.device)
        converged = torch.zeros(B, dtype=torch.bool, device=x.device)
        budget_steps = self._affordable_steps(self.max_queries - queries)
        eps = float(self.threat.eps) if self.threat is not None else None
        fac, conv = self.step_adaptation, self.source_step_convergence
        def label(rows: Tensor) -> Tensor:   # the oracle's labels as a column (b, 1)
            return self.predict(rows).unsqueeze(1)
        windows = tuple(torch.tensor(v, device=x.device) for v in zip(*self._WINDOWS))
        is_adv_of = torch.eq if self.targeted else torch.ne
        addcmul, vector_norm = torch.addcmul, torch.linalg.vector_norm

        # the walking sub-batch and its per-sample state (rows of the *_all tensors at idx); the
        # step loop updates diff and dist in place
        idx = torch.arange(B, device=x.device)
        if eps is not None:
            idx = idx[dist_all > eps]
        n = idx.numel()
        st = {"x": xf_all[idx], "y": y[idx].unsqueeze(1), "diff": diff_all[idx],
              "sph": x.new_full((n,), self.spherical_step), "src": x.new_full((n,), self.source_step),
              "budget": budget_steps[idx],
              # per window (columns: spherical, candidate): entries since the last clear (foolbox's
              # ArrayQueue) and successes among the entries held (kept as they are written)
              "n": torch.zeros((n, 2), dtype=torch.long, device=x.device),
              "c": torch.zeros((n, 2), dtype=torch.long, device=x.device)}
        d_fac, sd, rest = self._step_factors(st["sph"], st["src"])
        # columns [dist | sph * d | 1 - src]: one multiplication by dist gives the three products
        # a step needs (dist^2, sph * d * dist, (1 - src) * dist)
        st["F"] = torch.cat([dist_all[idx].unsqueeze(1), sd, rest], 1)
        st["d_fac"] = d_fac
        # windows of the last 100 / 30 check steps, rows written in turn (columns: samples)
        # (0/1 as uint8: the success counts subtract the entry a write replaces)
        sph_win = torch.zeros((self._WINDOWS[0][0], n), dtype=torch.uint8, device=x.device)
        step_win = torch.zeros((self._WINDOWS[1][0], n), dtype=torch.uint8, device=x.device)
        # steps at which some walking sample's budget runs out: one host sync, here
        exhaust = sorted(set(st["budget"].tolist()))
        history: list[Tensor] = []
        eta_all = torch.empty_like(xf_all)
        t = 0

        def write_back(rows: Tensor | None = None) -> None:
            sel = slice(None) if rows is None else rows
            diff_all[idx[sel]] = st["diff"][sel]
            dist_all[idx[sel]] = st["F"][sel, 0]
            done_steps[idx[sel]] = t

        def compact(stop: Tensor) -> None:
            nonlocal idx, st, sph_win, step_win
            write_back(stop.nonzero().squeeze(1))
            keep = (~stop).nonzero().squeeze(1)
            idx = idx[keep]
            st = {k: v[keep] for k, v in st.items()}
            sph_win, step_win = sph_win[:, keep], step_win[:, keep]

        stale = True   # the locals below must be re-read from st (after a compaction or a check step)
        b = -1
        while idx.numel() > 0:
            if exhaust and exhaust[0] <= t:   # budgets spent before step t + 1
                compact(st["budget"] <= t)
                exhaust = [e for e in exhaust if e > t]
                stale = True
                continue
            if stale:
                xf, yl, diff, F, d_fac = st["x"], st["y"], st["diff"], st["F"], st["d_fac"]
                dist = F[:, :1]     # the state column, updated in place
                if xf.shape[0] != b:
                    b = xf.shape[0]
                    sub = idx   # the walking rows of the noise
                    # one model call's rows: the candidates, then the spherical candidates; and
                    # the 0/1 weights of the accepted moves
                    rows_buf = torch.empty((2 * b, xf.shape[1]), dtype=xf.dtype, device=xf.device)
                    cand, sph_c = rows_buf[:b], rows_buf[b:]
                    cand_img, rows_img = cand.view(shape), rows_buf.view(shape)
                    take = xf.new_empty((b, 1))
                    prods = xf.new_empty((b, 3))   # F * dist, and views of its columns
                    dist2, scale, keep = prods[:, :1], prods[:, 1:2], prods[:, 2:]
                    work = torch.empty_like(xf)       # elementwise products, then x - sph_c
                stale = False
            t += 1
            check = t % ue == 0
            # orthogonal step of relative size sph on the sphere around x
            # noise drawn for the whole batch and indexed, so that a sample's walk does not
            # depend on which others still walk (the same draws as in a run without them)
            eta_all.normal_(generator=generator)
            eta = eta_all if b == B else eta_all[sub]
            e_d = torch.mul(eta, diff, out=work).sum(1, keepdim=True)   # <eta, diff> (vecdot's ops)
            torch.mul(F, dist, out=prods)
            coef = e_d / dist2.clamp_min_(1e-24)
            orth2 = torch.mul(eta, eta, out=work).sum(1, keepdim=True)   # |eta|^2, then |eta'|^2
            orth2.sub_(coef * e_d).clamp_min_(1e-24)
            scale.mul_(orth2.rsqrt_())           # sph * d * dist / |eta'|
            addcmul(xf, eta, scale, out=sph_c)
            sph_c.addcmul_(diff, addcmul(d_fac, scale, coef), value=-1).clamp_(0, 1)
            # then a step of relative size src towards x
            new_dir = torch.sub(xf, sph_c, out=work)
            new_norm = vector_norm(new_dir, dim=1, keepdim=True).clamp_min_(1e-12)
            keep.div_(new_norm).clamp_(0, 1)     # (1 - src) * dist / |x - sph_c|, clipped
            cand_diff = new_dir.mul_(keep)
            torch.sub(xf, cand_diff, out=cand)
            # the candidate is labelled every step, the spherical candidate only at check steps
            # (its success rate drives the step sizes), both in one model call
            labels = label(rows_img if check else cand_img)
            is_adv = is_adv_of(labels[:b] if check else labels, yl)
            cand_dist = keep.mul_(new_norm)
            torch.logical_and(is_adv, cand_dist < dist, out=take)   # 1: accept the candidate
            diff.lerp_(cand_diff, take)
            dist.lerp_(cand_dist, take)
            if check:
                k = t // ue
                for j, win, new in ((0, sph_win, is_adv_of(labels[b:], yl).squeeze(1)),
                                    (1, step_win, is_adv.squeeze(1))):
                    row = win[(k - 1) % win.shape[0]]
                    st["c"][:, j].sub_(row).add_(new)   # the entry written replaces the oldest one
                    row.copy_(new)
                st["sph"], st["src"] = self._adapt(st, fac, windows)
                st["d_fac"], sd, rest = self._step_factors(st["sph"], st["src"])
                F[:, 1:2], F[:, 2:] = sd, rest
                stale = True
                conv_now = st["src"] < conv
                stop = conv_now if eps is None else conv_now | (dist.squeeze(1) <= eps)
                if bool(stop.any()):          # one host sync per check step
                    converged[idx[conv_now]] = True
                    compact(stop)
            if t % rec == 0:
                history.append(self._merged(dist_all, idx, st["F"][:, 0]))
        if t % rec != 0 or not history:
            history.append(dist_all.clone())  # the history always ends at the final distance
        x_out = (xf_all - diff_all).view_as(x)
        spent = eot * (done_steps + done_steps.div(ue, rounding_mode="floor"))
        return x_out, queries + spent, t, history, converged

    @staticmethod
    def _merged(full: Tensor, idx: Tensor, part: Tensor) -> Tensor:
        out = full.clone()
        out[idx] = part
        return out

    #: per window (spherical, candidate): length, and the success counts above / below which the
    #: step sizes change: rate > 0.5 / < 0.2 of 100, > 0.25 / < 0.1 of 30 (foolbox's thresholds;
    #: for integer counts the same tests as on the float32 rates count / length)
    _WINDOWS = ((100, 50, 20), (30, 7, 3))

    @staticmethod
    def _adapt(st: dict, fac: float, windows: tuple[Tensor, Tensor, Tensor]) -> tuple[Tensor, Tensor]:
        """Step-size adaptation (foolbox's rule) from the success rates of full windows, which are
        then cleared: spherical rate > 0.5 multiplies both steps by ``fac``, < 0.2 divides them;
        candidate rate > 0.25 / < 0.1 scales the source step. Both windows at once: ``st['n']``,
        ``st['c']`` (B, 2) are their entries since the last clear and their success counts;
        ``windows`` is :attr:`_WINDOWS` as three (2,) tensors (lengths, above, below)."""
        n, c = st["n"], st["c"]
        lengths, above, below = windows
        n += 1
        full = n >= lengths
        up, down = full & (c > above), full & (c < below)
        n.masked_fill_(up | down, 0)
        f = torch.where(up, fac, torch.where(down, 1 / fac, 1.0)).to(st["sph"].dtype)
        f_sph, f_src = f.unbind(1)
        return st["sph"] * f_sph, st["src"] * f_sph * f_src


def _col(mask: Tensor, like: Tensor) -> Tensor:
    return mask.view(-1, *([1] * (like.dim() - 1)))

