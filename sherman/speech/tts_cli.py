"""`sherman tts`: synthesize a 'Speaker k: text' script with VibeVoice voice prompts (`sherman.speech.synthesize`).

    sherman tts script.txt --voices a.wav b.wav --out out.wav [--model runs/vibevoice/model.pt]
    sherman tts train-tokenizer [--budget quick] [--root DIR] [--lms]   (train once; `sherman reproduce vibevoice` reuses it)

Only the options live here (no torch at import), so `--help` and flag errors only parse.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from sherman.core.config import Positional, check, parse
from sherman.core.errors import ShermanError

DEFAULT_MODEL = Path("runs/vibevoice/model.pt")
"""Where `sherman reproduce vibevoice` saves the trained bundle."""


@dataclass
class TTSArgs:
    script: Positional[str]
    """Text file with one 'Speaker k: text' line per turn (k = 0, 1, ...)."""
    voices: list[str] = field(default_factory=list)
    """One WAV voice prompt per speaker, Speaker 0 first (any sample rate; resampled to 24 kHz)."""
    out: str = "out.wav"
    """Output WAV (24 kHz, 16-bit mono)."""
    model: str = str(DEFAULT_MODEL)
    """Trained VibeVoice bundle, as written by `sherman reproduce vibevoice`."""
    cfg_scale: float = 1.3
    """Classifier-free guidance scale (1 = no guidance)."""
    steps: int = 10
    """DPM-Solver++ steps per acoustic latent."""
    seed: int = 0
    """Sampling seed of the diffusion noise."""

    def __post_init__(self) -> None:
        check(len(self.voices) >= 1, "voices", "give one WAV per speaker: --voices a.wav [b.wav ...]")
        check(self.steps >= 1, "steps", f"must be >= 1, got {self.steps}")
        check(self.cfg_scale >= 0, "cfg_scale", f"must be >= 0, got {self.cfg_scale}")


BUDGET_NAMES = ("smoke", "quick", "full")
"""Budgets of `sherman reproduce vibevoice` (`sherman.experiments.vibevoice.BUDGETS`)."""


@dataclass
class TrainTokenizerArgs:
    budget: str = "quick"
    """Budget of `sherman reproduce vibevoice` whose tokenizers to train (smoke, quick, full); the same corpus and configs."""
    root: str = ""
    """Root of the cached-artifact directories; empty = $SHERMAN_ARTIFACTS, else ~/.cache/sherman/speech/artifacts."""
    lms: bool = False
    """Also train the two LMs (diffusion head, regression baseline) over the tokenizers."""
    threads: int = 1
    """torch CPU threads."""

    def __post_init__(self) -> None:
        check(self.budget in BUDGET_NAMES, "budget", f"must be one of {', '.join(BUDGET_NAMES)}, got {self.budget!r}")
        check(self.threads >= 1, "threads", f"must be >= 1, got {self.threads}")


def train_tokenizer_main(argv: list[str]) -> int:
    a = parse(TrainTokenizerArgs, argv, prog="sherman tts train-tokenizer",
              description="Train the VibeVoice acoustic + semantic tokenizers (and with --lms the LMs) of a budget into cached-artifact "
              "directories keyed by a hash of config + data; a later run (or `sherman reproduce vibevoice`) reuses them when the hash "
              "matches and retrains them when stale.")
    import torch

    from sherman.experiments.vibevoice import stage_dirs, train_stages

    torch.set_num_threads(a.threads)
    root = Path(a.root) if a.root else None
    status = train_stages(a.budget, root, lms=a.lms)
    dirs = stage_dirs(a.budget, root)
    for k, v in status.items():
        print(f"{k}: {v} -> {dirs[k]}")
    return 0


def main(argv: list[str]) -> int:
    if argv and argv[0] == "train-tokenizer":
        return train_tokenizer_main(argv[1:])
    a = parse(TTSArgs, argv, prog="sherman tts", description=__doc__)
    from sherman.speech.data import parse_script
    from sherman.speech.dsp import SAMPLE_RATE, write_wav
    from sherman.speech.synthesize import SynthConfig, load_bundle, load_voice, synthesize

    sp = Path(a.script)
    if not sp.is_file():
        raise ShermanError(f"script file not found: {sp}")
    turns = parse_script(sp.read_text())
    voices = [load_voice(v) for v in a.voices]
    b = load_bundle(a.model)
    audio, spans = synthesize(b, turns, voices, SynthConfig(cfg_scale=a.cfg_scale, steps=a.steps, seed=a.seed))
    write_wav(a.out, audio)
    print(f"wrote {a.out}: {len(audio) / SAMPLE_RATE:.2f} s, {len(spans)} turns")
    return 0
