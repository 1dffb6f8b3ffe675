"""Fast paths of the core: oneDNN linears (same numbers as F.linear forward and backward, packs used only while
fresh, same logits with and without packed weights), the two-level cumsum search, and generate's row dropping and
shared-prompt prefill (same outputs as without)."""

from __future__ import annotations

import json
import os

import pytest
import torch
import torch.nn.functional as F

from sherman.core import linear as L
from sherman.core.generate import SamplingParams, cumsum_search, generate
from sherman.core.model import ModelConfig, Transformer

# Skipped only where torch has no oneDNN or the path is switched off; otherwise a failing self-check
# (`onednn_available()` False) makes these tests fail, not skip.
needs_onednn = pytest.mark.skipif(not torch.backends.mkldnn.is_available() or os.environ.get("SHERMAN_ONEDNN", "1") == "0",
                                  reason="torch built without oneDNN, or SHERMAN_ONEDNN=0")


@pytest.fixture(autouse=True)
def _onednn_forced_where_tested(request, monkeypatch):
    """Tests of the oneDNN path run it whatever this machine's measured choice is (SHERMAN_ONEDNN=1 skips the
    measurement); the others see the measured choice, cached in a per-test directory."""
    monkeypatch.setenv("SHERMAN_CACHE_DIR", str(request.getfixturevalue("tmp_path") / "cache"))
    monkeypatch.delitem(L._STATE, "choice", raising=False)
    if request.node.get_closest_marker("skipif") is not None and request.node.name.startswith(ONEDNN_TESTS):
        monkeypatch.setenv("SHERMAN_ONEDNN", "1")
    yield
    L._STATE.pop("choice", None)


ONEDNN_TESTS = ("test_onednn", "test_packs_are_used_only_while_fresh", "test_expanded_gradient", "test_packed_weights_nest")


@needs_onednn
def test_onednn_self_check_passes():
    assert L.onednn_available()


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach(), b.detach()
    return float((a - b).abs().max() / b.abs().max())


def test_bucket_rows_by_hand():
    assert [L.bucket_rows(m) for m in (1, 16, 17, 31, 32, 33, 36, 37, 120, 121, 1000, 1024, 1025)] == [
        1, 16, 18, 32, 32, 36, 36, 40, 120, 128, 1024, 1024, 1152]  # fmt: skip
    assert all(m <= L.bucket_rows(m) <= m * 9 // 8 + 1 for m in range(1, 5000))


@needs_onednn
@pytest.mark.parametrize("d_in,d_out,rows", [(96, 112, 40), (112, 96, 40), (96, 112, 41)])  # both weight-gradient orientations; 123 rows are padded to 128
def test_onednn_forward_and_backward_match_f_linear(d_in, d_out, rows):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, rows, d_in, generator=g, requires_grad=True)  # 120 or 123 rows x 96 x 112: above MIN_MACS
    w = torch.randn(d_out, d_in, generator=g, requires_grad=True)
    b = torch.randn(d_out, generator=g, requires_grad=True)
    assert 120 * d_in * d_out >= L.MIN_MACS and L._use_onednn(x, w)
    y = L.linear(x, w, b)
    assert y.grad_fn is not None and "OneDNN" in type(y.grad_fn).__name__  # the oneDNN autograd function ran
    gy = torch.randn(y.shape, generator=g)
    gx, gw, gb = torch.autograd.grad(y, (x, w, b), gy)
    xr, wr, br = (t.detach().double().requires_grad_() for t in (x, w, b))
    yr = F.linear(xr, wr, br)
    gxr, gwr, gbr = torch.autograd.grad(yr, (xr, wr, br), gy.double())
    assert _rel(y.double(), yr) < 1e-6
    assert _rel(gx.double(), gxr) < 1e-6 and _rel(gw.double(), gwr) < 1e-6 and _rel(gb.double(), gbr) < 1e-6


@pytest.mark.parametrize("cpp", ["0", "auto"])
def test_rmsnorm_closed_form_backward_matches_autograd(monkeypatch, cpp):
    """The closed-form backward, in PyTorch (SHERMAN_CPP=0: forward bit-identical to F.rms_norm) and as the C++
    training kernel (`cpu_decode.RMSNormFn`: forward within fp32 rounding, a different summation order)."""
    from sherman.core.model import RMSNorm

    monkeypatch.setenv("SHERMAN_CPP", cpp)
    g = torch.Generator().manual_seed(0)
    norm = RMSNorm(48, eps=1e-5)
    with torch.no_grad():
        norm.weight.copy_(torch.randn(48, generator=g))
    x = torch.randn(5, 7, 48, generator=g, requires_grad=True)
    y = norm(x)
    assert "RMSNorm" in type(y.grad_fn).__name__  # the closed-form function ran
    if cpp == "0":
        assert torch.equal(y, F.rms_norm(x, (48,), norm.weight, 1e-5))  # same forward values
    else:
        torch.testing.assert_close(y, F.rms_norm(x, (48,), norm.weight, 1e-5), rtol=1e-6, atol=1e-6)
    gy = torch.randn(y.shape, generator=g)
    gx, gw = torch.autograd.grad(y, (x, norm.weight), gy)
    xr, wr = x.detach().double().requires_grad_(), norm.weight.detach().double().requires_grad_()
    yr = xr * torch.rsqrt(xr.pow(2).mean(-1, keepdim=True) + 1e-5) * wr
    gxr, gwr = torch.autograd.grad(yr, (xr, wr), gy.double())
    assert _rel(gx.double(), gxr) < 1e-6 and _rel(gw.double(), gwr) < 1e-6


def test_small_products_and_other_dtypes_use_f_linear():
    x, w = torch.randn(2, 8), torch.randn(4, 8)
    assert not L._use_onednn(x, w)  # 64 MACs: below MIN_MACS
    xd, wd = torch.randn(200, 128, dtype=torch.float64), torch.randn(128, 128, dtype=torch.float64)
    assert not L._use_onednn(xd, wd)
    assert torch.equal(L.linear(xd, wd), F.linear(xd, wd))  # fp64 stays on the exact F.linear path


@needs_onednn
def test_packs_are_used_only_while_fresh():
    lin = L.Linear(128, 512)
    x = torch.randn(32, 128)
    ref = F.linear(x, lin.weight, lin.bias)
    with torch.no_grad(), L.packed_weights(lin):
        assert lin._pack is not None and lin._pack.fresh()
        assert _rel(lin(x), ref) < 1e-6
        lin.weight.mul_(2.0)  # in-place change: the pack is stale and must be ignored
        assert not lin._pack.fresh()
        assert _rel(lin(x), F.linear(x, lin.weight, lin.bias)) < 1e-6
    assert lin._pack is None  # unpacked on exit


@needs_onednn
def test_model_logits_equal_with_fused_packs_and_generate_is_unchanged():
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=512, dim=128, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=256, qk_norm=True, attn_bias=True,
                      tie_embeddings=True)
    model = Transformer(cfg).eval()
    ids = torch.randint(0, 512, (4, 24))
    with torch.no_grad():
        ref = model(ids).logits
        with L.packed_weights(model):
            att = model.layers[0].self_attn
            assert att.__dict__["_qkv_pack"] is not None and model.layers[0].mlp.__dict__["_gate_up_pack"] is not None
            assert att.q_proj._pack is None  # covered by the fused q/k/v pack, not packed twice
            got = model(ids).logits
    assert _rel(got, ref) < 1e-5
    sp = SamplingParams(max_new_tokens=6, temperature=0.0)
    a = generate(model, [[1, 2, 3], [4, 5]], sp)
    os.environ["SHERMAN_ONEDNN"] = "0"  # force the plain F.linear path everywhere (restored by the fixture)
    b = generate(model, [[1, 2, 3], [4, 5]], sp)
    assert a.tokens == b.tokens
    assert max(abs(x - y) for ra, rb in zip(a.logprobs, b.logprobs) for x, y in zip(ra, rb)) < 1e-4


def test_cumsum_search_equals_flat_searchsorted():
    g = torch.Generator().manual_seed(1)
    x = torch.rand(8, 1000, generator=g) * (torch.rand(8, 1000, generator=g) > 0.3)  # zeros included, V not a multiple of 128
    cdf = x.double().cumsum(-1)
    u = torch.rand(8, generator=g).double()
    for right in (True, False):
        got = cumsum_search(x, u, 0.0, right=right)
        want = torch.searchsorted(cdf, (u * cdf[:, -1])[:, None], right=right).squeeze(-1)
        assert torch.equal(got, want)
    # offset form (top-p threshold): first index whose cumulative mass reaches total - 0.9
    got = cumsum_search(x, 1.0, -0.9, right=False)
    want = torch.searchsorted(cdf, (cdf[:, -1] - 0.9)[:, None]).squeeze(-1)
    assert torch.equal(got, want)


def test_dropping_finished_rows_does_not_change_outputs(monkeypatch):
    import sherman.core.generate as G
    from sherman.core.kv_cache import KVCache

    torch.manual_seed(3)
    model = Transformer(ModelConfig(vocab_size=12, dim=32, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=64)).eval()
    prompts = [[1, 2, 3], [4], [5, 6, 7, 8, 9], [2, 2], [3, 1, 4, 1], [7]]
    sp = SamplingParams(max_new_tokens=24, temperature=1.0, top_p=0.9, stop_token_ids=(3, 5))  # rows stop at different steps
    calls = []
    orig = KVCache.select_rows
    monkeypatch.setattr(KVCache, "select_rows", lambda self, rows: (calls.append(rows.numel()), orig(self, rows))[1])
    a = generate(model, prompts, sp, generator=torch.Generator().manual_seed(0))
    assert calls, "no row was dropped: the test does not exercise the compaction"
    monkeypatch.setattr(G, "DROP_FINISHED_ROWS", False)
    b = generate(model, prompts, sp, generator=torch.Generator().manual_seed(0))
    assert a.tokens == b.tokens and a.finish_reasons == b.finish_reasons
    assert max(abs(x - y) for ra, rb in zip(a.logprobs, b.logprobs) for x, y in zip(ra, rb)) < 1e-5
    assert len({len(t) for t in a.tokens}) > 2  # ragged finishing times


def test_shared_prompt_prefill_does_not_change_outputs(monkeypatch):
    import sherman.core.generate as G

    torch.manual_seed(4)
    model = Transformer(ModelConfig(vocab_size=12, dim=32, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=64)).eval()
    prompts = [[1, 2, 3]] * 3 + [[4, 5]] * 3 + [[6]]  # RL-style groups of repeated prompts, ragged
    sp = SamplingParams(max_new_tokens=10, temperature=1.0, top_p=0.95)
    calls = []
    orig = model.forward
    monkeypatch.setattr(model, "forward", lambda ids, **kw: (calls.append(tuple(ids.shape)), orig(ids, **kw))[1])
    a = generate(model, prompts, sp, generator=torch.Generator().manual_seed(0))
    assert calls[0] == (3, 3), calls[0]  # the prefill ran on the 3 distinct prompts only
    monkeypatch.setattr(G, "SHARE_PROMPTS", False)
    b = generate(model, prompts, sp, generator=torch.Generator().manual_seed(0))
    assert a.tokens == b.tokens
    assert max(abs(x - y) for ra, rb in zip(a.logprobs, b.logprobs) for x, y in zip(ra, rb)) < 1e-5


@needs_onednn
def test_expanded_gradient_is_made_contiguous(monkeypatch):
    """y.sum() sends an expanded (zero-stride) gradient into the backward; oneDNN takes ~100x longer on such
    operands (0.9 s instead of 3 ms for 2000 x 128 -> 160), so no oneDNN call may receive one."""
    seen = []
    orig = L._op
    monkeypatch.setattr(L, "_op", lambda a, w, b: (seen.append(0 in a.stride() or 0 in w.stride()), orig(a, w, b))[1])
    x = torch.randn(2000, 128, requires_grad=True)
    w = torch.randn(160, 128, requires_grad=True)  # out > in: the transposed weight-gradient orientation
    L.linear(x, w).sum().backward()
    assert len(seen) == 3 and not any(seen)  # forward, input grad, weight grad
    assert torch.allclose(w.grad, x.detach().sum(0).expand(160, 128), rtol=1e-4, atol=1e-3)


@needs_onednn
def test_packed_weights_nest_and_count_per_model():
    lin = L.Linear(128, 512)
    with L.packed_weights(lin):
        with L.packed_weights(lin):
            assert lin._pack is not None
        assert lin._pack is not None  # the inner exit leaves the outer context's packs
    assert lin._pack is None and lin.__dict__["_pack_depth"] == 0
    with L.packed_weights(lin):  # packs again after a full exit
        assert lin._pack is not None


@pytest.mark.parametrize("extra", [dict(qk_norm=True), dict(attn_bias=True, tie_embeddings=False)])
def test_fast_decode_step_gives_identical_outputs(monkeypatch, extra):
    """`Transformer.decode_step` (generate's dense fast path) = the general forward, bit for bit."""
    import sherman.core.generate as G

    torch.manual_seed(0)
    m = Transformer(ModelConfig(vocab_size=48, dim=64, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=96, **extra))
    prompts = [[1, 2, 3, 4, 5][: 1 + i % 5] for i in range(12)]  # ragged: left padding, per-row positions
    params = SamplingParams(max_new_tokens=16, temperature=0.9, top_p=0.9, stop_token_ids=[2])
    outs = []
    for flag in (True, False):
        monkeypatch.setattr(G, "FAST_DECODE", flag)
        o = generate(m, prompts, params, generator=torch.Generator().manual_seed(3))
        outs.append((o.tokens, o.logprobs))
    assert outs[0] == outs[1]


def test_fast_decode_step_is_not_used_when_a_module_has_hooks():
    torch.manual_seed(0)
    m = Transformer(ModelConfig(vocab_size=48, dim=32, n_layers=2, n_heads=2, n_kv_heads=1, ffn_dim=64))
    calls = []
    handle = m.layers[1].register_forward_hook(lambda mod, inp, out: calls.append(inp[0].shape[1]))
    generate(m, [[1, 2, 3]], SamplingParams(max_new_tokens=5, temperature=0.0))
    handle.remove()
    assert calls == [3, 1, 1, 1, 1]  # the prefill and every decode step went through the hooked module


def test_fast_decode_step_with_a_sparse_backend_and_rectification_is_identical(monkeypatch):
    """Sparse backends take the fast step too (ReSA: its rectification steps still run the full forward)."""
    import sherman.core.generate as G
    from sherman.attention.resa import resa_context

    torch.manual_seed(0)
    m = Transformer(ModelConfig(vocab_size=64, dim=64, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=96, max_seq_len=512))
    prompts = [torch.randint(1, 64, (200 + 9 * i,), generator=torch.Generator().manual_seed(i)).tolist() for i in range(2)]
    attn = resa_context(budget=0.2, block_size=16, rectify_every=8)
    outs = []
    for flag in (True, False):
        monkeypatch.setattr(G, "FAST_DECODE", flag)
        o = generate(m, prompts, SamplingParams(max_new_tokens=20, temperature=0.9), attn=attn, generator=torch.Generator().manual_seed(1))
        outs.append((o.tokens, o.logprobs))
    assert outs[0] == outs[1]


@pytest.mark.parametrize("layout", ["onednn", "t", "mkl"])
def test_every_inference_layout_equals_f_linear(monkeypatch, layout):
    """Each layout `infer_choice` may pick (prepacked oneDNN, transposed copy, plain F.linear) gives F.linear's
    numbers for fused q/k/v-like layers with and without bias, at decode and prefill row counts."""
    if layout == "onednn":  # the pinned CPU torch has oneDNN: its absence (or SHERMAN_ONEDNN=0) fails this case
        assert L.onednn_available(), "oneDNN linear unavailable or disabled: the prepacked layout cannot be checked"
    monkeypatch.setattr(L, "infer_choice", lambda out_f, in_f: layout)
    torch.manual_seed(0)
    lins = [L.Linear(256, 512, bias=True), L.Linear(256, 128, bias=False), L.Linear(256, 128, bias=True)]
    pack = L.FusedPack.build(lins)
    assert pack.layout == layout
    for rows in (1, 16, 300):
        x = torch.randn(rows, 1, 256)
        with torch.no_grad():
            if layout == "onednn" and rows * pack.macs_per_row < L.MIN_MACS:
                assert not pack.usable(x)  # too small for the prepacked weight: the layers run one by one
                continue
            assert pack.usable(x)
            got = pack(x)
            for y, lin in zip(got, lins):
                assert y.shape == (rows, 1, lin.out_features)
                assert _rel(y, F.linear(x, lin.weight, lin.bias)) < 1e-6


def test_measured_choice_is_cached_and_overridden_by_the_environment(monkeypatch):
    monkeypatch.delenv("SHERMAN_ONEDNN", raising=False)
    path = L.choice_path()
    assert not path.exists()
    c = L.infer_choice(96, 64)
    assert c in ("onednn", "t", "mkl") and L.train_choice() in ("onednn", "mkl")
    saved = json.loads(path.read_text())
    assert saved["machine"] == L.machine_key() and saved["infer"]["96x64"] == c and saved["train"] in ("onednn", "mkl")
    L._STATE.pop("choice")  # a new process: read from disk, nothing is measured again

    def no_measure(*a, **k):
        raise AssertionError("measured twice")

    monkeypatch.setattr(L, "measure_infer", no_measure)
    monkeypatch.setattr(L, "measure_train", no_measure)
    assert L.infer_choice(96, 64) == c and L.train_choice() == saved["train"]
    monkeypatch.setenv("SHERMAN_ONEDNN", "0")
    assert L.infer_choice(96, 64) == "mkl" and L.train_choice() == "mkl"
    if L.onednn_available():
        monkeypatch.setenv("SHERMAN_ONEDNN", "1")
        assert L.infer_choice(96, 64) == "onednn" and L.train_choice() == "onednn"


def test_a_cache_from_another_machine_or_a_damaged_one_is_measured_again(monkeypatch):
    monkeypatch.delenv("SHERMAN_ONEDNN", raising=False)
    path = L.choice_path()
    path.parent.mkdir(parents=True)
    calls = []
    monkeypatch.setattr(L, "measure_infer", lambda o, i, rows=16: calls.append((o, i)) or {"mkl": 2.0, "t": 1.0})
    for text in (json.dumps({"machine": "another CPU", "infer": {"96x64": "onednn"}}), "{not json"):
        path.write_text(text)
        L._STATE.pop("choice", None)
        assert L.infer_choice(96, 64) == "t"  # 1.0 < 0.95 * 2.0
    assert calls == [(96, 64), (96, 64)]
    assert json.loads(path.read_text())["machine"] == L.machine_key()


def test_pick_needs_a_margin_over_f_linear():
    assert L._pick({"mkl": 1.0, "t": 0.96, "onednn": 0.97}) == "mkl"  # within 5%: keep F.linear
    assert L._pick({"mkl": 1.0, "t": 0.90, "onednn": 0.80}) == "onednn"
    assert L._pick({"mkl": 0.5, "onednn": 0.6}) == "mkl"


def test_fused_training_projections_equal_the_separate_layers(monkeypatch):
    """q/k/v and gate/up run as one GEMM each when training: same loss and gradients as layer by layer."""
    import sherman.core.model as M
    import sherman.core.moe as MO

    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=64, dim=64, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=96, qk_norm=True, attn_bias=True)
    model = Transformer(cfg).train()
    ids = torch.randint(0, 64, (3, 20))
    out = []
    for fuse in (True, False):
        if not fuse:
            monkeypatch.setattr(M, "fuse_for_training", lambda lins, x: False)
            monkeypatch.setattr(MO, "fuse_for_training", lambda lins, x: False)
        model.zero_grad()
        loss = model(ids).logits.square().mean()
        loss.backward()
        out.append((loss.detach(), [p.grad.clone() for p in model.parameters()]))
    assert torch.allclose(out[0][0], out[1][0], rtol=1e-5)
    for a, b in zip(out[0][1], out[1][1]):
        assert _rel(a.double(), b.double()) < 1e-4


def test_training_projections_are_not_fused_under_module_hooks():
    lins = [L.Linear(8, 8), L.Linear(8, 4)]
    x = torch.randn(2, 8, requires_grad=True)
    assert L.fuse_for_training(lins, x)
    handle = lins[1].register_forward_hook(lambda m, i, o: None)
    assert not L.fuse_for_training(lins, x)  # the hooked layer's own forward must run
    handle.remove()
    with torch.no_grad():
        assert not L.fuse_for_training(lins, x)  # inference uses FusedPack instead


def test_candidates_are_timed_in_cpu_time_at_one_thread(monkeypatch):
    """Time the OS gives another process is not counted: a candidate that waits (here: sleeps) without computing
    measures ~0 at one torch thread, and its wall time with more threads."""
    import time

    monkeypatch.setattr(torch, "get_num_threads", lambda: 1)
    assert L._clock() is time.thread_time
    t = L._best_of({"waits": lambda: time.sleep(0.01)}, rounds=2, reps=1)
    assert t["waits"] < 0.002
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    assert L._clock() is time.perf_counter
    assert L._best_of({"waits": lambda: time.sleep(0.01)}, rounds=2, reps=1)["waits"] >= 0.009
