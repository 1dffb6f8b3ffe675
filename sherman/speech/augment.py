"""Audio augmentation and degradation for the evaluators of VibeVoice (arXiv 2508.19205, Sec. 3 measures WER with
Whisper; our offline stand-in is a small CTC phoneme recognizer, `speech/metrics.py`).

A recognizer trained on clean espeak-ng audio only cannot grade partial success: anything not perfectly clean
scores near PER 1.0. Training it on degraded copies makes its PER rise smoothly with degradation, so it can
tell a slightly-off synthesis from noise. The degradations:

- additive white noise at a drawn SNR (5-30 dB), scaled so the realised SNR is exactly the drawn one;
- a random low-pass (3-8 kHz), zero-phase Butterworth;
- a random EQ: gains in dB at log-spaced band centres, interpolated over log-frequency, applied in the
  frequency domain (zero-phase);
- speed perturbation by a factor (0.9-1.1): resampling, so duration scales by 1/factor and pitch by factor
  (as in Kaldi's speed perturbation);
- alternative renderings of the same utterance from a source hook: acoustic-tokenizer round trips taken at
  several training stages (`tokenizer_roundtrips`), so the recognizer has heard codec artefacts.

Every function is pure (no global RNG): randomness comes from the `np.random.Generator` passed in.
`calibration_table` measures a trained recognizer's PER on ground truth and on each degradation.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from typing import Callable

import numpy as np

from sherman.speech.dsp import SAMPLE_RATE

# ---------------------------------------------------------------- degradations (pure functions)


def power(audio: np.ndarray) -> float:
    """Mean square of a signal."""
    return float(np.mean(np.asarray(audio, np.float64) ** 2))


def add_noise_snr(audio: np.ndarray, snr_db: float, rng: np.random.Generator) -> np.ndarray:
    """audio + white Gaussian noise whose power is exactly power(audio) / 10^(snr_db / 10) on this draw."""
    n = rng.standard_normal(len(audio))
    p_sig, p_n = power(audio), power(n)
    if p_sig == 0 or p_n == 0:
        return audio.astype(np.float32)
    n *= np.sqrt(p_sig / (10 ** (snr_db / 10)) / p_n)
    return (audio + n).astype(np.float32)


def lowpass(audio: np.ndarray, cutoff_hz: float, sr: int = SAMPLE_RATE, order: int = 8) -> np.ndarray:
    """Zero-phase Butterworth low-pass (forward + backward: 2 x `order` poles of roll-off)."""
    from scipy.signal import butter, sosfilt, sosfiltfilt

    if cutoff_hz >= sr / 2:
        return audio.astype(np.float32)
    sos = butter(order, cutoff_hz, btype="low", fs=sr, output="sos")
    padlen = 3 * (2 * len(sos) + 1)
    if len(audio) <= padlen:  # too short for the backward pass' edge padding
        return sosfilt(sos, audio).astype(np.float32)
    return sosfiltfilt(sos, audio).astype(np.float32)


def eq_gain_db(freqs: np.ndarray, centers_hz: np.ndarray, gains_db: np.ndarray) -> np.ndarray:
    """Gain (dB) at `freqs`: piecewise linear in log-frequency between band centres, constant beyond the end bands."""
    lf = np.log(np.maximum(freqs, 1.0))
    return np.interp(lf, np.log(centers_hz), gains_db)


def equalize(audio: np.ndarray, centers_hz: np.ndarray, gains_db: np.ndarray, sr: int = SAMPLE_RATE) -> np.ndarray:
    """Zero-phase EQ in the frequency domain: each rfft bin scaled by 10^(eq_gain_db / 20)."""
    spec = np.fft.rfft(np.asarray(audio, np.float64))
    freqs = np.fft.rfftfreq(len(audio), 1 / sr)
    spec *= 10 ** (eq_gain_db(freqs, np.asarray(centers_hz, float), np.asarray(gains_db, float)) / 20)
    return np.fft.irfft(spec, n=len(audio)).astype(np.float32)


def speed_perturb(audio: np.ndarray, factor: float) -> np.ndarray:
    """Play `factor` times faster: resample so the length becomes len / factor (pitch scales by `factor`)."""
    from scipy.signal import resample_poly

    fr = Fraction(factor).limit_denominator(50)
    if fr == 1:
        return audio.astype(np.float32)
    return resample_poly(audio, fr.denominator, fr.numerator).astype(np.float32)


# ---------------------------------------------------------------- random augmentation


@dataclass
class AugmentConfig:
    p_noise: float = 0.5
    """Probability of adding white noise."""
    snr_db: tuple[float, float] = (5.0, 30.0)
    """Range of the noise SNR in dB (drawn uniformly)."""
    p_lowpass: float = 0.3
    """Probability of a low-pass filter."""
    lowpass_hz: tuple[float, float] = (3000.0, 8000.0)
    """Range of the low-pass cutoff in Hz (drawn log-uniformly)."""
    p_eq: float = 0.3
    """Probability of a random EQ."""
    eq_db: float = 6.0
    """EQ band gains are drawn uniformly in [-eq_db, eq_db] dB."""
    eq_bands: int = 6
    """EQ bands, centres log-spaced from 100 Hz to 10 kHz."""
    p_speed: float = 0.5
    """Probability of speed perturbation."""
    speed: tuple[float, float] = (0.9, 1.1)
    """Range of the speed factor (drawn uniformly; length scales by 1 / factor)."""
    p_source: float = 0.3
    """Probability of replacing the utterance by one of its alternative renderings (tokenizer round trips), when given."""


def augment(audio: np.ndarray, cfg: AugmentConfig, rng: np.random.Generator, alternatives: list[np.ndarray] | None = None) -> np.ndarray:
    """One random degradation chain: source -> speed -> EQ -> low-pass -> noise (noise last, so its SNR is as drawn)."""
    x = np.asarray(audio, np.float32)
    if alternatives and rng.random() < cfg.p_source:
        x = alternatives[int(rng.integers(len(alternatives)))]
    if rng.random() < cfg.p_speed:
        x = speed_perturb(x, float(rng.uniform(*cfg.speed)))
    if rng.random() < cfg.p_eq:
        centers = np.geomspace(100.0, 10000.0, cfg.eq_bands)
        x = equalize(x, centers, rng.uniform(-cfg.eq_db, cfg.eq_db, cfg.eq_bands))
    if rng.random() < cfg.p_lowpass:
        x = lowpass(x, float(np.exp(rng.uniform(*np.log(cfg.lowpass_hz)))))
    if rng.random() < cfg.p_noise:
        x = add_noise_snr(x, float(rng.uniform(*cfg.snr_db)), rng)
    return x


def tokenizer_roundtrips(acoustic, audios: list[np.ndarray], indices: list[int]) -> dict[int, np.ndarray]:
    """Augmentation source hook: encode -> decode (mean latent) of `audios[i]` for i in `indices`, trimmed to length.

    Call it at several stages of the acoustic tokenizer's training to give the recognizer codec artefacts of
    several qualities (`train_recognizer(..., sources=[...])`)."""
    import torch

    out = {}
    with torch.no_grad():
        for i in indices:
            a = audios[i]
            y = acoustic.decode(acoustic.encode(acoustic.pad(torch.from_numpy(np.ascontiguousarray(a))[None])))[0, : len(a)]
            out[i] = y.numpy().astype(np.float32)
    return out


# ---------------------------------------------------------------- calibration


def degradations(seed: int = 0) -> dict[str, Callable[[np.ndarray], np.ndarray]]:
    """The calibration ladder: named, seeded degradations of increasing strength, one family at a time."""

    def noise(snr: float) -> Callable[[np.ndarray], np.ndarray]:
        return lambda a: add_noise_snr(a, snr, np.random.default_rng([seed, len(a)]))

    out: dict[str, Callable[[np.ndarray], np.ndarray]] = {}
    for snr in (30, 20, 10, 5):
        out[f"noise_{snr}dB"] = noise(snr)
    for hz in (8000, 5000, 3000):
        out[f"lowpass_{hz // 1000}kHz"] = lambda a, hz=hz: lowpass(a, hz)
    centers = np.geomspace(100.0, 10000.0, 6)
    tilt = np.array([6.0, 3.6, 1.2, -1.2, -3.6, -6.0])  # a fixed +-6 dB spectral tilt
    out["eq_tilt_6dB"] = lambda a: equalize(a, centers, tilt)
    for f in (0.9, 1.1):
        out[f"speed_{f}"] = lambda a, f=f: speed_perturb(a, f)
    return out


def calibration_table(recognizer, audios: list[np.ndarray], refs: list[list[int]],
                      extra: dict[str, list[np.ndarray]] | None = None, seed: int = 0) -> dict[str, float]:
    """PER of `recognizer` on ground truth, on each `degradations(seed)` of `audios`, and on `extra` renderings
    of the same utterances (e.g. {"tokenizer_roundtrip": [...]}) -> {condition: PER}."""
    from sherman.speech.metrics import per

    conditions = {"ground_truth": list(audios)}
    conditions.update({name: [fn(a) for a in audios] for name, fn in degradations(seed).items()})
    for name, alt in (extra or {}).items():
        assert len(alt) == len(audios), f"{name}: {len(alt)} renderings for {len(audios)} utterances"
        conditions[name] = list(alt)
    # one recognizer call over every condition: its scores do not depend on the batch (real-frame normalisation)
    hyps = recognizer.recognize([a for alt in conditions.values() for a in alt])
    n = len(audios)
    return {name: per(refs, hyps[i * n : (i + 1) * n]) for i, name in enumerate(conditions)}


def format_calibration(table: dict[str, float]) -> str:
    """One line: 'condition PER; ...'."""
    return "; ".join(f"{k} {v:.3f}" for k, v in table.items())
