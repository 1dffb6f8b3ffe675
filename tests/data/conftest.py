import pytest
import torch


@pytest.fixture(autouse=True)
def one_thread():
    """The models here are tiny: one intra-op thread is as fast, and far faster when the machine is shared."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
