"""Complete Hugging Face exports: tokenizer.json for the char and BPE tokenizers, tokenizer_config.json with bos/eos/pad
and a chat template rendering as `render_chat`, generation_config.json, bos/eos ids in config.json; `AutoTokenizer`
gives Sherman's ids, transformers' greedy `generate` on the export equals Sherman's, and `--from-hf` reads it back."""

from __future__ import annotations

import json
import string

import pytest
import torch
import transformers  # a dev dependency: its absence is a failure, not a skip

from sherman.core.checkpoint import save_checkpoint
from sherman.core.common import ShermanError
from sherman.core.generate import SamplingParams, generate
from sherman.core.hf import load_hf, main
from sherman.core.model import ModelConfig, Transformer
from sherman.core.tokenizer import BPETokenizer, CharTokenizer, load_tokenizer, train_bpe
from sherman.serve.app import render_chat

SPECIALS = ("<pad>", "<bos>", "<eos>", "<FORK-1>", "<JOIN-1>", "<ANSWER>")  # protocol-like tags ride along as specials
TEXTS = ["3+4=7", "12+30=42 <ANSWER>42", "a b c\nd", "<FORK-1>x<JOIN-1>", "  spaces  and\ttabs", "ünïcödé ok"]
CHATS = [
    [{"role": "user", "content": "3+4="}],
    [{"role": "system", "content": "be brief"}, {"role": "user", "content": "1+1="}, {"role": "assistant", "content": "2"},
     {"role": "user", "content": [{"type": "text", "text": "2+2"}, {"type": "text", "text": "="}]}],
]


def char_tok() -> CharTokenizer:
    return CharTokenizer(string.ascii_letters + string.digits + "+-=<>: \n\tüïöé", SPECIALS)


def bpe_tok() -> BPETokenizer:
    return train_bpe(TEXTS * 20 + ["the quick brown fox jumps over the lazy dog"] * 20, vocab_size=300, specials=SPECIALS)


TOKS = {"char": char_tok, "bpe": bpe_tok}


def make_ckpt(tmp_path, tok, seed: int = 0):
    torch.manual_seed(seed)
    model = Transformer(ModelConfig(vocab_size=tok.vocab_size, dim=64, n_layers=2, n_heads=2, n_kv_heads=1, ffn_dim=96, max_seq_len=256))
    with torch.no_grad():
        for n, p in model.named_parameters():
            if not n.endswith("norm.weight"):
                p.normal_(0.0, 0.2)
    ckpt = tmp_path / "ckpt"
    save_checkpoint(ckpt, model)
    tok.save(ckpt / "tokenizer.json")
    return model.eval(), ckpt


@pytest.mark.parametrize("kind", list(TOKS))
def test_auto_tokenizer_on_export_gives_sherman_ids(kind, tmp_path):
    tok = TOKS[kind]()
    model, ckpt = make_ckpt(tmp_path, tok)
    out = tmp_path / "hf"
    assert main(["--to-hf", str(ckpt), "--out", str(out)]) == 0
    for f in ("tokenizer.json", "tokenizer_config.json", "generation_config.json", "special_tokens_map.json"):
        assert (out / f).is_file(), f
    cfg = json.loads((out / "config.json").read_text())
    assert (cfg["bos_token_id"], cfg["eos_token_id"], cfg["pad_token_id"]) == (tok.bos_id, tok.eos_id, tok.pad_id)
    gen = transformers.GenerationConfig.from_pretrained(out)
    assert (gen.bos_token_id, gen.eos_token_id) == (tok.bos_id, tok.eos_id)
    hf_tok = transformers.AutoTokenizer.from_pretrained(out)
    assert (hf_tok.bos_token_id, hf_tok.eos_token_id, hf_tok.pad_token_id) == (tok.bos_id, tok.eos_id, tok.pad_id)
    for text in TEXTS:
        assert hf_tok(text).input_ids == tok.encode(text, bos=True), text  # BOS first, as Sherman's prompts
        assert hf_tok(text, add_special_tokens=False).input_ids == tok.encode(text), text
        ids = tok.encode(text, bos=True)
        assert hf_tok.decode(ids, skip_special_tokens=False) == tok.decode(ids, skip_special=False)
        assert hf_tok.decode(ids, skip_special_tokens=True) == tok.decode(ids)
    assert len(hf_tok) == tok.vocab_size
    for messages in CHATS:  # the chat template renders as render_chat (plain), BOS first, and tokenizes to Sherman's ids
        text = hf_tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        assert text == "<bos>" + render_chat(messages, "plain")
        ids = hf_tok.apply_chat_template(messages, tokenize=True, add_generation_prompt=True, return_dict=False)
        assert list(ids) == tok.encode(render_chat(messages, "plain"), bos=True)
    # the other template, as `sherman serve --chat-template roles` renders
    assert main(["--to-hf", str(ckpt), "--out", str(tmp_path / "roles"), "--chat-template", "roles"]) == 0
    roles = transformers.AutoTokenizer.from_pretrained(tmp_path / "roles")
    for messages in CHATS:
        assert roles.apply_chat_template(messages, tokenize=False, add_generation_prompt=True) == "<bos>" + render_chat(messages, "roles")


@pytest.mark.parametrize("kind", list(TOKS))
def test_transformers_generate_on_export_equals_sherman_greedy(kind, tmp_path):
    tok = TOKS[kind]()
    model, ckpt = make_ckpt(tmp_path, tok, seed=1)
    out = tmp_path / "hf"
    assert main(["--to-hf", str(ckpt), "--out", str(out)]) == 0
    hf_tok = transformers.AutoTokenizer.from_pretrained(out)
    hf = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32, attn_implementation="eager").eval()
    n = 24
    outs = set()
    for text in TEXTS[:4]:
        enc = hf_tok(text, return_tensors="pt")
        with torch.no_grad():
            seq = hf.generate(**enc, do_sample=False, max_new_tokens=n, min_new_tokens=n, eos_token_id=None)
        theirs = seq[0, enc.input_ids.shape[1]:].tolist()
        ours = generate(model, [tok.encode(text, bos=True)], SamplingParams(max_new_tokens=n, temperature=0.0)).tokens[0]
        assert ours == theirs, text
        outs.add(tuple(ours))
    assert len(outs) > 1  # prompts lead to different continuations


@pytest.mark.parametrize("kind", list(TOKS))
def test_from_hf_reads_the_export_back(kind, tmp_path):
    tok = TOKS[kind]()
    model, ckpt = make_ckpt(tmp_path, tok)
    assert main(["--to-hf", str(ckpt), "--out", str(tmp_path / "hf")]) == 0
    assert main(["--from-hf", str(tmp_path / "hf"), "--out", str(tmp_path / "back")]) == 0
    back_tok = load_tokenizer(tmp_path / "back")
    assert type(back_tok) is type(tok)
    if kind == "char":
        assert (back_tok.alphabet, back_tok.specials) == (tok.alphabet, tok.specials)
    for text in TEXTS:
        assert back_tok.encode(text, bos=True) == tok.encode(text, bos=True)
    assert (back_tok.bos_id, back_tok.eos_id, back_tok.pad_id) == (tok.bos_id, tok.eos_id, tok.pad_id)
    again = load_hf(tmp_path / "hf")
    a, b = model.state_dict(), again.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    # a second export of the re-imported checkpoint writes the same tokenizer files (BOS is not added twice)
    assert main(["--to-hf", str(tmp_path / "back"), "--out", str(tmp_path / "hf2")]) == 0
    for f in ("tokenizer.json", "tokenizer_config.json", "generation_config.json"):
        assert json.loads((tmp_path / "hf2" / f).read_text()) == json.loads((tmp_path / "hf" / f).read_text()), f


def test_export_refuses_a_tokenizer_larger_than_the_model(tmp_path):
    tok = char_tok()
    model = Transformer(ModelConfig(vocab_size=8, dim=32, n_layers=1, n_heads=2, n_kv_heads=1, ffn_dim=32))
    save_checkpoint(tmp_path / "c", model)
    tok.save(tmp_path / "c" / "tokenizer.json")
    with pytest.raises(ShermanError, match="tokenizer has"):
        main(["--to-hf", str(tmp_path / "c"), "--out", str(tmp_path / "o")])


def test_char_export_of_a_vocabulary_without_latin_letters():
    from sherman.core.tokenizer import hf_backend

    tok = CharTokenizer("0123", ("<pad>", "<bos>", "<eos>"))
    assert hf_backend(tok).encode("01").ids == tok.encode("01", bos=True) == [1, 3, 4]
