"""Test-wide settings: one torch thread (2-core CI machines thrash with oversubscription)."""

import os

import pytest
import torch

from edgeres.zoo import create_model
from edgeres.zoo.models import SHIPPED

os.environ.setdefault("OMP_NUM_THREADS", "1")
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _single_thread():
    """Some tests change torch's thread count; put it back for the next one."""
    yield
    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def weights(tmp_path_factory) -> str:
    """The shipped FMNIST weights, or random ones while they are not trained yet."""
    shipped = SHIPPED / "mobilenet_v2_fmnist.pth"
    if shipped.is_file():
        return str(shipped)
    path = tmp_path_factory.mktemp("w") / "mnv2.pth"
    torch.save(create_model("mobilenet_v2_fmnist").state_dict(), path)
    return str(path)
