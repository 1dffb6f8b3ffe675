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
