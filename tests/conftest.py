"""Shared fixtures."""
import pytest
import torch

from robustsuite.runtime import seed_everything


@pytest.fixture
def one_thread_seeded():
    """Seed 0 and one intra-op thread for the test. The models in such tests are tiny: threads only
    add synchronization, and on a shared, loaded 2-core machine spinning OpenMP threads made the
    model tests ~9x slower (measured 48 s vs 5 s)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    seed_everything(0)
    yield
    torch.set_num_threads(threads)
