import json
import re
from collections import Counter

import pytest

from sherman.core.common import ShermanError
from sherman.data.corpus import ALPHABET, CITIES, CorpusConfig, make_corpus, read_jsonl, write_corpus


def test_corpus_is_deterministic_and_has_the_advertised_mix():
    cfg = CorpusConfig(n_entities=6, n_clean=60, noise_frac=0.3, dup_frac=0.1, n_target=8, n_valid=8)
    a, b = make_corpus(cfg, seed=1), make_corpus(cfg, seed=1)
    assert [d.text for d in a.train] == [d.text for d in b.train]
    assert [d.text for d in make_corpus(cfg, seed=2).train] != [d.text for d in a.train]
    kinds = Counter(d.kind for d in a.train)
    assert kinds == {"clean": 60, "shuffled": 6, "random": 6, "boilerplate": 6, "near_dup": 6}
    assert sum(a.noise_mask()) == 18
    assert len(a.target) == 8 and len(a.valid) == 8
    assert all(set(d.text) <= set(ALPHABET) for d in a.train)
    train_texts = {d.text for d in a.train}
    assert all(1 <= d.level <= 3 for d in a.train if d.kind == "clean")
    assert sum(t in train_texts for t in a.target) <= 1  # the target set is fresh text (collisions are rare)


def test_cloze_answers_match_the_world():
    c = make_corpus(CorpusConfig(n_entities=5, n_clean=10), seed=0)
    assert len(c.cloze) == 5 * 4
    for item in c.cloze:
        if item.kind == "city":
            e = item.prompt.split()[0]
            assert item.options[item.answer] == f" {c.world[e]['city']}."
        if item.kind == "friend_city":
            e = item.prompt.split()[3]
            assert item.options[item.answer] == f" {c.world[c.world[e]['friend']]['city']}."
            assert len(item.options) == len(CITIES)
    # clean documents state true facts: every sentence "<entity> lives in <city>." agrees with the world
    checked = 0
    for d in c.train:
        for e, city in re.findall(r"(?:^|\. )(\w+) lives in (\w+)\.", d.text):
            assert c.world[e]["city"] == city
            checked += 1
    assert checked > 0


def test_write_and_read_jsonl(tmp_path):
    c = make_corpus(CorpusConfig(n_entities=4, n_clean=10, n_target=3, n_valid=3), seed=0)
    paths = write_corpus(c, tmp_path)
    assert read_jsonl(paths["train"]) == [d.text for d in c.train]
    assert read_jsonl(paths["target"]) == c.target
    row = json.loads(paths["cloze"].read_text().splitlines()[0])
    assert set(row) == {"prompt", "options", "answer", "kind"}


def test_read_jsonl_errors(tmp_path):
    with pytest.raises(ShermanError, match="no such"):
        read_jsonl(tmp_path / "missing.jsonl")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "ok"}\nnot json\n')
    with pytest.raises(ShermanError, match=":2: not valid JSON"):
        read_jsonl(bad)
    bad.write_text('{"content": "x"}\n')
    with pytest.raises(ShermanError, match='"text"'):
        read_jsonl(bad)
    bad.write_text("\n\n")
    with pytest.raises(ShermanError, match="no documents"):
        read_jsonl(bad)
