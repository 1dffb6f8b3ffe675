"""Mixture-of-Experts feed-forward block: softmax router, top-k routing, optional shared expert.

Follows the Qwen3-MoE / Mixtral formulation: `p = softmax(W_r x)` over all experts, keep the top-k,
optionally renormalise the kept weights (`norm_topk_prob`; Mixtral's softmax-over-top-k is the same
thing), and sum the chosen SwiGLU experts weighted by them. The optional shared expert (Qwen2-MoE /
DeepSeek style) always runs and is scaled by `sigmoid(w_g . x)`.

The block returns the router logits `(B, T, E)` so RL code (router-aware importance sampling) can
compare the old and new router distributions.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from sherman.core.linear import FusedPack, Linear


class SwiGLU(nn.Module):
    """`down(silu(gate(x)) * up(x))`, no biases (Llama/Qwen MLP)."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.gate_proj = Linear(dim, hidden, bias=False)
        self.up_proj = Linear(dim, hidden, bias=False)
        self.down_proj = Linear(hidden, dim, bias=False)

    def pack_for_inference(self) -> list[nn.Module]:
        """One prepacked gate/up weight for inference (`core/linear.py`); returns the layers it covers."""
        pack = FusedPack.build([self.gate_proj, self.up_proj])
        self.__dict__["_gate_up_pack"] = pack
        return [self.gate_proj, self.up_proj] if pack is not None else []

    def unpack_for_inference(self) -> None:
        self.__dict__.pop("_gate_up_pack", None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pack = self.__dict__.get("_gate_up_pack")
        if pack is not None and pack.usable(x):
            g, u = pack(x)  # one GEMM for gate and up (inference)
        else:
            g, u = self.gate_proj(x), self.up_proj(x)
        return self.down_proj(F.silu(g) * u)


def route(router_logits: torch.Tensor, top_k: int, norm_topk_prob: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Router logits (N, E) -> (weights (N, k), expert ids (N, k)). Softmax in fp32 over all experts."""
    probs = torch.softmax(router_logits.float(), dim=-1)  # (N, E)
    weights, ids = torch.topk(probs, top_k, dim=-1)  # (N, k)
    if norm_topk_prob:
        weights = weights / weights.sum(dim=-1, keepdim=True)
    return weights, ids


class MoEFFN(nn.Module):
    def __init__(
        self,
        dim: int,
        n_experts: int,
        top_k: int,
        expert_hidden: int,
        norm_topk_prob: bool = True,
        shared_expert_hidden: int = 0,
    ):
        super().__init__()
        assert 1 <= top_k <= n_experts, f"top_k={top_k} must be in [1, n_experts={n_experts}]"
        self.n_experts, self.top_k, self.norm_topk_prob = n_experts, top_k, norm_topk_prob
        self.gate = Linear(dim, n_experts, bias=False)  # the router
        self.experts = nn.ModuleList(SwiGLU(dim, expert_hidden) for _ in range(n_experts))
        self.shared_expert = SwiGLU(dim, shared_expert_hidden) if shared_expert_hidden > 0 else None
        self.shared_expert_gate = Linear(dim, 1, bias=False) if shared_expert_hidden > 0 else None

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x (B, T, C) -> (out (B, T, C), router_logits (B, T, E))."""
        b, t, c = x.shape
        flat = x.reshape(-1, c)  # (N, C)
        logits = self.gate(flat)  # (N, E)
        weights, ids = route(logits, self.top_k, self.norm_topk_prob)  # (N, k), (N, k)
        weights = weights.to(flat.dtype)
        out = torch.zeros_like(flat)
        # Loop over experts that received tokens: gather their tokens, run, scatter-add weighted output.
        hit = torch.bincount(ids.reshape(-1), minlength=self.n_experts)
        for e in torch.nonzero(hit).flatten().tolist():
            tok, slot = torch.where(ids == e)  # tokens routed to e and which of their k slots
            y = self.experts[e](flat[tok]) * weights[tok, slot, None]
            out.index_add_(0, tok, y)
        if self.shared_expert is not None:
            out = out + torch.sigmoid(self.shared_expert_gate(flat)) * self.shared_expert(flat)
        return out.reshape(b, t, c), logits.reshape(b, t, -1)
