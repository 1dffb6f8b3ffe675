import math
import random

import numpy as np
import pytest
import torch

from sherman.cli import main as cli_main
from sherman.core.common import ShermanError
from sherman.speech.data import Utterance
from sherman.speech.diffusion import DiffusionConfig
from sherman.speech.dsp import SAMPLE_RATE, read_wav, write_wav
from sherman.speech.model import (
    LMTrainConfig,
    VibeVoiceConfig,
    VibeVoiceLM,
    build_sequence,
    encode_utterances,
    prepare,
    render,
    sample_sequence,
    train_lm,
)
from sherman.speech.synthesize import Bundle, SynthConfig, load_bundle, save_bundle, stream, stream_long, synthesize, windows
from sherman.speech.tokenizer import AcousticTokenizer, SemanticTokenizer, TokenizerConfig

TINY_TOK = dict(channels=4, max_channels=8, latent_dim=4)


def tiny_lm(head="diffusion") -> VibeVoiceLM:
    return VibeVoiceLM(VibeVoiceConfig(dim=32, n_layers=1, n_heads=2, n_kv_heads=1, ffn_dim=64, max_seq_len=512, latent_dim=4, semantic_dim=4,
                                       head=head, diffusion=DiffusionConfig(hidden=32, layers=2, infer_steps=3), max_prompt_frames=2))


def test_prompt_builder_two_speaker_layout():
    lm = tiny_lm()
    z = lambda n: (torch.zeros(n, 4), torch.zeros(n, 4))  # noqa: E731
    turns = [(0, "hi"), (1, "yo")]
    seq = build_sequence(lm.tok, [z(2), z(1)], turns, [z(3), z(1)])
    assert render(lm.tok, seq) == (
        "<bos>Voice input:\n"
        "Speaker 0:<speech_start>PP<speech_end>\n"
        "Speaker 1:<speech_start>P<speech_end>\n"
        "Text input:\n"
        "Speaker 0: hi\n"
        "Speaker 1: yo\n"
        "<text_end>Speech output:\n"
        "Speaker 0:<speech_start>PPP<speech_end>"
        "Speaker 1:<speech_start>P<speech_end>"
        "<eos>"
    )
    assert len(seq.speech) == 7 and sum(seq.diff) == 4  # voice-prompt frames are context, not targets
    # CE targets: the 4 output placeholders, the 2 <speech_end> of the output and <eos>
    assert sum(seq.ce) == 7 and seq.ce[-1] == 1
    neg = build_sequence(lm.tok, [z(2), z(1)], turns, [z(3), z(1)], negative=True)
    assert render(lm.tok, neg) == "<bos><speech_start>PPP<speech_end><speech_start>P<speech_end><eos>"


def _fake_utts(n_spk=2, per=3):
    rng = np.random.default_rng(0)
    utts = []
    for s in range(n_spk):
        for i in range(per):
            t = np.arange(int(0.3 * SAMPLE_RATE)) / SAMPLE_RATE
            audio = (0.2 * np.sin(2 * np.pi * (200 + 150 * s + 20 * i) * t) + 0.01 * rng.standard_normal(t.size)).astype(np.float32)
            utts.append(Utterance(f"word {i}", ["a", "b"], s, audio))
    return utts


def _tiny_bundle(head="diffusion"):
    torch.manual_seed(0)
    ac = AcousticTokenizer(TokenizerConfig(**TINY_TOK)).eval()
    sc = SemanticTokenizer(TokenizerConfig(vae=False, **TINY_TOK), n_phonemes=2, dec_dim=16, dec_layers=1).eval()
    lm = tiny_lm(head)
    utts = _fake_utts()
    enc = prepare(lm, utts, encode_utterances(utts, ac, sc, lm.cfg.max_gap_frames), fit_stats=True)
    return Bundle(ac, sc, lm, ["a", "b"]), enc


@pytest.mark.parametrize("head", ["diffusion", "regression"])
def test_lm_training_reduces_loss(head):
    b, enc = _tiny_bundle(head)
    lm = b.lm
    rng = random.Random(0)
    fixed = [sample_sequence(lm, enc, rng, 3) for _ in range(4)]
    with torch.no_grad():
        before = lm.loss(fixed, torch.Generator().manual_seed(0))[0].item()
    hist = train_lm(lm, enc, LMTrainConfig(steps=30, batch_size=4, lr=3e-3, warmup=3))
    with torch.no_grad():
        after = lm.loss(fixed, torch.Generator().manual_seed(0))[0].item()
    assert after < 0.8 * before, (before, after)
    assert {h["max_turns"] for h in hist} == {1, 3}  # curriculum: single utterances, then dialogues


def test_synthesis_streams_turns_and_errors(tmp_path):
    b, _ = _tiny_bundle()
    voices = [u.audio for u in _fake_utts()[::3]]
    audio, spans = synthesize(b, "Speaker 0: hello there\nSpeaker 1: fine!", voices, SynthConfig(max_turn_frames=3, steps=2))
    hop = b.acoustic.cfg.hop
    assert audio.dtype == np.float32 and len(audio) % hop == 0 and len(spans) == 2
    assert spans[0][0] == 0 and spans[0][1] == spans[1][0] and spans[1][1] == len(audio)
    assert all(2 * hop <= e - s <= 3 * hop for s, e in spans)
    # same seed -> same audio; the stream is deterministic
    again, _ = synthesize(b, "Speaker 0: hello there\nSpeaker 1: fine!", voices, SynthConfig(max_turn_frames=3, steps=2))
    assert np.array_equal(audio, again)
    with pytest.raises(ShermanError, match="Speaker 2"):
        synthesize(b, "Speaker 2: hi", voices)
    with pytest.raises(ShermanError, match="not of the form"):
        synthesize(b, "hello without a speaker", voices)
    with pytest.raises(ShermanError, match="unsupported characters"):
        synthesize(b, "Speaker 0: caf\u00e9 \u00fcber", voices)
    long_turns = [(0, f"line {i}") for i in range(40)]
    with pytest.raises(ShermanError, match="too long"):  # one pass cannot hold it ...
        list(stream(b, long_turns, voices, SynthConfig(max_turn_frames=3, steps=2)))
    # ... synthesize takes it in context-sized windows (test_long_form_four_speakers_streams_in_windows)


def test_tts_cli_writes_24khz_wav(tmp_path):
    b, _ = _tiny_bundle()
    model = save_bundle(tmp_path / "model.pt", b)
    assert load_bundle(model).lm.cfg.latent_dim == 4
    v0, v1 = (write_wav(tmp_path / f"v{i}.wav", u.audio) for i, u in enumerate(_fake_utts()[::3]))
    script = tmp_path / "s.txt"
    script.write_text("Speaker 0: good morning\nSpeaker 1: hello\n")
    out = tmp_path / "out.wav"
    assert cli_main(["tts", str(script), "--voices", str(v0), str(v1), "--out", str(out), "--model", str(model), "--steps", "2"]) == 0
    audio, sr = read_wav(out)
    assert sr == 24000 and len(audio) >= 4 * 3200 and np.isfinite(audio).all()
    # clear errors, exit status 2
    assert cli_main(["tts", str(script), "--voices", str(v0), "--model", str(model), "--out", str(out)]) == 2  # Speaker 1 has no voice
    assert cli_main(["tts", str(tmp_path / "nope.txt"), "--voices", str(v0), "--model", str(model)]) == 2
    (tmp_path / "bad.wav").write_text("garbage")
    assert cli_main(["tts", str(script), "--voices", str(tmp_path / "bad.wav"), str(v1), "--model", str(model)]) == 2
    assert cli_main(["tts", str(script), "--voices", str(v0), str(v1), "--model", str(tmp_path / "missing.pt")]) == 2


def test_long_form_four_speakers_streams_in_windows():
    torch.manual_seed(0)
    ac = AcousticTokenizer(TokenizerConfig(**TINY_TOK)).eval()
    sc = SemanticTokenizer(TokenizerConfig(vae=False, **TINY_TOK), n_phonemes=2, dec_dim=16, dec_layers=1).eval()
    lm = VibeVoiceLM(VibeVoiceConfig(dim=32, n_layers=1, n_heads=2, n_kv_heads=1, ffn_dim=64, max_seq_len=200, latent_dim=4, semantic_dim=4,
                                     diffusion=DiffusionConfig(hidden=32, layers=2, infer_steps=2), max_prompt_frames=2))
    utts = _fake_utts(n_spk=4, per=2)
    prepare(lm, utts, encode_utterances(utts, ac, sc, lm.cfg.max_gap_frames), fit_stats=True)
    b = Bundle(ac, sc, lm, ["a", "b"])
    voices = [u.audio for u in utts[::2]]  # one prompt per speaker
    turns = [(i % 4, f"line {i} of the long script") for i in range(14)]  # VibeVoice's script format, 4 speakers
    cfg = SynthConfig(max_turn_frames=3, steps=2)
    from sherman.speech.synthesize import voice_prompt

    wins = windows(b, [voice_prompt(b, v) for v in voices], turns, cfg)
    assert len(wins) >= 3 and wins[0][0] == 0 and wins[-1][1] == len(turns)
    assert all(a[1] == c[0] for a, c in zip(wins, wins[1:]))  # contiguous runs of lines
    it = stream_long(b, turns, voices, cfg)
    first = next(it)  # streaming: the first chunk comes before the rest is synthesized
    assert first[0] == 0 and len(first[1]) == ac.cfg.hop
    chunks = [first, *it]
    idx = [t for t, _ in chunks]
    assert idx == sorted(idx) and set(idx) == set(range(len(turns)))
    audio, spans = synthesize(b, turns, voices, cfg)  # one call for the whole script
    assert np.array_equal(audio, np.concatenate([c for _, c in chunks]))
    assert len(spans) == len(turns) and spans[-1][1] == len(audio)
    assert all(2 * ac.cfg.hop <= e - s <= 3 * ac.cfg.hop for s, e in spans) and all(a[1] == c[0] for a, c in zip(spans, spans[1:]))
    # the first window is exactly a one-pass stream of its lines (same seed)
    n0 = wins[0][1]
    one = np.concatenate([c for _, c in stream(b, turns[:n0], voices, cfg)])
    assert np.array_equal(one, audio[: spans[n0 - 1][1]])


@pytest.mark.skipif(not __import__("sherman.speech.data", fromlist=["x"]).espeak_available(), reason="espeak-ng not installed")
def test_phoneme_text_input(tmp_path):
    from sherman.speech.data import text_to_ipa

    assert text_to_ipa("the red bird") == "ðə ɹɛd bɜːd"  # espeak-ng en-us, stress marks dropped, word spaces kept
    with pytest.raises(ShermanError, match="text_input"):
        VibeVoiceConfig(text_input="bytes")
    torch.manual_seed(0)
    ac = AcousticTokenizer(TokenizerConfig(**TINY_TOK)).eval()
    sc = SemanticTokenizer(TokenizerConfig(vae=False, **TINY_TOK), n_phonemes=2, dec_dim=16, dec_layers=1).eval()
    lm = VibeVoiceLM(VibeVoiceConfig(dim=32, n_layers=1, n_heads=2, n_kv_heads=1, ffn_dim=64, max_seq_len=512, latent_dim=4, semantic_dim=4,
                                     diffusion=DiffusionConfig(hidden=32, layers=2, infer_steps=2), max_prompt_frames=2, text_input="phonemes"))
    assert lm.script_text("The red bird!") == "ðə ɹɛd bɜːd" and lm.tok.decode(lm.tok.encode("ðə ɹɛd")) == "ðə ɹɛd"
    utts = _fake_utts()
    enc = prepare(lm, utts, encode_utterances(utts, ac, sc, lm.cfg.max_gap_frames), fit_stats=True)
    assert enc[0].text == text_to_ipa("word 0")  # training sequences carry the IPA
    seq = sample_sequence(lm, enc, random.Random(0), 1)
    assert any(f"Speaker 0: {text_to_ipa(f'word {i}')}\n" in render(lm.tok, seq) for i in range(3))
    ascii_only = VibeVoiceLM(VibeVoiceConfig(dim=32, n_layers=1, n_heads=2, n_kv_heads=1, ffn_dim=64, latent_dim=4, semantic_dim=4,
                                             text_input="phonemes", phoneme_symbols=""))
    with pytest.raises(ShermanError, match="IPA symbols this model does not know"):
        ascii_only.script_text("the red bird")
    hist = train_lm(lm, enc, LMTrainConfig(steps=4, batch_size=2, warmup=1))
    assert np.isfinite([h["loss"] for h in hist]).all()
    b = Bundle(ac, sc, lm, ["a", "b"])
    voices = [u.audio for u in utts[::3]]
    audio, spans = synthesize(b, "Speaker 0: good morning\nSpeaker 1: café", voices, SynthConfig(max_turn_frames=3, steps=2))
    assert len(spans) == 2 and len(audio) > 0  # IPA input: spelling such as "é" is no longer an error
    loaded = load_bundle(save_bundle(tmp_path / "m.pt", b))
    assert loaded.lm.cfg.text_input == "phonemes" and loaded.lm.tok.vocab == lm.tok.vocab


def test_lm_schedule_follows_the_budget_fraction_by_hand():
    """Warm-up, cosine to 10% and the curriculum follow max(step / steps, CPU s / limit): a time-cut run still decays."""
    from sherman.speech.model import curriculum_turns, lm_lr, progress

    assert progress(30, 100) == 0.3
    assert progress(30, 100, elapsed_s=50.0, time_limit_s=100.0) == 0.5  # time is the larger fraction
    assert progress(30, 100, elapsed_s=500.0, time_limit_s=100.0) == 1.0  # capped
    assert progress(30, 100, elapsed_s=500.0) == 0.3  # no limit: steps only
    cfg = LMTrainConfig(steps=100, lr=1e-3, warmup=10, curriculum=((0.3, 1), (0.7, 3)))
    assert lm_lr(cfg, 4, 0.04) == pytest.approx(1e-3 * 0.5 * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.04))))
    assert lm_lr(cfg, 50, 0.5) == pytest.approx(1e-3 * 0.55)  # halfway: 0.1 + 0.9 * 0.5
    assert lm_lr(cfg, 99, 1.0) == pytest.approx(1e-4)  # the end of the budget: 10% of the peak
    assert [curriculum_turns(cfg, f) for f in (0.0, 0.29, 0.3, 0.99, 1.0)] == [1, 1, 3, 3, 3]


def test_teacher_forced_draws_each_latent_from_the_true_prefix():
    """`teacher_forced`: output as long as the real utterance, seeded; the first latent's state is the turn header
    alone (no speech before it), so two utterances of equal length share their first decoded frame, and later frames
    follow each utterance's own latents."""
    from sherman.speech.synthesize import teacher_forced

    b, _ = _tiny_bundle()
    utts = _fake_utts()
    voice, a1, a2 = utts[0].audio, utts[1].audio, utts[-1].audio
    assert len(a1) == len(a2)
    hop = b.acoustic.cfg.hop
    out1 = teacher_forced(b, "word 1", voice, a1, SynthConfig(steps=2))
    out2 = teacher_forced(b, "word 1", voice, a2, SynthConfig(steps=2))
    assert out1.shape == a1.shape and np.array_equal(out1, teacher_forced(b, "word 1", voice, a1, SynthConfig(steps=2)))
    assert np.allclose(out1[:hop], out2[:hop], atol=1e-6) and not np.allclose(out1[hop:], out2[hop:], atol=1e-4)


def test_script_reliance_compares_the_right_and_a_swapped_line():
    """`script_reliance`: the same line twice gives equal errors (same noise); a different line changes the error
    only through the script (the audio prefix is the same), and each error is the hand-computed MSE."""
    from sherman.speech.synthesize import _teacher_forced_latents, script_reliance

    b, _ = _tiny_bundle()
    utts = _fake_utts()
    voice, audio = utts[0].audio, utts[1].audio
    cfg = SynthConfig(steps=2)
    same = script_reliance(b, "word 1", "word 1", voice, audio, cfg)
    assert same[0] == same[1]
    right, wrong = script_reliance(b, "word 1", "a quite different line", voice, audio, cfg)
    z, lat = _teacher_forced_latents(b, "word 1", voice, audio, cfg)
    assert right == pytest.approx(float(((z - lat) ** 2).mean())) and right == same[0]
    assert wrong != right
