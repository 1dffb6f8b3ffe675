"""The fused C++ block-sparse decode kernel equals the pure-PyTorch path (compiles on first use: marked slow)."""

import shutil

import pytest
import torch

from sherman.attention import fused
from sherman.attention.sparse import sparse_decode
from sherman.core.attention import AttnContext
from sherman.core.generate import SamplingParams, generate
from sherman.core.model import ModelConfig, Transformer

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("c++") is None and shutil.which("g++") is None, reason="no C++ compiler to build the extension"),
]


def require_extension() -> None:
    """With a compiler present, a build failure is a test failure (not a skip)."""
    assert fused.available(), f"the fused extension failed to build: {fused._FAILED}"


def test_fused_equals_pure_with_padding_and_gqa():
    require_extension()
    torch.manual_seed(0)
    b, hkv, g, t, d, bs = 2, 2, 3, 75, 8, 8
    k, v = torch.randn(b, hkv, t + 5, d), torch.randn(b, hkv, t + 5, d)
    valid = torch.ones(b, t + 5, dtype=torch.bool)
    valid[1, :13] = False
    q = torch.randn(b, hkv * g, 1, d)
    idx = torch.tensor([[[0, 3, 5], [1, 2, 7]], [[0, 1, 2], [4, 5, 6]]])
    assert (sparse_decode(q, k, v, valid, idx, t, bs) - fused.fused_sparse_decode(q, k, v, valid, idx, t, bs)).abs().max() < 1e-5


def test_fused_backend_full_budget_equals_dense():
    require_extension()
    torch.manual_seed(0)
    model = Transformer(ModelConfig(vocab_size=50, dim=32, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=64)).eval()
    prompts = [list(range(3, 40)), list(range(5, 30))]
    params = SamplingParams(max_new_tokens=12, temperature=0.0)
    dense = generate(model, prompts, params)
    sp = generate(model, prompts, params, attn=AttnContext(backend="quest", options={"budget": 1.0, "block_size": 8, "impl": "cpp"}))
    assert sp.tokens == dense.tokens
    assert max(abs(a - b) for ra, rb in zip(sp.logprobs, dense.logprobs) for a, b in zip(ra, rb)) < 1e-5
