import numpy as np
import torch

from sherman.speech import metrics


def test_compression_numbers():
    c = metrics.compression(3200, 64)
    assert c["compress/frames_per_s"] == 7.5
    assert c["compress/token_rate_ratio_vs_encodec"] == 80.0  # 600 / 7.5, the paper's "80x"
    assert c["compress/bitrate_bps_fp16"] == 7.5 * 64 * 16  # 7680 b/s


def test_edit_distance_and_per():
    assert metrics.edit_distance(list("kitten"), list("sitting")) == 3
    assert metrics.edit_distance([], [1, 2]) == 2
    assert metrics.per([[1, 2, 3, 4]], [[1, 3, 4, 5]]) == 0.5  # one deletion + one insertion over 4


def test_recognizer_and_speaker_encoder_train():
    t = np.arange(4000) / 24000
    tones = {0: 300.0, 1: 1200.0}
    audios, phon, spk = [], [], []
    for i in range(6):
        a, b = i % 2, (i + 1) % 2  # two "phonemes" as two tones, in either order
        audios.append(np.concatenate([0.3 * np.sin(2 * np.pi * tones[a] * t), 0.3 * np.sin(2 * np.pi * tones[b] * t)]).astype(np.float32))
        phon.append([a, b])
        spk.append(i % 2)
    rec, hist = metrics.train_recognizer(audios, phon, 2, steps=120, batch=4, lr=1e-2)
    assert np.mean(hist[-5:]) < 0.5 * np.mean(hist[:5])
    assert metrics.per(phon, rec.recognize(audios)) < 0.5
    enc = metrics.train_speaker_encoder(audios, spk, 2, steps=20, batch=4, crop=8000)
    ref = metrics.speaker_centroids(enc, audios, spk, 2)
    assert ref.centroids.shape == (2, 64)
    assert metrics.speaker_similarity(enc, ref, audios, spk) > metrics.speaker_similarity(enc, ref, audios, [1 - s for s in spk])
    assert metrics.turn_accuracy(enc, [audios[:2]], [enc.classify(audios[:2])]) == 1.0
    assert metrics.turn_accuracy(enc, [audios[:1]], [[0, 1]]) == 0.0  # wrong segment count
    assert torch.is_tensor(ref.centroids)


def _speechlike(n: int, seed: int) -> np.ndarray:
    r = np.random.default_rng(seed)
    t = np.arange(n) / 24000
    return (0.2 * np.sin(2 * np.pi * r.uniform(200, 2000) * t) * (1 + np.sin(2 * np.pi * 3 * t)) + 0.02 * r.standard_normal(n)).astype(np.float32)


def test_mel_normalisation_uses_real_frames_only():
    a = _speechlike(5000, 0)
    alone, (f,) = metrics._mels([a])
    batched, frames = metrics._mels([a, _speechlike(30000, 1), _speechlike(12000, 2)])
    assert frames[0] == f == 5000 // 256 + 1
    assert torch.allclose(alone[0, :f], batched[0, :f], atol=1e-5)
    assert batched[0, f:].abs().max() == 0  # padding frames carry nothing
    real = batched[0, :f]
    assert abs(float(real.mean())) < 1e-5 and abs(float(real.std()) - 1.0) < 1e-3  # standardized over its own frames


def test_recognizer_score_does_not_depend_on_batch():
    torch.manual_seed(0)
    rec = metrics.PhonemeRecognizer(5).eval()
    for p in rec.parameters():  # peaked outputs so that greedy decoding emits phonemes
        p.data.mul_(3.0)
    short = [_speechlike(4000 + 1000 * i, 10 + i) for i in range(3)]
    long = [_speechlike(40000, 20), _speechlike(25000, 21)]
    with torch.no_grad():
        mel, fr = metrics._mels(short[:1])
        lp_alone = rec(mel, fr)[0, : (fr[0] + 1) // 2]
        mel, fr = metrics._mels(short[:1] + long)
        lp_batched = rec(mel, fr)[0, : (fr[0] + 1) // 2]
    assert torch.allclose(lp_alone, lp_batched, atol=1e-5)
    hyp_alone = [rec.recognize([a])[0] for a in short]
    hyp_batched = rec.recognize(short + long)[:3]
    assert hyp_alone == hyp_batched and sum(len(h) for h in hyp_alone) > 0
    refs = [[0, 1, 2], [1, 2], [3, 4, 0]]
    assert metrics.per(refs, hyp_alone) == metrics.per(refs, hyp_batched)


class _ToneEncoder:
    """Stand-in speaker encoder: the embedding is a one-hot of the waveform's first sample (its 'voice')."""

    def embeddings(self, audios):
        return torch.stack([torch.nn.functional.one_hot(torch.tensor(int(a[0])), 3).float() + 0.1 for a in audios])


def test_prompt_preference_counts_turns_in_the_prompted_voice():
    v = [np.full(10, k, np.float32) for k in range(3)]  # voices 0, 1, 2
    prompts = [[v[0], v[1]], [v[2], v[0]]]
    # script 0: turns by speakers 0, 1, 0 in voices 0, 1, 1 (last one wrong); script 1: speakers 0, 1 in voices 2, 0, plus an empty turn
    segs = [[v[0], v[1], v[1]], [v[2], v[0], np.zeros(0, np.float32)]]
    spk = [[0, 1, 0], [0, 1, 1]]
    assert metrics.prompt_preference(_ToneEncoder(), segs, prompts, spk) == 4 / 6
    assert metrics.prompt_preference(_ToneEncoder(), [[v[1]]], [[v[0], v[1]]], [[1]]) == 1.0
