import json

import pytest

from sherman.core.common import ShermanError
from sherman.core.tokenizer import BPETokenizer, CharTokenizer, load_tokenizer, train_bpe


def test_char_ids_layout_and_roundtrip():
    tok = CharTokenizer("ab+=a1", specials=("<pad>", "<bos>", "<eos>", "<FORK-1>", "<FORK-12>"))
    assert (tok.pad_id, tok.bos_id, tok.eos_id) == (0, 1, 2)
    assert tok.token_id("<FORK-1>") == 3 and tok.token_id("<FORK-12>") == 4
    assert tok.alphabet == "ab+=1"  # duplicates dropped, order kept
    assert tok.vocab_size == 5 + 5
    assert tok.encode("ab") == [5, 6]
    assert tok.encode("ab", bos=True, eos=True) == [1, 5, 6, 2]
    # longest special first: "<FORK-12>" is one id, not "<FORK-1>" followed by "2>"
    assert tok.encode("a<FORK-12>b<eos>") == [5, 4, 6, 2]
    assert tok.encode("<FORK-1>1") == [3, 9]
    text = "a+b=1<FORK-1>ba"
    assert tok.decode(tok.encode(text), skip_special=False) == text
    assert tok.decode(tok.encode(text)) == "a+b=1ba"
    assert tok.decode(tok.encode(text, bos=True, eos=True)) == "a+b=1ba"


def test_char_unknown_char_and_bad_ids():
    tok = CharTokenizer("abc")
    with pytest.raises(ValueError, match="'z'"):
        tok.encode("abz")
    with pytest.raises(ValueError, match="out of range"):
        tok.decode([99])
    with pytest.raises(ValueError, match="not a token"):
        tok.token_id("<sep>")
    # a partial special is not a special: '<' is unknown here
    with pytest.raises(ValueError, match="'<'"):
        tok.encode("a<eo")
    assert CharTokenizer("ab", specials=("<eos>",)).eos_id == 0
    with pytest.raises(ValueError, match="no <pad>"):
        _ = CharTokenizer("ab", specials=("<eos>",)).pad_id


def test_char_save_load(tmp_path):
    tok = CharTokenizer("0123456789+=#", specials=("<pad>", "<bos>", "<eos>", "<sep>"))
    path = tok.save(tmp_path / "tok")
    assert path.name == "tokenizer.json" and json.loads(path.read_text())["type"] == "char"
    for src in (tmp_path / "tok", path):
        back = load_tokenizer(src)
        assert isinstance(back, CharTokenizer) and back.vocab == tok.vocab
    assert CharTokenizer.load(path).encode("12+3=<sep>#15") == tok.encode("12+3=<sep>#15")
    assert CharTokenizer.from_dict(tok.to_dict()).vocab == tok.vocab


def test_load_missing_and_corrupt(tmp_path):
    with pytest.raises(ShermanError, match="not found"):
        load_tokenizer(tmp_path / "nothing")
    bad = tmp_path / "bad.json"
    bad.write_text('{"type": "char", "alph')
    with pytest.raises(ShermanError, match="bad.json"):
        load_tokenizer(bad)
    bad.write_text('{"model": {"type": "BPE", "vocab": 3}}')
    with pytest.raises(ShermanError, match="bad.json"):
        load_tokenizer(bad)
    bad.write_text('{"type": "char", "alphabet": 5, "specials": []}')
    with pytest.raises(ShermanError, match="corrupt char"):
        load_tokenizer(bad)


TEXTS = ["the quick brown fox jumps over the lazy dog", "a quick test of byte level bpe", "12+34=46 and 7*8=56"] * 20


def test_bpe_train_roundtrip_save_load(tmp_path):
    tok = train_bpe(TEXTS, vocab_size=300)
    assert isinstance(tok, BPETokenizer)
    assert (tok.pad_id, tok.bos_id, tok.eos_id) == (0, 1, 2)
    assert 259 <= tok.vocab_size <= 300
    for text in ["the quick brown fox", "unseen wörds ✓ 123", "  spaces\tand\nnewlines "]:
        assert tok.decode(tok.encode(text)) == text  # byte level: anything roundtrips
    ids = tok.encode("the fox", bos=True, eos=True)
    assert ids[0] == 1 and ids[-1] == 2 and tok.decode(ids) == "the fox"
    assert len(tok.encode("the quick")) < len("the quick")  # merges were learned
    # specials written inside text are one id
    ids = tok.encode("fox<eos>dog")
    assert ids.count(2) == 1 and tok.decode(ids, skip_special=False) == "fox<eos>dog"
    tok.save(tmp_path)
    back = load_tokenizer(tmp_path)
    assert isinstance(back, BPETokenizer) and (back.bos, back.eos, back.pad) == ("<bos>", "<eos>", "<pad>")
    assert back.encode("the lazy dog 12") == tok.encode("the lazy dog 12")
    assert BPETokenizer.load(tmp_path / "tokenizer.json").vocab_size == tok.vocab_size
    with pytest.raises(ShermanError, match="not a char"):
        CharTokenizer.load(tmp_path)
    with pytest.raises(ValueError):
        train_bpe(TEXTS, vocab_size=100)


def _hf_style_tokenizer_json(folder):
    """A Llama-3-like tokenizer.json written with the `tokenizers` API, with config files beside it."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = ["<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>"]
    trainer = trainers.BpeTrainer(
        vocab_size=280, special_tokens=specials, show_progress=False, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(TEXTS, trainer=trainer)
    tok.post_processor = processors.TemplateProcessing(single="<|begin_of_text|> $A", special_tokens=[("<|begin_of_text|>", 0)])
    folder.mkdir()
    tok.save(str(folder / "tokenizer.json"))
    return tok


def test_load_hf_tokenizer_json_with_configs(tmp_path):
    folder = tmp_path / "ckpt"
    ref = _hf_style_tokenizer_json(folder)
    (folder / "tokenizer_config.json").write_text(
        json.dumps({"bos_token": {"content": "<|begin_of_text|>", "special": True}, "eos_token": "<|eot_id|>", "pad_token": None})
    )
    (folder / "generation_config.json").write_text(json.dumps({"bos_token_id": 0, "eos_token_id": [1, 2]}))
    tok = load_tokenizer(folder)
    assert isinstance(tok, BPETokenizer)
    assert tok.bos_id == 0 and tok.eos_id == 2 and tok.eos_ids == [2, 1]
    assert tok.pad_id == tok.eos_id  # no pad token: falls back to eos
    text = "the quick dog"
    assert tok.encode(text) == ref.encode(text, add_special_tokens=False).ids  # no implicit bos from the post-processor
    assert tok.encode(text, bos=True) == ref.encode(text).ids
    assert tok.decode(tok.encode(text, bos=True, eos=True)) == text


def test_load_hf_tokenizer_ids_only_from_config_json(tmp_path):
    folder = tmp_path / "ckpt"
    _hf_style_tokenizer_json(folder)
    (folder / "config.json").write_text(json.dumps({"bos_token_id": 0, "eos_token_id": 1, "pad_token_id": 2}))
    tok = load_tokenizer(folder / "tokenizer.json")
    assert (tok.bos_id, tok.eos_id, tok.pad_id) == (0, 1, 2)
    assert (tok.bos, tok.eos, tok.pad) == ("<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>")
