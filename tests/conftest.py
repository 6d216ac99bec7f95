"""Test-wide settings: one torch thread (2-core CI machines thrash with oversubscription)."""

import os

import pytest
import torch

os.environ.setdefault("OMP_NUM_THREADS", "1")
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _single_thread():
    """Some tests change torch's thread count; put it back for the next one."""
    yield
    torch.set_num_threads(1)
