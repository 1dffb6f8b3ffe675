"""Evaluation for VibeVoice (arXiv 2508.19205, Sec. 3): compression, reconstruction, intelligibility,
speaker similarity and turn accuracy.

- compression: latent frames per second (24000 / 3200 = 7.5) and, each labelled, the token-rate ratio
  against Encodec at 24 kHz with 8 codebooks (75 frames/s x 8 = 600 tokens/s; the paper's "80x") and the
  bit-rate ratio against Encodec's 6 kbps when our latents are stored as fp16.
- reconstruction: log-mel L1 and STFT-magnitude SNR of tokenizer round trips on held-out audio.
- intelligibility: phoneme error rate (edit distance / reference length) from an independent CTC phoneme
  recognizer (log-mel -> conv -> BiGRU) trained by the project on real espeak-ng audio (the paper uses
  Whisper WER; this is its offline stand-in).
- speaker similarity: cosine similarity of embeddings from a small speaker classifier trained on real
  audio (the paper uses WavLM-TDNN); turn accuracy: one speech segment per script line, and the classifier
  assigns each segment to the speaker the script names.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from sherman.speech.augment import AugmentConfig
from sherman.speech.augment import augment as augment_audio
from sherman.speech.dsp import SAMPLE_RATE, log_mel, stft_snr_db

ENCODEC_TOKENS_PER_S = 600.0
"""Encodec 24 kHz at 6 kbps: 75 frames/s x 8 codebooks."""
ENCODEC_BITS_PER_S = 6000.0
"""Encodec 24 kHz at 8 codebooks of 10 bits: 6 kbps."""


def compression(hop: int, latent_dim: int, sr: int = SAMPLE_RATE, bits_per_value: int = 16) -> dict:
    fps = sr / hop
    return {
        "compress/downsampling": float(hop),
        "compress/frames_per_s": fps,
        "compress/token_rate_ratio_vs_encodec": ENCODEC_TOKENS_PER_S / fps,
        "compress/bitrate_bps_fp16": fps * latent_dim * bits_per_value,
        "compress/bitrate_ratio_vs_encodec_6kbps": ENCODEC_BITS_PER_S / (fps * latent_dim * bits_per_value),
    }


@torch.no_grad()
def reconstruction(acoustic, audios: list[np.ndarray]) -> dict:
    """Mean log-mel L1 and STFT SNR (dB) of encode -> decode (mean latent, no noise) on `audios`."""
    l1s, snrs = [], []
    for a in audios:
        x = acoustic.pad(torch.from_numpy(a)[None])
        y = acoustic.decode(acoustic.encode(x))[0, : len(a)].numpy()
        l1s.append(float((log_mel(torch.from_numpy(y)[None]) - log_mel(torch.from_numpy(a)[None])).abs().mean()))
        snrs.append(stft_snr_db(y, a))
    return {"recon/mel_l1": float(np.mean(l1s)), "recon/stft_snr_db": float(np.mean(snrs))}


def edit_distance(a: list, b: list) -> int:
    """Levenshtein distance (substitutions, insertions, deletions all cost 1)."""
    prev = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        cur = [i] + [0] * len(b)
        for j, y in enumerate(b, 1):
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (x != y))
        prev = cur
    return prev[-1]


def per(refs: list[list], hyps: list[list]) -> float:
    """Phoneme error rate: total edit distance / total reference length."""
    return sum(edit_distance(r, h) for r, h in zip(refs, hyps)) / max(1, sum(len(r) for r in refs))


MEL_HOP = 256
"""Hop of the evaluators' log-mel features (samples per frame)."""
MEL_NFFT = 1024
"""FFT size of the evaluators' log-mel features."""


def mel_frames(n_samples: int) -> int:
    """Log-mel frames that belong to an utterance of `n_samples` samples (centred STFT: n // hop + 1)."""
    return n_samples // MEL_HOP + 1


def _mels(audios: list[np.ndarray]) -> tuple[torch.Tensor, list[int]]:
    """Batch of log-mels (B, T, 64), each standardized over its own real frames only, plus frame counts.

    Every utterance is followed by at least n_fft / 2 zeros, so its frames see the same samples (the audio, then
    silence) whatever the batch's longest utterance; mean and std are taken over the utterance's `mel_frames`
    only, and the padding frames are set to 0. A segment's features therefore do not depend on its batch.
    """
    frames = [mel_frames(len(a)) for a in audios]
    n = max(max(len(a) for a in audios) + MEL_NFFT // 2, MEL_NFFT)
    x = torch.zeros(len(audios), n)
    for i, a in enumerate(audios):
        x[i, : len(a)] = torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))
    m = log_mel(x, MEL_NFFT, MEL_HOP).transpose(1, 2)  # (B, T, 64)
    valid = (torch.arange(m.shape[1])[None] < torch.tensor(frames)[:, None]).to(m.dtype)[:, :, None]  # (B, T, 1)
    count = valid.sum(dim=(1, 2), keepdim=True) * m.shape[2]  # real values per utterance
    mean = (m * valid).sum(dim=(1, 2), keepdim=True) / count
    var = (((m - mean) * valid) ** 2).sum(dim=(1, 2), keepdim=True) / (count - 1).clamp(min=1)
    m = (m - mean) / (var.sqrt() + 1e-5) * valid  # (B, T, 64), zeros on padding frames
    return m, frames


def _ctc_frames(frames: int) -> int:
    """Output frames of the recognizer (one stride-2 conv) for `frames` input frames."""
    return (frames + 1) // 2


class PhonemeRecognizer(nn.Module):
    """log-mel -> 2 convs (stride 2) -> BiGRU -> CTC over phonemes (+ blank = 0).

    With `frames` (the real length of each utterance) the padding is masked to zero after each conv and the GRU
    runs on packed sequences, so an utterance's log-probs on its real frames do not depend on its batch.
    """

    def __init__(self, n_phonemes: int, hidden: int = 96):
        super().__init__()
        self.conv = nn.Sequential(nn.Conv1d(64, hidden, 5, stride=2, padding=2), nn.GELU(), nn.Conv1d(hidden, hidden, 5, padding=2), nn.GELU())
        self.rnn = nn.GRU(hidden, hidden, batch_first=True, bidirectional=True)
        self.out = nn.Linear(2 * hidden, n_phonemes + 1)

    def forward(self, mel: torch.Tensor, frames: list[int] | None = None) -> torch.Tensor:  # (B, T, 64) -> log-probs (B, T/2, P+1)
        if frames is None:
            h = self.conv(mel.transpose(1, 2)).transpose(1, 2)
            return F.log_softmax(self.out(self.rnn(h)[0]), dim=-1)
        lens = torch.tensor([_ctc_frames(f) for f in frames])
        h = self.conv[1](self.conv[0](mel.transpose(1, 2)))  # (B, H, T')
        keep = (torch.arange(h.shape[-1])[None] < lens[:, None]).to(h.dtype)[:, None]  # (B, 1, T')
        h = self.conv[3](self.conv[2](h * keep)) * keep
        packed = nn.utils.rnn.pack_padded_sequence(h.transpose(1, 2), lens.clamp(max=h.shape[-1]), batch_first=True, enforce_sorted=False)
        out, _ = nn.utils.rnn.pad_packed_sequence(self.rnn(packed)[0], batch_first=True, total_length=h.shape[-1])  # (B, T', 2H)
        return F.log_softmax(self.out(out), dim=-1)

    @torch.no_grad()
    def recognize(self, audios: list[np.ndarray]) -> list[list[int]]:
        """Greedy CTC decoding -> phoneme indices (0-based, blank removed)."""
        mel, frames = _mels(audios)
        lp = self(mel, frames)
        out = []
        for b, f in enumerate(frames):
            best = lp[b, : _ctc_frames(f)].argmax(-1).tolist()
            seq = [p - 1 for k, p in enumerate(best) if p != 0 and (k == 0 or p != best[k - 1])]
            out.append(seq)
        return out


def train_recognizer(audios: list[np.ndarray], phonemes: list[list[int]], n_phonemes: int, steps: int, batch: int = 16,
                     lr: float = 3e-3, seed: int = 0, time_limit_s: float = 0.0, augment: AugmentConfig | None = None,
                     sources: list[dict[int, np.ndarray]] | None = None) -> tuple[PhonemeRecognizer, list[float]]:
    """CTC training on random batches of `audios`. With `augment`, each drawn utterance goes through a random
    degradation chain (`speech/augment.py`); `sources` are alternative renderings of some utterances (index ->
    audio, e.g. acoustic-tokenizer round trips at several training stages) that the chain may start from.
    `time_limit_s` counts CPU seconds of the process (the same steps on a loaded machine)."""
    torch.manual_seed(seed)
    rng = random.Random(seed)
    arng = np.random.default_rng(seed)
    model = PhonemeRecognizer(n_phonemes)
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    hist, t0 = [], time.process_time()
    for _ in range(steps):
        idx = [rng.randrange(len(audios)) for _ in range(batch)]
        batch_audio = [audios[i] for i in idx]
        if augment is not None:
            batch_audio = [augment_audio(a, augment, arng, [s[i] for s in sources or [] if i in s]) for a, i in zip(batch_audio, idx)]
        mel, frames = _mels(batch_audio)
        lp = model(mel, frames)  # (B, T', P+1)
        tgt = [torch.tensor(phonemes[i]) + 1 for i in idx]
        loss = F.ctc_loss(lp.transpose(0, 1), torch.cat(tgt), torch.tensor([min(_ctc_frames(f), lp.shape[1]) for f in frames]),
                          torch.tensor([len(t) for t in tgt]), zero_infinity=True)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        hist.append(loss.item())
        if time_limit_s and time.process_time() - t0 > time_limit_s:
            break
    return model.eval(), hist


class SpeakerEncoder(nn.Module):
    """log-mel -> convs -> mean+std pooling -> 64-d embedding (+ a classifier used for training)."""

    def __init__(self, n_speakers: int, hidden: int = 64):
        super().__init__()
        self.conv = nn.Sequential(nn.Conv1d(64, hidden, 5, padding=2), nn.GELU(), nn.Conv1d(hidden, hidden, 5, padding=2, dilation=1), nn.GELU())
        self.emb = nn.Linear(2 * hidden, 64)
        self.cls = nn.Linear(64, n_speakers)

    def embed(self, mel: torch.Tensor) -> torch.Tensor:  # (B, T, 64) -> (B, 64)
        h = self.conv(mel.transpose(1, 2))  # (B, H, T)
        return self.emb(torch.cat([h.mean(-1), h.std(-1)], dim=-1))

    @torch.no_grad()
    def embeddings(self, audios: list[np.ndarray]) -> torch.Tensor:
        out = []
        for a in audios:  # one at a time, real frames only: no padding in the statistics
            mel, (f,) = _mels([a])
            out.append(self.embed(mel[:, :f]))
        return torch.cat(out)

    @torch.no_grad()
    def classify(self, audios: list[np.ndarray]) -> list[int]:
        return self.cls(self.embeddings(audios)).argmax(-1).tolist()


def train_speaker_encoder(audios: list[np.ndarray], speakers: list[int], n_speakers: int, steps: int, batch: int = 16,
                          lr: float = 3e-3, seed: int = 0, crop: int = SAMPLE_RATE) -> SpeakerEncoder:
    """Speaker classification on random 1 s crops of real audio."""
    torch.manual_seed(seed)
    rng = random.Random(seed)
    model = SpeakerEncoder(n_speakers)
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    for _ in range(steps):
        idx = [rng.randrange(len(audios)) for _ in range(batch)]
        crops = []
        for i in idx:
            a = audios[i]
            s = rng.randint(0, max(0, len(a) - crop))
            crops.append(a[s : s + crop])
        n = min(len(c) for c in crops)
        mel, frames = _mels([c[:n] for c in crops])  # equal lengths: the same real frames each
        mel = mel[:, : frames[0]]
        loss = F.cross_entropy(model.cls(model.embed(mel)), torch.tensor([speakers[i] for i in idx]))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return model.eval()


@dataclass
class SpeakerRef:
    centroids: torch.Tensor
    """(n_speakers, 64) mean embedding of each speaker's real audio."""


def speaker_similarity(enc: SpeakerEncoder, ref: SpeakerRef, audios: list[np.ndarray], speakers: list[int]) -> float:
    """Mean cosine similarity between each segment's embedding and its intended speaker's centroid."""
    e = enc.embeddings(audios)
    return float(F.cosine_similarity(e, ref.centroids[torch.tensor(speakers)], dim=-1).mean())


def speaker_centroids(enc: SpeakerEncoder, audios: list[np.ndarray], speakers: list[int], n_speakers: int) -> SpeakerRef:
    e = enc.embeddings(audios)
    s = torch.tensor(speakers)
    return SpeakerRef(torch.stack([e[s == k].mean(0) for k in range(n_speakers)]))


def prompt_preference(enc: SpeakerEncoder, segments: list[list[np.ndarray]], prompts: list[list[np.ndarray]], speakers: list[list[int]]) -> float:
    """Fraction of turns whose speaker embedding is closer (cosine) to its own speaker's voice prompt than to every
    other prompt of the same script (the paper's SIM, Sec. 3, made relative: a turn in the wrong voice counts 0).

    segments[d] the turns of script d, prompts[d] its voice prompts (script speaker k -> prompts[d][k]), speakers[d]
    the script speaker of each turn. Empty turns count as failures."""
    hits, n = 0, 0
    for segs, pr, spk in zip(segments, prompts, speakers):
        p = F.normalize(enc.embeddings(pr), dim=-1)  # (K, 64)
        for s, k in zip(segs, spk):
            n += 1
            if len(s) == 0 or len(pr) < 2:
                continue
            sims = p @ F.normalize(enc.embeddings([s]), dim=-1)[0]  # (K,)
            others = torch.cat([sims[:k], sims[k + 1 :]])
            hits += int(bool((sims[k] > others).all()))
    return hits / max(1, n)


def turn_accuracy(enc: SpeakerEncoder, segments: list[list[np.ndarray]], intended: list[list[int]]) -> float:
    """Fraction of scripts whose segment count equals the line count and whose every segment is classified as its speaker."""
    ok = 0
    for segs, spk in zip(segments, intended):
        if len(segs) == len(spk) and all(len(s) > 0 for s in segs) and enc.classify(segs) == spk:
            ok += 1
    return ok / max(1, len(segments))
