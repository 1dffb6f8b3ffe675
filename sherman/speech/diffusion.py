"""Next-token diffusion head of VibeVoice (arXiv 2508.19205, Sec. 2.2; LatentLM, arXiv 2412.08635).

A small network conditioned on the LM hidden state h_i predicts the next acoustic latent z_{i+1} by
denoising. Training: v-prediction under a cosine noise schedule with 1000 discrete steps,
    x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps,    v = sqrt(abar_t) eps - sqrt(1 - abar_t) x0,
    abar_t = f(t) / f(0),  f(t) = cos^2(((t / T) + s) / (1 + s) * pi / 2),  s = 0.008  (Nichol & Dhariwal).
Inference: DPM-Solver++ (2M, data prediction, Lu et al. 2022) over 10-20 steps, with classifier-free
guidance between the conditional hidden state and a negative branch (the LM hidden state of the
prompt-free sequence): v = v_neg + w (v_cond - v_neg), default w = 1.3.

The head: timestep embedding + condition -> adaLN-modulated MLP blocks (the paper's head has 4 layers),
final adaLN + linear to the latent size.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from sherman.core.model import RMSNorm


@dataclass
class DiffusionConfig:
    latent_dim: int = 16
    """Size of each acoustic latent frame."""
    cond_dim: int = 128
    """Size of the LM hidden state that conditions the head."""
    hidden: int = 128
    """Width of the head."""
    layers: int = 4
    """adaLN MLP blocks (the paper uses 4)."""
    train_steps: int = 1000
    """Discrete diffusion steps T of the training schedule."""
    cosine_s: float = 0.008
    """Offset s of the cosine schedule."""
    infer_steps: int = 10
    """DPM-Solver++ steps at inference (paper: 10-20)."""
    cfg_scale: float = 1.3
    """Classifier-free guidance scale w (1.0 = no guidance)."""
    batch_mul: int = 4
    """Noise draws per target latent per training step (more diffusion samples per LM pass)."""


# ---------------------------------------------------------------- schedule (pure functions)


def cosine_alpha_bar(t: torch.Tensor, T: int = 1000, s: float = 0.008) -> torch.Tensor:
    """abar_t = f(t) / f(0) with f(t) = cos^2(((t / T) + s) / (1 + s) * pi / 2); t may be fractional."""
    f = torch.cos(((t.double() / T) + s) / (1 + s) * math.pi / 2) ** 2
    f0 = math.cos(s / (1 + s) * math.pi / 2) ** 2
    return (f / f0).clamp(min=0.0, max=1.0)


def add_noise(x0: torch.Tensor, eps: torch.Tensor, abar: torch.Tensor) -> torch.Tensor:
    """x_t = sqrt(abar) x0 + sqrt(1 - abar) eps; abar broadcastable to x0."""
    return abar.sqrt() * x0 + (1 - abar).sqrt() * eps


def v_target(x0: torch.Tensor, eps: torch.Tensor, abar: torch.Tensor) -> torch.Tensor:
    """v = sqrt(abar) eps - sqrt(1 - abar) x0."""
    return abar.sqrt() * eps - (1 - abar).sqrt() * x0


def x0_from_v(xt: torch.Tensor, v: torch.Tensor, abar: torch.Tensor) -> torch.Tensor:
    """x0 = sqrt(abar) x_t - sqrt(1 - abar) v."""
    return abar.sqrt() * xt - (1 - abar).sqrt() * v


def cfg_combine(v_cond: torch.Tensor, v_neg: torch.Tensor, scale: float) -> torch.Tensor:
    """Classifier-free guidance: v_neg + scale * (v_cond - v_neg)."""
    return v_neg + scale * (v_cond - v_neg)


def solver_timesteps(steps: int, T: int = 1000) -> list[int]:
    """`steps` + 1 decreasing timesteps from T - 1 to 0 (uniform, rounded); the last one is treated as sigma = 0."""
    return [int(round(x)) for x in torch.linspace(T - 1, 0, steps + 1).tolist()]


def dpm_solver_pp(
    v_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    noise: torch.Tensor,
    steps: int = 10,
    T: int = 1000,
    s: float = 0.008,
) -> torch.Tensor:
    """DPM-Solver++(2M) in data-prediction form, v-parameterised model, final step to sigma = 0.

    v_fn(x_t, t (B,)) -> v. With alpha_t = sqrt(abar_t), sigma_t = sqrt(1 - abar_t), lambda_t = log(alpha/sigma),
    h_i = lambda_{i+1} - lambda_i and x0_i the data prediction at step i:
        first order:  x_{i+1} = (sigma_{i+1}/sigma_i) x_i - alpha_{i+1} (exp(-h_i) - 1) x0_i
        second order: same with D_i = (1 + 1/(2 r_i)) x0_i - 1/(2 r_i) x0_{i-1},  r_i = h_{i-1} / h_i.
    The last step (to abar = 1, sigma = 0) is first order and returns x0 (lower_order_final).
    """
    ts = solver_timesteps(steps, T)
    x = noise
    prev_x0, prev_h = None, None
    for i in range(steps):
        t_cur = torch.tensor(float(ts[i]))
        ab = cosine_alpha_bar(t_cur, T, s)
        a_cur, s_cur = ab.sqrt(), (1 - ab).sqrt()
        v = v_fn(x, torch.full((x.shape[0],), float(ts[i]), device=x.device))
        x0 = x0_from_v(x, v, ab.to(x.dtype))
        if i == steps - 1:  # final step to sigma = 0
            return x0
        ab_next = cosine_alpha_bar(torch.tensor(float(ts[i + 1])), T, s)
        a_next, s_next = ab_next.sqrt(), (1 - ab_next).sqrt()
        h = torch.log(a_next / s_next) - torch.log(a_cur / s_cur)
        if prev_x0 is None:
            d = x0
        else:
            r = prev_h / h
            d = (1 + 1 / (2 * r)) * x0 - (1 / (2 * r)) * prev_x0
        x = (s_next / s_cur).to(x.dtype) * x - (a_next * (torch.exp(-h) - 1)).to(x.dtype) * d
        prev_x0, prev_h = x0, h
    return x


# ---------------------------------------------------------------- the head


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding of (B,) timesteps -> (B, dim)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


class AdaLNBlock(nn.Module):
    """x + gate * MLP(norm(x) * (1 + scale) + shift), (shift, scale, gate) from the condition.

    adaLN-Zero (DiT, Peebles & Xie 2023, Sec. 3.2; the head layers of VibeVoice, arXiv 2508.19205, Sec. 2.2):
    the modulation is zero-initialised, so gate = 0 and the block is the identity at initialisation; the gate
    then learns how much of the MLP branch to let through.
    """

    def __init__(self, dim: int):
        super().__init__()
        self.norm = RMSNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 3 * dim), nn.SiLU(), nn.Linear(3 * dim, dim))
        self.mod = nn.Linear(dim, 3 * dim)
        nn.init.zeros_(self.mod.weight)
        nn.init.zeros_(self.mod.bias)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift, scale, gate = self.mod(F.silu(c)).chunk(3, dim=-1)
        return x + gate * self.mlp(self.norm(x) * (1 + scale) + shift)  # (N, d)


class DiffusionHead(nn.Module):
    """v_theta(x_t, t, h): predicts v for a noisy latent x_t (N, latent_dim) given condition h (N, cond_dim)."""

    def __init__(self, cfg: DiffusionConfig):
        super().__init__()
        self.cfg = cfg
        d = cfg.hidden
        self.in_proj = nn.Linear(cfg.latent_dim, d)
        self.cond_proj = nn.Linear(cfg.cond_dim, d)
        self.t_proj = nn.Sequential(nn.Linear(d, d), nn.SiLU(), nn.Linear(d, d))
        self.blocks = nn.ModuleList(AdaLNBlock(d) for _ in range(cfg.layers))
        self.final_norm = RMSNorm(d)
        self.final_mod = nn.Linear(d, 2 * d)
        self.out = nn.Linear(d, cfg.latent_dim)

    def forward(self, xt: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        c = self.cond_proj(cond) + self.t_proj(timestep_embedding(t, self.cfg.hidden))  # (N, d)
        x = self.in_proj(xt)  # (N, d)
        for blk in self.blocks:
            x = blk(x, c)
        shift, scale = self.final_mod(F.silu(c)).chunk(2, dim=-1)
        return self.out(self.final_norm(x) * (1 + scale) + shift)

    def loss(self, x0: torch.Tensor, cond: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """v-prediction MSE. x0 (N, latent_dim) targets, cond (N, cond_dim); `batch_mul` noise draws each."""
        m = self.cfg.batch_mul
        x0, cond = x0.repeat(m, 1), cond.repeat(m, 1)  # (N*m, D)
        t = torch.randint(0, self.cfg.train_steps, (x0.shape[0],), generator=generator).to(x0.device)
        eps = torch.randn(x0.shape, generator=generator).to(x0)
        ab = cosine_alpha_bar(t, self.cfg.train_steps, self.cfg.cosine_s).to(x0.dtype)[:, None]  # (N*m, 1)
        v = self(add_noise(x0, eps, ab), t, cond)
        return F.mse_loss(v, v_target(x0, eps, ab))

    @torch.no_grad()
    def sample(self, cond: torch.Tensor, neg: torch.Tensor | None = None, cfg_scale: float | None = None,
               steps: int | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
        """Draw latents (N, latent_dim) for conditions (N, cond_dim); with `neg`, classifier-free guidance."""
        scale = self.cfg.cfg_scale if cfg_scale is None else cfg_scale
        noise = torch.randn((cond.shape[0], self.cfg.latent_dim), generator=generator).to(cond)

        def v_fn(x, t):
            if neg is None:
                return self(x, t, cond)
            v = self(torch.cat([x, x]), torch.cat([t, t]), torch.cat([cond, neg]))  # one batched pass
            v_c, v_n = v.chunk(2)
            return cfg_combine(v_c, v_n, scale)

        return dpm_solver_pp(v_fn, noise, steps or self.cfg.infer_steps, self.cfg.train_steps, self.cfg.cosine_s)


class RegressionHead(nn.Module):
    """Baseline: the same conditioning MLP predicting the next latent directly (MSE), no diffusion."""

    def __init__(self, cfg: DiffusionConfig):
        super().__init__()
        self.cfg = cfg
        d = cfg.hidden
        self.net = nn.Sequential(nn.Linear(cfg.cond_dim, d), nn.SiLU(), *[m for _ in range(cfg.layers - 1) for m in (nn.Linear(d, d), nn.SiLU())],
                                 nn.Linear(d, cfg.latent_dim))

    def loss(self, x0: torch.Tensor, cond: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        return F.mse_loss(self.net(cond), x0)

    @torch.no_grad()
    def sample(self, cond: torch.Tensor, neg: torch.Tensor | None = None, cfg_scale: float | None = None,
               steps: int | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
        return self.net(cond)
