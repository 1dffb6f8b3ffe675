"""ReSA: Rectified Sparse Attention (Sun et al., arXiv 2506.04108).

Sec. 2.2 (group block sparse attention): decoding attends, per KV head, to the blocks with the highest
Quest-style score computed from the block key max/min and the mean query of the head group,
    score_j = kmax_j . max(q, 0) + kmin_j . min(q, 0),
keeping a fraction of the blocks (and at least a minimum number), plus the local block. That step is
`sparse.quest_attention`, shared with the plain "quest" backend.

Sec. 2.3 (dense rectification): sparse decoding writes keys and values computed from approximate attention,
and the error accumulates in the KV cache. Every f generated tokens (default f = 32) the last f tokens are
re-encoded with dense attention through the whole model in one parallel pass (like a small prefill), their
KV entries overwritten, and decoding continues sparsely. This lives in the one sampling loop: `generate`
calls `core.generate.decode_forward`, which on every f-th step rewinds the cache by f - 1 slots and runs the
last f tokens with `options["dense"] = True`. The sparse backends mark every block from the rewind point on
as stale and re-summarise it on that pass (`sparse.update_summaries`), so the touched blocks' summaries are
refreshed. With f = 1 every step is dense, which is how the parity test checks the loop.

Differences from the paper: block size, budget and minimum block count are options (the paper's kernel uses
fixed values tuned for GPUs); the rectification pass goes through our dense path instead of a fused kernel.

Use: `generate(model, prompts, params, attn=resa_context(budget=0.1, rectify_every=32))`, or
`sherman generate --attn resa --budget 0.1 --rectify-every 32 ...`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from sherman.attention.sparse import SparseConfig, quest_attention
from sherman.core.attention import AttnContext


@dataclass
class ResaConfig(SparseConfig):
    """ReSA options: the sparse step's SparseConfig plus the rectification period."""

    rectify_every: int = 32
    """Re-encode the last f generated tokens densely every f steps (0 = never, 1 = dense decoding)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.rectify_every < 0:
            raise ValueError(f"rectify_every must be >= 0, got {self.rectify_every}")


def resa_context(budget: float = 0.1, block_size: int = 64, min_blocks: int = 1, rectify_every: int = 32) -> AttnContext:
    """An AttnContext for ReSA decoding through `core.generate.generate`."""
    cfg = ResaConfig(block_size=block_size, budget=budget, min_blocks=min_blocks, rectify_every=rectify_every)
    return AttnContext(backend="resa", options=vars(cfg).copy())


def resa_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, ctx: AttnContext) -> torch.Tensor:
    """Backend "resa": the group block-sparse step (Quest scores, group-mean query); rectification is in generate."""
    return quest_attention(q, k, v, ctx)
