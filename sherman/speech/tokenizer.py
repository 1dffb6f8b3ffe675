"""Speech tokenizers of VibeVoice (arXiv 2508.19205, Sec. 2.1): acoustic sigma-VAE and semantic encoder.

Acoustic tokenizer: a causal convolutional VAE. The encoder stacks stages of depth-wise causal conv
blocks (the paper's "Transformer blocks with depth-wise causal convolutions instead of attention") and
strided causal down-sampling convs with ratios (8, 5, 5, 4, 2, 2) = 3200x, so 24 kHz audio becomes 7.5
latent frames per second; the decoder mirrors it with transposed convs (kernel = stride, so each latent
frame maps to its own 3200 samples) followed by causal conv blocks. With `decoder_head='istft'` the mirror stops at 200
samples per frame and a causal inverse STFT makes the waveform from a predicted log-magnitude and phase (Vocos-style;
at CPU scale it converges faster: round-trip PER 0.68 vs 0.84 at equal CPU). sigma-VAE (LatentLM): the encoder
predicts only the mean mu; the noise scale is not learned but drawn per sample, z = mu + sigma * eps with
sigma ~ N(0, C_sigma) -- a fixed-std noise scale that keeps the latent space from collapsing without a
learned variance. Loss: multi-resolution STFT + log-mel L1 + a small latent penalty ||mu||^2 (the paper
also uses GAN losses; omitted here, documented).

Every conv is causal and carries an explicit streaming state (its last left-context samples), so
decoding latent by latent (`decode(z, state)` chunk after chunk) equals decoding all frames at once.

Semantic tokenizer: the same encoder shape without the VAE (deterministic features), trained with an
ASR proxy -- a small decoder (the core Transformer, fed `embeds=`) predicts the phoneme string from the
7.5 Hz features -- then frozen.
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from sherman.core.model import ModelConfig, RMSNorm, Transformer
from sherman.speech.dsp import mel_l1, multi_res_stft_loss

State = dict  # module -> tensor of left context (streaming)


@dataclass
class TokenizerConfig:
    ratios: tuple[int, ...] = (8, 5, 5, 4, 2, 2)
    """Down-sampling ratio of each encoder stage; their product (3200) is the hop in samples per latent frame."""
    channels: int = 8
    """Channels of the first stage; doubled per stage up to `max_channels`."""
    max_channels: int = 64
    """Channel cap."""
    latent_dim: int = 16
    """Latent channels per frame (the paper uses 64)."""
    kernel: int = 7
    """Depth-wise causal conv kernel of each block."""
    blocks_per_stage: int = 1
    """Conv blocks per stage."""
    full_rate_blocks: bool = False
    """Also put conv blocks in the 24 kHz stage (encoder's first, decoder's last); off to save CPU time."""
    vae: bool = True
    """sigma-VAE acoustic tokenizer (True) or deterministic semantic encoder (False; no decoder)."""
    sigma_std: float = 0.5
    """C_sigma: std of the per-sample noise scale sigma ~ N(0, C_sigma) added to mu during training."""
    latent_weight: float = 1e-3
    """Weight of the latent penalty mean(mu^2)."""
    mel_weight: float = 1.0
    """Weight of the log-mel L1 loss next to the multi-resolution STFT loss."""
    stft_weight: float = 1.0
    """Weight of the multi-resolution STFT loss (spectral convergence + log-magnitude L1)."""
    decoder_head: str = "conv"
    """How the decoder makes the waveform. 'conv': the paper's mirror of the encoder, transposed convs up to 24 kHz
    and a conv to one channel. 'istft': the mirror stops at `istft_hop` samples per frame and a causal inverse STFT
    synthesizes the waveform from a predicted log-magnitude and phase per frame (Vocos-style, arXiv 2306.00814); the
    encoder, the 7.5 Hz latent and the losses are unchanged."""
    istft_hop: int = 200
    """Hop (samples) of the 'istft' head: a product of the leading `ratios` (200 = 8 * 5 * 5: 120 spectral frames/s)."""
    istft_overlap: int = 4
    """n_fft / hop of the 'istft' head (n_fft = 800 samples = 33 ms at 24 kHz with the default hop)."""

    @property
    def hop(self) -> int:
        return math.prod(self.ratios)

    def istft_stages(self) -> int:
        """Number of leading (high-rate) stages the 'istft' head replaces: their ratios multiply to `istft_hop`."""
        for k in range(len(self.ratios) + 1):
            if math.prod(self.ratios[:k]) == self.istft_hop:
                return k
        raise AssertionError(f"istft_hop {self.istft_hop} is not a product of the leading ratios {self.ratios}")

    def stage_channels(self) -> list[int]:
        return [min(self.channels * 2**i, self.max_channels) for i in range(len(self.ratios) + 1)]


class CausalConv1d(nn.Module):
    """Conv1d padded on the left only; with a `state` dict it consumes a stream chunk by chunk.

    Left context P = (k - 1) * d + 1 - s. Offline: zero-pad P on the left. Streaming: prepend the last P
    input samples seen so far (zeros at the start). Identical outputs when chunks are multiples of the stride.
    """

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int = 1, dilation: int = 1, groups: int = 1):
        super().__init__()
        self.conv = nn.Conv1d(c_in, c_out, kernel, stride, dilation=dilation, groups=groups)
        self.pad = (kernel - 1) * dilation + 1 - stride

    def forward(self, x: torch.Tensor, state: State | None = None) -> torch.Tensor:  # x (B, C, L)
        if state is None:
            x = F.pad(x, (self.pad, 0))
        elif self.pad > 0:
            prev = state.get(self)
            if prev is None:
                prev = x.new_zeros(x.shape[0], x.shape[1], self.pad)
            x = torch.cat([prev, x], dim=-1)
            state[self] = x[..., x.shape[-1] - self.pad :]
        return self.conv(x)


def variance_preserving_init(module: nn.Module) -> None:
    """Conv weights ~ N(0, 1 / fan_in), zero biases. PyTorch's default init shrinks the signal about 3x per conv, so
    after the ~8 convs of the main path the (quiet, ~0.1 RMS) audio is drowned by the biases and the encoder output
    hardly depends on its input; with this init it does from the first step."""
    for m in module.modules():
        if isinstance(m, nn.Conv1d):
            fan_in = m.in_channels // m.groups * m.kernel_size[0]
        elif isinstance(m, nn.ConvTranspose1d):
            fan_in = m.in_channels * max(1, m.kernel_size[0] // m.stride[0])  # kernel = stride: one tap per output sample
        else:
            continue
        nn.init.normal_(m.weight, std=fan_in**-0.5)
        if m.bias is not None:
            nn.init.zeros_(m.bias)


class ConvBlock(nn.Module):
    """x + pw2(gelu(pw1(norm(dwconv(x))))): a ConvNeXt-style block, depth-wise causal conv in place of attention."""

    def __init__(self, c: int, kernel: int):
        super().__init__()
        self.dw = CausalConv1d(c, c, kernel, groups=c)
        self.norm = RMSNorm(c)  # per time step over channels: causal
        self.pw1 = nn.Linear(c, 4 * c)
        self.pw2 = nn.Linear(4 * c, c)
        self.gamma = nn.Parameter(torch.full((c,), 0.1))

    def forward(self, x: torch.Tensor, state: State | None = None) -> torch.Tensor:  # (B, C, L)
        h = self.norm(self.dw(x, state).transpose(1, 2))  # (B, L, C)
        h = self.pw2(F.gelu(self.pw1(h))) * self.gamma
        return x + h.transpose(1, 2)


class Encoder(nn.Module):
    """(B, 1, L) -> (B, out_dim, L / hop), causal."""

    def __init__(self, cfg: TokenizerConfig, out_dim: int):
        super().__init__()
        ch = cfg.stage_channels()
        self.stem = CausalConv1d(1, ch[0], cfg.kernel)
        self.stages = nn.ModuleList()
        for i, r in enumerate(cfg.ratios):
            blocks = [ConvBlock(ch[i], cfg.kernel) for _ in range(cfg.blocks_per_stage if i > 0 or cfg.full_rate_blocks else 0)]
            self.stages.append(nn.ModuleList([*blocks, CausalConv1d(ch[i], ch[i + 1], 2 * r, stride=r)]))
        self.final = ConvBlock(ch[-1], 3)
        self.head = CausalConv1d(ch[-1], out_dim, 3)

    def forward(self, x: torch.Tensor, state: State | None = None) -> torch.Tensor:
        h = self.stem(x, state)
        for stage in self.stages:
            for m in stage[:-1]:
                h = m(h, state)
            h = stage[-1](F.elu(h), state)  # activation before each strided conv (SEANet-style), else the main path is linear
        return self.head(F.elu(self.final(h, state)), state)


class CausalISTFT(nn.Module):
    """(B, 2 * (n_fft // 2 + 1), K) log-magnitude and phase per frame -> (B, 1, K * hop) by a causal inverse STFT.

    Frame k is an n_fft-sample windowed irfft overlap-added onto output samples [k * hop, k * hop + n_fft), so output
    block m (samples [m * hop, (m + 1) * hop)) is the sum of frames m - overlap + 1 .. m only: it is complete (and
    causal) once frame m is in. Offline the frames before the start are zeros; streaming keeps the last overlap - 1
    frames in `state`. The sum is divided by the constant
    overlap-add gain of the squared Hann window (the first blocks fade in)."""

    def __init__(self, hop: int, overlap: int):
        super().__init__()
        self.hop, self.overlap, self.n_fft = hop, overlap, hop * overlap
        win = torch.hann_window(self.n_fft)
        self.register_buffer("window", win, persistent=False)
        self.gain = float(win.pow(2).sum() / hop)  # sum_k w^2(n - k hop), constant for the Hann window at this overlap

    def forward(self, x: torch.Tensor, state: State | None = None) -> torch.Tensor:  # x (B, 2F, K)
        logmag, phase = x.float().chunk(2, dim=1)
        spec = torch.polar(torch.exp(logmag.clamp(max=7.0)), phase)  # (B, F, K)
        frames = torch.fft.irfft(spec.transpose(1, 2), n=self.n_fft) * self.window  # (B, K, n_fft)
        k, o = frames.shape[1], self.overlap - 1
        prev = state.get(self) if state is not None else None
        if prev is None:
            prev = frames.new_zeros(frames.shape[0], o, self.n_fft)
        full = torch.cat([prev, frames], dim=1)  # (B, o + K, n_fft)
        if state is not None:
            state[self] = full[:, full.shape[1] - o :]
        seg = full.view(full.shape[0], o + k, self.overlap, self.hop)  # segment j of frame f lands in block f - o + j
        out = sum(seg[:, o - j : o - j + k, j] for j in range(self.overlap))  # (B, K, hop)
        return (out / self.gain).reshape(out.shape[0], 1, k * self.hop)


class Decoder(nn.Module):
    """(B, latent_dim, T) -> (B, 1, T * hop), causal; each latent frame owns exactly `hop` output samples."""

    def __init__(self, cfg: TokenizerConfig):
        super().__init__()
        ch = cfg.stage_channels()
        self.stem = CausalConv1d(cfg.latent_dim, ch[-1], 3)
        self.first = ConvBlock(ch[-1], 3)
        self.stages = nn.ModuleList()
        low = cfg.istft_stages() if cfg.decoder_head == "istft" else 0
        assert cfg.decoder_head in ("conv", "istft"), f"unknown decoder_head {cfg.decoder_head!r}"
        for i in reversed(range(low, len(cfg.ratios))):
            r = cfg.ratios[i]
            up = nn.ConvTranspose1d(ch[i + 1], ch[i], r, stride=r)  # kernel = stride: no overlap, no state needed
            blocks = [ConvBlock(ch[i], cfg.kernel) for _ in range(cfg.blocks_per_stage if i > 0 or cfg.full_rate_blocks else 0)]
            self.stages.append(nn.ModuleList([up, *blocks]))
        if cfg.decoder_head == "istft":
            self.out = CausalConv1d(ch[low], 2 * (cfg.istft_hop * cfg.istft_overlap // 2 + 1), 3)
            self.istft: CausalISTFT | None = CausalISTFT(cfg.istft_hop, cfg.istft_overlap)
        else:
            self.out = CausalConv1d(ch[0], 1, cfg.kernel)
            self.istft = None

    def forward(self, z: torch.Tensor, state: State | None = None) -> torch.Tensor:
        h = self.first(self.stem(z, state), state)
        for stage in self.stages:
            h = stage[0](F.elu(h))
            for m in stage[1:]:
                h = m(h, state)
        if self.istft is not None:
            return self.istft(self.out(F.elu(h), state), state)
        return torch.tanh(self.out(F.elu(h), state))


class AcousticTokenizer(nn.Module):
    """sigma-VAE: encode (B, L) audio -> mu (B, T, latent_dim); decode (B, T, latent_dim) -> (B, T * hop)."""

    def __init__(self, cfg: TokenizerConfig):
        super().__init__()
        assert cfg.vae, "AcousticTokenizer needs cfg.vae=True"
        self.cfg = cfg
        self.encoder = Encoder(cfg, cfg.latent_dim)
        self.decoder = Decoder(cfg)
        variance_preserving_init(self)

    def pad(self, audio: torch.Tensor) -> torch.Tensor:
        """Right-pad (B, L) to a multiple of the hop."""
        return F.pad(audio, (0, (-audio.shape[-1]) % self.cfg.hop))

    def encode(self, audio: torch.Tensor, state: State | None = None) -> torch.Tensor:
        """audio (B, L), L a multiple of hop (use `pad`) -> mu (B, L / hop, latent_dim)."""
        assert audio.shape[-1] % self.cfg.hop == 0, f"length {audio.shape[-1]} is not a multiple of {self.cfg.hop}"
        return self.encoder(audio[:, None], state).transpose(1, 2)

    def sample(self, mu: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """z = mu + sigma * eps, sigma ~ N(0, C_sigma) per sample (fixed-std noise scale), eps ~ N(0, I)."""
        sigma = torch.randn(mu.shape[0], 1, 1, generator=generator) * self.cfg.sigma_std  # (B, 1, 1)
        return mu + sigma * torch.randn(mu.shape, generator=generator)

    def decode(self, z: torch.Tensor, state: State | None = None) -> torch.Tensor:
        """z (B, T, latent_dim) -> audio (B, T * hop). Pass the same `state` dict across calls to stream."""
        return self.decoder(z.transpose(1, 2), state)[:, 0]

    def loss(self, audio: torch.Tensor) -> tuple[torch.Tensor, dict]:
        """audio (B, L), L multiple of hop -> total loss and its parts."""
        mu = self.encode(audio)
        rec = self.decode(self.sample(mu))
        stft = multi_res_stft_loss(rec, audio)
        mel = mel_l1(rec, audio)
        lat = mu.pow(2).mean()
        total = self.cfg.stft_weight * stft + self.cfg.mel_weight * mel + self.cfg.latent_weight * lat
        return total, {"loss/stft": stft.item(), "loss/mel": mel.item(), "loss/latent": lat.item()}


class SemanticTokenizer(nn.Module):
    """Deterministic encoder (same shape, no VAE) + an ASR-proxy phoneme decoder used only for training it."""

    def __init__(self, cfg: TokenizerConfig, n_phonemes: int, dec_dim: int = 64, dec_layers: int = 2):
        super().__init__()
        assert not cfg.vae, "SemanticTokenizer needs cfg.vae=False"
        self.cfg = cfg
        self.encoder = Encoder(cfg, cfg.latent_dim)
        variance_preserving_init(self.encoder)
        # decoder vocab: phonemes + <bos> + <eos>
        self.bos, self.eos = n_phonemes, n_phonemes + 1
        dcfg = ModelConfig(vocab_size=n_phonemes + 2, dim=dec_dim, n_layers=dec_layers, n_heads=4, n_kv_heads=2, ffn_dim=4 * dec_dim)
        self.decoder = Transformer(dcfg)
        self.proj = nn.Linear(cfg.latent_dim, dec_dim)

    def encode(self, audio: torch.Tensor, state: State | None = None) -> torch.Tensor:
        """audio (B, L), L multiple of hop -> features (B, L / hop, latent_dim)."""
        assert audio.shape[-1] % self.cfg.hop == 0, f"length {audio.shape[-1]} is not a multiple of {self.cfg.hop}"
        return self.encoder(audio[:, None], state).transpose(1, 2)

    def asr_logits(self, feats: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """Prefix-LM decoder: [proj(feats) ; ids] -> logits at the id positions. feats (B, T, D), ids (B, U)."""
        x = torch.cat([self.proj(feats), self.decoder.embed_tokens(ids)], dim=1)  # (B, T + U, C)
        return self.decoder(None, embeds=x).logits[:, feats.shape[1] :]  # (B, U, V)

    def asr_loss(self, audio: torch.Tensor, phonemes: list[list[int]]) -> torch.Tensor:
        """Next-phoneme CE of <bos> p1 .. pn <eos> given the 7.5 Hz features of `audio` (B, L)."""
        feats = self.encode(audio)
        seqs = [[self.bos, *p, self.eos] for p in phonemes]
        n = max(len(s) for s in seqs)
        ids = torch.tensor([s + [self.eos] * (n - len(s)) for s in seqs])  # (B, U)
        mask = torch.tensor([[1] * (len(s) - 1) + [0] * (n - len(s)) for s in seqs], dtype=torch.float32)  # targets ids[:, 1:]
        logits = self.asr_logits(feats, ids[:, :-1])
        ce = F.cross_entropy(logits.transpose(1, 2), ids[:, 1:], reduction="none")  # (B, U-1)
        return (ce * mask).sum() / mask.sum()

    @torch.no_grad()
    def transcribe(self, audio: torch.Tensor, max_len: int = 80) -> list[list[int]]:
        """Greedy phoneme decoding (B, L) -> phoneme ids (for checking the ASR proxy)."""
        feats = self.encode(audio)
        ids = torch.full((audio.shape[0], 1), self.bos)
        done = torch.zeros(audio.shape[0], dtype=torch.bool)
        for _ in range(max_len):
            nxt = self.asr_logits(feats, ids)[:, -1].argmax(-1)
            nxt = torch.where(done, torch.full_like(nxt, self.eos), nxt)
            ids = torch.cat([ids, nxt[:, None]], 1)
            done |= nxt == self.eos
            if done.all():
                break
        return [[int(t) for t in row[1:] if t < self.bos] for row in ids]


# ---------------------------------------------------------------- training


@dataclass
class TokTrainConfig:
    steps: int = 200
    """Optimizer steps."""
    batch_size: int = 8
    """Crops per step."""
    crop_frames: int = 4
    """Crop length in latent frames (crop_frames * hop samples); 0 = whole utterances (semantic training)."""
    lr: float = 2e-3
    """AdamW learning rate (cosine decay to 10%)."""
    seed: int = 0
    """Seed for crops and noise."""
    time_limit_s: float = 0.0
    """Stop early after this many CPU seconds of the process (0 = no limit): CPU, not wall time, so a loaded or paused
    machine trains the same number of steps (on an idle machine with one thread they are the same)."""
    history: list = field(default_factory=list)
    """Filled with {"step", "loss", ...} rows."""
    callback: Callable[[int, float, nn.Module], None] | None = None
    """Called after each step with (step, training CPU seconds so far, model), e.g. to render round trips at training
    stages; its own time is not counted against `time_limit_s`."""


def random_crops(audios: list[np.ndarray], n: int, length: int, rng: random.Random) -> torch.Tensor:
    """n random crops of `length` samples (zero-padded when an utterance is shorter) -> (n, length)."""
    out = np.zeros((n, length), np.float32)
    for i in range(n):
        a = rng.choice(audios)
        s = rng.randint(0, max(0, len(a) - length))
        seg = a[s : s + length]
        out[i, : len(seg)] = seg
    return torch.from_numpy(out)


def _lr_at(step: int, steps: int, lr: float) -> float:
    return lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * step / max(1, steps))))


def train_acoustic(tok: AcousticTokenizer, audios: list[np.ndarray], cfg: TokTrainConfig) -> list[dict]:
    """Reconstruction training of the sigma-VAE on random crops. Returns the loss history."""
    rng = random.Random(cfg.seed)
    torch.manual_seed(cfg.seed)
    opt = torch.optim.AdamW(tok.parameters(), lr=cfg.lr, weight_decay=0.0)
    t0 = time.process_time()
    tok.train()
    for step in range(cfg.steps):
        for g in opt.param_groups:
            g["lr"] = _lr_at(step, cfg.steps, cfg.lr)
        x = random_crops(audios, cfg.batch_size, cfg.crop_frames * tok.cfg.hop, rng)  # (B, L)
        loss, parts = tok.loss(x)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(tok.parameters(), 1.0)
        opt.step()
        cfg.history.append({"step": step, "loss": loss.item(), **parts})
        if cfg.callback is not None:
            t_cb = time.process_time()
            tok.eval()
            cfg.callback(step, t_cb - t0, tok)
            tok.train()
            t0 += time.process_time() - t_cb  # the callback's time is not training time
        if cfg.time_limit_s and time.process_time() - t0 > cfg.time_limit_s:
            break
    tok.eval()
    return cfg.history


def train_semantic(sem: SemanticTokenizer, audios: list[np.ndarray], phonemes: list[list[int]], cfg: TokTrainConfig) -> list[dict]:
    """ASR-proxy training of the semantic encoder + phoneme decoder on whole utterances, then freeze."""
    rng = random.Random(cfg.seed)
    torch.manual_seed(cfg.seed)
    opt = torch.optim.AdamW(sem.parameters(), lr=cfg.lr, weight_decay=0.0)
    hop = sem.cfg.hop
    t0 = time.process_time()
    sem.train()
    for step in range(cfg.steps):
        for g in opt.param_groups:
            g["lr"] = _lr_at(step, cfg.steps, cfg.lr)
        idx = [rng.randrange(len(audios)) for _ in range(cfg.batch_size)]
        n = max(len(audios[i]) for i in idx)
        n += (-n) % hop
        x = torch.zeros(len(idx), n)
        for j, i in enumerate(idx):
            x[j, : len(audios[i])] = torch.from_numpy(audios[i])
        loss = sem.asr_loss(x, [phonemes[i] for i in idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(sem.parameters(), 1.0)
        opt.step()
        cfg.history.append({"step": step, "loss": loss.item()})
        if cfg.time_limit_s and time.process_time() - t0 > cfg.time_limit_s:
            break
    sem.eval()
    for p in sem.parameters():
        p.requires_grad_(False)
    return cfg.history
