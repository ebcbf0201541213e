"""Shared fixtures of the attack tests: a small CNN trained once per process on sklearn's digits.

Holds no tests. Imported by the ``test_attacks_*.py`` modules; the training is cached per process
(``functools.lru_cache``), so every module's session fixture reuses one model.
"""
from __future__ import annotations

import functools

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F


@pytest.fixture(autouse=True)
def one_thread():
    """Run each attack test on one intra-op thread (restored afterwards): the tests are small, and
    on a shared 2-core machine OpenMP threads that wait on each other make them many times slower."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


#: Small settings per registered attack, for the tests that run every attack (the threat-set
#: cases of test_attacks_sets.py, make_attack in test_attacks_behaviour.py). Adding an attack to
#: the package = one line here; test_every_registered_attack_has_a_quick_entry fails until it is added.
QUICK_SETTINGS: dict[str, dict] = {
    "fgsm": {},
    "bim": {"steps": 5},
    "pgd": {"steps": 5},
    "mim": {"steps": 5},
    "apgd": {"steps": 8},
    "cw": {"steps": 20, "search_steps": 2, "c": 1.0},
    "boundary": {"max_queries": 200},
    "pixel": {"pixels": 2, "population": 20, "iterations": 3},
    "square": {"n_queries": 50},
    "fab": {"steps": 5, "n_target_classes": 2},
    "autoattack": {"steps": 5, "n_queries": 30, "n_target_classes": 2},
}


def digits_cnn() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(),
        nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.ReLU(),
        nn.Flatten(), nn.Linear(32 * 4 * 4, 64), nn.ReLU(), nn.Linear(64, 10))


@functools.lru_cache(maxsize=None)
def digits() -> tuple[torch.Tensor, torch.Tensor]:
    """All 1797 digits as (N, 1, 8, 8) floats in [0, 1] and (N,) labels."""
    from sklearn.datasets import load_digits
    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16.0
    return x, torch.tensor(d.target, dtype=torch.long)


def _train(model: nn.Module, seed: int, epochs: int) -> nn.Module:
    x, y = digits()
    x, y = x[:1500], y[:1500]
    gen = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        for m in model.modules():
            if hasattr(m, "reset_parameters"):
                m.reset_parameters()
        opt = torch.optim.Adam(model.parameters(), lr=3e-3)
        for _ in range(epochs):
            perm = torch.randperm(len(x), generator=gen)
            for i in range(0, len(x), 64):
                idx = perm[i:i + 64]
                loss = F.cross_entropy(model(x[idx]), y[idx])
                opt.zero_grad()
                loss.backward()
                opt.step()
    for p in model.parameters():
        p.grad = None
    return model


@functools.lru_cache(maxsize=None)
def _trained_cnn(seed: int, epochs: int) -> nn.Module:
    return _train(digits_cnn(), seed, epochs)


def trained_cnn(seed: int = 0, epochs: int = 12) -> nn.Module:
    """The deterministic digits CNN (about 92 % test accuracy), trained once per process. Shared by
    every test of a worker, so the parameter gradients a reference library leaves behind (torchattacks,
    pyautoattack call backward() through the parameters) are cleared each time it is handed out: tests
    that check an attack leaves no gradient must not depend on which test ran before."""
    model = _trained_cnn(seed, epochs)
    for p in model.parameters():
        p.grad = None
    return model


def fit_natural(model: nn.Module, x: torch.Tensor, y: torch.Tensor, epochs: int) -> nn.Module:
    """Plain cross-entropy training (Adam 3e-3, batches of 64, permutations from the global RNG: seed
    it first); returns the model in eval mode."""
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(epochs):
        perm = torch.randperm(x.shape[0])
        for i in range(0, x.shape[0], 64):
            idx = perm[i:i + 64]
            opt.zero_grad()
            F.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
    return model.eval()


def held_out(n: int = 128) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``n`` held-out digits (never used in training)."""
    x, y = digits()
    return x[1500:1500 + n].clone(), y[1500:1500 + n].clone()



class NoisyInput(nn.Module):
    """A stochastic model: Gaussian noise of std ``sigma`` added to the input of ``inner`` on every
    forward pass, independently per sample (Learn2Perturb / PNI-style noise injection, kept on). It
    declares its noise (``is_stochastic``) as robustsuite's noise layers do: the verifier refuses it and
    the evaluator treats it as stochastic without the determinism probe."""

    is_stochastic = True

    def __init__(self, inner: nn.Module, sigma: float = 0.1):
        super().__init__()
        self.inner = inner
        self.sigma = sigma

    def forward(self, x):
        return self.inner(x + self.sigma * torch.randn_like(x))


class Counting(nn.Module):
    """Passes ``inner``'s logits through and counts the calls and rows it receives."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner, self.calls, self.rows = inner, 0, 0

    def forward(self, x):
        self.calls += 1
        self.rows += x.shape[0]
        return self.inner(x)


class LabelOnly(nn.Module):
    """Exposes only the top-1 label of ``inner`` (as a one-hot, no gradient) and counts rows."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner
        self.rows = 0
        self.calls = 0

    def forward(self, x):
        self.rows += x.shape[0]
        self.calls += 1
        with torch.no_grad():
            labels = self.inner(x).argmax(1)
        return F.one_hot(labels, 10).to(x.dtype)
