import math
import random

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from sherman.core.common import ShermanError
from sherman.speech import metrics
from sherman.speech.align import CTC_HOP, align_corpus, ctc_align, frame_targets
from sherman.speech.diffusion import DiffusionConfig
from sherman.speech.model import LMTrainConfig, VibeVoiceConfig, VibeVoiceLM, encode_utterances, prepare, sample_sequence, train_lm

from .test_model_synth import _fake_utts, _tiny_bundle


def test_ctc_align_by_hand():
    # frames favour: 1, 1, blank, 2, 2, blank -> label 1 on frames 0-1, label 2 on frames 3-4
    p = np.array([[.1, .8, .1], [.1, .8, .1], [.8, .1, .1], [.1, .1, .8], [.1, .1, .8], [.8, .1, .1]])
    assert ctc_align(np.log(p), [1, 2]) == [(0, 1), (3, 4)]
    # a repeated label needs a blank between its two copies: 3 frames are the minimum, and the path is forced
    assert ctc_align(np.log(np.full((3, 3), 1 / 3)), [1, 1]) == [(0, 0), (2, 2)]
    with pytest.raises(ValueError):
        ctc_align(np.log(np.full((2, 3), 1 / 3)), [1, 1])
    assert ctc_align(np.log(p), []) == []


def test_ctc_align_is_the_best_path():
    """Brute force over every frame labelling that collapses to the labels: the Viterbi spans are the best one's."""
    import itertools
    rng = np.random.default_rng(0)
    lp = np.log(rng.dirichlet(np.ones(3), size=5))  # (T=5, C=3)
    labels = [2, 1]
    best, arg = -np.inf, None
    for path in itertools.product(range(3), repeat=5):
        col = [c for k, c in enumerate(path) if c != 0 and (k == 0 or c != path[k - 1])]
        if col == labels:
            score = sum(lp[t, c] for t, c in enumerate(path))
            if score > best:
                best, arg = score, path
    # the labels differ, so each one's frames in the best path are where the path holds it
    want = [(min(t for t in range(5) if arg[t] == y), max(t for t in range(5) if arg[t] == y)) for y in labels]
    assert ctc_align(lp, labels) == want


def test_frame_targets_by_hand():
    # ctc hop 2 samples, latent hop 4: span (0, 1) covers samples 0-3 -> frame 0; span (3, 4) samples 6-9 -> frames 1-2
    t = frame_targets([(0, 1), (3, 4)], [1, 2], 3, 2, ctc_hop=2, latent_hop=4)
    np.testing.assert_array_equal(t, [[1, 0], [0, 1], [0, 1]])
    # spans past the last frame are cut
    assert frame_targets([(0, 9)], [1], 2, 1, 2, 4).tolist() == [[1], [1]]


def test_align_corpus_shapes_and_order():
    torch.manual_seed(0)
    rec = metrics.PhonemeRecognizer(2)
    utts = _fake_utts(1, 2)
    n = [math.ceil(len(u.audio) / 3200) for u in utts]
    out = align_corpus(rec, [u.audio for u in utts], [[0, 1], [1, 0]], n, 3200)
    assert [o.shape for o in out] == [(k, 2) for k in n]
    for o in out:
        assert o.sum(0).min() >= 1  # every phoneme lands in some frame
        assert CTC_HOP == 2 * metrics.MEL_HOP


def test_align_loss_reads_targets_and_trains_its_head():
    b, _ = _tiny_bundle()
    cfg = VibeVoiceConfig(**{**b.lm.cfg.to_dict(), "align_weight": 1.0, "align_classes": 2})
    torch.manual_seed(0)
    lm = VibeVoiceLM(cfg)
    utts = _fake_utts()
    raw = encode_utterances(utts, b.acoustic, b.semantic, lm.cfg.max_gap_frames)
    aligns = [np.tile([[1.0, 0.0]], (r[2], 1)) for r in raw]  # phoneme 0 in every speech frame
    enc = prepare(lm, utts, raw, fit_stats=True, aligns=aligns)
    assert enc[0].align.shape == (enc[0].lat.shape[0], 2) and enc[0].align[enc[0].n :].sum() == 0  # gap frames empty
    rng = random.Random(0)
    seqs = [sample_sequence(lm, enc, rng, 1) for _ in range(3)]
    neg = sample_sequence(lm, enc, rng, 1, negative=True)
    assert all(a is None for a in neg.align)  # the script-free branch has no alignment target
    _, parts = lm.loss(seqs + [neg], torch.Generator().manual_seed(0))
    # by hand: BCE of the align head on the conditioning states of the (non-negative) diffusion targets
    x, ids = lm.embed(seqs + [neg])
    hid = lm.lm(None, embeds=x).hidden
    n = ids.shape[1]
    rows = []
    for j, s in enumerate(seqs):
        d = torch.tensor(s.diff + [0] * (n - len(s.diff)), dtype=torch.bool)
        rows.append((hid[j, :-1][d[1:]], torch.stack([a for i, a in zip(s.speech, s.align) if s.diff[i]])))
    want = F.binary_cross_entropy_with_logits(lm.align_head(torch.cat([h for h, _ in rows])), torch.cat([t for _, t in rows]))
    assert parts["loss/align"] == pytest.approx(want.item(), rel=1e-5)
    hist = train_lm(lm, enc, LMTrainConfig(steps=25, batch_size=4, lr=3e-3, warmup=3))
    first, last = np.mean([h["loss/align"] for h in hist[:3]]), np.mean([h["loss/align"] for h in hist[-3:]])
    assert last < 0.5 * first, (first, last)


def test_align_config_is_checked():
    with pytest.raises(ShermanError, match="align_classes"):
        VibeVoiceConfig(align_weight=1.0)
    assert not hasattr(VibeVoiceLM(VibeVoiceConfig(dim=32, n_layers=1, n_heads=2, n_kv_heads=1, ffn_dim=64, diffusion=DiffusionConfig(hidden=32, layers=1))), "align_head")


def test_blind_sequences_hide_only_the_output_speech_inputs():
    b, enc = _tiny_bundle()
    lm = b.lm
    seq = sample_sequence(lm, enc, random.Random(0), 1)
    x, _ = lm.embed([seq])
    seq.blind = True
    xb, _ = lm.embed([seq])
    out = [i for i in seq.speech if seq.diff[i]]
    prompt = [i for i in seq.speech if not seq.diff[i]]
    assert out and prompt
    zero = lm.speech_embed(torch.zeros(1, lm.cfg.latent_dim), torch.zeros(1, lm.cfg.semantic_dim))[0]
    torch.testing.assert_close(xb[0, out], zero.expand(len(out), -1))  # output speech: the zero latent's embedding
    torch.testing.assert_close(xb[0, prompt], x[0, prompt])  # voice prompt: unchanged
    rest = [i for i in range(len(seq.ids)) if i not in seq.speech]
    torch.testing.assert_close(xb[0, rest], x[0, rest])  # text and control tokens: unchanged
    # the targets stay the real latents: the loss of a blind sequence differs from the same loss on zeroed targets
    zeroed = sample_sequence(lm, enc, random.Random(0), 1)
    zeroed.latents = [z * 0 if zeroed.diff[i] else z for i, z in zip(zeroed.speech, zeroed.latents)]
    zeroed.semantic = [z * 0 if zeroed.diff[i] else z for i, z in zip(zeroed.speech, zeroed.semantic)]
    g = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    assert lm.loss([seq], g())[1]["loss/latent"] != lm.loss([zeroed], g())[1]["loss/latent"]


def test_history_dropout_blinds_scripted_sequences_never_the_negative_branch(monkeypatch):
    b, enc = _tiny_bundle()
    lm = b.lm
    seen = []
    real = type(lm).loss

    def spy(self, seqs, generator=None):
        seen.extend(seqs)
        return real(self, seqs, generator)

    monkeypatch.setattr(type(lm), "loss", spy)
    lm.cfg.uncond_prob = 0.5
    train_lm(lm, enc, LMTrainConfig(steps=6, batch_size=4, lr=1e-3, warmup=1, history_dropout=1.0))
    is_neg = [s.ids[1] == lm.tok.token_id("<speech_start>") for s in seen]
    assert any(is_neg) and not all(is_neg)
    assert all(s.blind != n for s, n in zip(seen, is_neg))  # every scripted sequence blind, no negative one
    seen.clear()
    train_lm(lm, enc, LMTrainConfig(steps=2, batch_size=4, lr=1e-3, warmup=1))
    assert not any(s.blind for s in seen)
