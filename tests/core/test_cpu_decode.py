"""The C++ decode kernels (`core/cpu_decode.py`) against the PyTorch ops they replace, and generate with them on/off."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from sherman.core import cpu_decode
from sherman.core.attention import decode_attention as torch_decode_attention
from sherman.core.generate import SamplingParams, generate, sample_next
from sherman.core.model import ModelConfig, Transformer, rope_signed

pytestmark = pytest.mark.skipif(cpu_decode.ext() is None, reason=f"C++ decode kernels unavailable: {cpu_decode.failure()}")


@pytest.mark.parametrize("m,k,n,bias", [(16, 256, 512, False), (5, 64, 100, True), (1, 33, 7, True), (17, 48, 129, False), (40, 16, 64, True)])
def test_tiled_linear_matches_f_linear(m, k, n, bias):
    g = torch.Generator().manual_seed(m * 1000 + n)
    x, w = torch.randn(m, k, generator=g), torch.randn(n, k, generator=g)
    b = torch.randn(n, generator=g) if bias else None
    wp, bp = cpu_decode.pack_tiles(w, b)
    nt = cpu_decode.tile_width()
    assert wp.shape == (-(-n // nt), k, nt)
    torch.testing.assert_close(cpu_decode.tiled_linear(x, wp, bp, n), F.linear(x, w, b), rtol=1e-5, atol=1e-5)
    x3 = torch.randn(2, 3, k, generator=g)[:, ::2]  # strided leading dims
    torch.testing.assert_close(cpu_decode.tiled_linear(x3, wp, bp, n), F.linear(x3, w, b), rtol=1e-5, atol=1e-5)


def test_tiled_linear_hand_values():
    # y = x W^T + b for W = [[1, 2], [3, 4], [5, 6]], x = [[1, 1], [2, -1]], b = [0.5, 0, -1]
    w = torch.tensor([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]])
    b = torch.tensor([0.5, 0.0, -1.0])
    wp, bp = cpu_decode.pack_tiles(w, b)
    y = cpu_decode.tiled_linear(torch.tensor([[1.0, 1.0], [2.0, -1.0]]), wp, bp, 3)
    assert y.tolist() == [[3.5, 7.0, 10.0], [0.5, 2.0, 3.0]]


@pytest.mark.parametrize("c", [256, 32, 40, 7])
def test_rms_norm_and_residual(c):
    g = torch.Generator().manual_seed(c)
    x, y, w = torch.randn(6, 1, c, generator=g), torch.randn(6, 1, c, generator=g), torch.randn(c, generator=g)
    torch.testing.assert_close(cpu_decode.rms_norm(x, w, 1e-6), F.rms_norm(x, (c,), w, 1e-6), rtol=1e-5, atol=1e-6)
    s, out = cpu_decode.rms_norm(x, w, 1e-6, residual=y)
    assert torch.equal(s, x + y)
    torch.testing.assert_close(out, F.rms_norm(x + y, (c,), w, 1e-6), rtol=1e-5, atol=1e-6)
    # hand value: x = [3, 4] -> rms = sqrt(12.5); out = x / rms * w
    o = cpu_decode.rms_norm(torch.tensor([[3.0, 4.0]]), torch.tensor([1.0, 2.0]), 0.0)
    r = math.sqrt(12.5)
    torch.testing.assert_close(o, torch.tensor([[3 / r, 8 / r]]))


@pytest.mark.parametrize("norm", [True, False])
@pytest.mark.parametrize("b,t,per_row", [(3, 5, True), (4, 1, True), (2, 6, False)])
def test_qk_norm_rope_matches_torch(norm, b, t, per_row):
    hq, hkv, d = 8, 4, 32
    m = Transformer(ModelConfig(vocab_size=64, dim=hq * d, n_layers=1, n_heads=hq, n_kv_heads=hkv, ffn_dim=64, qk_norm=True, max_seq_len=64))
    g = torch.Generator().manual_seed(b * 10 + t)
    qkv = torch.randn(b, t, hq + 2 * hkv, d, generator=g)
    pos = torch.randint(0, 60, (b, t), generator=g) if per_row else torch.arange(t)
    cos, sin = m._rope(pos)
    w = torch.randn(hq + hkv, d, generator=g) if norm else None
    qk = qkv[:, :, : hq + hkv]
    if norm:
        qk = F.rms_norm(qk, (d,), None, 1e-6) * w
    ref = rope_signed(qk.transpose(1, 2), cos, sin)
    q, k, v = cpu_decode.qk_norm_rope(qkv, hq, hkv, w, 1e-6, cos, sin)
    torch.testing.assert_close(q, ref[:, :hq], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(k, ref[:, hq:], rtol=1e-5, atol=1e-5)
    assert torch.equal(v, qkv[:, :, hq + hkv :].transpose(1, 2))


@pytest.mark.parametrize("hq,hkv,d", [(8, 4, 32), (4, 4, 16), (12, 2, 64), (6, 2, 40), (3, 1, 8)])
@pytest.mark.parametrize("tk", [1, 7, 50])
def test_decode_attention_matches_torch(hq, hkv, d, tk):
    g = torch.Generator().manual_seed(hq * 100 + tk)
    b, slots = 3, 64
    kc, vc = torch.randn(b, hkv, slots, d, generator=g), torch.randn(b, hkv, slots, d, generator=g)  # a cache, sliced
    valid = torch.rand(b, slots, generator=g) > 0.3
    valid[:, tk - 1] = True
    q = torch.randn(b, hq, 1, d, generator=g)
    ref = torch_decode_attention(q, kc[:, :, :tk], vc[:, :, :tk], valid[:, :tk])
    out = cpu_decode.decode_attention(q, kc[:, :, :tk], vc[:, :, :tk], valid, 1 / math.sqrt(d))
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    out_all = cpu_decode.decode_attention(q, kc[:, :, :tk], vc[:, :, :tk], None, 1 / math.sqrt(d))
    torch.testing.assert_close(out_all, torch_decode_attention(q, kc[:, :, :tk], vc[:, :, :tk], None), rtol=1e-5, atol=1e-5)


def test_decode_attention_hand_values():
    # one head, two keys: scores [0, ln 3] -> probs [1/4, 3/4]; out = 1/4 v0 + 3/4 v1; a masked third key is ignored
    d = 1
    q = torch.tensor([[[[1.0]]]])  # (1, 1, 1, 1)
    k = torch.tensor([0.0, math.log(3.0), 5.0]).view(1, 1, 3, d)
    v = torch.tensor([4.0, 8.0, 100.0]).view(1, 1, 3, d)
    out = cpu_decode.decode_attention(q, k, v, torch.tensor([[True, True, False]]), 1.0)
    torch.testing.assert_close(out.view(()), torch.tensor(7.0))


def _probs_logits(p: list[float]) -> torch.Tensor:
    return torch.tensor(p).log()[None]


def test_sample_top_p_hand_values():
    # p = [0.5, 0.25, 0.125, 0.125]; top_p 0.7 keeps {0.5, 0.25} (the smallest prefix, descending, whose mass reaches
    # 0.7), drawn by inverse CDF over the kept mass 0.75 in vocabulary order
    lg = _probs_logits([0.5, 0.25, 0.125, 0.125])
    for u, want in [(0.0, 0), (0.5, 0), (0.7, 1), (0.999, 1)]:
        tok, logp = cpu_decode.sample_top_p(lg, 1.0, 0.7, torch.tensor([u]))
        assert tok.item() == want
        torch.testing.assert_close(logp, torch.tensor([math.log([0.5, 0.25][want])]))
    # top_p 0.5: the second token's mass before it (descending) is 0.5 <= top_p, so it is kept too; 0.4 keeps one
    assert cpu_decode.sample_top_p(lg, 1.0, 0.5, torch.tensor([0.99]))[0].item() == 1
    assert cpu_decode.sample_top_p(lg, 1.0, 0.4, torch.tensor([0.99]))[0].item() == 0
    assert cpu_decode.sample_top_p(lg, 1.0, 1.0, torch.tensor([0.99]))[0].item() == 3  # everything kept
    # ties with the last kept value are all kept: p = [0.25, 0.25, 0.25, 0.25], top_p 0.3 keeps all four
    lg = _probs_logits([0.25, 0.25, 0.25, 0.25])
    assert cpu_decode.sample_top_p(lg, 1.0, 0.3, torch.tensor([0.9]))[0].item() == 3
    # temperature 0.5 squares and renormalises: [0.5, 0.25, .125, .125] -> [16, 4, 1, 1] / 22
    lg = _probs_logits([0.5, 0.25, 0.125, 0.125])
    tok, logp = cpu_decode.sample_top_p(lg, 0.5, 1.0, torch.tensor([17 / 22]))
    assert tok.item() == 1
    torch.testing.assert_close(logp, torch.tensor([math.log(4 / 22)]))


@pytest.mark.parametrize("v", [8192, 1000, 64, 5])
def test_sample_top_p_matches_sample_next(v):
    g = torch.Generator().manual_seed(v)
    same = total = 0
    for trial in range(12):
        lg = torch.randn(16, v, generator=g) * (0.1 + trial / 3)
        lg[0, : min(5, v)] = lg[0, 0]  # ties
        u = torch.rand(16, generator=g)
        for temp, top_p in [(1.0, 0.95), (0.7, 0.5), (1.0, 1.0), (1.3, 0.01)]:
            t_ref, l_ref = sample_next(lg, temp, top_p, None, u)  # the PyTorch path (no inference context)
            t_cpp, l_cpp = cpu_decode.sample_top_p(lg, temp, top_p, u)
            same += int((t_ref == t_cpp).sum())
            total += 16
            ok = t_ref == t_cpp
            torch.testing.assert_close(l_cpp[ok], l_ref[ok], rtol=1e-5, atol=1e-5)
    assert same >= total - 2  # equal draws up to fp32 rounding exactly at the edge of the kept set (rare)


def _tiny_model(seed: int = 0) -> Transformer:
    torch.manual_seed(seed)
    return Transformer(ModelConfig(vocab_size=300, dim=64, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=128, qk_norm=True, max_seq_len=128)).eval()


def test_generate_with_and_without_kernels(monkeypatch):
    model = _tiny_model()
    prompts = [[5, 6, 7, 8, 9], [1, 2], [10, 11, 12]]
    outs = {}
    for flag in ("auto", "0"):
        monkeypatch.setenv("SHERMAN_CPP", flag)
        greedy = generate(model, prompts, SamplingParams(max_new_tokens=20, temperature=0.0))
        sampled = generate(model, prompts, SamplingParams(max_new_tokens=20, temperature=1.0, top_p=0.9), generator=torch.Generator().manual_seed(3))
        outs[flag] = (greedy, sampled)
    (g1, s1), (g0, s0) = outs["auto"], outs["0"]
    assert g1.tokens == g0.tokens
    assert s1.tokens == s0.tokens
    for a, b in ((g1, g0), (s1, s0)):
        for la, lb in zip(a.logprobs, b.logprobs):
            torch.testing.assert_close(torch.tensor(la), torch.tensor(lb), rtol=1e-4, atol=1e-4)


def test_kernels_only_inside_inference_context():
    x = torch.randn(3, 8)
    with torch.no_grad():
        assert not cpu_decode.active(x)
        with cpu_decode.inference():
            assert cpu_decode.active(x)
            assert not cpu_decode.active(x.double())
            with torch.enable_grad():
                assert not cpu_decode.active(x)
            with cpu_decode.inference(enable=False):
                assert not cpu_decode.active(x)
            assert cpu_decode.active(x)
        assert not cpu_decode.active(x)


@pytest.mark.slow
@pytest.mark.parametrize("flags", [("-march=x86-64-v3", "-mno-avx512f"), ("-march=x86-64",)])
def test_narrower_simd_builds_match(flags):
    """The AVX2 and scalar branches of the SIMD layer (and the sampler's non-AVX-512 loops) give the same results."""
    ext = cpu_decode.build(name="sherman_cpu_decode_test_" + "_".join(f.strip("-").replace("=", "").replace("-", "") for f in flags), arch_flags=flags)
    assert ext.simd_width() in (8, 1)
    g = torch.Generator().manual_seed(0)
    lg, u = torch.randn(8, 3000, generator=g), torch.rand(8, generator=g).double()
    t_ref, _ = cpu_decode.sample_top_p(lg, 1.0, 0.9, u)
    t, _ = ext.sample_top_p(lg, 1.0, 0.9, u)
    assert (t == t_ref).sum() >= 7
    q, k, v = torch.randn(2, 4, 1, 24, generator=g), torch.randn(2, 2, 9, 24, generator=g), torch.randn(2, 2, 9, 24, generator=g)
    torch.testing.assert_close(ext.decode_attention(q, k, v, None, 0.2), cpu_decode.decode_attention(q, k, v, None, 0.2), rtol=1e-5, atol=1e-5)
    x, w = torch.randn(7, 40, generator=g), torch.randn(50, 40, generator=g)
    nt = 4 * ext.simd_width()
    tiles = -(-50 // nt)
    wt = torch.zeros(tiles * nt, 40)
    wt[:50] = w
    wp = wt.t().reshape(40, tiles, nt).permute(1, 0, 2).contiguous()
    torch.testing.assert_close(ext.tiled_linear(x, wp, None, 50), F.linear(x, w), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("qk_norm,bias", [(True, False), (False, True)])
def test_decode_layers_matches_the_python_layer_loop(qk_norm, bias):
    """The one-call C++ layer loop (`cpu_decode.decode_layers`) == `decode_step`'s Python loop: hidden state and cache."""
    from sherman.core.kv_cache import KVCache
    from sherman.core.linear import packed_weights

    torch.manual_seed(1)
    cfg = ModelConfig(vocab_size=300, dim=64, n_layers=3, n_heads=4, n_kv_heads=2, ffn_dim=96, qk_norm=qk_norm, attn_bias=bias, max_seq_len=64)
    model = Transformer(cfg).eval()
    ids = torch.randint(1, 300, (3, 9))
    valid = torch.ones(3, 9, dtype=torch.bool)
    valid[0, :4] = False  # a left-padded row
    tok, pos = torch.randint(1, 300, (3,)), valid.sum(-1)
    with torch.no_grad(), packed_weights(model):
        outs = []
        for use_plan in (True, False):
            cache = KVCache.allocate(cfg.n_layers, 3, cfg.n_kv_heads, 16, cfg.head_dim)
            model(ids, cache=cache, key_valid=valid, positions=(valid.long().cumsum(-1) - 1).clamp(min=0))
            model.__dict__.pop("_cpp_plan_cache", None)
            if not use_plan:
                model.__dict__["_cpp_plan_cache"] = False
            else:
                assert model._cpp_plan(torch.zeros(1, dtype=torch.float32), model._context(None, cache, 0, None)) is not None
            h = model.decode_step(tok, pos, cache)
            outs.append((h, [k[:, :, :10].clone() for k in cache.k], [v[:, :, :10].clone() for v in cache.v]))
        model.__dict__.pop("_cpp_plan_cache", None)
    (h1, k1, v1), (h0, k0, v0) = outs
    torch.testing.assert_close(h1, h0, rtol=1e-5, atol=1e-5)
    for a, b in zip(k1 + v1, k0 + v0):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_swiglu_fn_forward_backward_match_torch():
    g = torch.Generator().manual_seed(0)
    gu = (torch.randn(2, 7, 2 * 37, generator=g) * 4).requires_grad_()  # odd width: the scalar tail runs too
    d = torch.randn(2, 7, 37, generator=g)
    a = cpu_decode.SwiGLUFn.apply(gu)
    (a * d).sum().backward()
    got = gu.grad.clone()
    gu.grad = None
    gr, ur = gu.split(37, -1)
    ref = F.silu(gr) * ur
    (ref * d).sum().backward()
    torch.testing.assert_close(a, ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got, gu.grad, rtol=1e-5, atol=1e-5)
    # hand values: g = 0 -> silu 0, d silu / dg = 1/2; g = u = 1 -> act = sigmoid(1)
    gu = torch.tensor([[0.0, 1.0, 3.0, 1.0]], requires_grad=True)  # g = [0, 1], u = [3, 1]
    a = cpu_decode.SwiGLUFn.apply(gu)
    s1 = 1 / (1 + math.exp(-1))
    torch.testing.assert_close(a, torch.tensor([[0.0, s1]]))
    a.sum().backward()
    torch.testing.assert_close(gu.grad, torch.tensor([[3 * 0.5, s1 * (1 + 1 - s1), 0.0, s1]]))


def test_swiglu_training_uses_the_kernel_and_loss_falls():
    from sherman.core.moe import SwiGLU

    def graph_names(fn, seen=None):
        seen = set() if seen is None else seen
        if fn is None or fn in seen:
            return set()
        seen.add(fn)
        return {fn.name()}.union(*(graph_names(f, seen) for f, _ in fn.next_functions))

    torch.manual_seed(0)
    teacher, mlp = SwiGLU(16, 24), SwiGLU(16, 24)
    x = torch.randn(64, 16)
    with torch.no_grad():
        y = teacher(x)
    opt = torch.optim.Adam(mlp.parameters(), lr=1e-2)
    losses = []
    for _ in range(60):
        out = mlp(x)
        loss = ((out - y) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert "SwiGLUFnBackward" in graph_names(out.grad_fn)
    assert losses[-1] < 0.5 * losses[0]


def test_rms_norm_fn_matches_the_closed_form_backward():
    from sherman.core.model import _RMSNormFn

    g = torch.Generator().manual_seed(0)
    x = torch.randn(5, 3, 37, generator=g, requires_grad=True)
    w = torch.randn(37, generator=g, requires_grad=True)
    gy = torch.randn(5, 3, 37, generator=g)
    y = cpu_decode.RMSNormFn.apply(x, w, 1e-6)
    y.backward(gy)
    got = (y.detach(), x.grad.clone(), w.grad.clone())
    x.grad = w.grad = None
    y = _RMSNormFn.apply(x, w, 1e-6)
    y.backward(gy)
    for a, b in zip(got, (y.detach(), x.grad, w.grad)):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    # hand values: x = [3, 4], w = [1, 1], g = [1, 0]: r = 1/sqrt(12.5), x_hat = x r,
    # dx = r (g - x_hat mean(g x_hat)) = r ([1, 0] - x_hat * 3r / 2), dw = g x_hat
    x = torch.tensor([[3.0, 4.0]], requires_grad=True)
    w = torch.ones(2, requires_grad=True)
    cpu_decode.RMSNormFn.apply(x, w, 0.0).backward(torch.tensor([[1.0, 0.0]]))
    r = 1 / math.sqrt(12.5)
    xh = torch.tensor([3 * r, 4 * r])
    torch.testing.assert_close(x.grad[0], r * (torch.tensor([1.0, 0.0]) - xh * 3 * r / 2))
    torch.testing.assert_close(w.grad, torch.tensor([3 * r, 0.0]))
