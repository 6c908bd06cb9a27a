import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny tensors run fastest (and steadiest on a shared machine) on one thread."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
