
import pytest
import torch

torch.set_num_threads(1)  # tiny tensors: one thread is fastest and never oversubscribes a shared machine


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
