import asyncio
from contextlib import aclosing

import pytest
import torch

from sherman.core.decoder import Batcher
from sherman.core.generate import SamplingParams, generate
from sherman.core.model import ModelConfig, Transformer
from sherman.core.tokenizer import CharTokenizer
from sherman.think.backends import LocalBackend, ScriptedBackend
from sherman.think.baselines import BaselineConfig, aggregate, parallel, sequential
from sherman.think.engine import AsyncThinkEngine, ThinkConfig
from sherman.think.train import SPECIALS

GREEDY = SamplingParams(temperature=0.0)


def tiny(vocab=40, seed=0):
    torch.manual_seed(seed)
    m = Transformer(ModelConfig(vocab_size=vocab, dim=64, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=96))
    with torch.no_grad():
        for p in m.parameters():
            p.mul_(25.0)
    return m


async def collect(b, ids, n, stop_after=None):
    out = []
    async with aclosing(b.stream(ids, GREEDY, n)) as toks:
        async for tok, _ in toks:
            out.append(tok)
            if stop_after is not None and len(out) >= stop_after:
                break
    return out


def test_batcher_concurrent_streams_match_generate_and_batch():
    m = tiny()
    prompts = [[1, 2, 3], [4, 5, 6, 7, 8], [9]]

    async def main():
        b = Batcher(m)
        outs = await asyncio.gather(*[collect(b, p, 8) for p in prompts])
        await b.close()
        return outs, b.stats

    outs, stats = asyncio.run(main())
    ref = generate(m, prompts, SamplingParams(max_new_tokens=8, temperature=0.0))
    assert outs == ref.tokens
    assert stats["rows"] == 24 and stats["steps"] < 24  # several sequences per forward pass


def test_batcher_prefix_reuse_after_stop():
    m = tiny(seed=1)

    async def main():
        b = Batcher(m)
        first = await collect(b, [1, 2, 3, 4, 5], 10, stop_after=3)
        resumed = [1, 2, 3, 4, 5] + first + [7, 7]
        more = await collect(b, resumed, 5)
        await b.close()
        return first, more, b.stats

    first, more, stats = asyncio.run(main())
    ref = generate(m, [[1, 2, 3, 4, 5] + first + [7, 7]], SamplingParams(max_new_tokens=5, temperature=0.0))
    assert more == ref.tokens[0]
    assert stats["reused_tokens"] == 5 + 3 and stats["prefill_tokens"] == 5 + 2


def test_local_backend_engine_smoke_on_random_model():
    tok = CharTokenizer("0123456789+-*=;#abc", specials=SPECIALS)
    m = tiny(vocab=tok.vocab_size, seed=2)
    with torch.no_grad():
        m.embed_tokens.weight.div_(25.0)  # flatter distribution: plenty of tags get sampled
    backend = LocalBackend(m, tok, SamplingParams(temperature=1.0), generator=torch.Generator().manual_seed(0))
    cfg = ThinkConfig(capacity=3, max_org_tokens=40, max_worker_tokens=12)
    for _ in range(3):
        r = AsyncThinkEngine(backend, cfg).run_sync("1+2;3*4=")
        assert r.org_tokens <= 40 and r.org_tokens <= r.latency <= r.total_tokens
        assert all(t.ids and len(t.ids) == 1 for t in r.tokens)


def test_sequential_and_parallel_on_scripted_backend():
    outs = iter(["xx<ANSWER>5</ANSWER>", "yyyy<ANSWER>7</ANSWER>", "z<ANSWER>5</ANSWER>", "no answer at all"])
    scripted = {}

    def script(prompt):
        return scripted.setdefault(len(scripted), next(outs))

    b = ScriptedBackend(script)
    r = asyncio.run(parallel(b, "Q", BaselineConfig(k=4, max_tokens=100)))
    assert r.answer == "5"
    lens = [20, 22, 19, 16]
    assert r.latency == max(lens) and r.total_tokens == sum(lens) and r.eta == pytest.approx(sum(lens) / max(lens))
    s = asyncio.run(sequential(ScriptedBackend(lambda p: "ab<ANSWER>1</ANSWER>tail"), "Q", BaselineConfig()))
    assert s.answer == "1" and s.latency == 20 and s.eta == 1.0 and s.errors == []


def test_aggregate():
    assert aggregate(["a", "b", "a", None], "vote") == "a"
    assert aggregate(["1+2;3", "3;4*1", None, ""], "union") == "1+2;3;4*1"
    assert aggregate([None], "vote") is None
