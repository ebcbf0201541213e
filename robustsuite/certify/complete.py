"""Complete verification: attack -> bound -> MILP, so that every sample ends verified or falsified
unless the MILP runs out of time.

``Verifier(model, input_shape, method="milp", time_limit=60)`` builds a :class:`CompleteVerifier`
(a :class:`~robustsuite.certify.verifier.Verifier` whose bound method, CROWN by default, gives the
cheap pass and the MILP's big-M constants). ``verify`` decides, per sample:

1. clean prediction wrong -> ``falsified`` (the clean input is the counterexample);
2. PGD (margin loss, restarts) finds a misclassified point of the set -> ``falsified``;
3. IBP or the bound method certifies every margin -> ``verified`` (a sound bound needs no solver);
4. otherwise the MILP of :mod:`robustsuite.certify.milp` solves the margins the bound left open:
   a candidate counterexample is checked by a float64 forward pass (inside the set, misclassified:
   ``falsified``, else ``unknown``); every open margin with a proven dual bound above
   :data:`~robustsuite.certify.milp.VERIFY_TOL` -> ``verified``; the time limit -> ``unknown``.

Only L-inf balls and per-pixel boxes (both clipped to [0, 1]) are exact sets of the MILP.
"""
from __future__ import annotations

import contextlib
import copy
import logging
import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor
from typing import Iterator, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from ..errors import InputError
from ..progress import bar
from ..threats import Box, LinfBall, ThreatModel
from .bounds import canonical_method, compute_bounds, spec_matrix, strict_fp32
from .milp import VERIFY_TOL, encode, extract, solve_task
from .verifier import VerificationResult, Verifier

log = logging.getLogger(__name__)

#: the three statuses of a complete verification
STATUSES = ("verified", "falsified", "unknown")


class CompleteVerifier(Verifier):
    """Exact verification of ReLU networks (see the module docstring for the cascade).

    Args:
        model, input_shape, device: as :class:`Verifier`.
        method: ``milp``.
        time_limit: MILP seconds per sample (all its open margins together); a sample whose MILP
            stops there without a decision is ``unknown``.
        bounds: the bound method of the cheap pass and of the big-M constants, ``crown`` (default)
            or ``alpha-crown``; the pre-activation bounds are auto_LiRPA's CROWN bounds of every
            ReLU input, intersected with interval arithmetic on the exact float64 expressions.
        attack_steps, attack_restarts: the PGD of the first pass (0 steps: no attack).
        workers: processes solving MILPs in parallel (HiGHS is single-threaded per problem);
            1 solves in this process.
        quiet: no progress bar.
        **kwargs: passed to :class:`Verifier` (``max_batch``, ``alpha_iterations``...).
    """

    def __init__(self, model: nn.Module, input_shape: Sequence[int], method: str = "milp",
                 device: str | torch.device = "auto", *, time_limit: float = 60.0, bounds: str = "crown",
                 attack_steps: int = 50, attack_restarts: int = 2, workers: int = 1, quiet: bool = True,
                 **kwargs):
        if not isinstance(method, str) or method.strip().lower() != "milp":
            raise InputError(f"method: CompleteVerifier takes method 'milp', got {method!r}")
        bound_method = canonical_method(bounds)
        if bound_method not in ("crown", "alpha-crown"):
            raise InputError(f"bounds: the MILP's big-M constants need 'crown' or 'alpha-crown' bounds, got "
                             f"{bounds!r} (IBP's intermediate bounds are too loose)")
        if not float(time_limit) > 0:
            raise InputError(f"time_limit: must be > 0 seconds, got {time_limit!r}")
        if int(attack_steps) < 0 or int(attack_restarts) < 1:
            raise InputError("attack_steps must be >= 0 and attack_restarts >= 1")
        if int(workers) < 1:
            raise InputError(f"workers: must be >= 1, got {workers!r}")
        self.bound_method = bound_method
        self.time_limit = float(time_limit)
        self.attack_steps, self.attack_restarts = int(attack_steps), int(attack_restarts)
        self.workers, self.quiet = int(workers), bool(quiet)
        super().__init__(model, input_shape, method=bound_method, device=device, **kwargs)
        self.method = "milp"

    @contextlib.contextmanager
    def _bounding(self) -> Iterator[None]:
        """The parent's graph building and bounding read ``self.method``: the bound method there."""
        saved, self.method = self.method, self.bound_method
        try:
            yield
        finally:
            self.method = saved

    def refresh(self) -> None:
        """Rebuild the bounded graph (checked for the bound method), then the exact network of the
        MILP from it (refusing operations the encoding cannot express)."""
        with self._bounding():
            super().refresh()
        dummy = torch.zeros(2, *self.input_shape, device=self.device, dtype=self.dtype)
        self._net = extract(self._bm, dummy)

    def _compute(self, x, threat, **kw):
        with self._bounding():
            return super()._compute(x, threat, **kw)

    # ------------------------------------------------------------------------------------ checks
    def _float64(self) -> nn.Module:
        return copy.deepcopy(self.model).to(torch.float64).eval()

    def _misclassified(self, model64: nn.Module, cand: Tensor, y: Tensor, lo: Tensor, hi: Tensor) -> Tensor:
        """(B,) bool: ``cand`` lies in ``[lo, hi]`` and both the float64 model and the model in its own
        dtype put some wrong class strictly above ``y`` there."""
        inside = ((cand >= lo) & (cand <= hi)).flatten(1).all(1)
        with torch.no_grad():
            z64 = model64(cand.to(torch.float64))
            z = self.model(cand)
        def wrong(z):
            zy = z.gather(1, y[:, None])
            other = z.scatter(1, y[:, None], float("-inf"))
            return (other > zy).any(1)
        return inside & wrong(z64) & wrong(z)

    # ------------------------------------------------------------------------------------ verify
    def verify(self, x: Tensor, y: Tensor, threat: ThreatModel) -> VerificationResult:
        """Verify, falsify or leave unknown every sample (see the module docstring).

        Returns a :class:`VerificationResult` with ``status`` (B strings: verified / falsified /
        unknown), ``counterexample`` (B, C, H, W; NaN where not falsified), ``certified`` (= verified),
        ``margin_lower`` (B, K-1: the bound method's lower bounds, raised to the MILP's proven dual
        bound minus VERIFY_TOL where it ran) and ``seconds`` (B,) of MILP time per sample.
        """
        if not isinstance(threat, (LinfBall, Box)):
            raise InputError(f"threat: method 'milp' is exact for LinfBall and Box sets only, got "
                             f"{type(threat).__name__}; use a bound method ('crown') for L2/L1 balls")
        x, y = self._check_xy(x, y)
        threat = self._check_threat(threat, x)
        self._sync(x)
        B = x.shape[0]
        lo, hi = threat.bounds(x)
        lo, hi = lo.detach(), hi.detach()
        status = np.array(["unknown"] * B, dtype=object)
        cex = torch.full_like(x, float("nan"))
        seconds = torch.zeros(B, dtype=torch.float64)
        was_training = self.model.training
        self.model.eval()
        model64 = self._float64()
        try:
            with bar(total=B, desc="complete verification", quiet=self.quiet) as pbar:
                def mark(idx: Tensor, what: str, points: Tensor | None = None) -> None:
                    if idx.numel():
                        status[idx.cpu().numpy()] = what
                        if points is not None:
                            cex[idx] = points
                        pbar.update(int(idx.numel()))
                        pbar.set_postfix({s: int((status == s).sum()) for s in STATUSES})

                # 1. the clean prediction
                with torch.no_grad():
                    clean = torch.cat([self.model(x[i:i + self.max_batch]).argmax(1)
                                       for i in range(0, B, self.max_batch)]) == y
                mark(torch.nonzero(~clean).flatten(), "falsified", x[~clean])
                open_ = torch.nonzero(clean).flatten()
                # 2. PGD
                if self.attack_steps and open_.numel():
                    from ..attacks import PGD
                    sub = threat[open_] if isinstance(threat, Box) else threat
                    adv = PGD(self.model, sub, steps=self.attack_steps, restarts=self.attack_restarts,
                              loss="margin", seed=0).run(x[open_], y[open_]).x_adv.detach()
                    broken = self._misclassified(model64, adv, y[open_], lo[open_], hi[open_])
                    mark(open_[broken], "falsified", adv[broken])
                    open_ = open_[~broken]
                # 3. the bound method, with the pre-activation bounds for the MILP
                margin_lower = torch.full((B, self.num_classes - 1), float("-inf"), dtype=x.dtype, device=x.device)
                pre: dict[str, tuple[Tensor, Tensor]] = {}
                if open_.numel():
                    ml, pre = self._bounds_and_pre(x[open_], y[open_], threat, open_)
                    margin_lower[open_] = ml
                    proved = (ml > 0).all(1)
                    mark(open_[proved], "verified")
                    keep = ~proved
                    pre = {k: (a[keep], b[keep]) for k, (a, b) in pre.items()}
                    open_ = open_[keep]
                # 4. the MILP
                if open_.numel():
                    self._milp(x, y, lo, hi, open_, margin_lower, pre, model64, mark, seconds)
        finally:
            self.model.train(was_training)
        verified = torch.as_tensor(status == "verified", device=x.device)
        return VerificationResult(certified=verified & clean, margin_lower=margin_lower, clean_correct=clean,
                                  method="milp", threat=threat, status=list(status), counterexample=cex,
                                  seconds=seconds)

    def _bounds_and_pre(self, x: Tensor, y: Tensor, threat: ThreatModel, idx: Tensor):
        """Margin lower bounds (b, K-1), the larger of IBP's and the bound method's, and each ReLU
        input's (lower, upper) bounds from the bound method (CROWN: backward bounds of every ReLU
        input, sound in auto_LiRPA 0.3, see shared/notes), per chunk."""
        relus = [s.name for s in self._net.relus]
        outs: list[Tensor] = []
        pre: dict[str, list[tuple[Tensor, Tensor]]] = {r: [] for r in relus}
        for s in range(0, x.shape[0], self.max_batch):
            sl = slice(s, s + self.max_batch)
            t = threat[idx[sl]] if isinstance(threat, Box) else threat
            C = spec_matrix(y[sl], self.num_classes).to(x.dtype)
            # IBP first (it is at times tighter than CROWN on IBP-trained models, and both are sound,
            # so the larger bound counts); the bound method last, whose intermediate bounds are read
            with strict_fp32():
                ibp, _ = compute_bounds(self._bm, x[sl], t, "ibp", C=C, bound_upper=False)
            lb, _ = self._compute(x[sl], t, C=C, bound_upper=False)
            outs.append(torch.max(lb.detach(), ibp.detach()))
            for r in relus:
                node = self._bm[r].inputs[0]
                lo, up = getattr(node, "lower", None), getattr(node, "upper", None)
                if lo is None or up is None:  # not bounded by auto_LiRPA: interval arithmetic alone
                    lo = torch.full((lb.shape[0], *node.output_shape[1:]), float("-inf"), dtype=x.dtype)
                    up = torch.full_like(lo, float("inf"))
                pre[r].append((lo.detach().flatten(1), up.detach().flatten(1)))
        return torch.cat(outs), {r: (torch.cat([a for a, _ in v]), torch.cat([b for _, b in v]))
                                 for r, v in pre.items()}

    def _milp(self, x, y, lo, hi, idx, margin_lower, pre, model64, mark, seconds) -> None:
        """Build one problem per open sample, solve its open margins (in ``workers`` processes),
        check every candidate counterexample in float64."""
        K = self.num_classes
        tasks = []
        for n, i in enumerate(idx.tolist()):
            ml = margin_lower[i].cpu().numpy()
            cols = [m for m in np.argsort(ml, kind="stable") if ml[m] <= 0]
            yi = int(y[i])
            classes = [int(m if m < yi else m + 1) for m in cols]
            p = {k: (a[n].cpu().double().numpy(), b[n].cpu().double().numpy()) for k, (a, b) in pre.items()}
            prob = encode(self._net, lo[i].flatten().cpu().double().numpy(), hi[i].flatten().cpu().double().numpy(), p)
            tasks.append((prob, yi, classes, self.time_limit))
        if self.workers > 1 and len(tasks) > 1:
            ctx = multiprocessing.get_context("fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn")
            with ProcessPoolExecutor(max_workers=min(self.workers, len(tasks)), mp_context=ctx) as pool:
                results = pool.map(solve_task, tasks)
                self._collect(results, x, y, lo, hi, idx, margin_lower, model64, mark, seconds, tasks)
        else:
            self._collect(map(solve_task, tasks), x, y, lo, hi, idx, margin_lower, model64, mark, seconds, tasks)

    def _collect(self, results, x, y, lo, hi, idx, margin_lower, model64, mark, seconds, tasks) -> None:
        for i, task, res in zip(idx.tolist(), tasks, results):
            yi, classes = task[1], task[2]
            seconds[i] = sum(r.seconds for r in res)
            for r in res:
                m = r.j if r.j < yi else r.j - 1
                if np.isfinite(r.dual_bound):
                    margin_lower[i, m] = max(float(margin_lower[i, m]), r.dual_bound - VERIFY_TOL)
            cand = next((r.candidate for r in res if r.candidate is not None), None)
            one = torch.tensor([i], device=x.device)
            if cand is not None:
                point = torch.as_tensor(cand, dtype=x.dtype, device=x.device).view(1, *x.shape[1:])
                point = torch.min(torch.max(point, lo[i:i + 1]), hi[i:i + 1])
                if bool(self._misclassified(model64, point, y[i:i + 1], lo[i:i + 1], hi[i:i + 1])[0]):
                    mark(one, "falsified", point)
                    continue
                log.warning("sample %d: the MILP's candidate counterexample is not misclassified by the float64 "
                            "model (margin %.3g); status unknown", i, res[-1].value)
                mark(one, "unknown")
                continue
            proven = {r.j for r in res if r.proven}
            mark(one, "verified" if all(j in proven for j in classes) else "unknown")
