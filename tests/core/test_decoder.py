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


def _counting_builds(monkeypatch) -> list:
    from sherman.core.linear import FusedPack

    builds: list = []
    orig = FusedPack.build.__func__
    monkeypatch.setattr(FusedPack, "build", classmethod(lambda cls, layers: builds.append(1) or orig(cls, layers)))
    return builds


def test_decoder_holds_packs_across_steps_and_rebuilds_them_after_a_weight_update(monkeypatch):
    m = tiny_model(seed=6)
    builds = _counting_builds(monkeypatch)
    greedy = SamplingParams(temperature=0.0)
    d = Decoder(m, init_len=4)
    for p in PROMPTS:
        d.add(p)
    d.step(params=greedy)
    n = len(builds)
    assert n == 2 * 4 + 1  # per layer q/k/v (fused), o, gate/up (fused), down; the LM head
    for _ in range(4):
        d.step(params=greedy)
    assert len(builds) == n and m.__dict__["_pack_depth"] == 1  # held between steps, not rebuilt
    with torch.no_grad():
        for w in m.parameters():
            w.mul_(1.01)  # an optimizer step between two decode steps (AsyncThink RL)
    d.step(params=greedy)
    assert len(builds) == 2 * n and all(p.fresh() for p in m.__dict__["_packs"])  # rebuilt for the new weights
    d.close()
    assert m.__dict__["_pack_depth"] == 0 and "_packs" not in m.__dict__
    d.close()  # idempotent
    assert m.__dict__["_pack_depth"] == 0


def test_dropped_decoder_releases_its_packs():
    import gc

    m = tiny_model(seed=7)
    d = Decoder(m)
    d.add([1, 2, 3])
    d.step(params=SamplingParams(temperature=0.0))
    assert m.__dict__["_pack_depth"] == 1
    del d
    gc.collect()
    assert m.__dict__["_pack_depth"] == 0 and "_packs" not in m.__dict__


def test_decoder_steps_run_the_cpp_decode_layers(monkeypatch):
    import pytest

    from sherman.core import cpu_decode

    if cpu_decode.ext() is None:
        pytest.skip(f"C++ decode kernels unavailable: {cpu_decode.failure()}")
    m = tiny_model(seed=8)
    want, _ = run_decoder(m, PROMPTS, 8, SamplingParams(temperature=0.0), None)
    calls = []
    orig = cpu_decode.decode_layers
    monkeypatch.setattr(cpu_decode, "decode_layers", lambda *a, **k: calls.append(1) or orig(*a, **k))
    got, _ = run_decoder(m, PROMPTS, 8, SamplingParams(temperature=0.0), None)
    assert got == want and len(calls) == 7  # every one-token step after the prefill: one C++ call for all layers
    monkeypatch.setenv("SHERMAN_CPP", "0")
    calls.clear()
    plain, _ = run_decoder(m, PROMPTS, 8, SamplingParams(temperature=0.0), None)
    assert not calls and plain == want  # the PyTorch loop gives the same tokens


def _scripted_run(m, headroom: int) -> list:
    """Steps with a changing membership: in-place steps of one batch, a subset, a new prompt, extend and truncate."""
    d = Decoder(m, generator=torch.Generator().manual_seed(11), init_len=4, headroom=headroom)
    p = SamplingParams(temperature=1.0)
    a, b, c = (d.add(x) for x in PROMPTS)
    out = [d.step(params=p) for _ in range(6)]  # the same three rows: in place after the first step
    out += [d.step([c, a], params=p) for _ in range(5)]  # a subset, another order: written back, packed again
    e = d.add([3, 4, 5, 6])
    out += [d.step([a, b, c, e], params=p) for _ in range(4)]
    d.extend(b, [7, 8, 9])  # inserted text (AsyncThink's join results)
    out += [d.step(params=p) for _ in range(3)]
    d.truncate(c, 5)
    d.extend(c, [1, 2])  # a prompt that shares the first 5 tokens (the Batcher's prefix reuse)
    out += [d.step(params=p) for _ in range(3)]
    d.remove(a)
    out += [d.step(params=p) for _ in range(2)]
    out.append({s: d.length(s) for s in (b, c, e)})
    return out


def test_in_place_steps_equal_packing_every_step():
    m = tiny_model(seed=9)
    ref = _scripted_run(m, headroom=0)  # no free slot: every step packs the rows' own caches (the plain path)
    for headroom in (64, 2):  # in place until the membership changes; 2: the batch cache also fills up and is re-packed
        got = _scripted_run(m, headroom)
        assert got[-1] == ref[-1]
        for x, y in zip(got[:-1], ref[:-1]):
            assert x.keys() == y.keys() and [t for t, _ in x.values()] == [t for t, _ in y.values()]
            torch.testing.assert_close(torch.tensor([v for _, v in x.values()]), torch.tensor([v for _, v in y.values()]), atol=1e-5, rtol=1e-5)
    assert len({t for o in ref[:-1] for t, _ in o.values()}) > 5  # not a degenerate repeat
