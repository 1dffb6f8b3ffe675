"""Multi-speaker synthesis: a "Speaker k: text" script + one voice prompt per speaker -> 24 kHz WAV.

VibeVoice (arXiv 2508.19205, Sec. 2.3) generates speech latent by latent: at each step the LM's hidden
state conditions the diffusion head (DPM-Solver++, classifier-free guidance against the negative branch),
the new latent is decoded to 3200 samples by the streaming acoustic decoder, the semantic tokenizer encodes
those samples (streaming), and acoustic + semantic embeddings are fed back to the LM. The LM's control-token
head decides when a turn ends (`<speech_end>` vs another `<speech_diffusion>`). The whole script is one
pass over one KV cache, as far as `max_seq_len` allows. Longer scripts (long-form: several minutes, up to 4
speakers in VibeVoice's script format) are synthesized in one call by `stream_long`: consecutive lines are grouped
into windows that each fit the context (every window repeats the voice prompts and holds its own lines), and the
windows stream one after another, chunk by chunk; the paper's 64k-token context does the same in one window.

The loop is latent-valued, so it does not use `core.generate` (a token sampler); it uses the core
Transformer, its KV cache and its attention call site.

    sherman tts script.txt --voices a.wav b.wav --out out.wav [--model runs/vibevoice/model.pt]   (`speech/tts_cli.py`)
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from sherman.core.common import ShermanError
from sherman.speech.data import parse_script
from sherman.speech.dsp import SAMPLE_RATE, loudness_normalize, read_wav, resample, trim_silence
from sherman.speech.model import NEXT_TEXT, VibeVoiceConfig, VibeVoiceLM, build_prefix, build_sequence, turn_header
from sherman.speech.tokenizer import AcousticTokenizer, SemanticTokenizer, TokenizerConfig


@dataclass
class SynthConfig:
    cfg_scale: float = 1.3
    """Classifier-free guidance scale (1.0 = unguided; the negative branch is then skipped)."""
    steps: int = 10
    """DPM-Solver++ steps per latent."""
    max_turn_frames: int = 40
    """Hard cap on latent frames per script line (40 frames = 5.3 s)."""
    min_turn_frames: int = 2
    """A turn may not end before this many frames."""
    max_word_frames: int = 12
    """Word-interleaved models (`VibeVoiceConfig.interleave`): the next word is fed after this many frames of one word
    even if the LM has not asked for it (12 frames = 1.6 s)."""
    seed: int = 0
    """Noise seed."""


@dataclass
class Bundle:
    acoustic: AcousticTokenizer
    semantic: SemanticTokenizer
    lm: VibeVoiceLM
    phonemes: list[str]
    """Phoneme inventory of the semantic tokenizer's ASR proxy."""


def save_bundle(path: str | Path, b: Bundle) -> Path:
    """Atomic save of both tokenizers, the LM and their configs."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    blob = {
        "acoustic_cfg": {**asdict(b.acoustic.cfg), "ratios": list(b.acoustic.cfg.ratios)},
        "semantic_cfg": {**asdict(b.semantic.cfg), "ratios": list(b.semantic.cfg.ratios)},
        "lm_cfg": b.lm.cfg.to_dict(),
        "phonemes": list(b.phonemes),
        "semantic_dec": [b.semantic.decoder.cfg.dim, b.semantic.decoder.cfg.n_layers],
        "acoustic": b.acoustic.state_dict(),
        "semantic": b.semantic.state_dict(),
        "lm": b.lm.state_dict(),
    }
    from sherman.core.checkpoint import save_tree_file

    return save_tree_file(path, blob)  # safetensors + JSON header (no pickle), atomic


def load_bundle(path: str | Path) -> Bundle:
    path = Path(path)
    if not path.is_file():
        raise ShermanError(f"no trained VibeVoice model at {path}: run `sherman reproduce vibevoice` (it writes model.pt) or pass --model")
    try:
        from sherman.core.checkpoint import load_tree_file

        blob = load_tree_file(path)
        ac = AcousticTokenizer(TokenizerConfig(**{**blob["acoustic_cfg"], "ratios": tuple(blob["acoustic_cfg"]["ratios"])}))
        ac.load_state_dict(blob["acoustic"])
        dim, layers = blob["semantic_dec"]
        sc = SemanticTokenizer(TokenizerConfig(**{**blob["semantic_cfg"], "ratios": tuple(blob["semantic_cfg"]["ratios"])}),
                               len(blob["phonemes"]), dim, layers)
        sc.load_state_dict(blob["semantic"])
        lm = VibeVoiceLM(VibeVoiceConfig(**blob["lm_cfg"]))
        lm.load_state_dict(blob["lm"])
    except ShermanError:
        raise
    except Exception as e:
        raise ShermanError(f"cannot load VibeVoice model {path}: {type(e).__name__}: {e}") from e
    for m in (ac, sc, lm):
        m.eval()
        m.requires_grad_(False)
    return Bundle(ac, sc, lm, list(blob["phonemes"]))


@torch.no_grad()
def voice_prompt(b: Bundle, audio: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """24 kHz waveform -> normalized (latents, semantic) of at most `max_prompt_frames` frames."""
    hop = b.acoustic.cfg.hop
    n = min(math.ceil(len(audio) / hop), b.lm.cfg.max_prompt_frames)
    x = torch.zeros(1, n * hop)
    seg = torch.from_numpy(audio[: n * hop])
    x[0, : len(seg)] = seg
    return b.lm.norm_lat(b.acoustic.encode(x)[0]), b.lm.norm_sem(b.semantic.encode(x)[0])


def load_voice(path: str | Path) -> np.ndarray:
    """Read a voice-prompt WAV: mono, resampled to 24 kHz, trimmed, loudness-normalized."""
    audio, sr = read_wav(path)
    if len(audio) < sr // 10:
        raise ShermanError(f"voice prompt {path} is shorter than 0.1 s")
    return loudness_normalize(trim_silence(resample(audio, sr, SAMPLE_RATE)))


def _check_speakers(turns: list[tuple[int, str]], voices: list) -> None:
    for k, _ in turns:
        if not 0 <= k < len(voices):
            raise ShermanError(f"script uses Speaker {k} but only {len(voices)} voice prompt(s) were given (speakers 0..{len(voices) - 1})")


def positions_needed(b: Bundle, prompts: list[tuple[torch.Tensor, torch.Tensor]], turns: list[tuple[int, str]], cfg: SynthConfig) -> int:
    """Worst-case sequence length of one pass: prefix (voice prompts + script) + per line a header, the frame cap, <speech_end>."""
    tok = b.lm.tok
    words = sum(len(tok.encode(w)) + 1 for _, t in turns for w in t.split(" ")) if b.lm.cfg.interleave == "words" else 0
    return len(build_prefix(tok, prompts, turns).ids) + len(turns) * (len(tok.encode(turn_header(9))) + cfg.max_turn_frames + 1) + words


@torch.no_grad()
def stream(b: Bundle, turns: list[tuple[int, str]], voices: list[np.ndarray], cfg: SynthConfig,
           prompts: list[tuple[torch.Tensor, torch.Tensor]] | None = None) -> Iterator[tuple[int, np.ndarray]]:
    """Yield (turn index, 3200-sample chunk) latent by latent for a parsed script and 24 kHz voice prompts, in one
    pass over one KV cache (`prompts`: the voices already encoded by `voice_prompt`)."""
    lm, tok = b.lm, b.lm.tok
    _check_speakers(turns, voices)
    turns = [(k, lm.script_text(t)) for k, t in turns]
    prompts = prompts if prompts is not None else [voice_prompt(b, v) for v in voices]
    guided = lm.cfg.head == "diffusion" and cfg.cfg_scale != 1.0
    pos_prefix = build_prefix(tok, prompts, turns)
    budget = positions_needed(b, prompts, turns, cfg)
    if budget > lm.cfg.max_seq_len:
        raise ShermanError(f"script too long for one pass: needs up to {budget} positions, the model's context is {lm.cfg.max_seq_len}")
    gen = torch.Generator().manual_seed(cfg.seed)
    pos_cache = lm.lm.make_cache(1, lm.cfg.max_seq_len)
    neg_cache = lm.lm.make_cache(1, lm.cfg.max_seq_len) if guided else None
    p_id, end_id = tok.token_id("<speech_diffusion>"), tok.token_id("<speech_end>")

    def feed(cache, x):  # x (1, T, C) -> last hidden (1, C), last logits (V,)
        out = lm.lm(None, embeds=x, cache=cache)
        return out.hidden[:, -1], out.logits[0, -1]

    x, _ = lm.embed([pos_prefix])
    h_pos, _ = feed(pos_cache, x)
    if guided:
        feed(neg_cache, lm.token_embed(torch.tensor([tok.encode("<bos>")])))
    interleaved = lm.cfg.interleave == "words"
    for ti, (k, text) in enumerate(turns):
        h_pos, logits = feed(pos_cache, lm.token_embed(torch.tensor([tok.encode(turn_header(k))])))
        h_neg = feed(neg_cache, lm.token_embed(torch.tensor([tok.encode(turn_header(k, True))])))[0] if guided else None
        words = text.split(" ") if interleaved else []
        reader = WordReader(lm, words, cfg.max_word_frames)
        dec_state: dict = {}
        sem_state: dict = {}
        for f in range(cfg.max_turn_frames):
            if interleaved:
                h_pos, logits = reader.advance(lambda e: feed(pos_cache, e), h_pos, logits)
            if f >= cfg.min_turn_frames and reader.done and logits[end_id] > logits[p_id]:
                break
            z = lm.head.sample(h_pos, h_neg, cfg_scale=cfg.cfg_scale, steps=cfg.steps, generator=gen)  # (1, latent_dim)
            chunk = b.acoustic.decode(lm.denorm_lat(z)[:, None], dec_state)  # (1, hop)
            s = lm.norm_sem(b.semantic.encode(chunk, sem_state)[:, 0])  # (1, semantic_dim)
            yield ti, chunk[0].numpy()
            e = lm.speech_embed(z, s)[:, None]  # (1, 1, C)
            h_pos, logits = feed(pos_cache, e)
            reader.frame()
            if guided:
                h_neg = feed(neg_cache, e)[0]
        end = lm.token_embed(torch.tensor([[end_id]]))
        feed(pos_cache, end)
        if guided:
            feed(neg_cache, end)


class WordReader:
    """The script side of the word-interleaved layout at synthesis: before each frame, while words remain and the LM's
    control head prefers `<next_text>` to another `<speech_diffusion>` (or `max_word_frames` frames of the current
    word have passed), feed `<next_text>` + the next word. The first word is read before the first frame. A turn may
    only end (`done`) once every word is read. With no words (the paper's layout) it does nothing and is always done."""

    def __init__(self, lm: VibeVoiceLM, words: list[str], max_word_frames: int):
        self.lm, self.words, self.max_word_frames = lm, words, max_word_frames
        self.read, self.since = 0, 0
        if words:
            self.next_id, self.p_id = lm.tok.token_id(NEXT_TEXT), lm.tok.token_id("<speech_diffusion>")

    @property
    def done(self) -> bool:
        return self.read == len(self.words)

    def advance(self, feed, h: torch.Tensor, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Feed words as the LM asks (`feed`: embeds (1, T, C) -> (last hidden, last logits)); returns the new state."""
        while not self.done and (self.read == 0 or self.since >= self.max_word_frames or logits[self.next_id] > logits[self.p_id]):
            ids = self.lm.tok.encode(NEXT_TEXT + self.words[self.read])
            h, logits = feed(self.lm.token_embed(torch.tensor([ids])))
            self.read, self.since = self.read + 1, 0
        return h, logits

    def frame(self) -> None:
        self.since += 1


def windows(b: Bundle, prompts: list[tuple[torch.Tensor, torch.Tensor]], turns: list[tuple[int, str]], cfg: SynthConfig) -> list[tuple[int, int]]:
    """Split a script into [start, end) runs of consecutive lines, greedily as long as each fits one pass."""
    out, start = [], 0
    while start < len(turns):
        end = start + 1
        if positions_needed(b, prompts, turns[start:end], cfg) > b.lm.cfg.max_seq_len:
            raise ShermanError(f"line {start + 1} alone does not fit the model's context ({b.lm.cfg.max_seq_len} positions): shorten it "
                               f"or lower max_turn_frames")
        while end < len(turns) and positions_needed(b, prompts, turns[start : end + 1], cfg) <= b.lm.cfg.max_seq_len:
            end += 1
        out.append((start, end))
        start = end
    return out


@torch.no_grad()
def stream_long(b: Bundle, turns: list[tuple[int, str]], voices: list[np.ndarray], cfg: SynthConfig) -> Iterator[tuple[int, np.ndarray]]:
    """Long-form streaming: (turn index, chunk) over windows of lines that each fit the context (`windows`).

    A script that fits is one window, i.e. exactly `stream`. Window w draws its noise from seed `cfg.seed + w`."""
    _check_speakers(turns, voices)
    read = [(k, b.lm.script_text(t)) for k, t in turns]  # as the LM reads them (characters or IPA): for sizing the windows
    prompts = [voice_prompt(b, v) for v in voices]
    for w, (start, end) in enumerate(windows(b, prompts, read, cfg)):
        wcfg = SynthConfig(**{**asdict(cfg), "seed": cfg.seed + w})
        for ti, chunk in stream(b, turns[start:end], voices, wcfg, prompts):
            yield start + ti, chunk


def synthesize(b: Bundle, script: str | list[tuple[int, str]], voices: list[np.ndarray], cfg: SynthConfig | None = None) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """Whole-script synthesis in one call (long scripts in context-sized windows, `stream_long`) ->
    (24 kHz float32 audio, [(start, end) sample span of each turn])."""
    turns = parse_script(script) if isinstance(script, str) else script
    chunks: list[np.ndarray] = []
    spans = [[0, 0] for _ in turns]
    n = 0
    for ti, c in stream_long(b, turns, voices, cfg or SynthConfig()):
        if spans[ti][1] == 0:
            spans[ti][0] = n
        chunks.append(c)
        n += len(c)
        spans[ti][1] = n
    audio = np.concatenate(chunks) if chunks else np.zeros(0, np.float32)
    return audio.astype(np.float32), [(s, e) for s, e in spans]


@torch.no_grad()
def _teacher_forced_latents(b: Bundle, text: str, voice: np.ndarray, audio: np.ndarray, cfg: SynthConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """Latents drawn given the real prefix (guidance off) and the real latents: both (n, latent_dim), normalized. The
    paper's layout is one full forward; a word-interleaved model runs frame by frame over the real frames and reads the
    words when its control head asks (`WordReader`), as at synthesis."""
    lm, hop = b.lm, b.acoustic.cfg.hop
    n = math.ceil(len(audio) / hop)
    x = torch.zeros(1, n * hop)
    x[0, : len(audio)] = torch.from_numpy(audio)
    lat, sem = lm.norm_lat(b.acoustic.encode(x)[0]), lm.norm_sem(b.semantic.encode(x)[0])  # (n, latent_dim), (n, semantic_dim)
    gen = torch.Generator().manual_seed(cfg.seed)
    turns = [(0, lm.script_text(text))]
    if lm.cfg.interleave == "words":
        cache = lm.lm.make_cache(1, lm.cfg.max_seq_len)

        def feed(e):  # (1, T, C) -> last hidden (1, C), last logits (V,)
            out = lm.lm(None, embeds=e, cache=cache)
            return out.hidden[:, -1], out.logits[0, -1]

        feed(lm.embed([build_prefix(lm.tok, [voice_prompt(b, voice)], turns)])[0])
        h, logits = feed(lm.token_embed(torch.tensor([lm.tok.encode(turn_header(0))])))
        reader, cond = WordReader(lm, turns[0][1].split(" "), cfg.max_word_frames), []
        for f in range(n):
            h, logits = reader.advance(feed, h, logits)
            cond.append(h)
            h, logits = feed(lm.speech_embed(lat[f : f + 1], sem[f : f + 1])[:, None])
            reader.frame()
        cond = torch.cat(cond)  # (n, C)
    else:
        seq = build_sequence(lm.tok, [voice_prompt(b, voice)], turns, [(lat, sem)])
        emb, ids = lm.embed([seq])
        hidden = lm.lm(None, embeds=emb).hidden  # (1, L, C)
        target = torch.tensor(seq.diff, dtype=torch.bool)[None]  # (1, L)
        cond = hidden[:, :-1][target[:, 1:]]  # (n, C): the state before each target latent
    z = lm.head.sample(cond, None, cfg_scale=1.0, steps=cfg.steps, generator=gen)  # (n, latent_dim)
    return z, lat


@torch.no_grad()
def teacher_forced(b: Bundle, text: str, voice: np.ndarray, audio: np.ndarray, cfg: SynthConfig | None = None) -> np.ndarray:
    """Diagnostic: one line spoken by `voice`, each speech latent drawn from the head given the TRUE prefix (the real
    utterance `audio`'s latents and semantic features before it, one full forward), decoded offline to `len(audio)`
    samples. Its PER beside free-running `synthesize` separates what the LM models per frame from what goes wrong
    when it feeds on its own output (exposure bias). Guidance is off (the negative branch is not built): cfg_scale 1."""
    z, _ = _teacher_forced_latents(b, text, voice, audio, cfg or SynthConfig())
    return b.acoustic.decode(b.lm.denorm_lat(z)[None])[0].numpy()[: len(audio)]


@torch.no_grad()
def script_reliance(b: Bundle, text: str, other_text: str, voice: np.ndarray, audio: np.ndarray, cfg: SynthConfig | None = None) -> tuple[float, float]:
    """Diagnostic: mean squared error (normalized latent units) of teacher-forced latents against the real ones, given
    the right script line `text` and given another line `other_text` (same audio prefix, same noise). Equal errors
    mean the LM predicts speech from the speech before it and does not read the script."""
    cfg = cfg or SynthConfig()
    right, lat = _teacher_forced_latents(b, text, voice, audio, cfg)
    wrong, _ = _teacher_forced_latents(b, other_text, voice, audio, cfg)
    return float(((right - lat) ** 2).mean()), float(((wrong - lat) ** 2).mean())
