"""Mixture-of-Experts feed-forward block: softmax router, top-k routing, optional shared expert.

Follows the Qwen3-MoE / Mixtral formulation: `p = softmax(W_r x)` over all experts, keep the top-k,
optionally renormalise the kept weights (`norm_topk_prob`; Mixtral's softmax-over-top-k is the same
thing), and sum the chosen SwiGLU experts weighted by them. The optional shared expert (Qwen2-MoE /
DeepSeek style) always runs and is scaled by `sigmoid(w_g . x)`.

The block returns the router logits `(B, T, E)` so RL code (router-aware importance sampling) can
compare the old and new router distributions.

Routing replay (an explicit, typed hook; used by RL as a control for router-driven off-policyness, cf. the
"routing replay" of GSPO, arXiv 2507.18071, Sec. 5.3): `routing_hook(model, RoutingRecord())` records each MoE
layer's expert choice `(N, k)` during one forward; `routing_hook(model, RoutingReplay(ids))` makes a later forward
over the SAME token layout reuse those experts instead of its own top-k. The mixing weights are the current
router's probabilities of the replayed experts (renormalised when `norm_topk_prob`), so the router still gets a
gradient; only the discrete choice is frozen to the old policy's.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

from sherman.core import cpu_decode
from sherman.core.linear import FusedPack, Linear, fuse_for_training, fused_linear, fused_linears, plain_autograd


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
        elif fuse_for_training(pair := [self.gate_proj, self.up_proj], x):
            if plain_autograd() and cpu_decode.training_kernels(x):  # one GEMM, then silu(g) u forward/backward in C++
                return self.down_proj(cpu_decode.SwiGLUFn.apply(fused_linear(pair, x)))
            g, u = fused_linears(pair, x)  # one GEMM for gate and up (training)
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


def route_given(router_logits: torch.Tensor, ids: torch.Tensor, norm_topk_prob: bool) -> torch.Tensor:
    """Mixing weights (N, k) of the given experts ids (N, k) under the current router logits (N, E)."""
    probs = torch.softmax(router_logits.float(), dim=-1)  # (N, E)
    weights = probs.gather(-1, ids)  # (N, k)
    if norm_topk_prob:
        weights = weights / weights.sum(dim=-1, keepdim=True)
    return weights


@dataclass
class RoutingRecord:
    """Hook that records the expert choice of every MoE layer during one forward."""

    ids: list[torch.Tensor] = field(default_factory=list)
    """Per MoE layer, in forward order: chosen experts (N, k) with N = B * T of that forward."""


@dataclass
class RoutingReplay:
    """Hook that makes a forward reuse a recorded expert choice (routing replay)."""

    ids: list[torch.Tensor]
    """Per MoE layer, in forward order: the experts (N, k) to use; the forward must have the same (B, T) layout."""
    used: list[torch.Tensor] = field(default_factory=list)
    """Filled by the forward: the experts each layer actually used (for checks)."""


RoutingHook = RoutingRecord | RoutingReplay


@contextmanager
def routing_hook(model: nn.Module, hook: RoutingHook) -> Iterator[RoutingHook]:
    """Attach `hook` to every MoE block of `model` (layer index = order of the blocks) for the duration."""
    blocks = [m for m in model.modules() if isinstance(m, MoEFFN)]
    assert blocks, "routing_hook needs a model with MoE layers"
    if isinstance(hook, RoutingReplay):
        assert len(hook.ids) == len(blocks), f"replay has {len(hook.ids)} layers of expert ids, the model {len(blocks)} MoE layers"
    for i, m in enumerate(blocks):
        m.routing, m.routing_layer = hook, i
    try:
        yield hook
    finally:
        for m in blocks:
            m.routing, m.routing_layer = None, -1


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
        self.routing: RoutingHook | None = None  # set only inside `routing_hook`
        self.routing_layer = -1

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x (B, T, C) -> (out (B, T, C), router_logits (B, T, E))."""
        b, t, c = x.shape
        flat = x.reshape(-1, c)  # (N, C)
        logits = self.gate(flat)  # (N, E)
        hook = self.routing
        if isinstance(hook, RoutingReplay):
            ids = hook.ids[self.routing_layer].to(flat.device)  # (N, k) the old policy's experts
            assert ids.shape == (flat.shape[0], self.top_k), f"replayed ids {tuple(ids.shape)} do not match {flat.shape[0]} tokens x top-{self.top_k}"
            weights = route_given(logits, ids, self.norm_topk_prob)
            hook.used.append(ids)
        else:
            weights, ids = route(logits, self.top_k, self.norm_topk_prob)  # (N, k), (N, k)
            if isinstance(hook, RoutingRecord):
                hook.ids.append(ids.detach())
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
