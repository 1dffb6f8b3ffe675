"""The graded DELT corpus: corruption rate and difficulty are what the metadata says; J is disjoint from evaluation."""

import numpy as np
import pytest

from sherman.data.corpus import (
    HOPS,
    GradedConfig,
    follow,
    hop_sentence,
    make_graded_corpus,
    make_world,
    parse_hop_sentence,
)
from sherman.data.ordering import folding, window_jitter


@pytest.fixture(scope="module")
def corpus():
    return make_graded_corpus(GradedConfig(n_entities=16, n_train=3000, n_target=40, n_valid=60, n_cloze_per_hop=10), seed=3)


def _sentences(text: str) -> list[str]:
    """Split a document back into its sentences: true/false facts end in '.', corrupted text in ','."""
    out, cur = [], ""
    for ch in text:
        cur += ch
        if ch in ".,":
            out.append(cur.strip())
            cur = ""
    return out


def test_hop_sentence_by_hand():
    import random

    w = {"ab": {"city": "rome", "color": "red", "pet": "cat", "friend": "cd"},
         "cd": {"city": "oslo", "color": "blue", "pet": "dog", "friend": "ab"}}
    assert follow(w, "ab", 1) == "ab" and follow(w, "ab", 2) == "cd" and follow(w, "ab", 3) == "ab"
    assert hop_sentence(w, "ab", 2, "city") == "the friend of ab lives in oslo."
    assert parse_hop_sentence(w, "the friend of ab lives in oslo.") == (2, True)
    assert parse_hop_sentence(w, "the friend of the friend of ab has a dog.") == (3, False)
    assert parse_hop_sentence(w, "ab lives oslo in.") is None
    assert len(make_world(5, random.Random(0))) == 5


def test_every_sentence_matches_its_flags_and_hops(corpus):
    for d in corpus.train:
        if d.kind == "junk":
            assert d.hops == 0 and d.corrupt_rate == 1.0 and d.corrupted == [True]
            assert all(parse_hop_sentence(corpus.world, s) is None for s in _sentences(d.text))  # no fact in junk
            continue
        sents = _sentences(d.text)
        assert len(sents) == len(d.corrupted) == 3
        for s, bad in zip(sents, d.corrupted):
            parsed = parse_hop_sentence(corpus.world, s)
            if bad:
                assert parsed is None or parsed == (d.hops, False), s  # corrupted: not a true fact
            else:
                assert parsed == (d.hops, True), s  # clean: a true fact at the document's difficulty


def test_corruption_rate_is_uniform_and_realized(corpus):
    docs = [d for d in corpus.train if d.kind != "junk"]
    c = np.array([d.corrupt_rate for d in docs])
    realized = np.array([d.corrupt_frac for d in docs])
    # c ~ U(0, 1): mean 1/2, variance 1/12, each decile holds ~10%
    assert abs(c.mean() - 0.5) < 0.03 and abs(c.var() - 1 / 12) < 0.01
    assert np.all(np.abs(np.histogram(c, bins=10, range=(0, 1))[0] / len(c) - 0.1) < 0.03)
    # each sentence corrupted with probability c: E[realized | c] = c, so the regression slope is ~1, intercept ~0
    slope, icpt = np.polyfit(c, realized, 1)
    assert abs(slope - 1.0) < 0.08 and abs(icpt) < 0.05
    assert abs(realized.mean() - c.mean()) < 0.02


def test_junk_share_and_hop_levels(corpus):
    junk = sum(d.kind == "junk" for d in corpus.train) / len(corpus.train)
    assert 0.0 < junk <= 0.05
    hops = np.array([d.hops for d in corpus.train if d.kind != "junk"])
    for h in HOPS:
        assert abs((hops == h).mean() - 0.25) < 0.04
    with pytest.raises(ValueError):
        GradedConfig(junk_frac=0.2)


def test_target_is_disjoint_from_evaluation_and_training(corpus):
    target = set(corpus.target)
    assert len(target) == 40 and len(corpus.valid) == 60
    assert not target & set(corpus.eval_texts())
    assert not target & {d.text for d in corpus.train}
    assert not set(corpus.valid) & {d.text for d in corpus.train}
    for t in corpus.target + corpus.valid:  # clean
        assert all(parse_hop_sentence(corpus.world, s) is not None and parse_hop_sentence(corpus.world, s)[1] for s in _sentences(t))


def test_cloze_answers_follow_the_chain(corpus):
    for it in corpus.cloze:
        h = int(it.kind[3:])
        sent = it.prompt + it.options[it.answer]
        assert parse_hop_sentence(corpus.world, sent) == (h, True)
        wrong = [parse_hop_sentence(corpus.world, it.prompt + o) for i, o in enumerate(it.options) if i != it.answer]
        assert all(p == (h, False) for p in wrong)


def test_deterministic():
    cfg = GradedConfig(n_entities=8, n_train=50, n_target=4, n_valid=4, n_cloze_per_hop=2)
    a, b = make_graded_corpus(cfg, 1), make_graded_corpus(cfg, 1)
    assert [d.text for d in a.train] == [d.text for d in b.train] and a.target == b.target


def test_window_jitter_official_semantics():
    order = np.arange(10)
    j = window_jitter(order, 4, seed=0)
    assert sorted(j[:4]) == [0, 1, 2, 3] and sorted(j[4:8]) == [4, 5, 6, 7] and sorted(j[8:]) == [8, 9]
    assert not np.array_equal(j, order)
    assert np.array_equal(window_jitter(order, 1), order) and np.array_equal(window_jitter(order, 0), order)
    s = np.array([5.0, 1.0, 4.0, 2.0, 3.0, 0.0])  # ascending: 5 1 3 4 2 0 -> fold 2: [5 3 2] + [1 4 0]
    assert folding(s, 2).tolist() == [5, 3, 2, 1, 4, 0]
    fj = folding(s, 2, window=3, seed=1)
    assert sorted(fj[:3].tolist()) == [2, 3, 5] and sorted(fj[3:].tolist()) == [0, 1, 4]
