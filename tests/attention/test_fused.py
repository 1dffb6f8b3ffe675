"""The fused C++ block-sparse decode kernel equals the pure-PyTorch path (compiles on first use: marked slow)."""

import platform
import shutil

import pytest
import torch

from sherman.attention import fused
from sherman.attention.seer import SeerConfig, SeerGates
from sherman.attention.sparse import quest_scores, select_topk, sparse_decode
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


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_fused_chunks_and_threads_equal_pure(monkeypatch, threads):
    """Many selected blocks split into chunks (some wholly padding), merged, on 1-3 threads: the pure path's numbers."""
    require_extension()
    monkeypatch.setattr(fused, "kernel_threads", lambda kv_bytes: threads)
    torch.manual_seed(1)
    b, hkv, g, d, bs = 2, 2, 4, 64, 16
    t = 40 * bs + 5
    k, v = torch.randn(b, hkv, t + 11, d), torch.randn(b, hkv, t + 11, d)
    valid = torch.ones(b, t + 11, dtype=torch.bool)
    valid[1, :100] = False  # blocks 0-5 of row 1 are all padding, block 6 partly
    q = torch.randn(b, hkv * g, 1, d)
    idx = torch.stack([torch.randperm(40)[:21].sort().values for _ in range(b * hkv)]).view(b, hkv, 21)
    idx[1, 0] = torch.arange(21)  # row 1, head 0: its first chunk (3 blocks) is all padding
    ref = sparse_decode(q, k, v, valid, idx, t, bs)
    got = fused.fused_sparse_decode(q, k, v, valid, idx, t, bs)
    assert (ref - got).abs().max() < 1e-5


def test_kernel_threads_follow_work_and_idle_cores(monkeypatch):
    monkeypatch.setattr(torch, "get_num_threads", lambda: 4)
    monkeypatch.setattr(fused, "idle_cores", lambda: 4.0)
    assert fused.kernel_threads(100) == 1  # less than a MiB to read: no helper thread
    assert fused.kernel_threads(3 * fused.BYTES_PER_THREAD) == 3
    assert fused.kernel_threads(64 * fused.BYTES_PER_THREAD) == 4  # at most torch's thread count
    monkeypatch.setattr(fused, "idle_cores", lambda: 1.2)  # another job holds the other cores
    assert fused.kernel_threads(64 * fused.BYTES_PER_THREAD) == 1


@pytest.mark.parametrize("d,scale,g", [(72, 1.0, 4), (128, 1.0, 4), (128, 6.0, 4), (16, 30.0, 4), (64, 1.0, 6), (64, 1.0, 1)])
def test_fused_vector_paths_and_wide_scores_equal_pure(d, scale, g):
    """The SIMD layer's full-width, unrolled and tail loops (d = 72 has an 8-float tail under AVX-512), and scores
    spread over tens of nats (the vectorised exp near its underflow clamp), and group sizes that are not a multiple of
    the 4-head tiles (g = 6: one tile and two single heads; g = 1): the pure path's numbers."""
    require_extension()
    torch.manual_seed(2)
    b, hkv, bs = 1, 2, 16
    t = 12 * bs + 7
    k, v = torch.randn(b, hkv, t, d) * scale, torch.randn(b, hkv, t, d)
    valid = torch.ones(b, t, dtype=torch.bool)
    valid[0, 20:23] = False  # a few padded slots inside a selected block
    q = torch.randn(b, hkv * g, 1, d) * scale
    idx = torch.tensor([[[0, 1, 4, 9], [2, 3, 7, 11]]])
    ref = sparse_decode(q, k, v, valid, idx, t, bs)
    got = fused.fused_sparse_decode(q, k, v, valid, idx, t, bs)
    assert (ref - got).abs().max() < 1e-5
    assert fused._load().simd_width() in (1, 8, 16)


@pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"), reason="the AVX2 / scalar variants are x86 flags")
@pytest.mark.parametrize("flags,width", [(("-march=x86-64-v3",), 8), (("-march=x86-64",), 1)])
def test_fused_avx2_and_scalar_builds_equal_pure(flags, width):
    """The SIMD layer's other two paths (AVX2 + FMA: 8 lanes; plain x86-64: scalar), built explicitly, on a case with
    a vector tail (d = 72), padding and chunked items."""
    require_extension()
    ext = fused.build(f"sherman_block_sparse_v5_test_w{width}", flags)
    assert ext.simd_width() == width
    torch.manual_seed(3)
    b, hkv, g, d, bs = 2, 2, 4, 72, 16
    t = 20 * bs + 3
    k, v = torch.randn(b, hkv, t, d) * 3, torch.randn(b, hkv, t, d)
    valid = torch.ones(b, t, dtype=torch.bool)
    valid[1, :40] = False
    q = torch.randn(b, hkv * g, 1, d)
    idx = torch.stack([torch.randperm(20)[:9] for _ in range(b * hkv)]).view(b, hkv, 9)
    ref = sparse_decode(q, k, v, valid, idx, t, bs)
    assert (ref - fused.fused_sparse_decode(q, k, v, valid, idx, t, bs, ext=ext)).abs().max() < 1e-5


def test_quest_select_and_topk_select_equal_the_torch_selection():
    """Quest scores + top-k in one C++ call pick the blocks `quest_scores` + `select_topk` pick (over the first nc
    blocks of larger summary buffers, with empty blocks), and `topk_select` equals `select_topk`."""
    require_extension()
    torch.manual_seed(4)
    b, hkv, g, d, nb, nc, k = 2, 3, 4, 24, 40, 33, 7
    q = torch.randn(b, hkv * g, 1, d)
    kmax, kmin = torch.randn(b, hkv, nb, d), torch.randn(b, hkv, nb, d)
    has = torch.ones(b, nb, dtype=torch.bool)
    has[1, :5] = False  # row 1's first five blocks hold only padding
    ref = select_topk(quest_scores(q, kmax[:, :, :nc], kmin[:, :, :nc], has[:, :nc]), k)
    assert torch.equal(fused.quest_select(q, kmax, kmin, has, nc, k), ref)
    scores = torch.randn(b, hkv, nc)
    assert torch.equal(fused.topk_select(scores, k), select_topk(scores, k))
    assert torch.equal(fused.topk_select(scores, nc), torch.arange(nc).expand(b, hkv, nc))


@pytest.mark.parametrize("backend", ["quest", "seer"])
def test_cpp_backends_decode_as_the_torch_backends(backend):
    """Greedy decode at 30% kept through the whole C++ path (selection + fused kernel) = the torch path's tokens."""
    require_extension()
    torch.manual_seed(0)
    model = Transformer(ModelConfig(vocab_size=50, dim=32, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=64)).eval()
    prompts = [[(7 * i) % 47 + 3 for i in range(57)], [(5 * i) % 43 + 5 for i in range(40)]]
    params = SamplingParams(max_new_tokens=12, temperature=0.0)
    opts = {"budget": 0.3, "block_size": 8}
    if backend == "seer":
        opts["gates"] = SeerGates(SeerConfig.for_model(model, block_size=8))
    ref = generate(model, prompts, params, attn=AttnContext(backend=backend, options={**opts, "impl": "torch"}))
    got = generate(model, prompts, params, attn=AttnContext(backend=backend, options={**opts, "impl": "cpp"}))
    assert got.tokens == ref.tokens
    assert max(abs(a - c) for ra, rc in zip(got.logprobs, ref.logprobs) for a, c in zip(ra, rc)) < 1e-5


def test_seer_select_equals_the_gate_logits_top_k():
    """The one-call C++ gate (undo RoPE, project, rotate, score, top-k) picks the blocks `gate_logits` + `select_topk`
    pick, for random gates at ragged query positions, over the first nc of a larger gate-key cache with empty blocks."""
    require_extension()
    from sherman.attention.seer import AttnGate, gate_logits, inv_freq

    torch.manual_seed(5)
    b, hkv, g, d, dg, nb, nc, k = 2, 2, 3, 16, 12, 30, 25, 6
    gate = AttnGate(SeerConfig(1, hkv * g, hkv, d, rope_theta=500.0, block_size=8, gate_dim=dg))
    q = torch.randn(b, hkv * g, 1, d)
    q_pos = torch.tensor([[203], [57]])
    kg = torch.randn(b, hkv, nb, dg)
    has = torch.ones(b, nb, dtype=torch.bool)
    has[0, 3] = False
    with torch.no_grad():
        ref = select_topk(gate_logits(gate, q, kg[:, :, :nc], has[:, :nc], q_pos), k)
        got = fused.seer_select(q, q_pos, gate.wq, kg, has, nc, k, inv_freq(d, 500.0), inv_freq(dg, 500.0))
    assert torch.equal(got, ref)
