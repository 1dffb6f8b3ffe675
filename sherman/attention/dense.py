"""Dense attention references and the fast dense decode path (the baseline every sparse speedup is measured against).

For one new query per sequence over a long KV cache, grouped-query heads are folded into the query
dimension: the G query heads sharing a KV head become G rows of one (G, D) x (D, T) matmul, followed by a
softmax and a (G, T) x (T, D) matmul. This reads each key and value once per KV head, instead of
`scaled_dot_product_attention(..., enable_gqa=True)`, which on CPU expands or loops over query heads and is
several times slower at T_q = 1 (see benchmarks/bench_decode_attention.py).

The decode kernel itself lives in `sherman.core.attention.decode_attention` (the core's dense backend uses it);
this module re-exports it and adds a version writing into preallocated buffers, the SDPA peer and an
explicit float64 reference used by the parity tests.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from sherman.core.attention import decode_attention

__all__ = ["decode_attention", "decode_attention_into", "softmax_", "sdpa_decode", "reference_attention"]


def decode_attention_into(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scores_buf: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """Dense decode writing into preallocated buffers (no per-step allocation of the score matrix).

    q (B, H_q, 1, D); k, v (B, H_kv, T, D); scores_buf: flat, at least B*H_q*T floats; out (B, H_kv, G, D).
    Returns (B, H_q, 1, D) (a view of `out`). Every key is attended (no padding).
    """
    b, hq, _, d = q.shape
    hkv, t = k.shape[1], k.shape[2]
    g = hq // hkv
    qg = q.reshape(b, hkv, g, d) * (1.0 / math.sqrt(d))  # (B, H_kv, G, D)
    scores = scores_buf[: b * hq * t].view(b, hkv, g, t)  # (B, H_kv, G, T)
    torch.matmul(qg, k.transpose(-1, -2), out=scores)
    softmax_(scores)
    torch.matmul(scores, v, out=out)  # (B, H_kv, G, D)
    return out.view(b, hq, 1, d)


def softmax_(x: torch.Tensor) -> torch.Tensor:
    """In-place softmax over the last dim (rows that are all -inf are not expected)."""
    x.sub_(x.amax(-1, keepdim=True)).exp_()
    return x.div_(x.sum(-1, keepdim=True))


def sdpa_decode(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """The peer: torch SDPA with grouped-query expansion, q (B, H_q, 1, D) over k, v (B, H_kv, T, D)."""
    return F.scaled_dot_product_attention(q, k, v, enable_gqa=True)


def reference_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, q_start: int, key_valid: torch.Tensor | None = None
) -> torch.Tensor:
    """Explicit float64 causal GQA attention: q (B, H_q, T_q, D) at slots q_start.., k, v (B, H_kv, T_k, D).

    key_valid (B, T_k) masks padding (a query always sees its own slot). Returns (B, H_q, T_q, D) in q's dtype.
    """
    b, hq, tq, d = q.shape
    hkv, tk = k.shape[1], k.shape[2]
    g = hq // hkv
    kk = k.double().repeat_interleave(g, dim=1)  # (B, H_q, T_k, D)
    vv = v.double().repeat_interleave(g, dim=1)
    s = q.double() @ kk.transpose(-1, -2) / math.sqrt(d)  # (B, H_q, T_q, T_k)
    qi = torch.arange(q_start, q_start + tq)[:, None]
    kj = torch.arange(tk)[None, :]
    allowed = (kj <= qi)[None, None]  # (1, 1, T_q, T_k)
    if key_valid is not None:
        allowed = (allowed & key_valid[:, None, None, :tk]) | (kj == qi)[None, None]
    s = s.masked_fill(~allowed, float("-inf"))
    return (torch.softmax(s, -1) @ vv).to(q.dtype)
