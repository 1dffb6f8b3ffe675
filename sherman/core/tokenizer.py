"""Tokenizers: a character tokenizer with special tokens (synthetic tasks), byte-level BPE trained with the
Hugging Face `tokenizers` library, and loading a Hugging Face `tokenizer.json` as shipped with Llama/Qwen checkpoints.

Both tokenizer classes share one interface:
    encode(text, bos=False, eos=False) -> list[int]   special strings such as "<eos>" inside `text` become one id
    decode(ids, skip_special=True) -> str
    token_id(s) -> int                                id of a special string (or a single char / vocab entry)
    pad_id, bos_id, eos_id, vocab_size
    save(path), Cls.load(path)

`save(dir)` writes `dir/tokenizer.json`; `load_tokenizer(path)` reads a directory or a file and returns the right
class (our char format carries `"type": "char"`; anything else is a Hugging Face `tokenizer.json`).

Export for other tools (`sherman convert --to-hf`, `hf_tokenizer_files`): every tokenizer becomes a Hugging Face
`tokenizer.json` that `tokenizers` / `AutoTokenizer` / vLLM read and that encodes to Sherman's ids. The character
tokenizer is an equivalent `tokenizers` model: WordLevel over its characters, a pre-tokenizer that splits text into
single characters, the special tokens (all of them, whatever the list holds) as special added tokens at their ids,
and a `Fuse` decoder. A post-processor adds BOS, as Sherman's prompts do (`encode(text, bos=True)`), and
`tokenizer_config.json` carries bos/eos/pad and a Jinja chat template that renders as `serve.app.render_chat` does,
BOS first. `load_tokenizer` recognises such an exported character tokenizer and returns a `CharTokenizer` again.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from sherman.core.common import ShermanError

DEFAULT_SPECIALS: tuple[str, ...] = ("<pad>", "<bos>", "<eos>")

# Names under which checkpoints spell their special tokens, tried when no config file says which one is which.
_BOS_NAMES = ("<bos>", "<s>", "<|begin_of_text|>", "<|startoftext|>")
_EOS_NAMES = ("<eos>", "</s>", "<|end_of_text|>", "<|endoftext|>", "<|im_end|>", "<|eot_id|>")
_PAD_NAMES = ("<pad>", "<|pad|>", "<|finetune_right_pad_id|>", "[PAD]")


def _json_path(path: str | Path) -> Path:
    """A directory means `dir/tokenizer.json`; a file path is used as is."""
    p = Path(path)
    return p / "tokenizer.json" if p.is_dir() or p.suffix != ".json" else p


class CharTokenizer:
    """One id per character of `alphabet`, after the special tokens (ids 0..len(specials)-1, in order).

    With the default specials, pad=0, bos=1, eos=2. Specials are multi-character strings (e.g. "<eos>", "<FORK-1>")
    matched inside text longest first, so they can be written in prompts and traces directly.
    """

    def __init__(self, alphabet: str, specials: Sequence[str] = DEFAULT_SPECIALS):
        specials = list(dict.fromkeys(specials))
        assert all(isinstance(s, str) and s for s in specials), f"specials must be non-empty strings, got {specials!r}"
        chars = [c for c in dict.fromkeys(alphabet) if c not in specials]
        self.specials: list[str] = specials
        self.alphabet: str = "".join(chars)
        self.vocab: list[str] = specials + chars
        self._id = {s: i for i, s in enumerate(self.vocab)}
        self._special_ids = set(range(len(specials)))
        multi = sorted((s for s in specials if len(s) > 1), key=len, reverse=True)  # longest match first
        self._split = re.compile("(" + "|".join(map(re.escape, multi)) + ")") if multi else None

    # ---- ids of the special tokens
    def _named(self, name: str) -> int:
        if name not in self._id:
            raise ValueError(f"this tokenizer has no {name} token (specials: {self.specials})")
        return self._id[name]

    @property
    def pad_id(self) -> int:
        return self._named("<pad>")

    @property
    def bos_id(self) -> int:
        return self._named("<bos>")

    @property
    def eos_id(self) -> int:
        return self._named("<eos>")

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    def token_id(self, s: str) -> int:
        if s not in self._id:
            raise ValueError(f"{s!r} is not a token of this tokenizer")
        return self._id[s]

    # ---- encode / decode
    def encode(self, text: str, bos: bool = False, eos: bool = False) -> list[int]:
        ids = [self.bos_id] if bos else []
        parts = self._split.split(text) if self._split else [text]
        for k, part in enumerate(parts):
            if k % 2 == 1:  # a special token captured by the split
                ids.append(self._id[part])
                continue
            for c in part:
                i = self._id.get(c)
                if i is None:
                    raise ValueError(f"character {c!r} is not in the tokenizer's alphabet {self.alphabet!r}")
                ids.append(i)
        if eos:
            ids.append(self.eos_id)
        return ids

    def decode(self, ids: Iterable[int], skip_special: bool = True) -> str:
        out = []
        for i in ids:
            i = int(i)
            if not 0 <= i < len(self.vocab):
                raise ValueError(f"token id {i} out of range [0, {len(self.vocab)})")
            if skip_special and i in self._special_ids:
                continue
            out.append(self.vocab[i])
        return "".join(out)

    # ---- persistence
    def to_dict(self) -> dict[str, Any]:
        return {"type": "char", "alphabet": self.alphabet, "specials": list(self.specials)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CharTokenizer:
        if d.get("type") != "char" or not isinstance(d.get("alphabet"), str) or not isinstance(d.get("specials"), list):
            raise ValueError("not a char tokenizer dict (needs type='char', alphabet: str, specials: list)")
        return cls(d["alphabet"], d["specials"])

    def save(self, path: str | Path) -> Path:
        p = _json_path(path)
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(json.dumps(self.to_dict(), ensure_ascii=False, indent=1))
        return p

    @classmethod
    def load(cls, path: str | Path) -> CharTokenizer:
        tok = load_tokenizer(path)
        if not isinstance(tok, CharTokenizer):
            raise ShermanError(f"{_json_path(path)}: not a char tokenizer")
        return tok

    def __repr__(self) -> str:
        return f"CharTokenizer(vocab_size={self.vocab_size}, specials={self.specials})"


class BPETokenizer:
    """A `tokenizers.Tokenizer` (byte-level BPE, or any Hugging Face `tokenizer.json`) behind the Sherman interface.

    `bos`/`eos`/`pad` are the token strings; `eos_ids` lists every end-of-sequence id (chat checkpoints often have
    several; generation should stop on all of them). Without a pad token the pad id falls back to the eos id.
    """

    def __init__(self, tok, bos: str | None = None, eos: str | None = None, pad: str | None = None, extra_eos_ids: Sequence[int] = ()):
        self.tok = tok
        vocab = tok.get_vocab(with_added_tokens=True)
        self.bos, self.eos, self.pad = (s if s in vocab else None for s in (bos, eos, pad))
        self.bos = self.bos or next((s for s in _BOS_NAMES if s in vocab), None)
        self.eos = self.eos or next((s for s in _EOS_NAMES if s in vocab), None)
        self.pad = self.pad or next((s for s in _PAD_NAMES if s in vocab), None)
        ids = [vocab[self.eos]] if self.eos else []
        self.eos_ids: list[int] = list(dict.fromkeys(ids + [int(i) for i in extra_eos_ids]))

    def _tid(self, s: str | None, what: str) -> int:
        if s is None:
            raise ValueError(f"this tokenizer has no {what} token")
        return self.tok.token_to_id(s)

    @property
    def bos_id(self) -> int:
        return self._tid(self.bos, "bos")

    @property
    def eos_id(self) -> int:
        if not self.eos_ids:
            raise ValueError("this tokenizer has no eos token")
        return self.eos_ids[0]

    @property
    def pad_id(self) -> int:
        return self._tid(self.pad, "pad") if self.pad else self.eos_id

    @property
    def vocab_size(self) -> int:
        return self.tok.get_vocab_size(with_added_tokens=True)

    def token_id(self, s: str) -> int:
        i = self.tok.token_to_id(s)
        if i is None:
            raise ValueError(f"{s!r} is not a token of this tokenizer")
        return i

    def encode(self, text: str, bos: bool = False, eos: bool = False) -> list[int]:
        ids = self.tok.encode(text, add_special_tokens=False).ids
        return ([self.bos_id] if bos else []) + ids + ([self.eos_id] if eos else [])

    def decode(self, ids: Iterable[int], skip_special: bool = True) -> str:
        return self.tok.decode([int(i) for i in ids], skip_special_tokens=skip_special)

    def save(self, path: str | Path) -> Path:
        """Write `tokenizer.json` (and `tokenizer_config.json` naming bos/eos/pad beside it)."""
        p = _json_path(path)
        p.parent.mkdir(parents=True, exist_ok=True)
        self.tok.save(str(p))
        cfg = {"bos_token": self.bos, "eos_token": self.eos, "pad_token": self.pad}
        (p.parent / "tokenizer_config.json").write_text(json.dumps(cfg, indent=1))
        return p

    @classmethod
    def load(cls, path: str | Path) -> BPETokenizer:
        tok = load_tokenizer(path)
        if not isinstance(tok, BPETokenizer):
            raise ShermanError(f"{_json_path(path)}: not a Hugging Face tokenizer.json")
        return tok

    def __repr__(self) -> str:
        return f"BPETokenizer(vocab_size={self.vocab_size}, bos={self.bos!r}, eos={self.eos!r}, pad={self.pad!r})"


def train_bpe(texts: Iterable[str], vocab_size: int, specials: Sequence[str] = DEFAULT_SPECIALS) -> BPETokenizer:
    """Train a byte-level BPE (GPT-2 style: bytes mapped to printable chars, no unknown token) on `texts`."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    specials = list(dict.fromkeys(specials))
    base = len(pre_tokenizers.ByteLevel.alphabet())
    if vocab_size < base + len(specials):
        raise ValueError(f"vocab_size {vocab_size} < 256 bytes + {len(specials)} specials")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=specials, show_progress=False, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(texts, trainer=trainer)
    names = set(specials)
    pick = lambda cands: next((s for s in cands if s in names), None)  # noqa: E731
    return BPETokenizer(tok, bos=pick(_BOS_NAMES), eos=pick(_EOS_NAMES), pad=pick(_PAD_NAMES))


def _read_json(p: Path) -> dict[str, Any]:
    try:
        d = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ShermanError(f"{p}: cannot read tokenizer file ({type(e).__name__}: {e})") from None
    if not isinstance(d, dict):
        raise ShermanError(f"{p}: expected a JSON object")
    return d


def _token_str(v: Any) -> str | None:
    """tokenizer_config.json spells a token as a string or as an AddedToken dict {"content": ...}."""
    if isinstance(v, dict):
        v = v.get("content")
    return v if isinstance(v, str) else None


def _special_ids_from_configs(folder: Path) -> dict[str, Any]:
    """bos/eos/pad as strings (tokenizer_config.json) or ids (generation_config.json, then config.json)."""
    out: dict[str, Any] = {}
    tc = folder / "tokenizer_config.json"
    if tc.is_file():
        d = _read_json(tc)
        for k in ("bos", "eos", "pad"):
            s = _token_str(d.get(f"{k}_token"))
            if s is not None:
                out[k] = s
    for name in ("generation_config.json", "config.json"):
        f = folder / name
        if f.is_file():
            d = _read_json(f)
            for k in ("bos", "eos", "pad"):
                v = d.get(f"{k}_token_id")
                if f"{k}_ids" not in out and v is not None:
                    out[f"{k}_ids"] = [v] if isinstance(v, int) else [int(x) for x in v]
    return out


# ---------------------------------------------------------------------------------------------------------------------
# Hugging Face export

_CHAR_SPLIT = r"[\s\S]"  # one match per character (newlines included), the char tokenizer's pre-tokenizer

_CONTENT = ("{%- if m['content'] is string -%}{{ m['content'] }}{%- else -%}{%- for p in m['content'] -%}"
            "{%- if p['type'] == 'text' -%}{{ p['text'] }}{%- endif -%}{%- endfor -%}{%- endif -%}")
CHAT_TEMPLATES: dict[str, str] = {
    "plain": "{%- if bos_token -%}{{ bos_token }}{%- endif -%}{%- for m in messages -%}" + _CONTENT + "{%- endfor -%}",
    "roles": ("{%- if bos_token -%}{{ bos_token }}{%- endif -%}{%- for m in messages -%}{{ m['role'] + ': ' }}" + _CONTENT
              + "{{ '\n' }}{%- endfor -%}{{ 'assistant: ' }}"),
}
"""Jinja chat templates equal to `serve.app.render_chat(messages, name)` with BOS in front (as the server encodes
prompts); 'roles' always ends with 'assistant: ', as render_chat does, whatever add_generation_prompt says."""


def hf_backend(tok: CharTokenizer | BPETokenizer):
    """A `tokenizers.Tokenizer` encoding like `tok.encode(text, bos=True)` with special tokens on (BOS added by a
    post-processor when the tokenizer has one) and like `tok.encode(text)` with them off."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, processors

    if isinstance(tok, CharTokenizer):
        t = Tokenizer(models.WordLevel({s: i for i, s in enumerate(tok.vocab)}, unk_token=None))
        t.pre_tokenizer = pre_tokenizers.Split(Regex(_CHAR_SPLIT), behavior="isolated")
        t.decoder = decoders.Fuse()
        t.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in tok.specials])
        bos = "<bos>" if "<bos>" in tok.specials else None
    else:
        t = Tokenizer.from_str(tok.tok.to_str())
        bos = tok.bos
    if bos is not None:
        bos_id = t.token_to_id(bos)
        probe = ""  # any text works; the empty one is encodable by every vocabulary
        if t.encode(probe, add_special_tokens=True).ids != [bos_id] + t.encode(probe, add_special_tokens=False).ids:
            tmpl = processors.TemplateProcessing(single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, bos_id)])
            t.post_processor = tmpl if t.post_processor is None else processors.Sequence([t.post_processor, tmpl])
    return t


def _names(tok: CharTokenizer | BPETokenizer) -> dict[str, str | None]:
    if isinstance(tok, CharTokenizer):
        return {k: (f"<{k}>" if f"<{k}>" in tok.specials else None) for k in ("bos", "eos", "pad")}
    return {"bos": tok.bos, "eos": tok.eos, "pad": tok.pad}


def hf_special_ids(tok: CharTokenizer | BPETokenizer) -> dict[str, int | list[int] | None]:
    """bos/eos/pad token ids for config.json and generation_config.json (eos a list when there are several)."""
    n = _names(tok)
    ids = {k: (tok.token_id(v) if v is not None else None) for k, v in n.items()}
    if isinstance(tok, BPETokenizer) and len(tok.eos_ids) > 1:
        ids["eos"] = list(tok.eos_ids)
    if ids["pad"] is None and isinstance(tok, BPETokenizer) and tok.eos_ids:
        ids["pad"] = tok.pad_id  # Sherman pads with eos when there is no pad token
    return {f"{k}_token_id": v for k, v in ids.items()}


def hf_tokenizer_files(tok: CharTokenizer | BPETokenizer, chat_template: str = "plain", max_len: int | None = None) -> dict[str, str]:
    """File name -> text of the Hugging Face tokenizer files: tokenizer.json, tokenizer_config.json and
    special_tokens_map.json."""
    if chat_template not in CHAT_TEMPLATES:
        raise ShermanError(f"unknown chat template {chat_template!r}; choose one of {', '.join(CHAT_TEMPLATES)}")
    n = _names(tok)
    cfg: dict[str, Any] = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": n["bos"], "eos_token": n["eos"], "pad_token": n["pad"] or n["eos"], "unk_token": None,
        "clean_up_tokenization_spaces": False,
        "chat_template": CHAT_TEMPLATES[chat_template],
    }
    if max_len:
        cfg["model_max_length"] = int(max_len)
    special_map = {f"{k}_token": v for k, v in (("bos", n["bos"]), ("eos", n["eos"]), ("pad", n["pad"] or n["eos"])) if v is not None}
    return {
        "tokenizer.json": hf_backend(tok).to_str(pretty=True),
        "tokenizer_config.json": json.dumps(cfg, indent=2, ensure_ascii=False),
        "special_tokens_map.json": json.dumps(special_map, indent=2, ensure_ascii=False),
    }


def _as_char_tokenizer(d: dict[str, Any]) -> CharTokenizer | None:
    """Our exported character tokenizer (WordLevel + single-character split, specials first) -> CharTokenizer, else None."""
    model, pre = d.get("model") or {}, d.get("pre_tokenizer") or {}
    if model.get("type") != "WordLevel" or pre.get("type") != "Split" or (pre.get("pattern") or {}).get("Regex") != _CHAR_SPLIT:
        return None
    vocab = model.get("vocab") or {}
    by_id = sorted(vocab.items(), key=lambda kv: kv[1])
    if [i for _, i in by_id] != list(range(len(by_id))):
        return None
    specials = [a["content"] for a in sorted(d.get("added_tokens") or [], key=lambda a: a["id"]) if a.get("special")]
    tokens = [s for s, _ in by_id]
    if tokens[: len(specials)] != specials or not all(len(s) == 1 for s in tokens[len(specials):]):
        return None
    return CharTokenizer("".join(tokens[len(specials):]), specials)


def load_tokenizer(path: str | Path) -> CharTokenizer | BPETokenizer:
    """Load a tokenizer from a directory (its `tokenizer.json`) or a JSON file.

    Our char format (`"type": "char"`) gives a `CharTokenizer`; a Hugging Face `tokenizer.json` gives a
    `BPETokenizer` whose bos/eos/pad come from `tokenizer_config.json`, `generation_config.json` or `config.json`
    beside it when present. A missing or corrupt file raises `ShermanError` naming the path.
    """
    p = _json_path(path)
    if not p.is_file():
        raise ShermanError(f"{p}: tokenizer file not found")
    d = _read_json(p)
    if d.get("type") == "char":
        try:
            return CharTokenizer.from_dict(d)
        except (ValueError, AssertionError) as e:
            raise ShermanError(f"{p}: corrupt char tokenizer ({e})") from None
    char = _as_char_tokenizer(d)
    if char is not None:
        return char
    from tokenizers import Tokenizer

    try:
        tok = Tokenizer.from_file(str(p))
    except Exception as e:  # the Rust side raises a plain Exception on any malformed field
        raise ShermanError(f"{p}: not a valid tokenizer.json ({str(e).splitlines()[0][:200]})") from None
    cfg = _special_ids_from_configs(p.parent)
    names = {}
    for k in ("bos", "eos", "pad"):
        names[k] = cfg.get(k)
        if names[k] is None and cfg.get(f"{k}_ids"):
            names[k] = tok.id_to_token(cfg[f"{k}_ids"][0])
    return BPETokenizer(tok, bos=names["bos"], eos=names["eos"], pad=names["pad"], extra_eos_ids=cfg.get("eos_ids", []))


__all__ = ["CharTokenizer", "BPETokenizer", "train_bpe", "load_tokenizer", "DEFAULT_SPECIALS", "hf_tokenizer_files", "hf_special_ids",
           "hf_backend", "CHAT_TEMPLATES"]
