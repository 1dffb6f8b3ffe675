"""The one attention call site.

Every layer of every Sherman model attends through `attend(q, k, v, ctx)`. The backend is chosen per
call by `ctx.backend`, a key of the literal dict `BACKENDS`; each backend has the signature of
`dense_attention` and, when its budget covers the whole context, must equal it (parity tests).

Shapes: q (B, H_q, T_q, D); k, v (B, H_kv, T_k, D) with H_q a multiple of H_kv (grouped-query
attention). Query i sits at key slot `ctx.q_start + i`; keys beyond that slot are causally hidden and
keys with `ctx.key_valid == False` (left padding) are never attended.
"""

from __future__ import annotations

import importlib
import math
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
import torch.nn.functional as F

from sherman.core import cpu_decode
from sherman.core.kv_cache import KVCache


@dataclass
class AttnContext:
    """What a backend may need besides q, k, v. One is built per forward pass and shared by all layers."""

    backend: str = "dense"
    """Key of `BACKENDS`."""
    q_start: int = 0
    """Key slot of the first query (0 for a plain causal forward, the cache length before this step when cached)."""
    key_valid: torch.Tensor | None = None
    """(B, T_k) bool; None means every key is real."""
    cache: KVCache | None = None
    """The KV cache when decoding; sparse backends keep their block state in `cache.extras`."""
    layer: int = 0
    """Index of the calling layer (set by the model before each layer)."""
    options: dict[str, Any] = field(default_factory=dict)
    """Backend-specific options (budget, block size, gate modules, ...)."""
    scratch: dict[str, Any] = field(default_factory=dict)
    """Per-forward-pass values computed once and reused by every layer (reset by the model each pass)."""
    mask: torch.Tensor | None = None
    """(B, 1, T_q, T_k) explicit mask that replaces the causal/key_valid one (packed sequences): bool (True = may
    attend) or additive float (0 / -inf); dense backend only."""
    prefix_rows: tuple[torch.Tensor, int] | None = None
    """(src (B,), P): row b's keys/values are preceded by the keys/values of slots [0, P) of row src[b] of the same
    pass, so packed rows can attend a shared prompt that sits in another row of the batch (training on RL groups:
    `sherman.rl.logprobs.shared_prompt_logprobs`); `mask` then covers P + T keys. No cache."""


def causal_mask(q_start: int, t_q: int, t_k: int, key_valid: torch.Tensor | None, device) -> torch.Tensor | None:
    """Boolean mask (B or 1, 1, T_q, T_k), True = may attend. Every query may always see its own slot, so a
    query sitting on a pad slot still has one finite logit (its output is ignored) instead of NaN."""
    qi = torch.arange(q_start, q_start + t_q, device=device)[:, None]  # (T_q, 1)
    kj = torch.arange(t_k, device=device)[None, :]  # (1, T_k)
    allowed = kj <= qi  # (T_q, T_k)
    if key_valid is None:
        return allowed[None, None]
    m = allowed[None, None] & key_valid[:, None, None, :t_k]  # (B, 1, T_q, T_k)
    return m | (kj == qi)[None, None]


def additive_mask(allowed: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """bool mask -> the same shape in `dtype`: 0 where allowed, -inf elsewhere (one `where` on scalar tensors; on CPU
    `log` of a 0/1 mask is ~5x slower, since log(0) takes a slow path)."""
    zero = torch.zeros((), dtype=dtype, device=allowed.device)
    return torch.where(allowed, zero, torch.full((), float("-inf"), dtype=dtype, device=allowed.device))


def key_bias(key_valid: torch.Tensor, hkv: int, g: int, dtype: torch.dtype) -> torch.Tensor:
    """(B, T_k) bool -> (B*H_kv, G, T_k) additive mask for `decode_attention`'s score GEMM: 0 where valid, -inf
    elsewhere."""
    b, tk = key_valid.shape
    return additive_mask(key_valid, dtype)[:, None, None, :].expand(b, hkv, g, tk).reshape(b * hkv, g, tk)


def decode_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_valid: torch.Tensor | None,
                     bias: torch.Tensor | None = None) -> torch.Tensor:
    """One query per row over a long cache, grouped heads folded into the query dimension (matmul, softmax, matmul).

    q (B, H_q, 1, D); k, v (B, H_kv, T_k, D); key_valid (B, T_k) or None; bias: optional precomputed
    `key_bias(key_valid, H_kv, G, dtype)` (the dense backend builds it once per forward pass for all layers).
    Returns (B, H_q, 1, D). The score GEMM adds the mask and the 1/sqrt(D) scale itself (`baddbmm`). Much faster
    on CPU than `scaled_dot_product_attention(..., enable_gqa=True)` for T_q = 1. Inside an inference context
    (`cpu_decode.active`) one C++ pass over K and V replaces the three ops.
    """
    b, hq, _, d = q.shape
    hkv, tk = k.shape[1], k.shape[2]
    if cpu_decode.active(q) and k.stride(-1) == 1 and v.stride(-1) == 1:  # inference: one C++ pass over K and V
        return cpu_decode.decode_attention(q, k, v, key_valid, 1.0 / math.sqrt(d))
    g = hq // hkv
    qg = q.reshape(b * hkv, g, d)  # (B*H_kv, G, D)
    kt = k.reshape(b * hkv, tk, d).transpose(1, 2)  # (B*H_kv, D, T_k), a view when k is a cache slice
    if key_valid is None:
        scores = torch.bmm(qg, kt).mul_(1.0 / math.sqrt(d))  # (B*H_kv, G, T_k)
    else:
        if bias is None:
            bias = key_bias(key_valid[:, :tk], hkv, g, q.dtype)
        scores = torch.baddbmm(bias, qg, kt, alpha=1.0 / math.sqrt(d))  # (B*H_kv, G, T_k)
    probs = torch.softmax(scores, dim=-1)
    out = torch.bmm(probs, v.reshape(b * hkv, tk, d))  # (B*H_kv, G, D)
    return out.reshape(b, hq, 1, d)


BMM_MAX_SCORES = 1 << 24
"""Explicit-mask attention on CPU with at most this many scores (B * H_q * T_q * T_k) runs as `masked_attention_bmm`
(~2x less time than SDPA's CPU kernel, forward + backward, for the many short rows of packed RL batches);
larger ones go to SDPA, which does not hold all scores at once."""


def masked_attention_bmm(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, ctx: AttnContext) -> torch.Tensor:
    """softmax(q k^T / sqrt(D) + mask) v with the additive `ctx.mask` (B, 1, T_q, T_k), grouped heads folded into the
    query rows: one `baddbmm`, a softmax and one `bmm`. The mask, expanded to (B*H_kv, G*T_q, T_k), is built once per
    forward pass (`ctx.scratch`). Returns (B, H_q, T_q, D)."""
    b, hq, t, d = q.shape
    hkv, tk = k.shape[1], k.shape[2]
    g = hq // hkv
    cached = ctx.scratch.get("mask_bias")
    if cached is None or cached[0] is not ctx.mask:
        bias = ctx.mask[:, :, None].expand(b, hkv, g, t, tk).reshape(b * hkv, g * t, tk)  # (B*H_kv, G*T_q, T_k)
        cached = ctx.scratch["mask_bias"] = (ctx.mask, bias)
    qg = q.reshape(b * hkv, g * t, d)  # (B*H_kv, G*T_q, D): heads of a KV group are adjacent
    scores = torch.baddbmm(cached[1], qg, k.reshape(b * hkv, tk, d).transpose(1, 2), alpha=1.0 / math.sqrt(d))
    out = torch.bmm(torch.softmax(scores, dim=-1), v.reshape(b * hkv, tk, d))  # (B*H_kv, G*T_q, D)
    return out.view(b, hq, t, d)


def dense_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, ctx: AttnContext) -> torch.Tensor:
    """Reference dense attention (causal, padding-aware, GQA). Returns (B, H_q, T_q, D)."""
    t_q, t_k = q.shape[2], k.shape[2]
    if ctx.mask is not None:
        if q.device.type == "cpu" and ctx.mask.is_floating_point() and q.numel() // q.shape[-1] * t_k <= BMM_MAX_SCORES:
            return masked_attention_bmm(q, k, v, ctx)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=ctx.mask, enable_gqa=True)
    if t_q == 1 and ctx.q_start == t_k - 1:
        bias = None
        if ctx.key_valid is not None and not cpu_decode.active(q):  # one additive mask per forward pass (ctx.scratch), shared by the layers
            cached = ctx.scratch.get("decode_bias")
            if cached is None or cached[0] is not ctx.key_valid:  # (a context reused outside the model: rebuild)
                cached = ctx.scratch["decode_bias"] = (ctx.key_valid, key_bias(ctx.key_valid[:, :t_k], k.shape[1], q.shape[1] // k.shape[1], q.dtype))
            bias = cached[1]
        return decode_attention(q, k, v, ctx.key_valid, bias)
    if ctx.key_valid is None and ctx.q_start == 0 and t_q == t_k:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
    mask = causal_mask(ctx.q_start, t_q, t_k, ctx.key_valid, q.device)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True)


AttnBackend = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, AttnContext], torch.Tensor]


def _lazy(target: str) -> AttnBackend:
    """A backend `module:function` imported on its first call, so core never imports `sherman.attention` eagerly."""

    def call(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, ctx: AttnContext) -> torch.Tensor:
        module, fn = target.split(":")
        return getattr(importlib.import_module(module), fn)(q, k, v, ctx)

    return call


BACKENDS: dict[str, AttnBackend] = {
    "dense": dense_attention,
    "quest": _lazy("sherman.attention.sparse:quest_attention"),
    "seer": _lazy("sherman.attention.seer:seer_attention"),
    "resa": _lazy("sherman.attention.resa:resa_attention"),
}


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, ctx: AttnContext) -> torch.Tensor:
    """Dispatch to the backend named in `ctx.backend`."""
    try:
        fn = BACKENDS[ctx.backend]
    except KeyError:
        raise ValueError(f"unknown attention backend {ctx.backend!r}; known: {sorted(BACKENDS)}") from None
    return fn(q, k, v, ctx)
