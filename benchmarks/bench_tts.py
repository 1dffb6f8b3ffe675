"""Real-time factor (RTF = compute seconds / audio seconds; < 1 is faster than real time) on CPU.

Ours beside a peer, measured in one run:
  - acoustic tokenizer encode / decode (offline and streaming, latent by latent) vs Encodec 24 kHz
    (Hugging Face `transformers` EncodecModel, default 24 kHz config, random weights: speed does not depend on them);
  - synthesis of a 2-speaker script (streamed, DPM-Solver++ with CFG) vs espeak-ng synthesizing the same text.

    python benchmarks/bench_tts.py [--model runs/vibevoice/model.pt] [--seconds 10] [--threads 1]
Without --model, untrained modules of the experiment's quick size are timed (same compute).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import tempfile
import time

import _bench  # (this checkout's sherman first on sys.path)
import numpy as np
import torch

from sherman.speech.diffusion import DiffusionConfig
from sherman.speech.dsp import SAMPLE_RATE
from sherman.speech.model import VibeVoiceConfig, VibeVoiceLM
from sherman.speech.synthesize import Bundle, SynthConfig, load_bundle, synthesize
from sherman.speech.tokenizer import AcousticTokenizer, SemanticTokenizer, TokenizerConfig

SCRIPT = "Speaker 0: the red cat sees a small dog today\nSpeaker 1: my old horse likes the green boat again"


def timed(fn, repeat: int = 3) -> float:
    fn()  # warm-up
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def default_bundle() -> Bundle:
    ac = AcousticTokenizer(TokenizerConfig()).eval()
    sc = SemanticTokenizer(TokenizerConfig(vae=False), 40, 64, 2).eval()
    lm = VibeVoiceLM(VibeVoiceConfig(dim=128, n_layers=4, ffn_dim=345, diffusion=DiffusionConfig(hidden=128, layers=4))).eval()
    return Bundle(ac, sc, lm, [str(i) for i in range(40)])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="", help="trained bundle (default: untrained quick-size modules)")
    ap.add_argument("--seconds", type=float, default=10.0, help="audio length for the tokenizer benchmark")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--frames", type=int, default=20, help="latent frames per turn in the synthesis benchmark")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    print(_bench.machine_line(torch.get_num_threads()))
    b = load_bundle(a.model) if a.model else default_bundle()
    hop = b.acoustic.cfg.hop
    n = int(a.seconds * SAMPLE_RATE) // hop * hop
    dur = n / SAMPLE_RATE
    x = 0.1 * torch.randn(1, n)
    rows = []
    with torch.no_grad():
        z = b.acoustic.encode(x)
        ours_enc = timed(lambda: b.acoustic.encode(x)) / dur
        ours_dec = timed(lambda: b.acoustic.decode(z)) / dur

        def stream_dec():
            st: dict = {}
            for i in range(z.shape[1]):
                b.acoustic.decode(z[:, i : i + 1], st)

        ours_sdec = timed(stream_dec, 1) / dur
    try:
        from transformers import EncodecConfig, EncodecModel

        enc = EncodecModel(EncodecConfig()).eval()  # 24 kHz, 75 Hz frames
        with torch.no_grad():
            codes = enc.encode(x[:, None], bandwidth=6.0)
            peer_enc = timed(lambda: enc.encode(x[:, None], bandwidth=6.0)) / dur
            peer_dec = timed(lambda: enc.decode(codes.audio_codes, codes.audio_scales)) / dur
    except ImportError:
        peer_enc = peer_dec = float("nan")
    rows += [("tokenizer encode RTF", ours_enc, "Encodec 24 kHz", peer_enc), ("tokenizer decode RTF (offline)", ours_dec, "Encodec 24 kHz", peer_dec),
             ("tokenizer decode RTF (streaming, per latent)", ours_sdec, "Encodec 24 kHz (offline)", peer_dec)]

    voices = [0.1 * np.random.default_rng(i).standard_normal(3 * hop).astype(np.float32) for i in range(2)]
    cfg = SynthConfig(cfg_scale=1.3, steps=10, max_turn_frames=a.frames, min_turn_frames=a.frames)  # fixed length
    t = time.perf_counter()
    audio, _ = synthesize(b, SCRIPT, voices, cfg)
    ours_syn = (time.perf_counter() - t) / (len(audio) / SAMPLE_RATE)
    peer_syn = float("nan")
    if shutil.which("espeak-ng"):
        with tempfile.TemporaryDirectory() as td:
            t = time.perf_counter()
            for i, line in enumerate(SCRIPT.splitlines()):
                subprocess.run(["espeak-ng", "-w", f"{td}/{i}.wav", line.split(":", 1)[1]], check=True)
            el = time.perf_counter() - t
            import wave

            secs = 0.0
            for i in range(2):
                with wave.open(f"{td}/{i}.wav") as w:
                    secs += w.getnframes() / w.getframerate()
            peer_syn = el / secs
    rows.append(("synthesis RTF (CFG 1.3, 10 solver steps)", ours_syn, "espeak-ng (formant synth)", peer_syn))
    print(f"CPU threads={a.threads}, tokenizer audio {dur:.1f} s, synthesis audio {len(audio) / SAMPLE_RATE:.1f} s")
    print(f"{'measure':<46} {'ours':>9}   {'peer':<26} {'peer RTF':>9} {'ours/peer':>10}")
    for name, ours, peer, pv in rows:
        print(f"{name:<46} {ours:>9.4f}   {peer:<26} {pv:>9.4f} {ours / pv if pv == pv and pv > 0 else float('nan'):>10.2f}")


if __name__ == "__main__":
    main()
