import pytest
import torch


@pytest.fixture(autouse=True)
def one_torch_thread():
    """These tests run many tiny ops (token-by-token decoding); one intra-op thread avoids thread-sync overhead
    that dominates them on a shared 2-core machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
