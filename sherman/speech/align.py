"""Frame-level phoneme labels for the VibeVoice LM's alignment auxiliary, by CTC forced alignment.

Why: at the CPU scale the LM can predict the next speech latent from the speech it has already produced (the
training sentences are memorised) and never learns to read the script: with teacher forcing its predictions are
the same under the right and a swapped script (measured on the full budget, see `experiments/vibevoice.py`), so
free-running synthesis says a generic sentence. The auxiliary target here makes the script necessary: from the
hidden state that conditions the latent of frame f, predict which phonemes are spoken in frame f (a multi-hot
over the phoneme inventory). The paper (VibeVoice, arXiv 2508.19205) has no such loss: at its scale the LLM learns
the alignment from data; this is our choice, off by default (`VibeVoiceConfig.align_weight`).

Where the labels come from: a CTC phoneme recognizer (`metrics.PhonemeRecognizer`, trained here on the training
audio with its own seed, separate from the evaluation recognizer) gives per-frame log-probs; Viterbi forced
alignment of the TRUE phoneme sequence through them (`ctc_align`) places every phoneme at its frames; each
phoneme is then assigned to the 7.5 Hz latent frames its span overlaps (`frame_targets`). The aligner only
supplies timing: the labels are the reference phonemes.
"""

from __future__ import annotations

import numpy as np
import torch

from sherman.speech import metrics


def ctc_align(logp: np.ndarray, labels: list[int]) -> list[tuple[int, int]]:
    """Viterbi CTC forced alignment. logp (T, C) log-probs with blank = 0, labels (L,) in 1..C-1 ->
    per label its [first, last] frame. Raises ValueError when T is too short for the labels (CTC needs
    T >= L + number of adjacent repeats)."""
    T, L = logp.shape[0], len(labels)
    if L == 0:
        return []
    ext = [0]
    for y in labels:
        ext += [y, 0]  # blank y1 blank y2 ... yL blank
    S = len(ext)
    neg = -np.inf
    alpha = np.full((T, S), neg)
    back = np.zeros((T, S), dtype=np.int64)  # predecessor state
    alpha[0, 0], alpha[0, 1] = logp[0, 0], logp[0, ext[1]]
    ext_a = np.array(ext)
    skip = np.zeros(S, dtype=bool)  # s may come from s - 2: a label differing from the label before it
    skip[2:] = (ext_a[2:] != 0) & (ext_a[2:] != ext_a[:-2])
    for t in range(1, T):
        prev = alpha[t - 1]
        cand = np.full((3, S), neg)  # from s, s - 1, s - 2
        cand[0] = prev
        cand[1, 1:] = prev[:-1]
        cand[2, 2:] = np.where(skip[2:], prev[:-2], neg)
        k = cand.argmax(0)  # ties: the earliest of s, s - 1, s - 2
        alpha[t] = cand[k, np.arange(S)] + logp[t, ext_a]
        back[t] = np.arange(S) - k
    end = S - 1 if alpha[T - 1, S - 1] >= alpha[T - 1, S - 2] else S - 2
    if not np.isfinite(alpha[T - 1, end]):
        raise ValueError(f"{T} frames cannot align {L} labels")
    states = [end]
    for t in range(T - 1, 0, -1):
        states.append(int(back[t, states[-1]]))
    states.reverse()  # state per frame
    spans: list[list[int]] = [[-1, -1] for _ in labels]
    for t, s in enumerate(states):
        if s % 2 == 1:
            i = s // 2
            spans[i][0] = t if spans[i][0] < 0 else spans[i][0]
            spans[i][1] = t
    return [(a, b) for a, b in spans]


def frame_targets(spans: list[tuple[int, int]], labels: list[int], n_frames: int, n_classes: int, ctc_hop: int, latent_hop: int) -> np.ndarray:
    """Multi-hot (n_frames, n_classes): class labels[i] - 1 is on in every latent frame that the samples of its
    CTC span [first * ctc_hop, (last + 1) * ctc_hop) overlap."""
    out = np.zeros((n_frames, n_classes), dtype=np.float32)
    for (a, b), y in zip(spans, labels):
        lo, hi = a * ctc_hop // latent_hop, ((b + 1) * ctc_hop - 1) // latent_hop
        out[max(0, lo) : min(n_frames, hi + 1), y - 1] = 1.0
    return out


CTC_HOP = 2 * metrics.MEL_HOP
"""Samples per recognizer output frame (log-mel hop, then one stride-2 conv)."""


@torch.no_grad()
def align_spans(rec: metrics.PhonemeRecognizer, audios: list[np.ndarray], phonemes: list[list[int]], batch: int = 16
                ) -> list[list[tuple[int, int]] | None]:
    """Per utterance the [first, last] recognizer frame of each reference phoneme (0-based ids) by `rec`'s forced
    alignment (`ctc_align`), or None for an utterance too short to align."""
    out: list[list[tuple[int, int]] | None] = []
    for lo in range(0, len(audios), batch):
        mel, frames = metrics._mels(audios[lo : lo + batch])
        lp = rec(mel, frames).numpy()  # (B, T', P + 1)
        for j, f in enumerate(frames):
            try:
                out.append(ctc_align(lp[j, : metrics._ctc_frames(f)], [p + 1 for p in phonemes[lo + j]]))
            except ValueError:
                out.append(None)
    return out


@torch.no_grad()
def align_corpus(rec: metrics.PhonemeRecognizer, audios: list[np.ndarray], phonemes: list[list[int]], n_frames: list[int],
                 latent_hop: int, batch: int = 16, spans: list | None = None, n_classes: int | None = None) -> list[np.ndarray]:
    """Per utterance: the (n_frames[i], n_phonemes) multi-hot of `frame_targets` from `rec`'s forced alignment of its
    reference phonemes (0-based ids; `spans`: that alignment already made by `align_spans`, then `rec` may be None and
    `n_classes` is the inventory size). An utterance too short to align gets an all-zero target (counted by the caller)."""
    n_classes = n_classes if n_classes is not None else rec.out.out_features - 1
    spans = spans if spans is not None else align_spans(rec, audios, phonemes, batch)
    out = []
    for i, sp in enumerate(spans):
        if sp is None:
            out.append(np.zeros((n_frames[i], n_classes), dtype=np.float32))
        else:
            out.append(frame_targets(sp, [p + 1 for p in phonemes[i]], n_frames[i], n_classes, CTC_HOP, latent_hop))
    return out


def word_onsets(spans: list[tuple[int, int]] | None, word_lens: list[int], n_frames: int, ctc_hop: int, latent_hop: int) -> list[int]:
    """First latent frame of each word: the frame holding the first sample of its first phoneme's CTC span, in
    [0, n_frames - 1], non-decreasing, the first word at frame 0 (the interleaved layout reads it before any speech).
    `word_lens` are the words' phoneme counts (summing to the number of spans). Without an alignment (None) the
    words are spread over the frames in proportion to their phoneme counts."""
    total = sum(word_lens)
    if spans is not None and len(spans) != total:
        raise ValueError(f"{len(spans)} aligned phonemes for words of {total} phonemes")
    out, k = [], 0
    for n in word_lens:
        if spans is None:
            f = k * n_frames // max(1, total)
        else:
            f = spans[min(k, total - 1)][0] * ctc_hop // latent_hop
        out.append(min(max(f, out[-1] if out else 0), n_frames - 1))
        k += n
    if out:
        out[0] = 0
    return out
