"""Speech data for VibeVoice at CPU scale: a multi-speaker corpus synthesized locally with espeak-ng.

The paper (VibeVoice Technical Report, arXiv 2508.19205, Sec. 2-3) trains on large podcast-style
corpora; here speakers are espeak-ng voices (voice variant x pitch x rate), sentences come from a small
grammar with a hash-based held-out split, audio is resampled to 24 kHz and loudness-normalized,
phoneme transcriptions are espeak-ng's IPA output, and multi-turn dialogues ("Speaker k: text" scripts)
are assembled from single utterances with natural pauses between turns. Every synthesized utterance is
cached on disk (one .npy + one .json per utterance) so repeated runs do not call espeak-ng again.

A user's own data: `load_folder(path)` reads `name.wav` + `name.txt` pairs (speaker = subfolder name,
or 0 when the files sit in `path` itself).
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import random
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from sherman.core.common import ShermanError
from sherman.speech.dsp import SAMPLE_RATE, loudness_normalize, read_wav, resample, trim_silence


@dataclass(frozen=True)
class Voice:
    """One espeak-ng speaker: base voice + variant, pitch and speaking rate."""

    voice: str = "en-us"
    """espeak-ng voice name (`-v`)."""
    variant: str = ""
    """Voice variant appended as `voice+variant` (e.g. f3, m2, klatt); empty = none."""
    pitch: int = 50
    """espeak-ng pitch 0-99 (`-p`)."""
    rate: int = 175
    """Words per minute (`-s`)."""

    @property
    def espeak_name(self) -> str:
        return f"{self.voice}+{self.variant}" if self.variant else self.voice


VOICES: tuple[Voice, ...] = (
    Voice("en-us", "m3", 35, 170),
    Voice("en-us", "f3", 70, 180),
    Voice("en-gb", "m1", 50, 160),
    Voice("en-gb", "f2", 85, 190),
    Voice("en-us", "m7", 20, 150),
    Voice("en-gb", "f4", 60, 200),
)
"""Default speakers: distinct variant, pitch and rate each."""

_DET = ["the", "a", "my", "our", "this"]
_ADJ = ["red", "small", "happy", "quiet", "bright", "old", "green", "fast"]
_NOUN = ["cat", "dog", "bird", "car", "man", "girl", "boat", "tree", "fish", "horse"]
_VERB = ["sees", "likes", "finds", "moves", "hears", "paints", "wants", "holds"]
_END = ["today", "again", "at home", "by the sea", "in the park", "now", "slowly", "every day"]


def make_sentence(rng: random.Random) -> str:
    """One sentence from a small grammar: DET ADJ NOUN VERB DET NOUN END (3840 x more combinations)."""
    return f"{rng.choice(_DET)} {rng.choice(_ADJ)} {rng.choice(_NOUN)} {rng.choice(_VERB)} {rng.choice(_DET)} {rng.choice(_NOUN)} {rng.choice(_END)}"


def is_heldout(text: str, frac: float = 0.15) -> bool:
    """Deterministic held-out split by sentence hash: the same sentence is always on the same side."""
    return int(hashlib.sha1(text.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF < frac


def phoneme_units(ipa: str) -> list[str]:
    """IPA string -> list of phoneme symbols: one symbol per character, stress marks and spaces dropped."""
    return [c for c in ipa if not c.isspace() and c not in "ˈˌ_-"]


@functools.lru_cache(maxsize=8192)
def text_to_ipa(text: str, voice: str = "en-us") -> str:
    """IPA of `text` from espeak-ng: one symbol per character as in `phoneme_units`, stress and syllable marks dropped,
    words (and espeak's clause breaks) separated by single spaces. The phoneme text input of the VibeVoice LM."""
    out = _espeak(["-q", "--ipa", "-v", voice, text]).stdout
    return " ".join("".join(c for c in out if c not in "ˈˌ_-").split())


def default_cache_dir() -> Path:
    return Path(os.environ.get("SHERMAN_CACHE", Path.home() / ".cache" / "sherman")) / "speech"


def espeak_available() -> bool:
    return shutil.which("espeak-ng") is not None


def _espeak(args: list[str]) -> subprocess.CompletedProcess:
    if not espeak_available():
        raise ShermanError("espeak-ng is not installed (Debian/Ubuntu: apt-get install espeak-ng)")
    return subprocess.run(["espeak-ng", *args], capture_output=True, text=True, check=True, timeout=60)


def synthesize_espeak(text: str, voice: Voice, cache_dir: Path | None = None) -> tuple[np.ndarray, str]:
    """espeak-ng audio (24 kHz, trimmed, loudness-normalized float32) and its IPA transcription; cached on disk."""
    cache_dir = Path(cache_dir or default_cache_dir())
    key = hashlib.sha1(f"{voice}|{text}|{SAMPLE_RATE}|v1".encode()).hexdigest()[:20]
    npy, meta = cache_dir / f"{key}.npy", cache_dir / f"{key}.json"
    if npy.is_file() and meta.is_file():
        return np.load(npy), json.loads(meta.read_text())["ipa"]
    cache_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as td:
        wav = Path(td) / "u.wav"
        _espeak(["-v", voice.espeak_name, "-p", str(voice.pitch), "-s", str(voice.rate), "-w", str(wav), text])
        audio, sr = read_wav(wav)
    ipa = _espeak(["-q", "--ipa", "-v", voice.voice, text]).stdout.strip().replace("\n", " ")
    audio = loudness_normalize(trim_silence(resample(audio, sr, SAMPLE_RATE)))
    tmp = cache_dir / f"{key}.tmp.npy"
    np.save(tmp, audio)
    os.replace(tmp, npy)
    meta.write_text(json.dumps({"text": text, "voice": voice.espeak_name, "pitch": voice.pitch, "rate": voice.rate, "ipa": ipa}))
    return audio, ipa


@dataclass
class Utterance:
    text: str
    """Orthographic text."""
    phonemes: list[str]
    """Phoneme symbols (see `phoneme_units`)."""
    speaker: int
    """Speaker index (into the corpus' voices)."""
    audio: np.ndarray = field(repr=False)
    """float32 mono 24 kHz waveform."""


@dataclass
class Corpus:
    train: list[Utterance]
    test: list[Utterance]
    n_speakers: int


@dataclass
class CorpusConfig:
    n_speakers: int = 4
    """How many of `VOICES` to use."""
    utts_per_speaker: int = 24
    """Training utterances synthesized per speaker."""
    test_per_speaker: int = 4
    """Held-out utterances per speaker (sentences from the held-out hash split)."""
    seed: int = 0
    """Sentence sampling seed."""
    cache_dir: str = ""
    """Where synthesized audio is cached; empty = ~/.cache/sherman/speech (or $SHERMAN_CACHE/speech)."""


def build_corpus(cfg: CorpusConfig) -> Corpus:
    """Synthesize (or load from cache) the train / held-out utterances of `cfg.n_speakers` voices."""
    if not 1 <= cfg.n_speakers <= len(VOICES):
        raise ShermanError(f"n_speakers must be in 1..{len(VOICES)}, got {cfg.n_speakers}")
    rng = random.Random(cfg.seed)
    cache = Path(cfg.cache_dir) if cfg.cache_dir else None
    train, test = [], []
    for spk in range(cfg.n_speakers):
        for want, split, out in ((cfg.utts_per_speaker, False, train), (cfg.test_per_speaker, True, test)):
            got = 0
            while got < want:
                text = make_sentence(rng)
                if is_heldout(text) != split:
                    continue
                audio, ipa = synthesize_espeak(text, VOICES[spk], cache)
                out.append(Utterance(text, phoneme_units(ipa), spk, audio))
                got += 1
    return Corpus(train, test, cfg.n_speakers)


def load_folder(path: str | Path) -> Corpus:
    """User data: `*.wav` with a same-named `*.txt` transcript; speakers = subfolders (or one speaker).

    Phonemes come from espeak-ng (en-us) when it is installed, otherwise they are empty.
    """
    root = Path(path)
    if not root.is_dir():
        raise ShermanError(f"not a folder: {root}")
    wavs = sorted(root.rglob("*.wav"))
    if not wavs:
        raise ShermanError(f"no .wav files under {root}")
    names = sorted({w.parent.name for w in wavs if w.parent != root})
    utts = []
    for w in wavs:
        txt = w.with_suffix(".txt")
        if not txt.is_file():
            raise ShermanError(f"missing transcript {txt} for {w}")
        text = txt.read_text().strip()
        audio, sr = read_wav(w)
        ipa = _espeak(["-q", "--ipa", "-v", "en-us", text]).stdout.strip() if espeak_available() else ""
        spk = names.index(w.parent.name) if w.parent != root else 0
        utts.append(Utterance(text, phoneme_units(ipa), spk, loudness_normalize(resample(audio, sr, SAMPLE_RATE))))
    test = [u for u in utts if is_heldout(u.text)]
    train = [u for u in utts if not is_heldout(u.text)] or utts
    return Corpus(train, test, max(1, len(names)))


# ---------------------------------------------------------------- scripts and dialogues

_LINE = re.compile(r"^\s*Speaker\s+(\d+)\s*:\s*(.*\S)\s*$")


def parse_script(text: str) -> list[tuple[int, str]]:
    """'Speaker k: text' lines -> [(k, text)]; blank lines are skipped. Clear ShermanError on anything else."""
    turns = []
    for no, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        m = _LINE.match(line)
        if m is None:
            raise ShermanError(f"script line {no} is not of the form 'Speaker <k>: <text>': {line.strip()[:60]!r}")
        turns.append((int(m.group(1)), m.group(2)))
    if not turns:
        raise ShermanError("script is empty: expected lines of the form 'Speaker <k>: <text>'")
    return turns


def format_script(turns: list[tuple[int, str]]) -> str:
    return "\n".join(f"Speaker {k}: {t}" for k, t in turns)


@dataclass
class Dialogue:
    turns: list[Utterance]
    """One utterance per script line, in order."""
    gaps: list[int]
    """Silence (samples) appended after each turn: natural pauses, the last one included."""

    def speakers(self) -> list[int]:
        """Corpus speaker ids in order of first appearance: script speaker k is speakers()[k]."""
        return list(dict.fromkeys(u.speaker for u in self.turns))

    def script(self) -> str:
        """The 'Speaker k: text' script with local speaker numbers (0 = first to speak)."""
        local = {s: k for k, s in enumerate(self.speakers())}
        return format_script([(local[u.speaker], u.text) for u in self.turns])

    def audio(self) -> np.ndarray:
        parts = []
        for u, g in zip(self.turns, self.gaps):
            parts += [u.audio, np.zeros(g, np.float32)]
        return np.concatenate(parts)


def make_dialogues(utts: list[Utterance], n: int, max_turns: int, rng: random.Random, n_speakers: int = 2,
                   gap_s: tuple[float, float] = (0.15, 0.5)) -> list[Dialogue]:
    """`n` dialogues of 2..max_turns turns alternating between `n_speakers` randomly chosen speakers."""
    by_spk: dict[int, list[Utterance]] = {}
    for u in utts:
        by_spk.setdefault(u.speaker, []).append(u)
    spks = sorted(by_spk)
    if len(spks) < n_speakers:
        raise ShermanError(f"need utterances of {n_speakers} speakers, have {len(spks)}")
    out = []
    for _ in range(n):
        who = rng.sample(spks, n_speakers)
        turns = [rng.choice(by_spk[who[i % n_speakers]]) for i in range(rng.randint(2, max(2, max_turns)))]
        gaps = [int(rng.uniform(*gap_s) * SAMPLE_RATE) for _ in turns]
        out.append(Dialogue(turns, gaps))
    return out
