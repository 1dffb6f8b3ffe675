"""Signal helpers shared by the speech package: WAV I/O, resampling, loudness, STFT / log-mel features.

Pure functions, no models. WAV files are read and written with the standard library (`wave`, 16-bit PCM);
other formats are read with `soundfile` when it is installed.
"""

from __future__ import annotations

import functools
import math
import wave
from pathlib import Path

import numpy as np
import torch

from sherman.core.common import ShermanError

SAMPLE_RATE = 24000
"""VibeVoice works on 24 kHz mono audio."""


def read_wav(path: str | Path) -> tuple[np.ndarray, int]:
    """Read a mono/stereo WAV -> (float32 mono in [-1, 1], sample rate). Clear ShermanError when unreadable."""
    path = Path(path)
    if not path.is_file():
        raise ShermanError(f"audio file not found: {path}")
    try:
        with wave.open(str(path), "rb") as w:
            sr, ch, width, n = w.getframerate(), w.getnchannels(), w.getsampwidth(), w.getnframes()
            raw = w.readframes(n)
        if width == 2:
            x = np.frombuffer(raw, dtype="<i2").astype(np.float32) / 32768.0
        elif width == 4:
            x = np.frombuffer(raw, dtype="<i4").astype(np.float32) / 2147483648.0
        elif width == 1:
            x = (np.frombuffer(raw, dtype=np.uint8).astype(np.float32) - 128.0) / 128.0
        else:
            raise ShermanError(f"unsupported WAV sample width {width} bytes: {path}")
        x = x.reshape(-1, ch).mean(axis=1)
    except (wave.Error, EOFError, ValueError) as e:
        try:
            import soundfile as sf  # float WAV, FLAC, ...
        except ImportError:
            raise ShermanError(f"cannot read audio {path}: {e} (install soundfile for non-PCM formats)") from e
        try:
            x, sr = sf.read(str(path), dtype="float32", always_2d=True)
        except Exception as e2:
            raise ShermanError(f"cannot read audio {path}: {e2}") from e2
        x = x.mean(axis=1)
    if x.size == 0:
        raise ShermanError(f"audio file is empty: {path}")
    return x.astype(np.float32), int(sr)


def write_wav(path: str | Path, audio: np.ndarray, sr: int = SAMPLE_RATE) -> Path:
    """Write float audio as 16-bit PCM mono WAV (clipped to [-1, 1])."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    pcm = (np.clip(np.asarray(audio, dtype=np.float32), -1.0, 1.0) * 32767.0).round().astype("<i2")
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(sr)
        w.writeframes(pcm.tobytes())
    return path


def resample(audio: np.ndarray, sr_in: int, sr_out: int = SAMPLE_RATE) -> np.ndarray:
    """Polyphase resampling (scipy), e.g. espeak-ng's 22050 Hz -> 24000 Hz is up 160 / down 147."""
    if sr_in == sr_out:
        return audio.astype(np.float32)
    from scipy.signal import resample_poly

    g = math.gcd(sr_in, sr_out)
    return resample_poly(audio, sr_out // g, sr_in // g).astype(np.float32)


def loudness_normalize(audio: np.ndarray, target_dbfs: float = -20.0, peak: float = 0.95) -> np.ndarray:
    """Scale to an RMS level of `target_dbfs` dBFS (an unweighted stand-in for LUFS), then limit the peak."""
    rms = float(np.sqrt(np.mean(audio.astype(np.float64) ** 2)) + 1e-12)
    y = audio * (10 ** (target_dbfs / 20) / rms)
    m = float(np.abs(y).max())
    if m > peak:
        y = y * (peak / m)
    return y.astype(np.float32)


def trim_silence(audio: np.ndarray, threshold: float = 0.01, pad: int = 480) -> np.ndarray:
    """Cut leading/trailing samples below `threshold` of the peak, keeping `pad` samples of margin."""
    idx = np.flatnonzero(np.abs(audio) > threshold * (np.abs(audio).max() + 1e-12))
    if idx.size == 0:
        return audio
    return audio[max(0, idx[0] - pad) : idx[-1] + 1 + pad]


@functools.lru_cache(maxsize=8)
def mel_filterbank(n_fft: int, n_mels: int, sr: int = SAMPLE_RATE, fmin: float = 0.0, fmax: float | None = None) -> torch.Tensor:
    """Triangular HTK-mel filters (n_mels, n_fft // 2 + 1)."""
    fmax = fmax or sr / 2

    def hz2mel(f):
        return 2595.0 * np.log10(1.0 + f / 700.0)

    def mel2hz(m):
        return 700.0 * (10 ** (m / 2595.0) - 1.0)

    mels = np.linspace(hz2mel(fmin), hz2mel(fmax), n_mels + 2)
    hz = mel2hz(mels)
    bins = np.linspace(0, sr / 2, n_fft // 2 + 1)
    fb = np.zeros((n_mels, bins.size), dtype=np.float32)
    for i in range(n_mels):
        lo, c, hi = hz[i], hz[i + 1], hz[i + 2]
        fb[i] = np.maximum(0, np.minimum((bins - lo) / (c - lo + 1e-9), (hi - bins) / (hi - c + 1e-9)))
    return torch.from_numpy(fb)


def stft_mag(x: torch.Tensor, n_fft: int, hop: int) -> torch.Tensor:
    """x (B, L) -> magnitude (B, F, frames)."""
    win = torch.hann_window(n_fft, device=x.device)
    return torch.stft(x, n_fft, hop, n_fft, win, center=True, return_complex=True).abs()


def log_mel(x: torch.Tensor, n_fft: int = 1024, hop: int = 256, n_mels: int = 64) -> torch.Tensor:
    """x (B, L) -> log-mel (B, n_mels, frames), natural log with a 1e-5 floor."""
    fb = mel_filterbank(n_fft, n_mels).to(x.device)
    return torch.log(torch.clamp(fb @ stft_mag(x, n_fft, hop), min=1e-5))


def multi_res_stft_loss(pred: torch.Tensor, target: torch.Tensor, resolutions=((512, 128), (1024, 256), (2048, 512))) -> torch.Tensor:
    """Spectral convergence + log-magnitude L1, averaged over STFT resolutions. pred, target (B, L)."""
    total = pred.new_zeros(())
    resolutions = [r for r in resolutions if r[0] // 2 < pred.shape[-1]] or [(64, 16)]  # reflect padding needs L > n_fft / 2
    for n_fft, hop in resolutions:
        p, t = stft_mag(pred, n_fft, hop), stft_mag(target, n_fft, hop)
        sc = torch.linalg.norm(t - p) / (torch.linalg.norm(t) + 1e-7)
        mag = (torch.log(p.clamp(min=1e-5)) - torch.log(t.clamp(min=1e-5))).abs().mean()
        total = total + sc + mag
    return total / len(resolutions)


def mel_l1(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean absolute difference of log-mel spectrograms. pred, target (B, L)."""
    return (log_mel(pred) - log_mel(target)).abs().mean()


def stft_snr_db(pred: np.ndarray, target: np.ndarray, n_fft: int = 1024, hop: int = 256) -> float:
    """SNR in dB between STFT magnitudes (phase-insensitive): 10 log10(|S|^2 / |S - S_hat|^2)."""
    n = min(len(pred), len(target))
    p = stft_mag(torch.from_numpy(np.ascontiguousarray(pred[:n]))[None], n_fft, hop)
    t = stft_mag(torch.from_numpy(np.ascontiguousarray(target[:n]))[None], n_fft, hop)
    return float(10 * torch.log10(t.pow(2).sum() / ((t - p).pow(2).sum() + 1e-12)))
