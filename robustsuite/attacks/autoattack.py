"""AutoAttack: the parameter-free ensemble of APGD-CE, APGD-T, FAB-T and Square, run in cascade.

Croce & Hein, "Reliable evaluation of adversarial robustness with an ensemble of diverse
parameter-free attacks", ICML 2020 [https://arxiv.org/abs/2003.01690]. The reference
implementation is ``pyautoattack`` 0.2.0 (``autoattack.py``), whose versions and component
settings are followed here; every difference is written down next to the code.

Usage::

    aa = AutoAttack(model, LinfBall(8 / 255))                  # version="standard"
    res = aa.run(x, y)                                          # the usual AttackResult
    res.extras["names"]       # ['apgd-ce', 'apgd-t', 'fab-t', 'square']
    res.extras["broken_by"]   # (B,) long: index into names; -1 robust; -2 misclassified at x
    x_adv = aa(x, y)                                            # adversarial batch only

    AutoAttack(noisy_model, LinfBall(8 / 255), version="rand")  # APGD-CE + APGD-DLR, EOT over 20 draws
    AutoAttack(model, L2Ball(0.5), version="custom", attacks=["apgd-ce", "square"])

By name: ``make_attack("autoattack", model, threat, version=...)``; in a suite
``- {name: autoattack, norm: linf, eps: [0.1]}`` (on a stochastic model the suite's EOT run of the
item, ``autoattack+eot``, is version ``rand`` with the suite's ``eot.samples`` draws); on the CLI
``robustsuite attack CKPT --attack autoattack --eps 0.1``.
"""
from __future__ import annotations

import time
import warnings
from typing import Any, Callable, ClassVar, Sequence

import torch
from torch import Tensor

from ..errors import InputError, InputTypeError
from ..threats import ThreatModel
from .base import Attack, AttackResult, Perturbation, check_bool, check_int, check_optional_int
from .eot import outputs_vary
from .registry import register_attack

__all__ = ["AutoAttack", "COMPONENTS", "VERSIONS", "NOT_BROKEN", "CLEAN_MISCLASSIFIED", "ROBUST_LABEL",
           "CLEAN_LABEL", "RAND_EOT"]

#: the components AutoAttack knows by name (the reference's names), in the reference's ``plus`` order
COMPONENTS: tuple[str, ...] = ("apgd-ce", "apgd-dlr", "fab", "square", "apgd-t", "fab-t")
#: the versions: ``standard``, ``rand`` (stochastic models) and ``custom`` (the ``attacks`` list)
VERSIONS: tuple[str, ...] = ("standard", "rand", "custom")
#: ``broken_by`` of a sample no component broke
NOT_BROKEN = -1
#: ``broken_by`` of a sample misclassified without perturbation (not attacked)
CLEAN_MISCLASSIFIED = -2
#: the ``by`` record of a sample no component broke, and of one misclassified without perturbation
ROBUST_LABEL, CLEAN_LABEL = "robust", "clean"

# the reference's _set_version for L-inf and L2 (its L1 list needs APGD-L1, which robustsuite lacks)
_VERSION_ATTACKS = {"standard": ("apgd-ce", "apgd-t", "fab-t", "square"), "rand": ("apgd-ce", "apgd-dlr")}
#: draws per gradient in the ``rand`` version (the reference's ``eot_iter``)
RAND_EOT = 20


@register_attack("autoattack")
class AutoAttack(Attack):
    r"""AutoAttack in the paper 'Reliable evaluation of adversarial robustness with an ensemble of
    diverse parameter-free attacks' (Croce & Hein, ICML 2020) [https://arxiv.org/abs/2003.01690]

    Distance Measure : Linf, L2.

    The cascade: the clean prediction first (a misclassified sample is not attacked), then each
    component in order on the samples still robust only; a sample broken by a component keeps
    that component's point and is not attacked again. Each component runs batched on the
    still-robust rows (one host sync per component, to gather them), never per sample.

    Versions (the reference's ``_set_version`` for L-inf and L2, with its component settings):

    * ``standard``: APGD-CE (100 steps, 1 restart, rho 0.75), APGD-T (targeted DLR, 9 target
      classes, 100 steps, 1 restart), FAB-T (9 targets, 100 steps, 1 restart), Square (5000
      queries, p_init 0.8, margin loss). For deterministic models; it warns (``UserWarning``)
      when two forward passes on the batch differ: use ``rand``.
    * ``rand``: APGD-CE and APGD-DLR (untargeted DLR), 100 steps, 1 restart, each gradient
      averaged over ``eot`` draws (default 20, the reference's ``eot_iter``). For randomized
      defenses: it first checks that two forward passes on the batch differ and refuses a
      deterministic model (``InputError``; use ``standard``).
    * ``custom``: the ``attacks`` list in the given order: names of :data:`COMPONENTS`
      (``apgd-ce``, ``apgd-dlr``, ``fab`` (untargeted, 5 restarts as the reference's ``plus``),
      ``square``, ``apgd-t``, ``fab-t``, with the settings above) or :class:`Attack` instances
      on the same model and threat set (untargeted, or picking their own targets).

    ``run`` returns the usual :class:`AttackResult`; ``success`` is the cascade's decision: the
    sample was misclassified at ``x`` or a component's run succeeded on it (the component's own
    success check, one forward pass on its returned point; for a deterministic model the same as
    a forward on ``x_adv``). ``pred`` is the label that decided it (the clean prediction where no
    component broke the sample), ``queries`` the sum of the components' queries plus the clean
    pass (and the probe's two passes). ``extras``:

    * ``names``: the components in cascade order;
    * ``broken_by``: (B,) long, the index in ``names`` of the component that broke the sample,
      :data:`NOT_BROKEN` (-1) for a robust one, :data:`CLEAN_MISCLASSIFIED` (-2) for one
      misclassified without perturbation;
    * ``component_queries`` / ``component_seconds`` / ``component_attacked``: per component (in
      ``names`` order) the queries it spent (summed over samples), its wall time, and how many
      samples it ran on (0 where none was left);
    * with ``per_attack=True``, ``per_attack_success``: ``{name: (B,) bool}``, each component's own
      success on every clean-correct sample (False on the misclassified ones), as the
      reference's ``run_standard_evaluation_individual``: the cascade's run where the component
      ran, plus one extra run on the clean-correct samples that earlier components broke first;
    * ``records``: what a suite item stores per sample (:meth:`record_names`): ``by`` (the name
      of the component that broke the sample, ``robust`` or ``clean``) and with ``per_attack``
      ``atk/NAME`` (each component's own success).

    In a suite (``- {name: autoattack, norm: linf, eps: [0.1]}``, any setting above as a key) the
    item's columns are ``atk|autoattack|SET`` (the cascade's success: the ``worst|SET`` column
    of the set includes it), ``dist|autoattack|SET``, ``by|autoattack|SET`` and with
    ``per_attack: true`` ``atk|autoattack/NAME|SET`` per component; the report lists
    ``broken|autoattack|SET|NAME``, the share of samples each component broke first. On a
    stochastic model the EOT run ``autoattack+eot`` runs ``rand`` with the suite's ``eot.samples``
    draws (the reference uses 20: set ``eot: {samples: 20}`` for its exact rand) and the plain
    ``standard`` item is marked not applicable (rand is the protocol for randomized defenses); in
    a suite without ``eot`` standard runs and the report warns. A model that declares noise whose
    outputs do not vary gets standard (with the warning) and ``rand`` marked not applicable.

    Differences from the reference (``pyautoattack`` 0.2.0), each also marked in the code:
    the components are robustsuite's (``APGD``, ``FAB``, ``Square``; their own docstrings list
    their differences: random starts, targets stacked in groups, per-sample square positions...);
    L1 is not offered (the reference's L1 ``standard`` uses APGD-L1 with large-eps restarts, which
    robustsuite does not have); the randomness probe runs on the batch being attacked (the
    reference probes the first batch of the data set once, and for ``rand`` does not probe at
    all); ``plus`` is not a version (``custom`` with the six names is); the reference's
    ``check_dynamic`` / ``check_range_output`` model checks are the evaluator's
    (:mod:`robustsuite.eval.checks`), not the attack's; the seed is the same for every component
    (as the reference) but never the wall clock (``seed=None`` draws from torch's global stream).

    Arguments:
        model (nn.Module): model returning logits; its mode is left as it is.
        threat (LinfBall | L2Ball): the perturbation set.
        version (str): 'standard', 'rand' or 'custom'. (Default: 'standard')
        attacks (list | None): with version 'custom', the components in order (names of
            :data:`COMPONENTS` or Attack instances); None otherwise. (Default: None)
        steps (int): iterations of APGD and FAB, >= 1. (Default: 100)
        n_queries (int): Square's queries per sample, >= 1. (Default: 5000)
        n_target_classes (int): target classes of APGD-T and FAB-T, >= 1. (Default: 9)
        eot (int | None): draws per gradient (APGD) and per query (Square) for stochastic
            models, >= 1; None: 20 for 'rand', 1 otherwise. FAB has no EOT mode. (Default: None)
        per_attack (bool): also each component's own success on every clean-correct sample (see
            above; costs the extra runs). (Default: False)
        targeted (bool): must be False (AutoAttack is untargeted; its targeted components pick
            their targets from the true labels). (Default: False)
        max_batch (int | None): most rows per forward pass under EOT. (Default: None = all)
        seed (int | None): seed of every component's random numbers. (Default: 0)

    Shape:
        - x: :math:`(N, C, H, W)` in [0, 1].
        - y: :math:`(N)` true class indices.
        - output: :math:`(N, C, H, W)`, inside the threat set and [0, 1].

    Examples::
        >>> res = AutoAttack(model, LinfBall(8/255)).run(x, y)
        >>> robust = ~res.success          # the ensemble's robust samples
        >>> [res.extras["names"][i] for i in res.extras["broken_by"].tolist() if i >= 0]
    """

    threats: ClassVar[tuple[str, ...]] = ("linf", "l2")
    uses_gradient: ClassVar[bool] = True

    def __init__(self, model, threat: ThreatModel, *, version: str = "standard",
                 attacks: Sequence[str | Attack] | None = None, steps: int = 100, n_queries: int = 5000,
                 n_target_classes: int = 9, eot: int | None = None, per_attack: bool = False,
                 targeted: bool = False, max_batch: int | None = None, seed: int | None = 0):
        super().__init__(model, threat, targeted=targeted, seed=seed)
        if self.targeted:
            raise InputError("targeted: AutoAttack is untargeted (APGD-T and FAB-T pick their own targets from "
                             "the true labels); use targeted=False")
        if not isinstance(version, str) or version.lower() not in VERSIONS:
            raise InputError(f"version: unknown value {version!r}; choose one of: {', '.join(VERSIONS)}")
        self.version = version.lower()
        self.steps = check_int("steps", steps, minimum=1)
        self.n_queries = check_int("n_queries", n_queries, minimum=1)
        self.n_target_classes = check_int("n_target_classes", n_target_classes, minimum=1)
        self.eot = check_optional_int("eot", eot, minimum=1)
        self.per_attack = check_bool("per_attack", per_attack)
        self.max_batch = check_optional_int("max_batch", max_batch, minimum=1)
        self.attacks = self._check_attacks(attacks)
        self.names = self.component_names(self.version, self.attacks)

    # --- settings ---------------------------------------------------------------------------
    def _check_attacks(self, attacks) -> tuple[str | Attack, ...] | None:
        if self.version != "custom":
            if attacks is not None:  # as the reference: the version fixes the list
                raise InputError(f"attacks: the version {self.version!r} fixes its attacks "
                                 f"({', '.join(_VERSION_ATTACKS[self.version])}); to choose them use "
                                 "version='custom'")
            return None
        if attacks is None or isinstance(attacks, (str, bytes)) or not isinstance(attacks, (list, tuple)):
            raise InputError(f"attacks: version 'custom' needs a list of attacks, names among "
                             f"{', '.join(COMPONENTS)} (or Attack instances); got {attacks!r}")
        if not attacks:
            raise InputError(f"attacks: the list is empty; give at least one of {', '.join(COMPONENTS)}")
        out: list[str | Attack] = []
        for i, a in enumerate(attacks):
            if isinstance(a, str):
                name = a.lower().replace("_", "-")
                if name not in COMPONENTS:
                    raise InputError(f"attacks[{i}]: unknown attack {a!r}; choose from: {', '.join(COMPONENTS)}")
                if name in out:
                    raise InputError(f"attacks[{i}]: {name!r} is listed twice; each component runs once")
                out.append(name)
            elif isinstance(a, Attack):
                if a.labels_are_targets:
                    raise InputError(f"attacks[{i}]: {type(a).__name__} is targeted on the given labels; the "
                                     "cascade needs untargeted attacks (or ones picking their own targets)")
                if a.model is not self.model:
                    raise InputError(f"attacks[{i}]: {type(a).__name__} attacks another model; build it on the "
                                     "model AutoAttack evaluates")
                out.append(a)
            else:
                raise InputTypeError(f"attacks[{i}]: expected a name among {', '.join(COMPONENTS)} or an Attack, "
                                     f"got {type(a).__name__}")
        return tuple(out)

    @staticmethod
    def component_names(version: str = "standard", attacks: Sequence[Any] | None = None) -> list[str]:
        """The components' names in cascade order for ``version`` (and ``custom``'s ``attacks``;
        an Attack instance is named by its registered name, else its class name). Validated
        settings assumed; unknown versions give the ``custom`` list."""
        version = str(version).lower()
        if version in _VERSION_ATTACKS:
            return list(_VERSION_ATTACKS[version])
        out = []
        for a in attacks or ():
            name = a.lower().replace("_", "-") if isinstance(a, str) else (type(a).name or type(a).__name__.lower())
            out.append(name if name not in out else f"{name}-{len(out)}")
        return out

    def _draws(self) -> int:
        return self.eot if self.eot is not None else (RAND_EOT if self.version == "rand" else 1)

    def components(self) -> list[Attack]:
        """The component attacks in cascade order, with the reference's settings."""
        from .apgd import APGD
        from .fab import FAB
        from .square import Square

        m, t, s, eot, mb = self.model, self.threat, self.seed, self._draws(), self.max_batch
        build: dict[str, Callable[[], Attack]] = {
            # the reference's APGDAttack: n_restarts 1 (standard, rand), n_iter 100, rho .75
            "apgd-ce": lambda: APGD(m, t, steps=self.steps, restarts=1, loss="ce", rho=0.75, eot=eot,
                                    max_batch=mb, seed=s),
            "apgd-dlr": lambda: APGD(m, t, steps=self.steps, restarts=1, loss="dlr", rho=0.75, eot=eot,
                                     max_batch=mb, seed=s),
            # APGDAttack_targeted: n_restarts 1, n_target_classes 9
            "apgd-t": lambda: APGD(m, t, steps=self.steps, restarts=1, loss="dlr", targeted=True, rho=0.75,
                                   n_target_classes=self.n_target_classes, eot=eot, max_batch=mb, seed=s),
            # FABAttack_PT: untargeted with 5 restarts (plus), FAB-T with 1 restart and 9 targets;
            # alpha_max 0.1, eta 1.05, beta 0.9 are FAB's defaults. No EOT mode (the reference's
            # rand does not use FAB either)
            "fab": lambda: FAB(m, t, targeted=False, steps=self.steps, restarts=5, seed=s),
            "fab-t": lambda: FAB(m, t, targeted=True, n_target_classes=self.n_target_classes, steps=self.steps,
                                 restarts=1, seed=s),
            # SquareAttack: p_init .8, n_queries 5000, 1 restart, margin loss
            "square": lambda: Square(m, t, n_queries=self.n_queries, p_init=0.8, loss="margin", eot=eot,
                                     max_batch=mb, seed=s),
        }
        attacks = _VERSION_ATTACKS.get(self.version) or self.attacks
        return [build[a]() if isinstance(a, str) else a.with_threat(self.threat) for a in attacks]

    # --- the randomness probe ------------------------------------------------------------------
    def _check_randomness(self, x: Tensor) -> None:
        """``rand`` refuses a model whose two forward passes on ``x`` agree; the others warn when
        they differ (:func:`~robustsuite.attacks.eot.outputs_vary`, the evaluator's probe too, as
        the reference's ``check_randomized``)."""
        varies = outputs_vary(self.model, x)
        if self.version == "rand" and not varies:
            raise InputError("version: 'rand' is for randomized models, but two forward passes on the same batch "
                             "gave the same outputs (the model is deterministic); fix: use version='standard'")
        if self.version != "rand" and varies:
            warnings.warn(f"AutoAttack version {self.version!r} on a randomized model (two forward passes on the "
                          "same batch differ): its attacks follow single draws of the randomness and may "
                          "overestimate robustness; use version='rand' (APGD with EOT over 20 draws)",
                          UserWarning, stacklevel=4)

    # --- the cascade -------------------------------------------------------------------------------
    def run(self, x: Tensor, y: Tensor) -> AttackResult:
        """The cascade on ``x`` (B, C, H, W) with true labels ``y`` (B,); see the class docstring."""
        x, y = self._validate(x, y)
        return self._cascade(x, y)

    def _perturb(self, x: Tensor, y: Tensor, generator) -> Perturbation:
        res = self._cascade(x, y)
        return Perturbation(res.x_adv, res.queries, res.steps, res.extras)

    def _cascade(self, x: Tensor, y: Tensor) -> AttackResult:
        B, dev = x.shape[0], x.device
        self._check_randomness(x)
        with torch.no_grad():
            logits = self.model(x)
        if bool((y >= logits.shape[1]).any()):
            raise InputError(f"y: class indices must be < the model's {logits.shape[1]} classes, got max {int(y.max())}")
        pred = logits.argmax(1)
        clean_ok = pred == y
        broken_by = torch.where(clean_ok, NOT_BROKEN, CLEAN_MISCLASSIFIED).to(torch.long)
        queries = torch.full((B,), 3, dtype=torch.long, device=dev)  # the probe's two passes and the clean one
        x_adv = x.clone()
        names = self.names
        comp_queries, comp_seconds, comp_attacked = [0] * len(names), [0.0] * len(names), [0] * len(names)
        per_attack = {n: torch.zeros(B, dtype=torch.bool, device=dev) for n in names} if self.per_attack else None
        steps = 0
        comps = self.components()
        for i, atk in enumerate(comps):
            idx = (broken_by == NOT_BROKEN).nonzero().squeeze(1)    # the still-robust samples: one host sync
            if idx.numel() == 0:
                break
            t0 = time.perf_counter()
            res = atk.run(x[idx], y[idx])
            hit = res.success
            won = idx[hit]
            x_adv[won] = res.x_adv[hit]
            pred[won] = res.pred[hit]
            broken_by[won] = i
            queries.index_add_(0, idx, res.queries)
            steps += res.steps
            comp_queries[i] = int(res.queries.sum())
            comp_attacked[i] = int(idx.numel())
            comp_seconds[i] = time.perf_counter() - t0
            if per_attack is not None:
                per_attack[names[i]][idx] = hit
        if per_attack is not None:
            self._per_attack(x, y, comps, broken_by, per_attack)
        extras = {"names": list(names), "broken_by": broken_by, "component_queries": comp_queries,
                  "component_seconds": comp_seconds, "component_attacked": comp_attacked}
        if per_attack is not None:
            extras["per_attack_success"] = per_attack
        extras["records"] = self._records(names, broken_by, per_attack)
        success = broken_by != NOT_BROKEN
        return AttackResult(x_adv=x_adv, success=success, distance=self._distance(x, x_adv), queries=queries,
                            steps=steps, pred=pred, extras=extras)

    @staticmethod
    def _per_attack(x: Tensor, y: Tensor, comps: list[Attack], broken_by: Tensor,
                    per_attack: dict[str, Tensor]) -> None:
        """Complete each component's own success on every clean-correct sample: run it on those that
        an earlier component broke first (where the cascade did not run it). In place."""
        for i, (name, atk) in enumerate(zip(per_attack, comps)):
            idx = ((broken_by >= 0) & (broken_by < i)).nonzero().squeeze(1)  # broken before component i
            if idx.numel():
                per_attack[name][idx] = atk.run(x[idx], y[idx]).success

    # --- what the registry and the suite read ----------------------------------------------------
    @classmethod
    def eot_settings(cls, samples: int, settings: dict[str, Any]) -> dict[str, Any]:
        """The settings of the suite's EOT run: version 'rand' (from 'standard'; 'custom' keeps its
        list, with EOT in its APGD and Square components), with the suite's ``samples`` draws like every
        other EOT run of the suite (the reference's rand uses 20, ``RAND_EOT``: set the suite's
        ``eot.samples`` to 20 for its exact protocol; 20 draws cost about 4x the demo's 5)."""
        version = str(settings.get("version", "standard")).lower()
        return {"version": "rand" if version == "standard" else version, "eot": samples}

    @classmethod
    def record_names(cls, settings: dict[str, Any]) -> list[str]:
        """``by`` (the component that broke each sample: its name, ``robust`` or ``clean``) and with
        ``per_attack`` one ``atk/NAME`` per component (its own success)."""
        names = cls.component_names(settings.get("version", "standard"), settings.get("attacks"))
        return ["by"] + ([f"atk/{n}" for n in names] if settings.get("per_attack") else [])

    @staticmethod
    def _records(names: list[str], broken_by: Tensor, per_attack: dict[str, Tensor] | None) -> dict[str, Any]:
        """``extras["records"]`` (see :meth:`record_names`); one host transfer."""
        label = {NOT_BROKEN: ROBUST_LABEL, CLEAN_MISCLASSIFIED: CLEAN_LABEL, **dict(enumerate(names))}
        out: dict[str, Any] = {"by": [label[i] for i in broken_by.tolist()]}
        for n, ok in (per_attack or {}).items():
            out[f"atk/{n}"] = ok
        return out
