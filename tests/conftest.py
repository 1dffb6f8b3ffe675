
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


@pytest.fixture
def count_calls(monkeypatch):
    """`count_calls(module, {"attr": "label", ...})` wraps each attribute so every call appends its label to the returned
    list (the stage tests: a resumed run must call none of them)."""
    def wrap(module, names: dict) -> list:
        calls: list = []
        for attr, label in names.items():
            real = getattr(module, attr)
            monkeypatch.setattr(module, attr, lambda *a, _r=real, _l=label, **k: calls.append(_l) or _r(*a, **k))
        return calls

    return wrap


def make_stale(path) -> None:
    """Rewrite a JSON stage record with a key no run computes (the stage tests' stale case)."""
    import json

    path.write_text(json.dumps({**json.loads(path.read_text()), "key": "0" * 64}))
