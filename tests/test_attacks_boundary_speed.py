"""The boundary attack's cheaper walk step changes no result: for a fixed seed, the same points,
queries, steps, stops and model calls as the walk it replaced (``GOLDEN``, recorded from that code,
commit 8e1788a, on a tiny float64 classifier, so that rounding differences between CPUs cannot
flip a label); and the step itself stays cheap: few kernels, no host sync outside check steps."""
from __future__ import annotations

from collections import Counter

import pytest
import torch
import torch.nn as nn
from torch.utils._python_dispatch import TorchDispatchMode

from robustsuite.attacks import BoundaryAttack
from robustsuite.threats import L2Ball

try:
    from test_attacks_support import Counting, digits, held_out, one_thread  # noqa: F401
except ImportError:
    from tests.test_attacks_support import Counting, digits, held_out, one_thread  # noqa: F401


def tiny_model() -> nn.Module:
    """A float64 nearest-class-mean classifier of 1x8x8 digits (logits ``<x, m_k> - |m_k|^2 / 2``
    with the class means ``m_k`` of the training digits): deterministic without training."""
    x, y = digits()
    x, y = x[:1500].flatten(1).double(), y[:1500]
    means = torch.stack([x[y == k].mean(0) for k in range(10)])
    m = nn.Sequential(nn.Flatten(), nn.Linear(64, 10)).double()
    with torch.no_grad():
        m[1].weight.copy_(means)
        m[1].bias.copy_(-0.5 * (means * means).sum(1))
    return m


def data(n: int = 12):
    x, y = held_out(n)
    return x.double(), y


# name -> (attack settings, labels: "model" = the model's own predictions, so every sample walks;
# "true" = the digits' labels, so some samples start adversarial and do not walk)
CONFIGS = {
    # plain walk, budget stops at different steps (start searches of different lengths)
    "default": ({"max_queries": 300, "record_every": 7}, "true"),
    # convergence stops and check steps every 3rd step: compactions mid-walk
    "converging": ({"max_queries": 500, "update_every": 3, "source_step_convergence": 2e-3,
                    "step_adaptation": 2.0}, "model"),
    # a check step every step: both success-rate windows fill, step sizes adapt up and down
    "adapting": ({"max_queries": 600, "update_every": 1, "spherical_step": 0.05, "source_step": 0.05},
                 "model"),
    # eps stops
    "l2_ball": ({"max_queries": 400, "threat": 0.9, "update_every": 4}, "model"),
    # the voting oracle's chunked path (eot 2, max_batch 5)
    "eot": ({"max_queries": 240, "eot": 2, "max_batch": 5}, "model"),
    # targeted from starting points
    "targeted": ({"max_queries": 200, "targeted": True}, "targets"),
}


def run_config(name: str):
    settings, labels = CONFIGS[name]
    settings = dict(settings)
    model = tiny_model()
    x, y = data()
    with torch.no_grad():
        pred = model(x).argmax(1)
    threat = L2Ball(settings.pop("threat")) if "threat" in settings else None
    if labels == "model":
        y = pred
    elif labels == "targets":
        # target: the class of the next sample, which is the start (samples of that class dropped)
        keep = pred.roll(1) != pred
        x, y = x[keep], pred.roll(1)[keep]
        settings["starting_points"] = data()[0].roll(1, 0)[keep]
    counted = Counting(model)
    res = BoundaryAttack(counted, threat, seed=0, **settings).run(x, y)
    return res, counted.calls, counted.rows


def summary(res, calls: int, rows: int) -> dict:
    """What is pinned: exact integers and booleans, and per-sample float fingerprints of x_adv."""
    return {"steps": res.steps, "calls": calls, "rows": rows,
            "queries": res.queries.tolist(), "success": res.success.tolist(),
            "converged": res.extras["converged"].tolist(),
            "history_len": int(res.extras["distance_history"].shape[0]),
            "distance": [round(v, 10) for v in res.distance.tolist()],
            "x_adv_sum": [round(v, 10) for v in res.x_adv.flatten(1).sum(1).tolist()]}


def _bools(s: str) -> list[bool]:
    return [c == "T" for c in s]


# recorded from the walk this replaced (commit 8e1788a) by running run_config / summary there
GOLDEN = {
    'default': {
        'steps': 260,
        'calls': 275,
        'rows': 2715,
        'queries': [1, 300, 300, 300, 300, 300, 300, 300, 1, 300, 300, 1],
        'success': _bools('TTTTTTTTTTTT'),
        'converged': _bools('FFFFFFFFFFFF'),
        'history_len': 39,
        'distance': [
            0.0, 2.3164750229, 3.5800774024, 2.4909646889, 2.8313390689, 3.2901920481,
            2.1029214539, 4.0295384783, 0.0, 2.5605607713, 3.1384633868, 0.0,
        ],
        'x_adv_sum': [
            18.6875, 26.5759011229, 29.7303248033, 26.4180581994, 28.0901936487, 29.5091984185,
            26.6777671909, 32.6431902964, 16.4375, 27.9721723843, 30.9628219555, 20.6875,
        ],
    },
    'converging': {
        'steps': 365,
        'calls': 381,
        'rows': 5886,
        'queries': [500, 500, 500, 500, 500, 500, 500, 500, 500, 500, 374, 500],
        'success': _bools('TTTTTTTTTTTT'),
        'converged': _bools('FFFFFFFFFFTF'),
        'history_len': 38,
        'distance': [
            2.0213783201, 2.4643119556, 2.9487484164, 2.4992688884, 2.7883407256, 1.0715745844,
            1.8049156437, 2.4940806207, 2.0503923495, 2.3583313233, 2.9057317731, 0.2227589579,
        ],
        'x_adv_sum': [
            24.9629036696, 27.3433092388, 28.176166571, 26.1334373742, 28.1037157655, 24.052496434,
            24.7387157365, 28.4521946907, 21.1571878306, 23.9708851217, 27.8105012942, 21.4004298354,
        ],
    },
    'adapting': {
        'steps': 293,
        'calls': 309,
        'rows': 7209,
        'queries': [600, 599, 600, 599, 600, 600, 600, 600, 599, 600, 600, 600],
        'success': _bools('TTTTTTTTTTTT'),
        'converged': _bools('FFFFFFFFFFFF'),
        'history_len': 31,
        'distance': [
            0.2217780835, 1.3758060904, 2.0258366064, 1.7518753247, 1.900107242, 0.4533767875,
            1.132655469, 1.4028399803, 0.6241783451, 1.626662367, 1.9477792388, 0.0559242912,
        ],
        'x_adv_sum': [
            19.2912911326, 23.0867993905, 25.0406143237, 22.7306884085, 24.0391807099, 21.9800181144,
            21.8377579564, 22.9408636644, 17.8833050685, 20.8895586512, 23.0436160005, 20.876088157,
        ],
    },
    'l2_ball': {
        'steps': 309,
        'calls': 325,
        'rows': 4491,
        'queries': [400, 400, 400, 400, 400, 400, 400, 400, 400, 400, 400, 79],
        'success': _bools('FFFFFFFFFFFT'),
        'converged': _bools('FFFFFFFFFFFF'),
        'history_len': 32,
        'distance': [0.9, 0.9, 0.9, 0.9, 0.9, 0.9, 0.9, 0.9, 0.9, 0.9, 0.9, 0.880077669],
        'x_adv_sum': [
            21.4811671877, 21.5277130085, 22.2983367795, 21.0758807946, 23.2645534984, 23.5236804074,
            22.1827014768, 22.0485276367, 18.4873696696, 20.4601771042, 21.06075882, 23.4459765371,
        ],
    },
    'eot': {
        'steps': 97,
        'calls': 606,
        'rows': 2904,
        'queries': [240, 240, 240, 240, 240, 240, 240, 240, 240, 240, 240, 240],
        'success': _bools('TTTTTTTTTTTT'),
        'converged': _bools('FFFFFFFFFFFF'),
        'history_len': 11,
        'distance': [
            2.731804662, 3.1671836695, 3.2188221408, 2.9340427356, 3.0666653644, 1.7187494488,
            2.3481005554, 3.0551183109, 2.8417702462, 2.9778047755, 3.0093649693, 0.6253420279,
        ],
        'x_adv_sum': [
            27.3662571871, 30.1933128484, 29.2681065483, 27.9643659467, 28.9946969017, 25.7943527007,
            26.668729777, 30.6476864952, 22.9375151792, 26.039729849, 28.2343781917, 22.6211024359,
        ],
    },
    'targeted': {
        'steps': 169,
        'calls': 184,
        'rows': 2000,
        'queries': [199, 199, 199, 199, 199, 199, 199, 199, 199, 199],
        'success': _bools('TTTTTTTTTT'),
        'converged': _bools('FFFFFFFFFF'),
        'history_len': 18,
        'distance': [
            1.6792403408, 1.5446498396, 1.4436288662, 1.6006559548, 1.4467315946, 2.7880400827,
            0.9686414289, 1.4799427454, 1.8832346277, 1.4581043287,
        ],
        'x_adv_sum': [
            18.4514465332, 18.750289917, 18.9036407471, 19.4529724121, 20.9723968506, 20.7037353516,
            18.951171875, 17.3125610352, 18.0668334961, 19.4815368652,
        ],
    },
}


@pytest.mark.parametrize("name", list(CONFIGS))
def test_boundary_attack_results_are_those_of_the_walk_it_replaced(name):
    res, calls, rows = run_config(name)
    got, want = summary(res, calls, rows), GOLDEN[name]
    for key in ("steps", "calls", "rows", "queries", "success", "converged", "history_len"):
        assert got[key] == want[key], (name, key)
    for key in ("distance", "x_adv_sum"):
        assert torch.allclose(torch.tensor(got[key], dtype=torch.float64),
                              torch.tensor(want[key], dtype=torch.float64), rtol=0, atol=1e-8), (name, key)


class _OpCounter(TorchDispatchMode):
    """Counts the ATen kernels run under it (what the dispatcher executes, decompositions included)."""

    def __init__(self):
        super().__init__()
        self.ops: Counter[str] = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops[str(func.overloadpacket)] += 1
        return func(*args, **(kwargs or {}))


def test_boundary_walk_step_runs_few_kernels_and_syncs_only_at_check_steps():
    """The per-step cost that is not the model's: ATen kernels per walk step (the difference of two
    runs that differ only in their budget, so the start, line search and final check cancel) and
    host syncs. The walk this replaced ran 53.5 kernels per step, this one 38.8; the model here
    runs 4 of them (view, t, addmm, argmax). A sync (``_local_scalar_dense``: ``bool()``,
    ``.item()``) happens only at check steps, every ``update_every``-th."""
    model = tiny_model()
    x, _ = data()
    with torch.no_grad():
        y = model(x).argmax(1)

    def count(budget: int):
        atk = BoundaryAttack(model, max_queries=budget, source_step_convergence=0.0, seed=0,
                             record_every=10**9)
        with _OpCounter() as c:
            res = atk.run(x, y)
        return res.steps, c.ops

    s1, ops1 = count(150)
    s2, ops2 = count(370)
    assert s2 - s1 == 200
    per_step = {k: (ops2[k] - ops1[k]) / (s2 - s1) for k in set(ops1) | set(ops2)}
    assert sum(per_step.values()) <= 44, sorted(per_step.items(), key=lambda kv: -kv[1])
    syncs = per_step.get("aten._local_scalar_dense", 0) + per_step.get("aten.nonzero", 0)
    assert syncs <= 1 / 10
