"""VibeVoice LM + diffusion head over the VibeVoice input layout (arXiv 2508.19205, Sec. 2.2-2.3).

The LM is the core `Transformer` fed `embeds=`: text and control tokens use its token embedding; every
speech position (a `<speech_diffusion>` placeholder) instead takes
    acoustic_connector(z) + semantic_connector(s),
z the (normalized) sigma-VAE latent of that 7.5 Hz frame and s the semantic tokenizer's feature of the same
frame. The hidden state h_i at position i conditions the diffusion head that predicts the latent at
position i + 1; the LM head predicts the control tokens (another latent `<speech_diffusion>` or
`<speech_end>`, `<eos>`), which is how a speech segment stops.

Input layout (one sequence; P = a speech position), for a 2-speaker script:

    <bos>Voice input:\\n
    Speaker 0:<speech_start>P P ... P<speech_end>\\n          voice prompt of speaker 0
    Speaker 1:<speech_start>P P ... P<speech_end>\\n          voice prompt of speaker 1
    Text input:\\n
    Speaker 0: <line 1>\\n
    Speaker 1: <line 2>\\n
    <text_end>Speech output:\\n
    Speaker 0:<speech_start>P ... P<speech_end>              generated, one segment per script line
    Speaker 1:<speech_start>P ... P<speech_end>
    <eos>

Choices where the paper is silent or too big for a CPU (all config fields): the output marks each turn with
"Speaker k:" (turn-level control, so turn accuracy is measurable); the diffusion loss covers output speech
only and the CE loss covers output control tokens only; classifier-free guidance's negative branch is the
same LM over the prompt-free speech stream (`<bos>` + `<speech_start>P..P<speech_end>` per turn), and a
fraction `uncond_prob` of training sequences is that stream so the negative branch is in distribution.
Context curriculum: `curriculum` lists (fraction of steps, max turns) stages, from single utterances to
multi-turn dialogues.

Word interleaving (`interleave='words'`, ours, off by default): the long-form VibeVoice reads the script only from the
prefix, and at CPU scale that LM never learns to attend to it (it continues the speech before it: teacher-forced
predictions are the same under the right and a swapped script, `synthesize.script_reliance`). VibeVoice-Realtime
(the 0.5B streaming model card, microsoft/VibeVoice) instead uses an "interleaved, windowed design" that feeds text
chunks between the speech latents. Our version interleaves by words, timed by forced alignment (`speech/align.py`):
each output turn reads

    Speaker 0:<speech_start><next_text>w1 P P <next_text>w2 P P P <next_text>w3 P ... P<speech_end>

where word j (its IPA, so `text_input='phonemes'`) enters just before the first frame whose samples it overlaps. The
control head learns WHEN to read on (the `<next_text>` token is a CE target, the word's characters are given); at
synthesis the script supplies WHAT (`synthesize.stream`), so the speech most recently conditioned on is always the
word being spoken. The prefix still holds the whole script (the paper's layout), so the model also sees what comes.
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from sherman.core.common import ShermanError
from sherman.core.model import ModelConfig, RMSNorm, Transformer
from sherman.core.tokenizer import CharTokenizer
from sherman.speech.data import Utterance, text_to_ipa
from sherman.speech.diffusion import DiffusionConfig, DiffusionHead, RegressionHead

SPECIALS = ("<pad>", "<bos>", "<eos>", "<speech_start>", "<speech_end>", "<speech_diffusion>", "<text_end>")
NEXT_TEXT = "<next_text>"
"""Control token of the word-interleaved layout (`VibeVoiceConfig.interleave`): the next script word follows."""
ALPHABET = "abcdefghijklmnopqrstuvwxyzSVT0123456789 .,:;'?!-\n"
IPA_SYMBOLS = "ɐɑɒæəɘɚɛɜɝɞɪɨʉɵɔʊʌᵻɤɯøœɶɹɻɾɽɫɬɮʎʟŋɲɳɴθðʃʒʂʐɕʑçʝxɣχʁħʕʔɡɢɖʈɟʍɥʋɰβɸʲʷˠˤ̩̃ːˑ"
"""IPA symbols (beyond the ASCII letters of ALPHABET) the phoneme text input knows: espeak-ng's English set and more."""


def make_text_tokenizer(extra: str = "", interleave: bool = False) -> CharTokenizer:
    """Character tokenizer over lower-case text (plus `extra` symbols, e.g. IPA) and the layout headers' capitals and
    control tokens (and `NEXT_TEXT` when `interleave`; appended last among the specials only then, so models without it
    keep their ids)."""
    return CharTokenizer(ALPHABET + extra, SPECIALS + ((NEXT_TEXT,) if interleave else ()))


def normalize_text(text: str) -> str:
    """Lower-case a script line and check every character is speakable; ShermanError lists the others."""
    t = " ".join(text.lower().split())
    bad = sorted({c for c in t if c not in ALPHABET or c in "SVT"})
    if bad:
        raise ShermanError(f"unsupported characters in script text: {''.join(bad)!r} (allowed: letters, digits, .,:;'?!-)")
    return t


@dataclass
class VibeVoiceConfig:
    dim: int = 128
    """LM width."""
    n_layers: int = 4
    """LM decoder blocks (core Block)."""
    n_heads: int = 4
    """LM query heads."""
    n_kv_heads: int = 2
    """LM key/value heads."""
    ffn_dim: int = 344
    """LM SwiGLU width."""
    max_seq_len: int = 1024
    """Longest sequence (prompt + script + speech) in tokens."""
    latent_dim: int = 16
    """Acoustic latent size (must match the acoustic tokenizer)."""
    semantic_dim: int = 16
    """Semantic feature size (must match the semantic tokenizer)."""
    head: str = "diffusion"
    """'diffusion' (the paper) or 'regression' (baseline: MSE head on the same LM)."""
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    """Diffusion head settings (latent_dim / cond_dim are set from this config)."""
    diff_weight: float = 1.0
    """Weight of the latent loss (diffusion or regression) next to the control-token CE."""
    uncond_prob: float = 0.1
    """Fraction of training sequences given as the prompt-free speech stream (the CFG negative branch)."""
    max_prompt_frames: int = 12
    """Voice prompts are cut to this many latent frames."""
    max_gap_frames: int = 3
    """Pause after each turn, in latent frames (drawn from the data's natural gap, capped)."""
    text_input: str = "chars"
    """Script text as the LM reads it: 'chars' (lower-case characters, the paper's text tokens at CPU scale) or
    'phonemes' (IPA from espeak-ng en-us, `data.text_to_ipa`: no spelling to learn, so fewer steps to intelligibility)."""
    phoneme_symbols: str = IPA_SYMBOLS
    """With text_input='phonemes': the IPA symbols added to the text tokenizer (an unknown one is a clear error)."""
    align_weight: float = 0.0
    """Weight of the alignment auxiliary (ours, not the paper's; `speech/align.py`): from the hidden state that conditions
    the latent of frame f, a linear head predicts the multi-hot of the phonemes spoken in frame f (binary cross-entropy,
    targets from CTC forced alignment of the reference phonemes). 0 = off (the paper). Training only: synthesis never
    reads the head."""
    align_classes: int = 0
    """Phoneme inventory size of the alignment targets (required when align_weight > 0)."""
    interleave: str = "none"
    """'none' (the paper's long-form layout: the script only in the prefix) or 'words' (ours, after VibeVoice-Realtime's
    interleaved text chunks; see the module docstring): each output word's IPA is fed just before its first frame, timed
    by forced alignment in training and by the LM's `<next_text>` decisions at synthesis. Needs text_input='phonemes'."""
    interleave_lead: int = 0
    """With interleave='words': a word enters this many frames before the first frame it overlaps (0 = at that frame)."""

    def __post_init__(self) -> None:
        if isinstance(self.diffusion, dict):
            self.diffusion = DiffusionConfig(**self.diffusion)
        if self.head not in ("diffusion", "regression"):
            raise ShermanError(f"head must be 'diffusion' or 'regression', got {self.head!r}")
        if self.text_input not in ("chars", "phonemes"):
            raise ShermanError(f"text_input must be 'chars' or 'phonemes', got {self.text_input!r}")
        if self.align_weight < 0 or (self.align_weight > 0 and self.align_classes < 1):
            raise ShermanError(f"align_weight must be >= 0 and needs align_classes >= 1, got {self.align_weight} / {self.align_classes}")
        if self.interleave not in ("none", "words"):
            raise ShermanError(f"interleave must be 'none' or 'words', got {self.interleave!r}")
        if self.interleave == "words" and self.text_input != "phonemes":
            raise ShermanError("interleave='words' needs text_input='phonemes' (its word timing comes from the phoneme alignment)")
        if self.interleave_lead < 0:
            raise ShermanError(f"interleave_lead must be >= 0, got {self.interleave_lead}")
        self.diffusion.latent_dim, self.diffusion.cond_dim = self.latent_dim, self.dim

    def to_dict(self) -> dict:
        return asdict(self)


# ---------------------------------------------------------------- the prompt builder


@dataclass
class Seq:
    """One sequence in the VibeVoice layout."""

    ids: list[int] = field(default_factory=list)
    """Token ids; speech positions hold the `<speech_diffusion>` placeholder."""
    speech: list[int] = field(default_factory=list)
    """Indices of speech positions, in order."""
    latents: list[torch.Tensor] = field(default_factory=list)
    """Per speech position: normalized acoustic latent (latent_dim,)."""
    semantic: list[torch.Tensor] = field(default_factory=list)
    """Per speech position: normalized semantic feature (semantic_dim,)."""
    diff: list[int] = field(default_factory=list)
    """1 where the position's latent is a diffusion target (predicted from the previous hidden state)."""
    ce: list[int] = field(default_factory=list)
    """1 where the token is a control-token CE target (predicted from the previous hidden state)."""
    align: list[torch.Tensor | None] = field(default_factory=list)
    """Per speech position: multi-hot (align_classes,) of the phonemes spoken in that frame, or None (no target)."""
    negative: bool = False
    """The classifier-free-guidance negative branch (the prompt-free speech stream), as `build_sequence` was asked."""
    blind: bool = False
    """Training only: feed every output speech position (diff = 1) the zero latent and zero semantic feature instead of
    its own (the targets stay the real latents), so the LM must predict the speech from the script alone."""

    def add_text(self, tok: CharTokenizer, text: str, ce: bool = False) -> None:
        ids = tok.encode(text)
        self.ids += ids
        self.diff += [0] * len(ids)
        self.ce += [int(ce)] * len(ids)

    def add_speech(self, tok: CharTokenizer, lat: torch.Tensor, sem: torch.Tensor, target: bool, align: torch.Tensor | None = None) -> None:
        """lat (n, latent_dim), sem (n, semantic_dim), align (n, align_classes) or None: n placeholder positions."""
        p = tok.token_id("<speech_diffusion>")
        for i in range(lat.shape[0]):
            self.speech.append(len(self.ids))
            self.ids.append(p)
            self.latents.append(lat[i])
            self.semantic.append(sem[i])
            self.align.append(None if align is None else align[i])
            self.diff.append(int(target))
            self.ce.append(int(target))


def build_prefix(tok: CharTokenizer, voices: list[tuple[torch.Tensor, torch.Tensor]], turns: list[tuple[int, str]], negative: bool = False) -> Seq:
    """Everything before the first output turn: voice prompts and the script (or just <bos> for the negative branch)."""
    seq = Seq()
    seq.add_text(tok, "<bos>")
    if negative:
        return seq
    seq.add_text(tok, "Voice input:\n")
    for k, (lat, sem) in enumerate(voices):
        seq.add_text(tok, f"Speaker {k}:<speech_start>")
        seq.add_speech(tok, lat, sem, target=False)
        seq.add_text(tok, "<speech_end>\n")
    seq.add_text(tok, "Text input:\n")
    for k, text in turns:
        seq.add_text(tok, f"Speaker {k}: {text}\n")
    seq.add_text(tok, "<text_end>Speech output:\n")
    return seq


def turn_header(k: int, negative: bool = False) -> str:
    """Text that opens output turn k (the speaker tag is absent in the negative branch)."""
    return "<speech_start>" if negative else f"Speaker {k}:<speech_start>"


@dataclass
class Segment:
    """One output turn's speech for `build_sequence`."""

    lat: torch.Tensor
    """(n, latent_dim) normalized acoustic latents."""
    sem: torch.Tensor
    """(n, semantic_dim) normalized semantic features."""
    align: torch.Tensor | None = None
    """(n, align_classes) alignment multi-hot of each frame, or None (no alignment target)."""
    words: list[tuple[int, str]] | None = None
    """Word-interleaved layout: (first frame, text) of each script word, frames non-decreasing; None = the paper's layout."""


def add_interleaved(seq: Seq, tok: CharTokenizer, seg: Segment, align: torch.Tensor | None) -> None:
    """The frames of `seg` with each word's `<next_text>` + text placed before its first frame (words whose frame is
    past the end come after the last frame). `<next_text>` is a CE target (when to read on); the word is given."""
    words, j = seg.words or [], 0
    for f in range(seg.lat.shape[0]):
        while j < len(words) and words[j][0] <= f:
            seq.add_text(tok, NEXT_TEXT, ce=True)
            seq.add_text(tok, words[j][1])
            j += 1
        seq.add_speech(tok, seg.lat[f : f + 1], seg.sem[f : f + 1], target=True, align=None if align is None else align[f : f + 1])
    for _, w in words[j:]:
        seq.add_text(tok, NEXT_TEXT, ce=True)
        seq.add_text(tok, w)


def build_sequence(tok: CharTokenizer, voices, turns: list[tuple[int, str]], outputs: list, negative: bool = False) -> Seq:
    """A full training sequence: prefix, then each turn's speech (diffusion + CE targets), then <eos>. An output is a
    `Segment` or a tuple (latents, semantic[, alignment multi-hot]); the negative branch (no script) keeps neither the
    alignment nor the interleaved words."""
    assert len(outputs) == len(turns), "one output segment per script line"
    seq = build_prefix(tok, voices, turns, negative)
    seq.negative = negative
    for (k, _), out in zip(turns, outputs):
        seg = out if isinstance(out, Segment) else Segment(*out)
        seq.add_text(tok, turn_header(k, negative))
        if negative or seg.words is None:
            seq.add_speech(tok, seg.lat, seg.sem, target=True, align=None if negative else seg.align)
        else:
            add_interleaved(seq, tok, seg, seg.align)
        seq.add_text(tok, "<speech_end>", ce=True)
    seq.add_text(tok, "<eos>", ce=True)
    return seq


def render(tok: CharTokenizer, seq: Seq) -> str:
    """Human-readable layout: placeholders shown as 'P'."""
    p = tok.token_id("<speech_diffusion>")
    return "".join("P" if i == p else tok.decode([i], skip_special=False) for i in seq.ids)


# ---------------------------------------------------------------- the model


class Connector(nn.Module):
    """Linear -> RMSNorm -> Linear, as VibeVoice's speech connectors."""

    def __init__(self, d_in: int, d_out: int):
        super().__init__()
        self.fc1, self.norm, self.fc2 = nn.Linear(d_in, d_out), RMSNorm(d_out), nn.Linear(d_out, d_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.norm(self.fc1(x)))


class VibeVoiceLM(nn.Module):
    def __init__(self, cfg: VibeVoiceConfig):
        super().__init__()
        self.cfg = cfg
        self.tok = make_text_tokenizer(cfg.phoneme_symbols if cfg.text_input == "phonemes" else "", cfg.interleave == "words")
        mc = ModelConfig(vocab_size=self.tok.vocab_size, dim=cfg.dim, n_layers=cfg.n_layers, n_heads=cfg.n_heads,
                         n_kv_heads=cfg.n_kv_heads, ffn_dim=cfg.ffn_dim, max_seq_len=cfg.max_seq_len)
        self.lm = Transformer(mc)
        self.acoustic_connector = Connector(cfg.latent_dim, cfg.dim)
        self.semantic_connector = Connector(cfg.semantic_dim, cfg.dim)
        self.head = DiffusionHead(cfg.diffusion) if cfg.head == "diffusion" else RegressionHead(cfg.diffusion)
        if cfg.align_weight > 0:
            self.align_head = nn.Linear(cfg.dim, cfg.align_classes)
        # latent normalisation (VibeVoice scales latents to unit variance): set by `set_stats`
        self.register_buffer("lat_mean", torch.zeros(cfg.latent_dim))
        self.register_buffer("lat_std", torch.ones(cfg.latent_dim))
        self.register_buffer("sem_mean", torch.zeros(cfg.semantic_dim))
        self.register_buffer("sem_std", torch.ones(cfg.semantic_dim))

    def script_text(self, text: str) -> str:
        """A script line as the LM reads it: normalized characters, or its IPA (`cfg.text_input`). Clear error on unknown symbols."""
        if self.cfg.text_input == "chars":
            return normalize_text(text)
        ipa = text_to_ipa(text)
        bad = sorted({c for c in ipa if c not in self.tok.alphabet or c in "SVT\n"})
        if bad:
            raise ShermanError(f"espeak-ng gave IPA symbols this model does not know: {''.join(bad)!r} (in {ipa[:60]!r})")
        return ipa

    def set_stats(self, lat: torch.Tensor, sem: torch.Tensor) -> None:
        """lat (N, latent_dim), sem (N, semantic_dim) raw features of the training set."""
        self.lat_mean.copy_(lat.mean(0))
        self.lat_std.copy_(lat.std(0).clamp(min=1e-4))
        self.sem_mean.copy_(sem.mean(0))
        self.sem_std.copy_(sem.std(0).clamp(min=1e-4))

    def norm_lat(self, z: torch.Tensor) -> torch.Tensor:
        return (z - self.lat_mean) / self.lat_std

    def denorm_lat(self, z: torch.Tensor) -> torch.Tensor:
        return z * self.lat_std + self.lat_mean

    def norm_sem(self, s: torch.Tensor) -> torch.Tensor:
        return (s - self.sem_mean) / self.sem_std

    def speech_embed(self, lat: torch.Tensor, sem: torch.Tensor) -> torch.Tensor:
        """(..., latent_dim), (..., semantic_dim) normalized -> (..., dim)."""
        return self.acoustic_connector(lat) + self.semantic_connector(sem)

    def token_embed(self, ids: torch.Tensor) -> torch.Tensor:
        return self.lm.embed_tokens(ids)

    def embed(self, seqs: list[Seq]) -> tuple[torch.Tensor, torch.Tensor]:
        """Right-padded batch -> embeds (B, L, C), ids (B, L)."""
        n = max(len(s.ids) for s in seqs)
        if n > self.cfg.max_seq_len:
            raise ShermanError(f"sequence of {n} positions exceeds max_seq_len={self.cfg.max_seq_len}")
        pad = self.tok.pad_id
        ids = torch.tensor([s.ids + [pad] * (n - len(s.ids)) for s in seqs])  # (B, L)
        x = self.token_embed(ids)  # (B, L, C)
        rows = [b for b, s in enumerate(seqs) for _ in s.speech]
        cols = [p for s in seqs for p in s.speech]
        if rows:
            lat = torch.stack([z for s in seqs for z in s.latents])  # (N, latent_dim)
            sem = torch.stack([z for s in seqs for z in s.semantic])  # (N, semantic_dim)
            if any(s.blind for s in seqs):
                keep = torch.tensor([not (s.blind and s.diff[i]) for s in seqs for i in s.speech], dtype=lat.dtype)[:, None]  # (N, 1)
                lat, sem = lat * keep, sem * keep
            x = x.index_put((torch.tensor(rows), torch.tensor(cols)), self.speech_embed(lat, sem))
        return x, ids

    def loss(self, seqs: list[Seq], generator: torch.Generator | None = None) -> tuple[torch.Tensor, dict]:
        """Control-token CE + diffusion (or regression) loss on the output speech latents."""
        x, ids = self.embed(seqs)
        out = self.lm(None, embeds=x)
        n = ids.shape[1]
        ce_mask = torch.tensor([s.ce + [0] * (n - len(s.ce)) for s in seqs], dtype=torch.bool)  # (B, L)
        diff_mask = torch.tensor([s.diff + [0] * (n - len(s.diff)) for s in seqs], dtype=torch.bool)
        logits = out.logits[:, :-1][ce_mask[:, 1:]]  # (N_ce, V)
        ce = F.cross_entropy(logits.float(), ids[:, 1:][ce_mask[:, 1:]])
        cond = out.hidden[:, :-1][diff_mask[:, 1:]]  # (N_diff, C)
        # targets in the same (row, position) order as the mask
        tgt = []
        for s in seqs:
            at = dict(zip(s.speech, s.latents))
            tgt += [at[i] for i, d in enumerate(s.diff) if d]
        x0 = torch.stack(tgt)  # (N_diff, latent_dim)
        dl = self.head.loss(x0, cond, generator)
        total = ce + self.cfg.diff_weight * dl
        parts = {"loss/ce": ce.item(), "loss/latent": dl.item()}
        if self.cfg.align_weight > 0:
            al = [a for s in seqs for i, a in zip(s.speech, s.align) if s.diff[i]]  # same order as x0
            keep = torch.tensor([a is not None for a in al])  # (N_diff,)
            if keep.any():
                target = torch.stack([a for a in al if a is not None])  # (N_align, align_classes)
                bce = F.binary_cross_entropy_with_logits(self.align_head(cond[keep]).float(), target)
                total = total + self.cfg.align_weight * bce
                parts["loss/align"] = bce.item()
        return total, parts


# ---------------------------------------------------------------- data for the LM


@dataclass
class EncodedUtt:
    lat: torch.Tensor
    """(n + max_gap, latent_dim) normalized acoustic latents of the utterance followed by silent gap frames."""
    sem: torch.Tensor
    """(n + max_gap, semantic_dim) normalized semantic features, same frames."""
    n: int
    """Frames covering the speech itself (ceil(len / hop))."""
    speaker: int
    text: str
    align: torch.Tensor | None = None
    """(n + max_gap, align_classes) multi-hot of the phonemes in each frame (gap frames empty), or None."""
    onsets: list[int] | None = None
    """First latent frame of each word of `text` (split on spaces), from forced alignment; the interleaved layout's timing."""


@torch.no_grad()
def encode_utterances(utts: list[Utterance], acoustic, semantic, max_gap_frames: int) -> list[tuple[torch.Tensor, torch.Tensor, int]]:
    """Raw (unnormalized) acoustic mu and semantic features of each utterance + `max_gap_frames` of silence.

    Both encoders are causal, so the first n + g frames equal the encoding of the utterance with a g-frame gap.
    """
    hop = acoustic.cfg.hop
    out = []
    for u in utts:
        n = math.ceil(len(u.audio) / hop)
        x = torch.zeros(1, (n + max_gap_frames) * hop)
        x[0, : len(u.audio)] = torch.from_numpy(u.audio)
        out.append((acoustic.encode(x)[0], semantic.encode(x)[0], n))
    return out


def prepare(model: VibeVoiceLM, utts: list[Utterance], raw: list[tuple[torch.Tensor, torch.Tensor, int]], fit_stats: bool,
            aligns: list[np.ndarray] | None = None, onsets: list[list[int]] | None = None) -> list[EncodedUtt]:
    """Normalize encoded utterances (fitting the model's latent statistics on them when `fit_stats`). `aligns`: per
    utterance the (n, align_classes) frame multi-hot of `align.align_corpus`, padded here with empty gap frames.
    `onsets`: per utterance the first frame of each word of its IPA (`align.word_onsets`), required by interleave='words'."""
    if model.cfg.interleave == "words" and onsets is None:
        raise ShermanError("interleave='words' needs the word onsets of every training utterance (align.word_onsets)")
    if fit_stats:
        model.set_stats(torch.cat([r[0] for r in raw]), torch.cat([r[1] for r in raw]))
    out = []
    with torch.no_grad():
        for j, (u, (a, s, n)) in enumerate(zip(utts, raw)):
            t = model.script_text(u.text) if model.cfg.text_input == "phonemes" else u.text
            al = None
            if aligns is not None:
                al = torch.zeros(a.shape[0], aligns[j].shape[1])
                al[:n] = torch.from_numpy(aligns[j][:n])
            on = None
            if onsets is not None and model.cfg.interleave == "words":
                on = list(onsets[j])
                if len(on) != len(t.split(" ")):
                    raise ShermanError(f"utterance {j}: {len(on)} word onsets for the {len(t.split(' '))} words of {t!r}")
            out.append(EncodedUtt(model.norm_lat(a), model.norm_sem(s), n, u.speaker, t, al, on))
    return out


def sample_sequence(model: VibeVoiceLM, enc: list[EncodedUtt], rng: random.Random, max_turns: int, negative: bool = False) -> Seq:
    """A random training sequence: 1 speaker / 1 turn when max_turns == 1, else 2 speakers, 2..max_turns turns."""
    cfg = model.cfg
    by_spk: dict[int, list[int]] = {}
    for i, e in enumerate(enc):
        by_spk.setdefault(e.speaker, []).append(i)
    spks = sorted(by_spk)
    n_spk = 1 if max_turns == 1 or len(spks) == 1 else 2
    who = rng.sample(spks, n_spk)
    n_turns = 1 if max_turns == 1 else rng.randint(2, max_turns)
    picks = [rng.choice(by_spk[who[t % n_spk]]) for t in range(n_turns)]
    voices = []
    for s in who:  # a different utterance of the same speaker as the voice prompt, when there is one
        others = [i for i in by_spk[s] if i not in picks] or by_spk[s]
        e = enc[rng.choice(others)]
        m = min(e.n, cfg.max_prompt_frames)
        voices.append((e.lat[:m], e.sem[:m]))
    turns, outputs = [], []
    for t, i in enumerate(picks):
        e = enc[i]
        g = rng.randint(1, cfg.max_gap_frames)
        turns.append((t % n_spk, e.text))
        words = None
        if e.onsets is not None:
            words = [(max(0, f - cfg.interleave_lead), w) for f, w in zip(e.onsets, e.text.split(" "))]
        outputs.append(Segment(e.lat[: e.n + g], e.sem[: e.n + g], None if e.align is None else e.align[: e.n + g], words))
    return build_sequence(model.tok, voices, turns, outputs, negative=negative)


@dataclass
class LMTrainConfig:
    steps: int = 300
    """Optimizer steps."""
    batch_size: int = 8
    """Sequences per step."""
    lr: float = 1e-3
    """Peak AdamW learning rate (linear warm-up, cosine decay to 10%)."""
    warmup: int = 20
    """Warm-up steps."""
    curriculum: tuple[tuple[float, int], ...] = ((0.3, 1), (0.7, 3))
    """(fraction of steps, max turns per sequence): single utterances first, then dialogues."""
    seed: int = 0
    """Seed for sampling sequences and noise."""
    history_dropout: float = 0.0
    """Fraction of training sequences (never the negative branch) fed blind (`Seq.blind`): the output speech inputs are
    replaced by zeros, so those sequences can only be predicted from the script and the frame position. Ours, not the
    paper's (0 = off): at CPU scale the LM otherwise learns to continue the speech before it and never reads the script."""
    time_limit_s: float = 0.0
    """Stop after this many CPU seconds of the process (0 = no limit; CPU, not wall time: the same steps on a loaded machine).
    The LR schedule and the curriculum follow `progress` (the larger of the step and CPU-time fractions), so a run cut by
    the time limit still warms up, decays to 10% and reaches its last curriculum stage."""


def progress(step: int, steps: int, elapsed_s: float = 0.0, time_limit_s: float = 0.0) -> float:
    """Fraction of the training budget spent before `step`: max(step / steps, elapsed / time limit), capped at 1."""
    frac = step / max(1, steps)
    if time_limit_s:
        frac = max(frac, elapsed_s / time_limit_s)
    return min(1.0, frac)


def lm_lr(cfg: LMTrainConfig, step: int, frac: float) -> float:
    """Linear warm-up over `cfg.warmup` steps, then cosine from `cfg.lr` to 10% of it over the budget fraction `frac`."""
    return cfg.lr * min(1.0, (step + 1) / max(1, cfg.warmup)) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac)))


def curriculum_turns(cfg: LMTrainConfig, frac: float) -> int:
    """Max turns per sequence at budget fraction `frac` (`cfg.curriculum` stages by fraction)."""
    bounds = np.cumsum([f for f, _ in cfg.curriculum])
    stage = int(np.searchsorted(bounds, frac, side="right"))
    return cfg.curriculum[min(stage, len(cfg.curriculum) - 1)][1]


def train_lm(model: VibeVoiceLM, enc: list[EncodedUtt], cfg: LMTrainConfig) -> list[dict]:
    """Train LM + head (the tokenizers are frozen: `enc` holds their outputs). Returns the loss history."""
    rng = random.Random(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.01, betas=(0.9, 0.95))
    hist, t0 = [], time.process_time()
    model.train()
    for step in range(cfg.steps):
        frac = progress(step, cfg.steps, time.process_time() - t0, cfg.time_limit_s)
        lr = lm_lr(cfg, step, frac)
        for g in opt.param_groups:
            g["lr"] = lr
        max_turns = curriculum_turns(cfg, frac)
        seqs = [sample_sequence(model, enc, rng, max_turns, negative=rng.random() < model.cfg.uncond_prob) for _ in range(cfg.batch_size)]
        if cfg.history_dropout:
            for s in seqs:
                s.blind = rng.random() < cfg.history_dropout and not s.negative
        loss, parts = model.loss(seqs, gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        hist.append({"step": step, "loss": loss.item(), "lr": lr, "max_turns": max_turns, **parts})
        if cfg.time_limit_s and time.process_time() - t0 > cfg.time_limit_s:
            break
    model.eval()
    return hist
