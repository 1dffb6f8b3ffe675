"""The one Sherman language model: a Llama / Qwen2 / Qwen3(-MoE)-style decoder-only transformer.

Pre-norm blocks of RMSNorm -> grouped-query attention with rotary embeddings (optionally scaled: linear, dynamic
NTK, YaRN, Llama 3; `RopeScaling`; half-split "rotate_half"
convention, as in Hugging Face Llama/Qwen) and optional per-head QK RMSNorm (Qwen3) and QKV bias
(Qwen2) -> RMSNorm -> SwiGLU MLP or Mixture-of-Experts FFN (`core/moe.py`). Embeddings are tied or
untied. Parameter names follow Hugging Face's so `core/hf.py` is a near-identity mapping.

All attention goes through `core.attention.attend`; the KV cache is `core.kv_cache.KVCache`.

Forward:
    out = model(ids, positions=None, cache=None, key_valid=None, attn=None, return_router_logits=False)
    out.logits (B, T, V); out.router_logits: list per MoE layer of (B, T, E) when asked; out.hidden (B, T, C).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

from sherman.core import cpu_decode
from sherman.core.attention import AttnContext, attend
from sherman.core.config import check, check_types
from sherman.core.kv_cache import KVCache
from sherman.core.linear import FusedPack, Linear, fuse_for_training, fused_linears, linear, plain_autograd
from sherman.core.moe import MoEFFN, SwiGLU

ROPE_TYPES = ("linear", "dynamic", "yarn", "llama3")


@dataclass
class RopeScaling:
    """How RoPE's inverse frequencies are rescaled for contexts beyond pre-training (transformers' `rope_parameters`).

    linear  (position interpolation, Chen et al. 2023, arXiv 2306.15595): every frequency / factor.
    dynamic (dynamic NTK, bloc97/emozilla 2023): a larger base, recomputed from the current sequence length L once
            L > original_max_len: theta * (factor L / L0 - (factor - 1)) ** (D / (D - 2)).
    yarn    (Peng et al. 2023, arXiv 2309.00071, Sec. 3.2-3.4): NTK-by-parts interpolation of the frequencies between
            beta_fast and beta_slow rotations, and cos/sin scaled by the attention factor 0.1 ln(factor) + 1.
    llama3  (Llama 3.1, Meta 2024): low frequencies / factor, high ones kept, a smooth ramp between.
    """

    rope_type: str = "linear"
    """One of linear, dynamic, yarn, llama3."""
    factor: float = 1.0
    """Context extension factor."""
    original_max_len: int = 0
    """Pre-training context (llama3, yarn: original_max_position_embeddings; dynamic: max_position_embeddings)."""
    low_freq_factor: float = 1.0
    """llama3: wavelengths above original_max_len / low_freq_factor are divided by factor."""
    high_freq_factor: float = 4.0
    """llama3: wavelengths below original_max_len / high_freq_factor are kept."""
    beta_fast: float = 32.0
    """yarn: rotations over the original context above which a dimension is extrapolated (kept)."""
    beta_slow: float = 1.0
    """yarn: rotations below which a dimension is interpolated (divided by factor)."""
    attention_factor: float | None = None
    """yarn: scale of cos and sin; None derives it from factor (and mscale / mscale_all_dim)."""
    mscale: float | None = None
    """yarn (DeepSeek style): attention_factor = mscale_fn(factor, mscale) / mscale_fn(factor, mscale_all_dim)."""
    mscale_all_dim: float | None = None
    """yarn: see mscale."""
    truncate: bool = True
    """yarn: round the correction range outward to whole dimensions."""

    def __post_init__(self) -> None:
        if self.rope_type not in ROPE_TYPES:
            raise ValueError(f"unknown RoPE scaling type {self.rope_type!r}; choose one of {', '.join(ROPE_TYPES)}")
        if self.rope_type != "linear" and self.original_max_len <= 0:
            raise ValueError(f"RoPE scaling {self.rope_type!r} needs original_max_len > 0")
        if self.factor <= 0:
            raise ValueError(f"RoPE scaling factor must be > 0, got {self.factor}")


@dataclass
class ModelConfig:
    vocab_size: int = 256
    """Number of token ids."""
    dim: int = 128
    """Residual stream width (hidden_size)."""
    n_layers: int = 2
    """Number of decoder blocks."""
    n_heads: int = 4
    """Query heads."""
    n_kv_heads: int = 2
    """Key/value heads (grouped-query attention); must divide n_heads."""
    head_dim: int = 0
    """Per-head width; 0 means dim // n_heads."""
    ffn_dim: int = 344
    """SwiGLU hidden width of dense MLP layers."""
    norm_eps: float = 1e-6
    """RMSNorm epsilon."""
    rope_theta: float = 10000.0
    """RoPE base frequency."""
    rope_scaling: RopeScaling | None = None
    """RoPE frequency scaling (linear, dynamic NTK, YaRN, Llama 3); None = plain RoPE."""
    max_seq_len: int = 2048
    """Longest position the RoPE table covers (grown on demand)."""
    qk_norm: bool = False
    """Per-head RMSNorm on queries and keys before RoPE (Qwen3)."""
    attn_bias: bool = False
    """Bias on the q/k/v projections (Qwen2; Llama's attention_bias with o_bias)."""
    o_bias: bool = False
    """Bias on the attention output projection o_proj (Llama / Qwen3 attention_bias=True)."""
    tie_embeddings: bool = True
    """Share the input embedding and the LM head."""
    n_experts: int = 0
    """Experts per MoE layer; 0 means a dense model."""
    n_experts_per_tok: int = 2
    """Top-k experts per token."""
    moe_ffn_dim: int = 128
    """SwiGLU hidden width of each routed expert."""
    norm_topk_prob: bool = True
    """Renormalise the top-k router weights to sum to one."""
    shared_expert_dim: int = 0
    """Hidden width of an always-on, sigmoid-gated shared expert; 0 = none."""
    mlp_only_layers: list[int] = field(default_factory=list)
    """Layer indices that use a dense MLP even in an MoE model."""

    def __post_init__(self) -> None:
        if isinstance(self.rope_scaling, dict):  # from_dict / a checkpoint's config.json
            self.rope_scaling = RopeScaling(**self.rope_scaling)
        check_types(self)  # a config.json with "dim": "x" is one clear line, not an error deep in a reshape
        for name in ("vocab_size", "dim", "n_layers", "n_heads", "n_kv_heads", "ffn_dim", "max_seq_len"):
            check(getattr(self, name) >= 1, name, f"must be >= 1, got {getattr(self, name)}")
        check(self.head_dim >= 0, "head_dim", f"must be >= 0, got {self.head_dim}")
        if self.head_dim == 0:
            check(self.dim % self.n_heads == 0, "n_heads", f"{self.n_heads} does not divide dim {self.dim}")
            self.head_dim = self.dim // self.n_heads
        check(self.head_dim % 2 == 0, "head_dim", f"must be even for RoPE, got {self.head_dim}")
        check(self.n_heads % self.n_kv_heads == 0, "n_kv_heads", f"{self.n_kv_heads} does not divide n_heads {self.n_heads}")
        check(self.n_experts >= 0, "n_experts", f"must be >= 0, got {self.n_experts}")
        if self.n_experts > 0:
            check(1 <= self.n_experts_per_tok <= self.n_experts, "n_experts_per_tok",
                  f"top-k {self.n_experts_per_tok} must be in 1..n_experts ({self.n_experts})")  # fmt: skip
            check(self.moe_ffn_dim >= 1, "moe_ffn_dim", f"must be >= 1, got {self.moe_ffn_dim}")
        check(self.norm_eps > 0, "norm_eps", f"must be > 0, got {self.norm_eps}")
        check(self.rope_theta > 0, "rope_theta", f"must be > 0, got {self.rope_theta}")

    def is_moe_layer(self, i: int) -> bool:
        return self.n_experts > 0 and i not in self.mlp_only_layers

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> ModelConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown ModelConfig fields: {sorted(unknown)}")
        return cls(**d)


@dataclass
class ModelOutput:
    logits: torch.Tensor  # (B, T, V)
    hidden: torch.Tensor  # (B, T, C) final normed hidden state
    router_logits: list[torch.Tensor] | None = None  # per MoE layer (B, T, E)


class _RMSNormFn(torch.autograd.Function):
    """y = x * r * w, r = rsqrt(mean(x^2) + eps), with the closed-form backward
    dx = r * (g w - x_hat * mean(g w x_hat)), dw = sum over rows of g x_hat (x_hat = x r).
    One autograd node instead of the six of F.rms_norm's CPU decomposition: ~2x faster forward + backward on small
    training batches; same forward values, gradients within fp32 rounding (test)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, w: torch.Tensor, eps: float) -> torch.Tensor:
        r = torch.rsqrt(x.square().mean(-1, keepdim=True).add_(eps))  # (..., 1)
        xn = x * r
        ctx.save_for_backward(xn, r, w)
        return xn * w

    @staticmethod
    def backward(ctx, g: torch.Tensor):
        xn, r, w = ctx.saved_tensors
        gw_ = g * w  # (..., C)
        gx = (gw_ - xn * (gw_ * xn).mean(-1, keepdim=True)) * r if ctx.needs_input_grad[0] else None
        gw = (g * xn).reshape(-1, xn.shape[-1]).sum(0) if ctx.needs_input_grad[1] else None
        return gx, gw, None


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight
        if x.dtype == torch.float32 and w.dtype == torch.float32:  # bit-identical to the formula below in fp32
            if torch.is_grad_enabled() and (x.requires_grad or w.requires_grad) and plain_autograd():
                if cpu_decode.training_kernels(x):  # the same closed form, one C++ pass each way
                    return cpu_decode.RMSNormFn.apply(x, w, self.eps)
                return _RMSNormFn.apply(x, w, self.eps)  # training: a closed-form backward
            if cpu_decode.active(x):  # inference (`packed_weights`): the C++ kernel, same formula
                return cpu_decode.rms_norm(x, w, self.eps)
            return F.rms_norm(x, w.shape, w, self.eps)
        xf = x.to(torch.promote_types(x.dtype, torch.float32))  # fp32 at least; fp64 stays fp64
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * xf.to(x.dtype)


class _EmbeddingAsLinear:
    """The tied LM head seen as a bias-free linear layer (what `FusedPack` needs to know of it)."""

    def __init__(self, emb: nn.Embedding):
        self.weight, self.bias, self.out_features = emb.weight, None, emb.weight.shape[0]


def default_inv_freq(head_dim: int, theta: float, device=None) -> torch.Tensor:
    """Plain RoPE inverse frequencies theta^(-2i/D), i = 0..D/2-1 (D/2,)."""
    return 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32, device=device) / head_dim))


def linear_inv_freq(inv: torch.Tensor, factor: float) -> torch.Tensor:
    """Position interpolation: positions / factor, i.e. every frequency / factor."""
    return inv / factor


def llama3_inv_freq(inv: torch.Tensor, factor: float, low_freq_factor: float, high_freq_factor: float, old_len: int) -> torch.Tensor:
    """Llama 3.1: wavelength 2 pi / f above old_len / low_freq_factor -> f / factor; below old_len / high_freq_factor
    -> f; between, (1 - s) f / factor + s f with s = (old_len / wavelength - low) / (high - low)."""
    wavelen = 2 * math.pi / inv
    scaled = torch.where(wavelen > old_len / low_freq_factor, inv / factor, inv)
    s = (old_len / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor)
    smoothed = (1 - s) * scaled / factor + s * scaled
    medium = (wavelen >= old_len / high_freq_factor) & (wavelen <= old_len / low_freq_factor)
    return torch.where(medium, smoothed, scaled)


def yarn_mscale(factor: float, mscale: float = 1.0) -> float:
    """YaRN's attention temperature sqrt(1/t) = 0.1 ln(s) + 1 (paper Sec. 3.4), with DeepSeek's extra multiplier."""
    return 1.0 if factor <= 1 else 0.1 * mscale * math.log(factor) + 1.0


def yarn_attention_factor(r: RopeScaling) -> float:
    """The factor cos and sin are multiplied by (so attention logits by its square)."""
    if r.attention_factor is not None:
        return float(r.attention_factor)
    if r.mscale and r.mscale_all_dim:
        return float(yarn_mscale(r.factor, r.mscale) / yarn_mscale(r.factor, r.mscale_all_dim))
    return yarn_mscale(r.factor)


def yarn_inv_freq(inv: torch.Tensor, theta: float, factor: float, old_len: int, beta_fast: float, beta_slow: float,
                  truncate: bool = True) -> torch.Tensor:
    """YaRN NTK-by-parts (paper Sec. 3.2): dimension d makes old_len / (2 pi / f_d) rotations over the original context;
    dimensions with more than beta_fast rotations keep f_d, fewer than beta_slow get f_d / factor, a linear ramp between
    (over the dimension index, between the dimensions where the rotation count crosses beta_fast and beta_slow)."""
    dim = 2 * inv.shape[-1]

    def correction_dim(rotations: float) -> float:  # the dimension index whose frequency makes `rotations` turns
        return dim * math.log(old_len / (rotations * 2 * math.pi)) / (2 * math.log(theta))

    low, high = correction_dim(beta_fast), correction_dim(beta_slow)
    if truncate:
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, dim - 1)
    if low == high:
        high += 0.001  # avoid a zero-width ramp
    ramp = ((torch.arange(dim // 2, dtype=torch.float32, device=inv.device) - low) / (high - low)).clamp(0, 1)  # (D/2,)
    keep = 1 - ramp  # 1 = extrapolate (keep f), 0 = interpolate (f / factor)
    return (inv / factor) * (1 - keep) + inv * keep


def dynamic_inv_freq(head_dim: int, theta: float, factor: float, max_pos: int, seq_len: torch.Tensor) -> torch.Tensor:
    """Dynamic NTK: seq_len (B,) int64 current lengths -> (B, D/2) inverse frequencies of the base
    theta * (factor L / L0 - (factor - 1)) ** (D / (D - 2)), L = max(seq_len, L0). Computed in fp32 tensor arithmetic
    as transformers does in its forward pass; rows with L <= L0 get the plain frequencies (transformers' reset)."""
    L = torch.clamp(seq_len, min=max_pos)  # (B,)
    base = theta * ((factor * L / max_pos) - (factor - 1)) ** (head_dim / (head_dim - 2))  # (B,) fp32
    exps = torch.arange(0, head_dim, 2, dtype=torch.int64, device=seq_len.device).float() / head_dim  # (D/2,)
    dyn = 1.0 / (base[:, None] ** exps)  # (B, D/2)
    plain_base = theta * ((factor * max_pos / max_pos) - (factor - 1)) ** (head_dim / (head_dim - 2))  # python float, as at init
    plain = 1.0 / (plain_base ** exps)
    return torch.where((seq_len > max_pos)[:, None], dyn, plain)


def scaled_inv_freq(head_dim: int, theta: float, r: RopeScaling | None, device=None) -> tuple[torch.Tensor, float]:
    """The static frequency table of a config -> (inv (D/2,), attention factor). For dynamic NTK this is the table
    of sequences within the original context (longer ones are recomputed per row, `Transformer._rope`)."""
    inv = default_inv_freq(head_dim, theta, device)
    if r is None:
        return inv, 1.0
    if r.rope_type == "linear":
        return linear_inv_freq(inv, r.factor), 1.0
    if r.rope_type == "llama3":
        return llama3_inv_freq(inv, r.factor, r.low_freq_factor, r.high_freq_factor, r.original_max_len), 1.0
    if r.rope_type == "yarn":
        inv = yarn_inv_freq(inv, theta, r.factor, r.original_max_len, r.beta_fast, r.beta_slow, r.truncate)
        return inv, yarn_attention_factor(r)
    plain = theta * ((r.factor * r.original_max_len / r.original_max_len) - (r.factor - 1)) ** (head_dim / (head_dim - 2))
    return default_inv_freq(head_dim, plain, device), 1.0  # dynamic: transformers' init-time table


def tables_from_freqs(inv: torch.Tensor, positions: torch.Tensor, scale: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """inv (D/2,) or (B, D/2), positions (T,) or (B, T) -> cos, sin (..., T, D) in the half-split layout, times `scale`."""
    freqs = positions.float()[..., None] * (inv[..., None, :] if inv.dim() == 2 else inv)  # (..., T, D/2)
    emb = torch.cat([freqs, freqs], dim=-1)  # (..., T, D)
    cos, sin = emb.cos(), emb.sin()
    return (cos * scale, sin * scale) if scale != 1.0 else (cos, sin)


def rope_tables(head_dim: int, max_len: int, theta: float, device=None, scaling: RopeScaling | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin tables (max_len, head_dim) in the half-split layout (for dynamic NTK: the within-context table)."""
    inv, scale = scaled_inv_freq(head_dim, theta, scaling, device)
    return tables_from_freqs(inv, torch.arange(max_len, dtype=torch.float32, device=device), scale)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x (B, H, T, D); cos/sin (B, 1, T, D) or (1, 1, T, D): x * cos + rotate_half(x) * sin."""
    return rope_signed(x, cos, signed_sin(sin))


def signed_sin(sin: torch.Tensor) -> torch.Tensor:
    """sin (..., D) -> sin with its first half negated, so that rotate_half(x) * sin = swap_halves(x) * signed_sin."""
    half = sin.shape[-1] // 2
    return torch.cat([-sin[..., :half], sin[..., half:]], dim=-1)


def rope_signed(x: torch.Tensor, cos: torch.Tensor, ssin: torch.Tensor) -> torch.Tensor:
    """`apply_rope` given `signed_sin(sin)` (the model keeps that table, see `Transformer._rope`): three ops per call
    instead of six. rotate_half(x) = [-x2, x1] = [x2, x1] * [-1, 1], the sign folded into the table; the same values
    up to fp32 rounding (`addcmul` may fuse its multiply-add)."""
    swapped = x.roll(x.shape[-1] // 2, dims=-1)  # (..., D) = [x2, x1]
    return torch.addcmul(x * cos, swapped, ssin)


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        hd = cfg.head_dim
        self.q_proj = Linear(cfg.dim, cfg.n_heads * hd, bias=cfg.attn_bias)
        self.k_proj = Linear(cfg.dim, cfg.n_kv_heads * hd, bias=cfg.attn_bias)
        self.v_proj = Linear(cfg.dim, cfg.n_kv_heads * hd, bias=cfg.attn_bias)
        self.o_proj = Linear(cfg.n_heads * hd, cfg.dim, bias=cfg.o_bias)
        self.q_norm = RMSNorm(hd, cfg.norm_eps) if cfg.qk_norm else None
        self.k_norm = RMSNorm(hd, cfg.norm_eps) if cfg.qk_norm else None

    def project_qkv(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor):
        """x (B, T, C) -> q (B, H_q, T, D), k, v (B, H_kv, T, D), RoPE applied (cos and signed_sin(sin) tables, `Transformer._rope`)."""
        b, t, _ = x.shape
        hd, hq, hkv = self.cfg.head_dim, self.cfg.n_heads, self.cfg.n_kv_heads
        pack = self.__dict__.get("_qkv_pack")
        if pack is not None and pack.usable(x):  # inference: one GEMM, q and k normed and rotated together
            qkv = pack.fused(x).view(b, t, hq + 2 * hkv, hd)  # (B, T, H_q + 2 H_kv, D)
            if cpu_decode.active(qkv):  # one C++ pass: q/k RMSNorm, RoPE, and q, k, v in (B, H, T, D)
                w = None if self.q_norm is None else torch.cat([self.q_norm.weight.expand(hq, hd), self.k_norm.weight.expand(hkv, hd)])
                return cpu_decode.qk_norm_rope(qkv, hq, hkv, w, self.q_norm.eps if self.q_norm is not None else 0.0, cos, sin)
            qk, v = qkv[:, :, : hq + hkv], qkv[:, :, hq + hkv :]
            if self.q_norm is not None:  # same arithmetic as the two RMSNorms (fp32: rms_norm then * weight)
                w = torch.cat([self.q_norm.weight.expand(hq, hd), self.k_norm.weight.expand(hkv, hd)])  # (H_q + H_kv, D)
                qk = F.rms_norm(qk, (hd,), None, self.q_norm.eps) * w
            qk = rope_signed(qk.transpose(1, 2), cos, sin)  # (B, H_q + H_kv, T, D)
            return qk[:, :hq], qk[:, hq:], v.transpose(1, 2)
        lins = [self.q_proj, self.k_proj, self.v_proj]
        q, k, v = fused_linears(lins, x) if fuse_for_training(lins, x) else (m(x) for m in lins)  # training: one GEMM
        q = q.reshape(b, t, hq, hd).transpose(1, 2)
        k = k.reshape(b, t, hkv, hd).transpose(1, 2)
        v = v.reshape(b, t, hkv, hd).transpose(1, 2)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        return rope_signed(q, cos, sin), rope_signed(k, cos, sin), v

    def pack_for_inference(self) -> list[nn.Module]:
        """One prepacked q/k/v weight for inference (`core/linear.py`); returns the layers it covers."""
        pack = FusedPack.build([self.q_proj, self.k_proj, self.v_proj])
        self.__dict__["_qkv_pack"] = pack
        return [self.q_proj, self.k_proj, self.v_proj] if pack is not None else []

    def unpack_for_inference(self) -> None:
        self.__dict__.pop("_qkv_pack", None)

    def forward(self, x, cos, sin, ctx: AttnContext) -> torch.Tensor:
        b, t, _ = x.shape
        q, k, v = self.project_qkv(x, cos, sin)
        if ctx.prefix_rows is not None:  # a shared prompt held by another row of this pass comes first
            src, p = ctx.prefix_rows
            k = torch.cat([k[src, :, :p], k], dim=2)  # (B, H_kv, P + T, D)
            v = torch.cat([v[src, :, :p], v], dim=2)
        elif ctx.cache is not None:
            k, v = ctx.cache.write(ctx.layer, ctx.q_start, k, v)  # all slots up to the end
        y = attend(q, k, v, ctx)  # (B, H_q, T, D)
        return self.o_proj(y.transpose(1, 2).reshape(b, t, -1))


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig, layer: int):
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.self_attn = Attention(cfg)
        self.post_attention_layernorm = RMSNorm(cfg.dim, cfg.norm_eps)
        if cfg.is_moe_layer(layer):
            self.mlp = MoEFFN(cfg.dim, cfg.n_experts, cfg.n_experts_per_tok, cfg.moe_ffn_dim, cfg.norm_topk_prob, cfg.shared_expert_dim)
        else:
            self.mlp = SwiGLU(cfg.dim, cfg.ffn_dim)

    def forward(self, x, cos, sin, ctx: AttnContext):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, ctx)
        h = self.post_attention_layernorm(x)
        if isinstance(self.mlp, MoEFFN):
            y, router_logits = self.mlp(h)
            return x + y, router_logits
        return x + self.mlp(h), None


class Transformer(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.dim)
        self.layers = nn.ModuleList(Block(cfg, i) for i in range(cfg.n_layers))
        self.norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.lm_head = None if cfg.tie_embeddings else Linear(cfg.dim, cfg.vocab_size, bias=False)
        cos, sin = rope_tables(cfg.head_dim, cfg.max_seq_len, cfg.rope_theta, scaling=cfg.rope_scaling)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)
        self.apply(self._init)

    @staticmethod
    def _init(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Embedding):
            nn.init.normal_(m.weight, std=0.02)

    @property
    def device(self) -> torch.device:
        return self.embed_tokens.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.embed_tokens.weight.dtype

    def head_weight(self) -> torch.Tensor:
        return self.embed_tokens.weight if self.lm_head is None else self.lm_head.weight

    def lm_logits(self, h: torch.Tensor) -> torch.Tensor:
        """Final hidden states (..., C) -> logits (..., V) through the (tied or untied) LM head."""
        pack = self.__dict__.get("_head_pack")
        if pack is not None and pack.usable(h):
            return pack.fused(h)
        return linear(h, self.head_weight(), None)

    def pack_for_inference(self) -> list[nn.Module]:
        """Prepack the LM head (tied or not) for fast inference; see `core/linear.py`, `packed_weights`."""
        head = self.lm_head if self.lm_head is not None else _EmbeddingAsLinear(self.embed_tokens)
        pack = FusedPack.build([head])
        self.__dict__["_head_pack"] = pack
        return [self.lm_head] if pack is not None and self.lm_head is not None else []

    def unpack_for_inference(self) -> None:
        self.__dict__.pop("_head_pack", None)
        self.__dict__.pop("_cpp_plan_cache", None)

    def _rope(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """positions (B, T) or (T,) -> cos, signed_sin(sin) (B|1, 1, T, D) (what the layers' `rope_signed` takes).

        Every RoPE variant comes through here (full forward, prefill and each KV-cached decode step alike): the
        static ones (plain, linear, llama3, yarn) index one precomputed table; dynamic NTK rows whose current length
        (max position + 1 of the row in this pass) exceeds the original context get frequencies recomputed from that
        length, as transformers' `dynamic_rope_update` does per forward call (keys already in a KV cache keep the
        rotation they were written with, as in transformers' generate). Two deliberate differences: transformers takes
        the longest row of the whole batch (here each row its own length, so a sequence's numbers do not depend on its
        batchmates in the server's batcher) and keeps the largest length seen by earlier calls until a call falls
        back inside the original context (here a pass depends on its input only). For one sequence decoded or
        run from a fresh model the two agree exactly (tests/core/test_rope_scaling.py)."""
        if positions.dim() == 1:
            positions = positions[None]
        r = self.cfg.rope_scaling
        if r is not None and r.rope_type == "dynamic" and positions.numel():
            lens = positions.amax(-1) + 1  # (B,)
            if bool((lens > r.original_max_len).any()):
                inv = dynamic_inv_freq(self.cfg.head_dim, self.cfg.rope_theta, r.factor, r.original_max_len, lens)  # (B, D/2)
                cos, sin = tables_from_freqs(inv.to(self.device), positions)  # (B, T, D)
                return cos.unsqueeze(1).to(self.dtype), signed_sin(sin).unsqueeze(1).to(self.dtype)
        need = int(positions.max()) + 1 if positions.numel() else 0
        if need > self.rope_cos.shape[0]:  # grow the table (rare): positions beyond max_seq_len
            cos, sin = rope_tables(self.cfg.head_dim, max(need, 2 * self.rope_cos.shape[0]), self.cfg.rope_theta, self.device,
                                   self.cfg.rope_scaling)
            self.rope_cos, self.rope_sin = cos, sin
        cos = self.rope_cos[positions].unsqueeze(1).to(self.dtype)  # (B, 1, T, D)
        cached = self.__dict__.get("_rope_ssin")  # signed_sin of the whole table, redone when the table changes
        if cached is None or cached[0] is not self.rope_sin:
            if not plain_autograd():  # inside torch.func transforms a cached tensor would escape its level
                return cos, signed_sin(self.rope_sin[positions].unsqueeze(1).to(self.dtype))
            with torch.inference_mode(False), torch.no_grad():
                cached = self.__dict__["_rope_ssin"] = (self.rope_sin, signed_sin(self.rope_sin))
        return cos, cached[1][positions].unsqueeze(1).to(self.dtype)

    def make_cache(self, batch: int, max_len: int) -> KVCache:
        """A preallocated cache for `batch` rows and `max_len` slots."""
        c = self.cfg
        return KVCache.allocate(c.n_layers, batch, c.n_kv_heads, max_len, c.head_dim, self.dtype, self.device)

    def forward(
        self,
        ids: torch.Tensor | None,
        positions: torch.Tensor | None = None,
        cache: KVCache | None = None,
        key_valid: torch.Tensor | None = None,
        attn: AttnContext | None = None,
        return_router_logits: bool = False,
        compute_logits: bool = True,
        embeds: torch.Tensor | None = None,
    ) -> ModelOutput:
        """ids (B, T), or ids=None and embeds (B, T, C): input embeddings used instead of `embed_tokens(ids)`.

        positions: (B, T) or (T,) RoPE positions; default = slot index (cache.length + arange(T)).
        cache: when given, this pass's keys/values are written at slots [cache.length, cache.length + T)
            and queries attend to all earlier valid slots.
        key_valid: without a cache, (B, T) bool marking real tokens (False = padding); with a cache,
            (B, T) validity of the NEW slots (default all valid).
        attn: an AttnContext carrying the backend name and its options (default dense); for packed training rows
            also an explicit `mask` and `prefix_rows` (a shared prompt held by another row of the pass).
        """
        assert (ids is None) != (embeds is None), "pass exactly one of ids and embeds"
        b, t = ids.shape if ids is not None else embeds.shape[:2]
        ctx = self._context(attn, cache, t, key_valid)
        if positions is None:
            positions = torch.arange(ctx.q_start, ctx.q_start + t, device=self.device)
        cos, sin = self._rope(positions)
        x = self.embed_tokens(ids) if embeds is None else embeds  # (B, T, C)
        router = [] if return_router_logits else None
        for i, layer in enumerate(self.layers):
            ctx.layer = i
            x, rl = layer(x, cos, sin, ctx)
            if router is not None and rl is not None:
                router.append(rl)
        h = self.norm(x)
        logits = self.lm_logits(h) if compute_logits else h.new_zeros(0)
        return ModelOutput(logits=logits, hidden=h, router_logits=router)


    def decode_step(self, ids: torch.Tensor, positions: torch.Tensor, cache: KVCache, attn: AttnContext | None = None) -> torch.Tensor:
        """`generate`'s one-token decode step: ids (B,), positions (B,) -> the final normed hidden state (B, C).

        `forward(ids[:, None], positions[:, None], cache=cache, attn=attn).hidden[:, 0]` for dense (non-MoE) layers,
        with the submodules' `forward` methods called directly: module-call dispatch is a large share of a decode
        step on small models (~15% of a rollout). The same numbers (test: identical generate outputs); since module
        hooks do not fire here, `generate` uses it only when no module has any.
        """
        ctx = self._context(attn, cache, 1, None)
        cos, sin = self._rope(positions[:, None])  # (B, 1, 1, D)
        x = self.embed_tokens.forward(ids[:, None])  # (B, 1, C)
        plan = self._cpp_plan(x, ctx)
        if plan is not None:  # inference on CPU: the whole layer loop in one C++ call (cpu_decode.decode_layers)
            return cpu_decode.decode_layers(x[:, 0], plan, cache, ctx.q_start, cos[:, 0, 0], sin[:, 0, 0], ctx.key_valid)
        for i, layer in enumerate(self.layers):
            ctx.layer = i
            x = x + layer.self_attn.forward(layer.input_layernorm.forward(x), cos, sin, ctx)
            x = x + layer.mlp.forward(layer.post_attention_layernorm.forward(x))
        return self.norm.forward(x)[:, 0]

    def _cpp_plan(self, x: torch.Tensor, ctx: AttnContext) -> cpu_decode.LayerPlan | None:
        """The packed weights of every layer for `cpu_decode.decode_layers`, built once per `packed_weights` context, or
        None where that path does not apply: outside an inference context, MoE layers, a backend other than dense or an
        explicit mask, a layer without its inference packs (or one made stale by a weight update)."""
        if not cpu_decode.active(x) or ctx.backend != "dense" or ctx.mask is not None or ctx.cache is None:
            return None
        plan = self.__dict__.get("_cpp_plan_cache")
        if plan is None:
            plan = cpu_decode.LayerPlan.build(self)
            self.__dict__["_cpp_plan_cache"] = plan if plan is not None else False
        return plan if plan and plan.fresh() else None

    def _context(self, attn: AttnContext | None, cache: KVCache | None, t: int, key_valid: torch.Tensor | None) -> AttnContext:
        """The AttnContext of one pass over t new tokens (a copy of `attn` with fresh scratch); with a cache, the
        new slots are reserved and `key_valid` covers every slot up to them."""
        ctx = dataclasses.replace(attn, scratch={}) if attn is not None else AttnContext()
        if cache is not None:
            if ctx.prefix_rows is not None:
                raise ValueError("prefix_rows (packed training rows) and a KV cache are exclusive")
            start, _ = cache.reserve(t, key_valid)
            ctx.cache, ctx.q_start, ctx.key_valid = cache, start, cache.valid[:, : start + t]
        else:
            ctx.q_start, ctx.key_valid = 0, key_valid
        return ctx


def padded_positions(valid: torch.Tensor) -> torch.Tensor:
    """(B, T) validity of left-padded rows -> RoPE positions counting only real tokens (pads get 0)."""
    return (valid.long().cumsum(-1) - 1).clamp(min=0)


def token_logprobs(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """logits (B, T, V), targets (B, T) -> log p(target) (B, T) in fp32."""
    return torch.log_softmax(logits.float(), dim=-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)
