"""The word-interleaved VibeVoice layout (`VibeVoiceConfig.interleave`): onsets, layout, the synthesis-side reader."""

import random

import numpy as np
import pytest
import torch

from sherman.core.common import ShermanError
from sherman.speech.align import word_onsets
from sherman.speech.data import text_to_ipa
from sherman.speech.diffusion import DiffusionConfig
from sherman.speech.model import (
    NEXT_TEXT,
    LMTrainConfig,
    Segment,
    VibeVoiceConfig,
    VibeVoiceLM,
    build_sequence,
    encode_utterances,
    prepare,
    render,
    sample_sequence,
    train_lm,
)
from sherman.speech.synthesize import Bundle, SynthConfig, WordReader, _teacher_forced_latents, script_reliance, synthesize, voice_prompt
from sherman.speech.tokenizer import AcousticTokenizer, SemanticTokenizer, TokenizerConfig

from .test_model_synth import TINY_TOK, _fake_utts


def tiny_interleaved(**kw) -> VibeVoiceLM:
    return VibeVoiceLM(VibeVoiceConfig(dim=32, n_layers=1, n_heads=2, n_kv_heads=1, ffn_dim=64, max_seq_len=512, latent_dim=4, semantic_dim=4,
                                       diffusion=DiffusionConfig(hidden=32, layers=2, infer_steps=2), max_prompt_frames=2,
                                       text_input="phonemes", interleave="words", **kw))


def test_word_onsets_by_hand():
    # 4 phonemes, two words of 2; CTC frames of 2 samples, latent frames of 4: phoneme 3 starts at CTC frame 5 = sample 10 = latent frame 2
    spans = [(1, 1), (2, 3), (5, 6), (8, 9)]
    assert word_onsets(spans, [2, 2], 6, 2, 4) == [0, 2]  # the first word is always at frame 0
    assert word_onsets(spans, [1, 3], 6, 2, 4) == [0, 1]  # phoneme 2 starts at CTC frame 2 = latent frame 1
    assert word_onsets([(0, 0), (9, 9), (3, 3)], [1, 1, 1], 9, 2, 4) == [0, 4, 4]  # never decreasing
    assert word_onsets([(0, 0), (40, 41)], [1, 1], 5, 2, 4) == [0, 4]  # inside the utterance
    assert word_onsets(None, [1, 3], 8, 2, 4) == [0, 2]  # no alignment: proportional to phoneme counts
    with pytest.raises(ValueError, match="aligned phonemes"):
        word_onsets(spans, [2, 3], 6, 2, 4)


def test_interleaved_layout_by_hand():
    lm = tiny_interleaved()
    z = lambda n: (torch.zeros(n, 4), torch.zeros(n, 4))  # noqa: E731
    seg = Segment(*z(4), words=[(0, "ab"), (2, "c"), (2, "d")])
    seq = build_sequence(lm.tok, [z(1)], [(0, "ab c d")], [seg])
    out = render(lm.tok, seq)
    assert out.endswith("<text_end>Speech output:\nSpeaker 0:<speech_start><next_text>abPP<next_text>c<next_text>dPP<speech_end><eos>")
    assert "Speaker 0: ab c d\n" in out  # the prefix keeps the whole script
    nt = lm.tok.token_id(NEXT_TEXT)
    words = {lm.tok.token_id(c) for c in "abcd"}
    start = seq.ids.index(lm.tok.token_id("<text_end>"))
    for i in range(start, len(seq.ids)):
        if seq.ids[i] == nt:
            assert seq.ce[i] == 1 and seq.diff[i] == 0  # when to read on: a CE target
        elif seq.ids[i] in words:
            assert seq.ce[i] == 0 and seq.diff[i] == 0  # what to read: given
    assert sum(seq.diff) == 4
    first = seq.speech[1]  # the first output frame (after the 1-frame voice prompt) follows the last letter of word 1
    assert lm.tok.decode([seq.ids[first - 1]]) == "b"
    neg = build_sequence(lm.tok, [z(1)], [(0, "ab c d")], [seg], negative=True)
    assert render(lm.tok, neg) == "<bos><speech_start>PPPP<speech_end><eos>"  # the negative branch reads no words
    late = build_sequence(lm.tok, [z(1)], [(0, "ab c")], [Segment(*z(2), words=[(0, "ab"), (5, "c")])])
    assert render(lm.tok, late).endswith("<next_text>abPP<next_text>c<speech_end><eos>")


def test_interleave_config_and_tokenizer():
    with pytest.raises(ShermanError, match="text_input='phonemes'"):
        VibeVoiceConfig(interleave="words")
    with pytest.raises(ShermanError, match="interleave must be"):
        VibeVoiceConfig(interleave="chunks", text_input="phonemes")
    with pytest.raises(ShermanError, match="interleave_lead"):
        VibeVoiceConfig(interleave="words", text_input="phonemes", interleave_lead=-1)
    off = VibeVoiceLM(VibeVoiceConfig(dim=32, n_layers=1, n_heads=2, n_kv_heads=1, ffn_dim=64, latent_dim=4, semantic_dim=4, text_input="phonemes"))
    on = tiny_interleaved()
    assert NEXT_TEXT not in off.tok.specials and on.tok.vocab == off.tok.specials + [NEXT_TEXT] + list(off.tok.alphabet)
    assert on.tok.vocab_size == off.tok.vocab_size + 1


class _Feed:
    """Stands in for the LM: records what is fed and returns logits that prefer `<next_text>` on chosen calls."""

    def __init__(self, lm, prefer_next: set[int]):
        self.lm, self.prefer_next, self.calls, self.fed = lm, prefer_next, 0, []

    def logits(self):
        v = torch.zeros(self.lm.tok.vocab_size)
        v[self.lm.tok.token_id(NEXT_TEXT) if self.calls in self.prefer_next else self.lm.tok.token_id("<speech_diffusion>")] = 1.0
        return v

    def __call__(self, embeds):
        self.calls += 1
        self.fed.append(embeds.shape[1])
        return torch.zeros(1, 32), self.logits()


def test_word_reader_reads_on_demand_and_when_forced():
    lm = tiny_interleaved()
    feed = _Feed(lm, prefer_next={1})  # after the first word the LM asks for the second at once
    reader = WordReader(lm, ["ab", "c", "de"], max_word_frames=2)
    h, logits = reader.advance(feed, torch.zeros(1, 32), feed.logits())  # before frame 0
    assert reader.read == 2 and feed.fed == [3, 2] and not reader.done  # <next_text>ab, then <next_text>c
    for _ in range(2):  # two frames of "c" without the LM asking: the reader forces "de"
        h, logits = reader.advance(feed, h, logits)
        reader.frame()
    assert reader.read == 2
    reader.advance(feed, h, logits)
    assert reader.done and feed.fed[-1] == 3
    assert WordReader(lm, [], 2).done  # the paper's layout: nothing to read, a turn may end at any time


def _interleaved_bundle():
    torch.manual_seed(0)
    ac = AcousticTokenizer(TokenizerConfig(**TINY_TOK)).eval()
    sc = SemanticTokenizer(TokenizerConfig(vae=False, **TINY_TOK), n_phonemes=2, dec_dim=16, dec_layers=1).eval()
    lm = tiny_interleaved()
    utts = _fake_utts()
    raw = encode_utterances(utts, ac, sc, lm.cfg.max_gap_frames)
    with pytest.raises(ShermanError, match="word onsets"):
        prepare(lm, utts, raw, fit_stats=True)
    onsets = [word_onsets(None, [len(w) for w in text_to_ipa(u.text).split(" ")], n, 1, 1) for u, (_, _, n) in zip(utts, raw)]
    enc = prepare(lm, utts, raw, fit_stats=True, onsets=onsets)
    return Bundle(ac, sc, lm, ["a", "b"]), enc, utts


def test_interleaved_training_sequences_and_synthesis():
    b, enc, utts = _interleaved_bundle()
    seq = sample_sequence(b.lm, enc, random.Random(0), 1)
    out = render(b.lm.tok, seq)
    spoken = out[out.index("Speech output:") :]
    assert spoken.count(NEXT_TEXT) == 2 and spoken.startswith(f"Speech output:\nSpeaker 0:<speech_start><next_text>{text_to_ipa('word')}P")  # "word i": two words, each read once
    hist = train_lm(b.lm, enc, LMTrainConfig(steps=30, batch_size=4, warmup=1, lr=3e-3))
    assert np.mean([h["loss/ce"] for h in hist[-5:]]) < np.mean([h["loss/ce"] for h in hist[:5]])
    audio, spans = synthesize(b, "Speaker 0: word one\nSpeaker 1: word two", [u.audio for u in utts[::3]],
                              SynthConfig(max_turn_frames=4, steps=2))
    assert len(spans) == 2 and len(audio) > 0 and all(e > s for s, e in spans)


def test_interleaved_teacher_forcing_matches_the_full_forward():
    """Frame-by-frame teacher forcing over the KV cache (the interleaved path of `_teacher_forced_latents`) equals one
    full forward of the same layout: with max_word_frames=0 every word is read before the first frame."""
    b, _, utts = _interleaved_bundle()
    lm, voice, audio = b.lm, utts[0].audio, utts[1].audio
    cfg = SynthConfig(steps=2, max_word_frames=0)
    z, lat = _teacher_forced_latents(b, "word one", voice, audio, cfg)
    words = [(0, w) for w in lm.script_text("word one").split(" ")]
    sem = lm.norm_sem(b.semantic.encode(torch.from_numpy(np.pad(audio, (0, lat.shape[0] * b.acoustic.cfg.hop - len(audio))))[None])[0])
    seq = build_sequence(lm.tok, [voice_prompt(b, voice)], [(0, lm.script_text("word one"))], [Segment(lat, sem, words=words)])
    with torch.no_grad():
        hidden = lm.lm(None, embeds=lm.embed([seq])[0]).hidden
        target = torch.tensor(seq.diff, dtype=torch.bool)[None]
        ref = lm.head.sample(hidden[:, :-1][target[:, 1:]], None, cfg_scale=1.0, steps=2, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(z, ref, atol=1e-5)
    right, wrong = script_reliance(b, "word one", "a different line", voice, audio, SynthConfig(steps=2))
    assert np.isfinite([right, wrong]).all() and right != wrong
