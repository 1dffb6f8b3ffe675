"""`sherman tts`: synthesize a 'Speaker k: text' script with VibeVoice voice prompts (`sherman.speech.synthesize`).

    sherman tts script.txt --voices a.wav b.wav --out out.wav [--model runs/vibevoice/model.pt]

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


def main(argv: list[str]) -> int:
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
