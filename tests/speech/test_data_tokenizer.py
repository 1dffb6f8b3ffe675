import random

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from sherman.core.common import ShermanError
from sherman.speech import data, dsp
from sherman.speech.tokenizer import (
    AcousticTokenizer,
    CausalISTFT,
    SemanticTokenizer,
    TokenizerConfig,
    TokTrainConfig,
    train_acoustic,
    train_semantic,
)


def test_parse_script_and_errors():
    assert data.parse_script("Speaker 0: hi there\n\nSpeaker 1:  good  \n") == [(0, "hi there"), (1, "good")]
    with pytest.raises(ShermanError, match="line 2"):
        data.parse_script("Speaker 0: ok\nAlice: hello")
    with pytest.raises(ShermanError, match="empty"):
        data.parse_script("\n  \n")
    with pytest.raises(ShermanError, match="line 1"):
        data.parse_script("Speaker 0:")


def test_phonemes_split_and_heldout():
    assert data.phoneme_units("ðə kˈæt") == ["ð", "ə", "k", "æ", "t"]
    s = data.make_sentence(random.Random(3))
    assert data.is_heldout(s) == data.is_heldout(s)
    flags = [data.is_heldout(data.make_sentence(random.Random(i))) for i in range(400)]
    assert 0.05 < sum(flags) / 400 < 0.3


def test_wav_roundtrip_resample_loudness(tmp_path):
    t = np.arange(22050) / 22050
    x = (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    y = dsp.resample(x, 22050, 24000)
    assert len(y) == 24000  # 22050 * 160 / 147
    z = dsp.loudness_normalize(y, -20.0)
    assert abs(20 * np.log10(np.sqrt(np.mean(z**2))) + 20.0) < 0.05  # RMS of -20 dBFS
    p = dsp.write_wav(tmp_path / "a.wav", z)
    back, sr = dsp.read_wav(p)
    assert sr == 24000 and np.abs(back - z).max() < 1e-4  # 16-bit quantisation
    with pytest.raises(ShermanError, match="not found"):
        dsp.read_wav(tmp_path / "missing.wav")
    (tmp_path / "bad.wav").write_bytes(b"not a wav at all")
    with pytest.raises(ShermanError, match="cannot read"):
        dsp.read_wav(tmp_path / "bad.wav")


@pytest.mark.skipif(not data.espeak_available(), reason="espeak-ng not installed")
def test_espeak_corpus_cached(tmp_path):
    cfg = data.CorpusConfig(n_speakers=2, utts_per_speaker=1, test_per_speaker=1, cache_dir=str(tmp_path))
    c = data.build_corpus(cfg)
    assert len(c.train) == 2 and len(c.test) == 2 and all(data.is_heldout(u.text) for u in c.test)
    u = c.train[0]
    assert u.audio.dtype == np.float32 and 0.5 * 24000 < len(u.audio) < 6 * 24000 and len(u.phonemes) > 10
    assert abs(20 * np.log10(np.sqrt(np.mean(u.audio**2))) + 20) < 1.0
    assert len(list(tmp_path.glob("*.npy"))) == 4
    c2 = data.build_corpus(cfg)  # from cache
    assert np.array_equal(c2.train[0].audio, u.audio)
    d = data.make_dialogues(c.train, 1, 3, random.Random(0))[0]
    assert data.parse_script(d.script())[0][0] == 0
    assert len(d.audio()) == sum(len(t.audio) for t in d.turns) + sum(d.gaps)


SMALL = dict(channels=4, max_channels=16)  # default ratios (8, 5, 5, 4, 2, 2), narrow channels for test speed


def test_tokenizer_3200_samples_per_frame():
    tok = AcousticTokenizer(TokenizerConfig(**SMALL))
    assert tok.cfg.hop == 3200 and 24000 / tok.cfg.hop == 7.5
    with torch.no_grad():
        mu = tok.encode(torch.randn(2, 3200))
        assert mu.shape == (2, 1, tok.cfg.latent_dim)
        assert tok.decode(mu).shape == (2, 3200)
        assert tok.encode(torch.randn(1, 3 * 3200)).shape == (1, 3, tok.cfg.latent_dim)
        assert tok.pad(torch.randn(1, 3201)).shape == (1, 6400)


def test_streaming_decode_and_encode_equal_offline():
    torch.manual_seed(0)
    tok = AcousticTokenizer(TokenizerConfig(**SMALL))
    assert_streams_and_is_causal(tok, 1e-4)
    with torch.no_grad():
        x = torch.randn(1, 4 * 3200)
        st: dict = {}
        enc = torch.cat([tok.encode(x[:, i * 3200 : (i + 1) * 3200], st) for i in range(4)], dim=1)
        assert torch.allclose(enc, tok.encode(x), atol=1e-5)


def test_sigma_vae_noise_is_fixed_scale():
    tok = AcousticTokenizer(TokenizerConfig(sigma_std=0.0, **SMALL))
    mu = torch.randn(3, 2, tok.cfg.latent_dim)
    assert torch.equal(tok.sample(mu), mu)
    tok.cfg.sigma_std = 0.5
    g = torch.Generator().manual_seed(0)
    d = tok.sample(torch.zeros(4000, 1, 1), g)  # z - mu = sigma * eps, sigma ~ N(0, 0.5): var = 0.25 * 1
    assert abs(float(d.var()) - 0.25) < 0.03


def test_acoustic_training_reduces_loss():
    torch.manual_seed(0)
    cfg = TokenizerConfig(ratios=(4, 2), channels=8, latent_dim=4, sigma_std=0.0)
    tok = AcousticTokenizer(cfg)
    t = np.arange(1280) / 24000
    audios = [(0.3 * np.sin(2 * np.pi * f * t)).astype(np.float32) for f in (300, 500, 700)]
    x = torch.from_numpy(np.stack(audios))
    with torch.no_grad():
        before = float(tok.loss(x)[0])
    train_acoustic(tok, audios, TokTrainConfig(steps=20, batch_size=3, crop_frames=160, lr=5e-3))
    with torch.no_grad():
        after = float(tok.loss(x)[0])
    assert after < 0.9 * before


def test_semantic_asr_proxy_trains_and_freezes():
    torch.manual_seed(0)
    cfg = TokenizerConfig(ratios=(4, 2), channels=8, latent_dim=8, vae=False)
    sem = SemanticTokenizer(cfg, n_phonemes=3, dec_dim=32, dec_layers=1)
    t = np.arange(256) / 24000
    audios = [(0.3 * np.sin(2 * np.pi * f * t)).astype(np.float32) for f in (300, 3000)]
    phon = [[0, 1], [2, 2, 1]]
    with torch.no_grad():
        before = float(sem.asr_loss(torch.from_numpy(np.stack(audios)), phon))
    train_semantic(sem, audios, phon, TokTrainConfig(steps=25, batch_size=2, lr=5e-3))
    with torch.no_grad():
        after = float(sem.asr_loss(torch.from_numpy(np.stack(audios)), phon))
    assert after < 0.7 * before
    assert not any(p.requires_grad for p in sem.parameters())
    assert sem.encode(torch.zeros(1, 3 * 8)).shape == (1, 3, 8)


def test_load_user_folder(tmp_path):
    t = np.arange(12000) / 24000
    for spk in ("alice", "bob"):
        (tmp_path / spk).mkdir()
        dsp.write_wav(tmp_path / spk / "a.wav", (0.2 * np.sin(2 * np.pi * 220 * t)).astype(np.float32), sr=16000)
        (tmp_path / spk / "a.txt").write_text("hello there")
    c = data.load_folder(tmp_path)
    assert c.n_speakers == 2 and sorted(u.speaker for u in c.train + c.test) == [0, 1]
    u = (c.train + c.test)[0]
    assert len(u.audio) == 18000  # 12000 samples at 16 kHz -> 24 kHz
    (tmp_path / "bob" / "b.wav").write_bytes((tmp_path / "bob" / "a.wav").read_bytes())
    with pytest.raises(ShermanError, match="missing transcript"):
        data.load_folder(tmp_path)
    with pytest.raises(ShermanError, match="not a folder"):
        data.load_folder(tmp_path / "nope")


def test_istft_head_inverts_an_stft_causally():
    """The 'istft' head's overlap-add: fed the STFT (frame k = samples [k hop, k hop + n_fft)) of a signal, it gives the
    signal back after the fade-in; block m depends on frames <= m only."""
    ist = CausalISTFT(200, 4)
    x = torch.randn(1, 200 * 12)
    frames = F.pad(x, (0, 600)).unfold(-1, 800, 200) * ist.window  # (1, 12, 800)
    spec = torch.fft.rfft(frames)
    y = ist(torch.cat([spec.abs().clamp(min=1e-9).log(), spec.angle()], -1).transpose(1, 2))  # (1, 1, 2400)
    assert y.shape == (1, 1, 2400)
    assert torch.allclose(y[0, 0, 600:], x[0, 600:], atol=1e-4)


def test_istft_decoder_streams_and_is_causal():
    torch.manual_seed(0)
    tok = AcousticTokenizer(TokenizerConfig(decoder_head="istft", **SMALL))
    assert tok.cfg.istft_stages() == 3 and len(tok.decoder.stages) == 3  # 8 * 5 * 5 = 200 samples per spectral frame
    assert_streams_and_is_causal(tok, 1e-5)


def assert_streams_and_is_causal(tok, min_change: float) -> None:
    """Decoding 5 latents one at a time equals decoding them together, and changing latent 3 changes no earlier sample."""
    z = torch.randn(1, 5, tok.cfg.latent_dim)
    with torch.no_grad():
        offline = tok.decode(z)
        assert offline.shape == (1, 5 * 3200)
        state: dict = {}
        streamed = torch.cat([tok.decode(z[:, i : i + 1], state) for i in range(5)], dim=1)
        assert torch.allclose(offline, streamed, atol=1e-5)
        z2 = z.clone()
        z2[:, 3] += 1.0
        changed = (tok.decode(z2) - offline).abs().amax(0)
        assert changed[: 3 * 3200].max() < 1e-6 and changed[3 * 3200 :].max() > min_change
