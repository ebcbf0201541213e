"""Complete verification by MILP (robustsuite.certify.milp / complete): statuses against brute force,
agreement with PGD and CROWN, time-outs, the encodings against the torch forward, refusals."""
from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from scipy.optimize import linprog
from torch import nn

from robustsuite.attacks import PGD
from robustsuite.certify import CompleteVerifier, Verifier
from robustsuite.certify.milp import encode, extract, solve_margin
from robustsuite.errors import InputError, UnsupportedModelError
from robustsuite.threats import Box, L2Ball, LinfBall


# ----------------------------------------------------------------------------------- brute force
def _layers(mlp: nn.Sequential) -> list[tuple[np.ndarray, np.ndarray]]:
    return [(m.weight.detach().double().numpy(), m.bias.detach().double().numpy())
            for m in mlp if isinstance(m, nn.Linear)]


def exact_min_margins(mlp: nn.Sequential, lo: np.ndarray, hi: np.ndarray, y: int) -> np.ndarray:
    """The exact minimum over the box of every logit difference z_y - z_j (inf at j = y), by
    enumerating the activation patterns of the linear regions that meet the box (one LP each).
    Neurons whose sign is fixed over the whole box are not enumerated; infeasible regions are skipped."""
    layers = _layers(mlp)
    K = layers[-1][0].shape[0]
    best = np.full(K, np.inf)
    box = list(zip(lo, hi))
    n = lo.shape[0]

    def rec(l, A, c, G, h):
        W, b = layers[l]
        Z, z = W @ A, W @ c + b
        if l == len(layers) - 1:
            for j in range(K):
                if j == y:
                    continue
                r = linprog(Z[y] - Z[j], A_ub=G if len(G) else None, b_ub=h if len(h) else None, bounds=box,
                            method="highs")
                if r.status == 0:
                    best[j] = min(best[j], r.fun + z[y] - z[j])
            return
        zmin = z + np.clip(Z, 0, None) @ lo + np.clip(Z, None, 0) @ hi
        zmax = z + np.clip(Z, 0, None) @ hi + np.clip(Z, None, 0) @ lo
        unstable = np.flatnonzero((zmin < 0) & (zmax > 0))
        for pattern in itertools.product([0, 1], repeat=len(unstable)):
            act = zmin >= 0
            act[unstable] = np.array(pattern, bool)
            G2, h2 = list(G), list(h)
            for i, on in zip(unstable, pattern):
                G2.append(-Z[i] if on else Z[i])
                h2.append(z[i] if on else -z[i])
            if len(unstable):
                r = linprog(np.zeros(n), A_ub=np.array(G2), b_ub=np.array(h2), bounds=box, method="highs")
                if r.status != 0:
                    continue
            rec(l + 1, act[:, None] * Z, act * z, G2, h2)

    rec(0, np.eye(n), np.zeros(n), [], [])
    return best


def _mlp(seed: int, d: int, hidden: tuple[int, ...], k: int = 3) -> nn.Sequential:
    torch.manual_seed(seed)
    layers: list[nn.Module] = [nn.Flatten()]
    width = d
    for h in hidden:
        layers += [nn.Linear(width, h), nn.ReLU()]
        width = h
    layers.append(nn.Linear(width, k))
    return nn.Sequential(*layers).eval()


@pytest.mark.parametrize("seed,shape,hidden,eps", [(0, (1, 1, 2), (6, 6), 0.15), (3, (1, 2, 2), (5, 4), 0.1)])
def test_statuses_match_brute_force(seed, shape, hidden, eps):
    d = int(np.prod(shape))
    mlp = _mlp(seed, d, hidden)
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(16, *shape, generator=g)
    y = mlp(x).argmax(1)
    y[:2] = (y[:2] + 1) % 3  # two misclassified samples: falsified by the clean input itself
    v = Verifier(mlp, shape, method="milp", time_limit=20, attack_steps=0)  # no attack: the MILP decides
    res = v.verify(x, y, LinfBall(eps))
    lo, hi = LinfBall(eps).bounds(x)
    exact = [exact_min_margins(mlp, lo[i].flatten().double().numpy(), hi[i].flatten().double().numpy(), int(y[i]))
             for i in range(16)]
    checked = 0
    for i, m in enumerate(exact):
        if np.abs(m[np.isfinite(m)]).min() < 1e-3:
            continue  # too close to the boundary for float32 vs float64 to agree
        checked += 1
        want = "verified" if m.min() > 0 else "falsified"
        assert res.status[i] == want, (i, m, res.status[i])
    assert checked >= 12
    statuses = set(res.status)
    assert {"verified", "falsified"} <= statuses, statuses  # the nets exercise both outcomes
    assert res.status[0] == res.status[1] == "falsified"
    fals = torch.tensor([s == "falsified" for s in res.status])
    cex = res.counterexample
    assert torch.isnan(cex[~fals]).all() and not torch.isnan(cex[fals]).any()
    assert ((cex[fals] >= lo[fals]) & (cex[fals] <= hi[fals])).all()
    assert (mlp(cex[fals]).argmax(1) != y[fals]).all()
    assert torch.equal(res.certified, torch.tensor([s == "verified" for s in res.status]))


def test_pgd_and_crown_agree_with_milp():
    """MILP never verifies a sample PGD breaks, and verifies every sample CROWN certifies."""
    mlp = _mlp(5, 4, (8, 8))
    x = torch.rand(40, 1, 2, 2, generator=torch.Generator().manual_seed(5))
    y = mlp(x).argmax(1)
    threat = LinfBall(0.2)
    res = Verifier(mlp, (1, 2, 2), method="milp", time_limit=20, attack_steps=0).verify(x, y, threat)
    broken = PGD(mlp, threat, steps=50, restarts=3, loss="margin").run(x, y).success
    crown = Verifier(mlp, (1, 2, 2), method="crown").verify(x, y, threat).certified
    verified = torch.tensor([s == "verified" for s in res.status])
    assert broken.any() and crown.any() and (verified & ~crown).any()  # MILP decides beyond CROWN
    assert not (verified & broken).any()
    assert (verified | ~crown).all()
    assert "unknown" not in res.status


def _pocket(dip: float) -> nn.Sequential:
    """2 inputs, classes 0/1; margin z0 - z1 = 0.1 - dip * tent(x0) with a tent of height 1 on the
    narrow interval [0.598, 0.602] of x0 (peak at 0.6): a pocket that gradients from outside never see."""
    lin1 = nn.Linear(2, 3)
    lin2 = nn.Linear(3, 2)
    with torch.no_grad():
        lin1.weight.copy_(torch.tensor([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0]]))
        lin1.bias.copy_(torch.tensor([-0.598, -0.600, -0.602]))
        s = dip / 0.002
        lin2.weight.copy_(torch.tensor([[-s, 2 * s, -s], [0.0, 0.0, 0.0]]))
        lin2.bias.copy_(torch.tensor([0.1, 0.0]))
    return nn.Sequential(nn.Flatten(), lin1, nn.ReLU(), lin2).eval()


def test_hand_built_pocket_falsified_and_verified():
    x = torch.tensor([[[[0.5, 0.5]]], [[[0.3, 0.5]]]])
    y = torch.tensor([0, 0])
    threat = LinfBall(0.11)   # sample 0 reaches the pocket, sample 1 does not
    deep = Verifier(_pocket(0.4), (1, 1, 2), method="milp", time_limit=10).verify(x, y, threat)
    assert deep.status == ["falsified", "verified"]
    assert 0.598 <= float(deep.counterexample[0, 0, 0, 0]) <= 0.602
    shallow = Verifier(_pocket(0.05), (1, 1, 2), method="milp", time_limit=10).verify(x, y, threat)
    assert shallow.status == ["verified", "verified"]   # the dip stays above 0: exact, not relaxed
    crown = Verifier(_pocket(0.05), (1, 1, 2), method="crown").verify(x, y, threat)
    assert not bool(crown.certified[0])                  # CROWN alone could not


def test_time_limit_gives_unknown():
    """A net whose MILP takes seconds: a 1 ms limit leaves the sample unknown (never a guess), a
    generous one verifies it."""
    mlp = _mlp(7, 6, (40, 40, 40), k=4)
    with torch.no_grad():
        for m in mlp:
            if isinstance(m, nn.Linear):
                m.weight.normal_(0, 1.5 / m.in_features ** 0.5)
                m.bias.normal_(0, 0.1)
    x = torch.rand(6, 1, 2, 3, generator=torch.Generator().manual_seed(7))[:1]
    y = mlp(x).argmax(1)
    res = Verifier(mlp, (1, 2, 3), method="milp", time_limit=1e-3, attack_steps=0).verify(x, y, LinfBall(0.1))
    assert res.status == ["unknown"]
    assert torch.isnan(res.counterexample).all() and not bool(res.certified[0])
    full = Verifier(mlp, (1, 2, 3), method="milp", time_limit=30, attack_steps=0).verify(x, y, LinfBall(0.1))
    assert full.status == ["verified"] and float(full.seconds[0]) > 0.05


class _Net(nn.Module):
    """Conv + BN + residual addition + average pooling + flatten + linear."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 3, 3, padding=1)
        self.bn = nn.BatchNorm2d(3)
        self.conv2 = nn.Conv2d(3, 3, 3, padding=1, bias=False)
        self.pool = nn.AvgPool2d(2)
        self.fc = nn.Linear(12, 4)

    def forward(self, x):
        h = torch.relu(self.bn(self.conv(x)))
        h = h + torch.relu(self.conv2(h))
        return self.fc(self.pool(h).flatten(1))


def test_encoding_matches_forward():
    torch.manual_seed(0)
    net = _Net()
    with torch.no_grad():
        net.bn.running_mean.uniform_(-0.5, 0.5)
        net.bn.running_var.uniform_(0.5, 2.0)
        net.bn.weight.uniform_(0.5, 1.5)
    net.eval()
    v = Verifier(net, (2, 4, 4), method="milp")
    x = torch.rand(3, 2, 4, 4, generator=torch.Generator().manual_seed(1))
    y = torch.zeros(3, dtype=torch.long)
    _, pre = v._bounds_and_pre(x, y, LinfBall(0.3), torch.arange(3))
    lo, hi = LinfBall(0.3).bounds(x)
    net64 = v._float64()
    unstable = 0
    for i in range(3):
        p = {k: (a[i].double().numpy(), b[i].double().numpy()) for k, (a, b) in pre.items()}
        prob = encode(v._net, lo[i].flatten().double().numpy(), hi[i].flatten().double().numpy(), p,
                      point=x[i].flatten().double().numpy())
        unstable += prob.unstable
        want = net64(x[i:i + 1].double())[0]
        for k in range(1, 4):  # the MILP's z_0 - z_k at the fixed point is the model's
            r = solve_margin(prob, 0, k, time_limit=10)
            assert abs(r.value - float(want[0] - want[k])) < 1e-6
    assert unstable > 10  # the big-M encoding, not just fixed neurons, is what was checked


def test_refusals():
    model = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(8, 3))
    with pytest.raises(UnsupportedModelError, match="MaxPool"):
        Verifier(model.eval(), (1, 4, 4), method="milp")
    mlp = _mlp(0, 2, (4,))
    v = Verifier(mlp, (1, 1, 2), method="milp")
    x = torch.rand(2, 1, 1, 2)
    with pytest.raises(InputError, match="LinfBall and Box"):
        v.verify(x, torch.zeros(2, dtype=torch.long), L2Ball(0.1))
    with pytest.raises(InputError, match="time_limit"):
        Verifier(mlp, (1, 1, 2), method="milp", time_limit=0)
    with pytest.raises(InputError, match="bounds"):
        Verifier(mlp, (1, 1, 2), method="milp", bounds="ibp")
    # a per-pixel box works like the ball it equals
    box = Box((x - 0.1).clamp(0, 1), (x + 0.1).clamp(0, 1))
    y = mlp(x).argmax(1)
    assert v.verify(x, y, box).status == v.verify(x, y, LinfBall(0.1)).status


def test_worker_processes_give_the_same_statuses():
    mlp = _mlp(5, 4, (8, 8))
    x = torch.rand(12, 1, 2, 2, generator=torch.Generator().manual_seed(5))
    y = mlp(x).argmax(1)
    one = Verifier(mlp, (1, 2, 2), method="milp", attack_steps=0).verify(x, y, LinfBall(0.2))
    two = Verifier(mlp, (1, 2, 2), method="milp", attack_steps=0, workers=2).verify(x, y, LinfBall(0.2))
    assert one.status == two.status and (one.seconds > 0).sum() >= 2
    assert torch.equal(torch.isnan(one.counterexample), torch.isnan(two.counterexample))
    with pytest.raises(InputError, match="workers"):
        Verifier(mlp, (1, 2, 2), method="milp", workers=0)
