"""Parity of the step-wise `Decoder` (core/decoder.py) with `generate`, and of its fast decode step with the forward pass."""

import torch

import sherman.core.generate as gen
from sherman.core.decoder import Decoder
from sherman.core.generate import SamplingParams, generate
from sherman.core.model import ModelConfig, Transformer


def tiny_model(seed=0, **kw):
    torch.manual_seed(seed)
    m = Transformer(ModelConfig(vocab_size=40, dim=64, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=96, **kw))
    with torch.no_grad():
        for p in m.parameters():
            p.mul_(25.0)  # a peaky random model, so sampled continuations differ from token to token
    return m


PROMPTS = [[1, 2, 3, 4, 5], [7, 8], [9, 10, 11, 12, 13, 14, 15, 16, 17]]


def run_decoder(m, prompts, n, params, gen):
    d = Decoder(m, generator=gen, init_len=4)  # tiny init_len: exercises cache growth
    sids = [d.add(p) for p in prompts]
    toks = {s: [] for s in sids}
    lps = {s: [] for s in sids}
    for _ in range(n):
        for s, (t, lp) in d.step(params=params).items():
            toks[s].append(t)
            lps[s].append(lp)
    return [toks[s] for s in sids], [lps[s] for s in sids]


def test_decoder_matches_generate_sampled():
    m = tiny_model()
    p = SamplingParams(max_new_tokens=15, temperature=1.0)
    g = generate(m, PROMPTS, p, generator=torch.Generator().manual_seed(3))
    toks, lps = run_decoder(m, PROMPTS, 15, p, torch.Generator().manual_seed(3))
    assert toks == g.tokens
    assert len(set(toks[0])) > 2  # not a degenerate repeat
    for a, b in zip(lps, g.logprobs):
        torch.testing.assert_close(torch.tensor(a), torch.tensor(b), atol=1e-4, rtol=1e-4)


def test_decoder_moe_greedy_matches_generate():
    m = tiny_model(seed=1, n_experts=4, n_experts_per_tok=2, moe_ffn_dim=32)
    p = SamplingParams(max_new_tokens=10, temperature=0.0)
    g = generate(m, PROMPTS, p)
    toks, _ = run_decoder(m, PROMPTS, 10, p, None)
    assert toks == g.tokens


def test_decoder_extend_equals_fresh_prompt_and_membership_changes():
    m = tiny_model(seed=2)
    greedy = SamplingParams(temperature=0.0)
    d = Decoder(m, init_len=4)
    a = d.add([1, 2, 3])
    b = d.add([4, 5])
    first = d.step(params=greedy)
    d.remove(b)
    d.extend(a, [6, 7, 8])  # inserted text after the sampled token
    cont = [d.step([a], params=greedy)[a][0] for _ in range(6)]
    ref = generate(m, [[1, 2, 3, first[a][0], 6, 7, 8]], SamplingParams(max_new_tokens=6, temperature=0.0))
    assert cont == ref.tokens[0]
    assert d.length(a) == 3 + 1 + 3 + 6 and b not in d


def test_decoder_truncate_then_extend_equals_fresh_prompt():
    m = tiny_model(seed=3)
    greedy = SamplingParams(temperature=0.0)
    d = Decoder(m, init_len=4)
    a = d.add([1, 2, 3, 4])
    got = [d.step(params=greedy)[a][0] for _ in range(5)]  # 4 prompt + 5 sampled tokens
    d.truncate(a, 6)  # keep the prompt and the first 2 sampled tokens
    d.extend(a, [9])
    cont = [d.step(params=greedy)[a][0] for _ in range(4)]
    ref = generate(m, [[1, 2, 3, 4] + got[:2] + [9]], SamplingParams(max_new_tokens=4, temperature=0.0))
    assert cont == ref.tokens[0] and d.length(a) == 7 + 4


def run_mixed(m, gen_seed):
    """Decode with membership changes and inserted text, so steps alternate between prefill and one-token decode."""
    d = Decoder(m, generator=torch.Generator().manual_seed(gen_seed), init_len=4)
    p = SamplingParams(temperature=1.0)
    a, b = d.add([1, 2, 3]), d.add([4, 5, 6, 7])
    out = [d.step(params=p) for _ in range(6)]
    d.extend(a, [8, 9])  # a prefills 3 tokens in the next step while b decodes one
    c = d.add([10, 11])
    out += [d.step(params=p) for _ in range(8)]
    d.truncate(b, 5)
    d.extend(b, [12])
    out += [d.step([b, c], params=p) for _ in range(5)]
    return out


def test_fast_decode_step_is_bit_identical_to_forward(monkeypatch):
    m = tiny_model(seed=4)
    fast = run_mixed(m, 5)
    calls = []
    orig = m.decode_step
    monkeypatch.setattr(m, "decode_step", lambda *a, **k: calls.append(1) or orig(*a, **k))
    fast2 = run_mixed(m, 5)
    assert fast2 == fast and len(calls) >= 12  # the fast step ran on the one-token steps
    monkeypatch.setattr(gen, "FAST_DECODE", False)
    calls.clear()
    slow = run_mixed(m, 5)
    assert not calls
    assert slow == fast  # tokens and log-probs equal as Python floats: bit-identical
    assert len({t for o in fast for t, _ in o.values()}) > 3


def test_fast_decode_not_used_with_hooks_or_moe():
    m = tiny_model(seed=5)
    h = m.layers[0].register_forward_hook(lambda *a: None)
    assert not Decoder(m)._fast()
    h.remove()
    assert Decoder(m)._fast()
    assert not Decoder(tiny_model(seed=1, n_experts=4, n_experts_per_tok=2, moe_ffn_dim=32))._fast()
