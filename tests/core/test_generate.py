import pytest
import torch

from sherman.core.attention import AttnContext, causal_mask, decode_attention, dense_attention
from sherman.core.generate import SamplingParams, generate, left_pad, sample_next
from sherman.core.model import ModelConfig, Transformer, padded_positions
from sherman.core.moe import MoEFFN, route


def model(moe=0, **kw):
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=40, dim=32, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=64, qk_norm=True,
                      n_experts=moe, moe_ffn_dim=24, shared_expert_dim=16 if moe else 0, **kw)  # fmt: skip
    return Transformer(cfg).eval()


PROMPTS = [[1, 5, 7, 9, 11, 13, 2], [1, 3], [1, 4, 4, 8]]  # ragged


@pytest.mark.parametrize("moe", [0, 4])
def test_cached_generation_equals_full_forward(moe):
    m = model(moe)
    out = generate(m, PROMPTS, SamplingParams(max_new_tokens=20), generator=torch.Generator().manual_seed(1))
    for p, toks, lps in zip(PROMPTS, out.tokens, out.logprobs):
        seq = torch.tensor([p + toks])
        logits = m(seq).logits[0, len(p) - 1 : -1]  # (n, V): predictions of the generated tokens
        full = torch.log_softmax(logits, -1).gather(-1, torch.tensor(toks)[:, None]).squeeze(-1)
        assert (full - torch.tensor(lps)).abs().max() < 1e-4


@pytest.mark.parametrize("moe", [0, 4])
def test_padded_batch_logits_equal_single_rows(moe):
    m = model(moe)
    ids, valid = left_pad(PROMPTS)
    cache = m.make_cache(len(PROMPTS), ids.shape[1] + 4)
    batched = m(ids, positions=padded_positions(valid), cache=cache, key_valid=valid).logits
    for i, p in enumerate(PROMPTS):
        alone = m(torch.tensor([p])).logits[0]
        got = batched[i, ids.shape[1] - len(p) :]
        assert (alone - got).abs().max() < 1e-4
    # one more cached decode step on the padded batch equals the full forward of each extended row
    nxt = torch.tensor([[3], [6], [9]])
    step = m(nxt, positions=valid.sum(-1, keepdim=True), cache=cache).logits[:, 0]
    for i, p in enumerate(PROMPTS):
        ref = m(torch.tensor([p + [int(nxt[i])]])).logits[0, -1]
        assert (ref - step[i]).abs().max() < 1e-4


@pytest.mark.parametrize("moe", [0, 4])
def test_prefix_rows_pass_equals_one_forward_with_gradients(moe):
    """Packed rows that attend a prompt held by ANOTHER row of the same pass (AttnContext.prefix_rows + mask) give
    the logits of one forward over prompt + continuation, and the same gradients."""
    m = model(moe).train()
    prompt, cont = PROMPTS[2], [[3, 4, 5], [6, 7]]  # row 0: the prompt; row 1: both continuations, packed
    p = len(prompt)
    ids = torch.tensor([prompt + [0], [3, 4, 5, 6, 7]])  # (2, 5)
    pos = torch.tensor([[0, 1, 2, 3, 0], [p, p + 1, p + 2, p, p + 1]])
    seg = torch.tensor([[9, 9, 9, 9, -1], [0, 0, 0, 1, 1]])
    causal = torch.ones(5, 5, dtype=torch.bool).tril()
    own = (seg[:, :, None] == seg[:, None, :]) & causal  # (2, 5, 5)
    see_prompt = (seg >= 0)[:, :, None] & (seg < 9)[:, :, None] & torch.ones(2, 1, p, dtype=torch.bool)  # (2, 5, P)
    mask = torch.cat([see_prompt, own], -1)[:, None]  # (2, 1, 5, P + 5)
    attn = AttnContext(mask=mask, prefix_rows=(torch.tensor([0, 0]), p))
    out = m(ids, positions=pos, attn=attn).logits  # (2, 5, V)
    got = [out[0, :p], out[1, 0:3], out[1, 3:5]]
    params = list(m.parameters())
    grads = torch.autograd.grad(sum(x.square().sum() for x in got), params, allow_unused=True)
    full = [m(torch.tensor([prompt + c])).logits[0] for c in cont]  # (p + len(c), V)
    refs = [full[0][:p], full[0][p:], full[1][p:]]
    assert all((a - r).abs().max() < 1e-5 for a, r in zip(got, refs))
    ref_grads = torch.autograd.grad(sum(x.square().sum() for x in refs), params, allow_unused=True)
    for a, c in zip(grads, ref_grads):
        assert (a is None and c is None) or torch.allclose(a, c, atol=1e-5)
    with pytest.raises(ValueError, match="exclusive"):
        m(ids, attn=attn, cache=m.make_cache(2, 8))


def test_masked_attention_bmm_equals_sdpa():
    from sherman.core.attention import additive_mask, masked_attention_bmm

    g = torch.Generator().manual_seed(0)
    q, k, v = torch.randn(3, 4, 5, 8, generator=g), torch.randn(3, 2, 7, 8, generator=g), torch.randn(3, 2, 7, 8, generator=g)
    allowed = torch.rand(3, 1, 5, 7, generator=g) > 0.4
    allowed[..., 0] = True  # every query sees at least one key
    ctx = AttnContext(mask=additive_mask(allowed, torch.float32))
    ref = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=allowed, enable_gqa=True)
    assert (masked_attention_bmm(q, k, v, ctx) - ref).abs().max() < 1e-5
    assert (dense_attention(q, k, v, ctx) - ref).abs().max() < 1e-5  # the dense backend takes this path on CPU


def test_router_logits_returned_per_moe_layer():
    m = model(4)
    out = m(torch.tensor([[1, 2, 3]]), return_router_logits=True)
    assert len(out.router_logits) == 2 and out.router_logits[0].shape == (1, 3, 4)
    assert model(0)(torch.tensor([[1, 2]]), return_router_logits=True).router_logits == []


def test_route_hand_values():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.2]]))
    w, ids = route(logits, 2, norm_topk_prob=True)
    assert ids.tolist() == [[0, 1]] and torch.allclose(w, torch.tensor([[0.625, 0.375]]))
    w, _ = route(logits, 2, norm_topk_prob=False)
    assert torch.allclose(w, torch.tensor([[0.5, 0.3]]))


def test_moe_equals_explicit_mixture():
    torch.manual_seed(0)
    ffn = MoEFFN(8, n_experts=3, top_k=2, expert_hidden=6)
    x = torch.randn(1, 5, 8)
    y, logits = ffn(x)
    p = torch.softmax(logits[0], -1)
    for t in range(5):
        top = p[t].topk(2)
        ref = sum(w / top.values.sum() * ffn.experts[int(e)](x[0, t]) for w, e in zip(top.values, top.indices))
        assert torch.allclose(y[0, t], ref, atol=1e-6)


def test_decode_path_equals_sdpa():
    torch.manual_seed(0)
    q, k, v = torch.randn(2, 8, 1, 16), torch.randn(2, 2, 30, 16), torch.randn(2, 2, 30, 16)
    valid = torch.ones(2, 30, dtype=torch.bool)
    valid[1, :7] = False
    ref = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=valid[:, None, None, :], enable_gqa=True)
    assert (decode_attention(q, k, v, valid) - ref).abs().max() < 1e-5
    ctx = AttnContext(q_start=29, key_valid=valid)
    assert (dense_attention(q, k, v, ctx) - ref).abs().max() < 1e-5
    m = causal_mask(2, 3, 5, None, "cpu")[0, 0]
    assert m.tolist() == [[1, 1, 1, 0, 0], [1, 1, 1, 1, 0], [1, 1, 1, 1, 1]]


def test_greedy_is_argmax_and_top_p_truncates():
    logits = torch.tensor([[0.0, 2.0, 1.0, -1.0]])
    tok, lp = sample_next(logits, 0.0, 1.0, None)
    assert tok.item() == 1 and lp.item() == pytest.approx(torch.log_softmax(logits, -1)[0, 1].item())
    probs = torch.softmax(logits, -1)[0]  # [0.087, 0.644, 0.237, 0.032]
    g = torch.Generator().manual_seed(0)
    seen = {int(sample_next(logits, 1.0, 0.7, g)[0]) for _ in range(200)}
    assert seen == {1, 2}  # 0.644 < 0.7 so token 2 (0.237) is needed; 0 and 3 are cut
    assert probs[1] < 0.7 < probs[1] + probs[2]


class Tok:
    def decode(self, ids):
        return "".join(chr(97 + i % 26) for i in ids)


def test_stop_ids_and_strings_and_lengths():
    m = model()
    g = torch.Generator().manual_seed(0)
    free = generate(m, PROMPTS, SamplingParams(max_new_tokens=12, temperature=0.0))
    assert all(len(t) == 12 for t in free.tokens) and free.finish_reasons == ["length"] * 3
    stop_tok = free.tokens[0][-1]
    first = free.tokens[0].index(stop_tok)
    out = generate(m, PROMPTS, SamplingParams(max_new_tokens=12, temperature=0.0, stop_token_ids=(stop_tok,)))
    assert out.tokens[0] == free.tokens[0][: first + 1] and out.finish_reasons[0] == "stop"
    text = Tok().decode(free.tokens[1])
    stop = text[-2:]
    out = generate(m, PROMPTS, SamplingParams(max_new_tokens=12, temperature=0.0, stop_strings=(stop,)), tokenizer=Tok())
    assert out.texts[1] == text[: text.find(stop)] and out.finish_reasons[1] == "stop"
    assert len(out.tokens[1]) == text.find(stop) + 2  # the token completing the stop string is kept
    a = generate(m, PROMPTS, SamplingParams(max_new_tokens=8), generator=torch.Generator().manual_seed(5))
    b = generate(m, PROMPTS, SamplingParams(max_new_tokens=8), generator=torch.Generator().manual_seed(5))
    assert a.tokens == b.tokens
    ids, lp, mask = a.padded()
    assert ids.shape == (3, 8) and mask.sum() == 24
    del g


def test_bad_input_is_rejected():
    m = model()
    with pytest.raises(ValueError, match="empty"):
        generate(m, [[1], []])
    with pytest.raises(ValueError, match="top_p"):
        SamplingParams(top_p=0.0)
    with pytest.raises(ValueError, match="tokenizer"):
        generate(m, [[1]], SamplingParams(stop_strings=("x",)))
    with pytest.raises(ValueError, match="unknown attention backend"):
        m(torch.tensor([[1, 2]]), attn=AttnContext(backend="nope"))
