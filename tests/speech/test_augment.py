import math

import numpy as np
import pytest

from sherman.speech import augment as A
from sherman.speech import metrics

SR = 24000


def _band_energy(x: np.ndarray, lo: float, hi: float) -> float:
    spec = np.abs(np.fft.rfft(x)) ** 2
    f = np.fft.rfftfreq(len(x), 1 / SR)
    return float(spec[(f >= lo) & (f < hi)].sum())


def _sine(freq: float, n: int = SR, amp: float = 0.3) -> np.ndarray:
    return (amp * np.sin(2 * np.pi * freq * np.arange(n) / SR)).astype(np.float32)


@pytest.mark.parametrize("snr", [5.0, 12.5, 30.0])
def test_noise_is_at_the_requested_snr_and_seeded(snr):
    x = _sine(440.0)
    y = A.add_noise_snr(x, snr, np.random.default_rng(3))
    measured = 10 * math.log10(A.power(x) / A.power(y - x))
    assert abs(measured - snr) < 0.01  # float32 rounding only
    assert np.array_equal(y, A.add_noise_snr(x, snr, np.random.default_rng(3)))
    assert not np.array_equal(y, A.add_noise_snr(x, snr, np.random.default_rng(4)))


def test_lowpass_removes_energy_above_cutoff():
    x = np.random.default_rng(0).standard_normal(2 * SR).astype(np.float32)
    y = A.lowpass(x, 4000.0)
    # 2 x 8 poles: |H|^2 at 1.5 x cutoff is (1 + 1.5^16)^-2, about -56 dB
    assert _band_energy(y, 6000, 12000) < 1e-4 * _band_energy(x, 6000, 12000)
    passband = _band_energy(y, 100, 2000) / _band_energy(x, 100, 2000)
    assert abs(10 * math.log10(passband)) < 0.1
    assert len(A.lowpass(x[:20], 4000.0)) == 20  # short input: causal fallback


def test_eq_scales_each_frequency_by_its_band_gain():
    centers, gains = np.array([100.0, 1000.0, 10000.0]), np.array([0.0, 6.0, -6.0])
    for freq, expect_db in ((1000.0, 6.0), (100.0, 0.0), (10000.0, -6.0), (3162.0, 6.0 - 12.0 * math.log10(3162.0 / 1000.0))):
        x = _sine(freq)  # 1 s: 1 Hz bins, the sine sits on one bin
        y = A.equalize(x, centers, gains)
        got_db = 10 * math.log10(A.power(y) / A.power(x))
        assert abs(got_db - expect_db) < 0.02, (freq, got_db, expect_db)


@pytest.mark.parametrize("factor", [0.9, 1.1])
def test_speed_perturbation_scales_length_and_pitch(factor):
    x = _sine(1000.0, 2 * SR)
    y = A.speed_perturb(x, factor)
    assert abs(len(y) - len(x) / factor) <= 1
    f = np.fft.rfftfreq(len(y), 1 / SR)
    peak = f[np.argmax(np.abs(np.fft.rfft(y)))]
    assert abs(peak - 1000.0 * factor) < 2.0
    assert np.array_equal(A.speed_perturb(x, 1.0), x)


def test_augment_chain_is_seeded_and_pure():
    x = _sine(300.0)
    cfg = A.AugmentConfig(p_noise=1.0, p_lowpass=1.0, p_eq=1.0, p_speed=1.0)
    a = A.augment(x, cfg, np.random.default_rng(7))
    assert np.array_equal(a, A.augment(x, cfg, np.random.default_rng(7)))
    assert not np.array_equal(a, A.augment(x, cfg, np.random.default_rng(8)))
    assert np.array_equal(x, _sine(300.0))  # input untouched
    off = A.AugmentConfig(p_noise=0, p_lowpass=0, p_eq=0, p_speed=0, p_source=0)
    assert np.array_equal(A.augment(x, off, np.random.default_rng(0), [x * 0]), x)
    alt = _sine(500.0)
    only_source = A.AugmentConfig(p_noise=0, p_lowpass=0, p_eq=0, p_speed=0, p_source=1.0)
    assert np.array_equal(A.augment(x, only_source, np.random.default_rng(0), [alt]), alt)


class _HighBandRecognizer:
    """Stand-in recognizer: hears 3 phonemes when there is energy above 4 kHz, else only the first."""

    def recognize(self, audios):
        return [[0, 1, 2] if _band_energy(a, 4000, 12000) > 1e-3 * _band_energy(a, 0, 12000) else [0] for a in audios]


def test_calibration_table_feeds_each_degradation():
    x = np.random.default_rng(1).standard_normal(SR).astype(np.float32) * 0.1
    t = A.calibration_table(_HighBandRecognizer(), [x, x], [[0, 1, 2], [0, 1, 2]], extra={"silence": [x * 0, x * 0]})
    assert t["ground_truth"] == 0.0 and t["noise_20dB"] == 0.0 and t["lowpass_8kHz"] == 0.0
    assert t["lowpass_3kHz"] == pytest.approx(2 / 3)  # the 3 kHz low-pass removes the high band: 2 deletions of 3
    assert t["silence"] == pytest.approx(2 / 3)
    assert set(A.degradations()) <= set(t) and "ground_truth" in A.format_calibration(t)


def test_recognizer_trains_with_augmentation_and_sources():
    t = np.arange(4000) / SR
    tones = {0: 300.0, 1: 1200.0}
    audios, phon = [], []
    for i in range(6):
        a, b = i % 2, (i + 1) % 2
        audios.append(np.concatenate([0.3 * np.sin(2 * np.pi * tones[a] * t), 0.3 * np.sin(2 * np.pi * tones[b] * t)]).astype(np.float32))
        phon.append([a, b])
    sources = [{i: A.add_noise_snr(audios[i], 20.0, np.random.default_rng(i)) for i in range(3)}]
    aug = A.AugmentConfig(snr_db=(15.0, 30.0))
    rec, hist = metrics.train_recognizer(audios, phon, 2, steps=120, batch=4, lr=1e-2, augment=aug, sources=sources)
    assert np.mean(hist[-5:]) < 0.5 * np.mean(hist[:5])
    assert metrics.per(phon, rec.recognize(audios)) < 0.5
    _, again = metrics.train_recognizer(audios, phon, 2, steps=5, batch=4, lr=1e-2, augment=aug, sources=sources)
    _, clean = metrics.train_recognizer(audios, phon, 2, steps=5, batch=4, lr=1e-2)
    assert again == hist[:5] and clean != hist[:5]  # seeded; the augmentation changes what it trains on
