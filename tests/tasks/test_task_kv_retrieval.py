import random

import pytest

from sherman.core.common import ShermanError
from sherman.core.tokenizer import CharTokenizer
from sherman.tasks.base import Example
from sherman.tasks.kv_retrieval import KVRetrieval


def test_reward_hand_examples():
    task = KVRetrieval()
    ex = Example("ab:12,cd:34?cd:", "34", {})
    assert task.reward(ex, "34") == 1.0
    assert task.reward(ex, "34<eos>") == 1.0
    assert task.reward(ex, " 34 <eos>ab") == 1.0
    assert task.reward(ex, "#34") == 1.0
    assert task.reward(ex, "12") == 0.0
    assert task.reward(ex, "344") == 0.0
    assert task.reward(ex, "3") == 0.0
    assert task.reward(ex, "") == 0.0
    assert task.reward(ex, "34,cd:34") == 0.0


def test_prompt_structure_and_depth():
    for depth, pos in [(0.0, 0), (1.0, 49), (0.5, 24), (0.25, 12)]:
        task = KVRetrieval(n_pairs=50, key_len=3, value_len=5, depth=depth)
        ex = task.sample(random.Random(depth))
        body, query = ex.prompt.split("?")
        pairs = [p.split(":") for p in body.split(",")]
        assert len(pairs) == 50 and len({k for k, _ in pairs}) == 50
        assert all(len(k) == 3 and len(v) == 5 for k, v in pairs)
        assert query == ex.meta["key"] + ":" and ex.meta["position"] == pos
        assert pairs[pos] == [ex.meta["key"], ex.answer]
        assert dict(pairs)[ex.meta["key"]] == ex.answer


def test_deterministic_trace_and_tokenizer():
    task = KVRetrieval(n_pairs=16)
    a, b = task.sample(random.Random(7)), task.sample(random.Random(7))
    assert (a.prompt, a.answer) == (b.prompt, b.answer)
    tok = CharTokenizer(task.alphabet())
    rng = random.Random(0)
    positions = set()
    for _ in range(200):
        ex = task.sample(rng)
        tr = task.trace(ex, rng)
        assert task.reward(ex, tr) == 1.0
        assert tok.decode(tok.encode(ex.prompt + tr, eos=True)) == ex.prompt + tr
        positions.add(ex.meta["position"])
    assert len(positions) == 16  # depth=None spreads the query over the context


def test_config_errors():
    with pytest.raises(ShermanError, match="depth"):
        KVRetrieval(depth=1.5)
    with pytest.raises(ShermanError, match="too few"):
        KVRetrieval(n_pairs=100, key_len=1, charset="ab")
    with pytest.raises(ShermanError, match="charset"):
        KVRetrieval(charset="ab:")


def test_no_separator_and_value_charset():
    task = KVRetrieval(n_pairs=36, key_len=1, value_len=2, sep="", value_charset="0123", depth=1.0)
    ex = task.sample(random.Random(3))
    body, query = ex.prompt.split("?")
    pairs = [(p[:1], p[1:]) for p in body.split(",")]
    assert len(pairs) == 36 and len({k for k, _ in pairs}) == 36  # 36 keys from 36 chars: all distinct
    assert all(set(v) <= set("0123") and len(v) == 2 for _, v in pairs)
    assert query == ex.meta["key"] == pairs[35][0] and ex.answer == pairs[35][1]
    assert task.alphabet() == task.cfg.charset + ",:?"  # value chars already in charset: no duplicates
    assert KVRetrieval(charset="ab", value_charset="xy", n_pairs=2).alphabet() == "abxy,:?"
    with pytest.raises(ShermanError, match="sep"):
        KVRetrieval(sep="=")
    with pytest.raises(ShermanError, match="value_charset"):
        KVRetrieval(value_charset="1:")
