"""Block-sparse decode over selected KV blocks, block summaries, and Quest-style block scoring.

The KV cache (`core/kv_cache.py`) stores keys per layer as (B, H_kv, T_max, D); its block-major view
(B, H_kv, T_max // bs, bs, D) is free. A decode step at slot t splits the context into the
`nc = t // bs` complete blocks before the query's own block, from which a backend selects a few, and the
local block [nc * bs, t] (the partial last block, holding the query's own key), which is always attended.

Block summaries (Quest, Tang et al. 2024, Sec. 3; ReSA, arXiv 2506.04108, Sec. 2.2): per layer, KV head and
block, the channel-wise max and min of the (post-RoPE) keys over the block's valid slots. They live in
`cache.extras["blocks"]`, preallocated once per cache, and are written only when a block completes. Any write
at slot s (a prefill, a decode step, a ReSA rectification that rewinds and re-encodes) first marks every
block from s // bs on as stale, so re-written blocks are always re-summarised.

Quest score of block j for a group of query heads (ReSA: shared by the group, with the group-mean query q):
    score_j = kmax_j . max(q, 0) + kmin_j . min(q, 0)        (an upper bound of max_t q . k_t over the block)

Sparse decode (`sparse_decode`): the selected blocks' keys and values are gathered with `index_select` into
preallocated buffers, then matmul -> softmax (jointly with the local block) -> matmul, the grouped query
heads folded into the query dimension as in the dense path (`attention/dense.py`).

Backend "quest" (this file) = the ReSA sparse step without rectification. Options (in `AttnContext.options`):
`budget` (kept fraction of the complete blocks if <= 1, else a token budget), `block_size`, `min_blocks`,
`dense` (True forces a dense pass, used by rectification), `select` ("quest", default; "oracle" = the group's true
attention mass per block, an upper reference that reads every key; "random" = uniform scores from the torch
`generator` option, a lower reference; both for analysis only), `impl` ("torch" = gather + matmuls, default; "cpp" = the
fused C++ kernel of `attention/fused.py`). Prefill (T_q > 1) is always dense.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field

import torch

from sherman.attention import fused
from sherman.core.attention import AttnContext, dense_attention
from sherman.core.kv_cache import KVCache


@dataclass
class SparseConfig:
    """Options shared by every block-sparse backend (read from `AttnContext.options`)."""

    block_size: int = 64
    """Tokens per KV block (SeerAttention-R uses 64; the experiment uses 16 for its short contexts)."""
    budget: float = 0.1
    """Kept fraction of the complete blocks if <= 1 (1.0 = all, equals dense); a token budget if > 1."""
    min_blocks: int = 1
    """Never keep fewer complete blocks than this (ReSA's minimum block count)."""

    def __post_init__(self) -> None:
        if self.block_size < 1:
            raise ValueError(f"block_size must be >= 1, got {self.block_size}")
        if not self.budget > 0:
            raise ValueError(f"budget must be > 0 (a kept fraction in (0, 1] or a token count), got {self.budget}")
        if self.min_blocks < 0:
            raise ValueError(f"min_blocks must be >= 0, got {self.min_blocks}")


def sparse_config(options: dict) -> SparseConfig:
    """Build a validated SparseConfig from backend options (unknown keys are left to the backend)."""
    keys = ("block_size", "budget", "min_blocks")
    return SparseConfig(**{k: options[k] for k in keys if k in options})


def n_keep(budget: float, n_complete: int, block_size: int, min_blocks: int) -> int:
    """Number of complete blocks to keep out of `n_complete`."""
    k = math.ceil(budget * n_complete - 1e-9) if budget <= 1.0 else int(budget) // block_size
    return max(0, min(n_complete, max(min_blocks, k)))


# ----------------------------------------------------------------------------------------------------------------
# block summaries


@dataclass
class BlockSummaries:
    """Per-layer key max / min per block (Quest/ReSA scoring), preallocated for the whole cache."""

    block_size: int
    kmax: list[torch.Tensor]  # per layer (B, H_kv, NB_max, D)
    kmin: list[torch.Tensor]  # per layer (B, H_kv, NB_max, D)
    has_valid: list[torch.Tensor]  # per layer (B, NB_max) bool: the block holds at least one real token
    n_done: list[int]  # per layer: blocks [0, n_done) are summarised and up to date
    buffers: dict = field(default_factory=dict)  # gather buffers of sparse_decode, grow-only

    @classmethod
    def allocate(cls, cache: KVCache, block_size: int) -> BlockSummaries:
        b, h, t_max, d = cache.k[0].shape
        nb = t_max // block_size
        n = len(cache.k)
        dt, dev = cache.k[0].dtype, cache.k[0].device
        return cls(
            block_size=block_size,
            kmax=[torch.zeros(b, h, nb, d, dtype=dt, device=dev) for _ in range(n)],
            kmin=[torch.zeros(b, h, nb, d, dtype=dt, device=dev) for _ in range(n)],
            has_valid=[torch.zeros(b, nb, dtype=torch.bool, device=dev) for _ in range(n)],
            n_done=[0] * n,
        )


def summaries(cache: KVCache, block_size: int) -> BlockSummaries:
    """The cache's block summaries (allocated on first use)."""
    st = cache.extras.get("blocks")
    if st is None or st.kmax[0].shape[0] != cache.batch:
        st = cache.extras["blocks"] = BlockSummaries.allocate(cache, block_size)
    assert st.block_size == block_size, f"cache summarised with block_size {st.block_size}, asked for {block_size}"
    return st


def block_minmax(kb: torch.Tensor, vb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """kb (B, H, n, bs, D) keys, vb (B, n, bs) validity -> kmax, kmin (B, H, n, D) over valid slots, has (B, n).

    Blocks without a valid slot get zeros (they are masked out by `has`)."""
    m = vb[:, None, :, :, None]  # (B, 1, n, bs, 1)
    kmax = kb.masked_fill(~m, float("-inf")).amax(3)  # (B, H, n, D)
    kmin = kb.masked_fill(~m, float("inf")).amin(3)
    has = vb.any(-1)  # (B, n)
    hm = has[:, None, :, None]
    return kmax.where(hm, 0.0), kmin.where(hm, 0.0), has


def mark_written(n_done: list[int], layer: int, q_start: int, block_size: int) -> int:
    """A write at slot q_start makes every block from q_start // bs on stale; returns the first stale block."""
    n_done[layer] = min(n_done[layer], q_start // block_size)
    return n_done[layer]


def update_summaries(st: BlockSummaries, layer: int, k: torch.Tensor, valid: torch.Tensor, q_start: int) -> None:
    """Invalidate blocks touched by a write at q_start, then summarise every complete block of k (B, H, T, D)."""
    bs = st.block_size
    lo = mark_written(st.n_done, layer, q_start, bs)
    hi = k.shape[2] // bs
    if hi <= lo:
        return
    b, h, _, d = k.shape
    kb = k[:, :, lo * bs : hi * bs].reshape(b, h, hi - lo, bs, d)  # (B, H, n, bs, D)
    vb = valid[:, lo * bs : hi * bs].reshape(b, hi - lo, bs)  # (B, n, bs)
    kmax, kmin, has = block_minmax(kb, vb)
    st.kmax[layer][:, :, lo:hi] = kmax
    st.kmin[layer][:, :, lo:hi] = kmin
    st.has_valid[layer][:, lo:hi] = has
    st.n_done[layer] = hi


def quest_scores(q: torch.Tensor, kmax: torch.Tensor, kmin: torch.Tensor, has: torch.Tensor) -> torch.Tensor:
    """ReSA/Quest block scores with the group-mean query.

    q (B, H_q, 1, D); kmax, kmin (B, H_kv, n, D); has (B, n) -> scores (B, H_kv, n), -inf for empty blocks."""
    b, hq, _, d = q.shape
    hkv = kmax.shape[1]
    qm = q.reshape(b, hkv, hq // hkv, d).mean(2)  # (B, H_kv, D)
    s = torch.matmul(kmax, qm.clamp(min=0)[..., None]) + torch.matmul(kmin, qm.clamp(max=0)[..., None])  # (B, H_kv, n, 1)
    return s.squeeze(-1).masked_fill(~has[:, None, :], float("-inf"))


def oracle_scores(q: torch.Tensor, k: torch.Tensor, valid: torch.Tensor, nc: int, block_size: int) -> torch.Tensor:
    """True attention mass of each complete block, summed over the group's query heads (analysis reference).

    q (B, H_q, 1, D); k (B, H_kv, T, D); valid (B, T) -> (B, H_kv, nc)."""
    b, hq, _, d = q.shape
    hkv = k.shape[1]
    s = torch.matmul(q.reshape(b, hkv, hq // hkv, d), k.transpose(-1, -2)) / math.sqrt(d)  # (B, H_kv, G, T)
    p = torch.softmax(s.masked_fill(~valid[:, None, None, :], float("-inf")), dim=-1)
    return p[..., : nc * block_size].reshape(b, hkv, hq // hkv, nc, block_size).sum((2, 4))


def select_topk(scores: torch.Tensor, k: int) -> torch.Tensor:
    """scores (B, H, n) -> the indices of the k best blocks, ascending (B, H, k)."""
    if k >= scores.shape[-1]:
        return torch.arange(scores.shape[-1], device=scores.device).expand(*scores.shape[:-1], -1)
    return scores.topk(k, dim=-1, sorted=False).indices.sort(dim=-1).values


# ----------------------------------------------------------------------------------------------------------------
# sparse decode


def _buffer(buffers: dict, name: str, n: int, like: torch.Tensor) -> torch.Tensor:
    """A grow-only flat buffer of at least n rows of like's last dim."""
    buf = buffers.get(name)
    if buf is None or buf.shape[0] < n or buf.dtype != like.dtype:
        buf = buffers[name] = torch.empty(max(n, 1), like.shape[-1], dtype=like.dtype, device=like.device)
    return buf[:n]


def sparse_decode(
    q: torch.Tensor,
    k_all: torch.Tensor,
    v_all: torch.Tensor,
    valid: torch.Tensor,
    idx: torch.Tensor,
    end: int,
    block_size: int,
    buffers: dict | None = None,
    sel_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Attention of one query per row over the selected complete blocks plus the local block.

    q (B, H_q, 1, D) at slot end - 1; k_all, v_all: the full cache tensors (B, H_kv, T_max, D), contiguous;
    valid (B, >= end) bool; idx (B, H_kv, k) selected complete blocks (each < (end - 1) // bs);
    sel_mask (B, H_kv, k) bool, optional: False drops a selected block (threshold selection).
    Returns (B, H_q, 1, D).
    """
    b, hq, _, d = q.shape
    hkv, t_max = k_all.shape[1], k_all.shape[2]
    g, bs = hq // hkv, block_size
    nc = (end - 1) // bs
    nsel = idx.shape[-1]
    s_len = nsel * bs
    buffers = {} if buffers is None else buffers
    qg = q.reshape(b, hkv, g, d) * (1.0 / math.sqrt(d))  # (B, H_kv, G, D)
    kt = k_all[:, :, nc * bs : end]  # (B, H_kv, L, D) local block
    vt = v_all[:, :, nc * bs : end]
    s_loc = torch.matmul(qg, kt.transpose(-1, -2))  # (B, H_kv, G, L)
    s_loc = s_loc.masked_fill(~valid[:, None, None, nc * bs : end], float("-inf"))
    if nsel == 0:
        return torch.matmul(torch.softmax(s_loc, -1), vt).reshape(b, hq, 1, d)
    tok = (idx[..., None] * bs + torch.arange(bs, device=q.device)).reshape(b, hkv, s_len)  # (B, H_kv, S) slots
    flat = (tok + (torch.arange(b * hkv, device=q.device) * t_max).view(b, hkv, 1)).reshape(-1)  # (B*H_kv*S,)
    if k_all.requires_grad or v_all.requires_grad:  # autograd (e.g. a cache filled outside no_grad): no out= buffers
        ks, vs = k_all.reshape(-1, d).index_select(0, flat), v_all.reshape(-1, d).index_select(0, flat)
    else:
        ks = torch.index_select(k_all.view(-1, d), 0, flat, out=_buffer(buffers, "k", flat.numel(), k_all))
        vs = torch.index_select(v_all.view(-1, d), 0, flat, out=_buffer(buffers, "v", flat.numel(), v_all))
    ks, vs = ks.view(b, hkv, s_len, d), vs.view(b, hkv, s_len, d)  # (B, H_kv, S, D)
    keep = valid.gather(1, tok.reshape(b, hkv * s_len)).view(b, hkv, 1, s_len)  # (B, H_kv, 1, S)
    if sel_mask is not None:
        keep = keep & sel_mask[..., None].expand(b, hkv, nsel, bs).reshape(b, hkv, 1, s_len)
    s_sel = torch.matmul(qg, ks.transpose(-1, -2)).masked_fill(~keep, float("-inf"))  # (B, H_kv, G, S)
    p = torch.softmax(torch.cat([s_sel, s_loc], dim=-1), dim=-1)  # (B, H_kv, G, S + L)
    out = torch.matmul(p[..., :s_len], vs) + torch.matmul(p[..., s_len:], vt)  # (B, H_kv, G, D)
    return out.reshape(b, hq, 1, d)


@contextlib.contextmanager
def torch_threads(n: int):
    """Run the enclosed torch ops on at most n intra-op threads (the count restored on exit)."""
    before = torch.get_num_threads()
    if n >= before:
        yield
        return
    torch.set_num_threads(max(1, n))
    try:
        yield
    finally:
        torch.set_num_threads(before)


@contextlib.contextmanager
def serial_ops():
    """Run the enclosed torch ops on one thread (torch's intra-op count restored on exit; ~0.4 us per toggle).

    A decode step's scoring and selection are dozens of tiny ops (block scores over n blocks, top-k, one block's
    summary), several of which torch would split across its OpenMP threads (vectorised sin/cos from 2048 elements,
    softmax rows, MKL's small GEMMs). Split work that small gains nothing, and when another process holds the other
    core each such op waits for a time slice: measured at load ~8 on 2 cores, 15-19 ms per op and a 10% Seer step 4x
    slower than dense (issue 20). The KV read itself (the gather + matmuls or the fused kernel) stays outside."""
    with torch_threads(1):
        yield


def is_sparse_step(q: torch.Tensor, ctx: AttnContext) -> bool:
    """A decode step (one query at the last slot, with a cache) that a sparse backend may run sparsely."""
    return ctx.cache is not None and q.shape[2] == 1 and not ctx.options.get("dense", False)


def quest_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, ctx: AttnContext) -> torch.Tensor:
    """Backend "quest": block-sparse decode with ReSA/Quest scores; dense for prefill and rectification passes."""
    if ctx.cache is None:
        return dense_attention(q, k, v, ctx)
    cfg = sparse_config(ctx.options)
    cache, layer = ctx.cache, ctx.layer
    end = k.shape[2]
    st = summaries(cache, cfg.block_size)
    if not is_sparse_step(q, ctx):
        update_summaries(st, layer, k, cache.valid[:, :end], ctx.q_start)
        return dense_attention(q, k, v, ctx)
    with serial_ops():  # one block's summary, the scores and the top-k: tiny ops (see `serial_ops`)
        update_summaries(st, layer, k, cache.valid[:, :end], ctx.q_start)
        idx = select_quest(q, k, ctx, st, cfg, end)
    return decode_selected(q, cache, layer, idx, end, cfg.block_size, st.buffers, None, ctx.options.get("impl", "torch"))


def select_quest(q: torch.Tensor, k: torch.Tensor, ctx: AttnContext, st: BlockSummaries, cfg: SparseConfig, end: int) -> torch.Tensor:
    """The complete blocks a "quest" decode step attends: (B, H_kv, k) ascending."""
    cache, layer = ctx.cache, ctx.layer
    nc = (end - 1) // cfg.block_size
    kk = n_keep(cfg.budget, nc, cfg.block_size, cfg.min_blocks)
    if kk == nc:
        idx = torch.arange(nc, device=q.device).expand(q.shape[0], k.shape[1], nc)
    else:
        how = ctx.options.get("select", "quest")
        if how == "quest" and kk >= 1 and fused.usable(q, ctx.options.get("impl", "torch")):  # scores + top-k in one C++ call
            return fused.quest_select(q, st.kmax[layer], st.kmin[layer], st.has_valid[layer], nc, kk)
        if how == "quest":
            scores = quest_scores(q, st.kmax[layer][:, :, :nc], st.kmin[layer][:, :, :nc], st.has_valid[layer][:, :nc])
        elif how == "oracle":
            scores = oracle_scores(q, k, cache.valid[:, :end], nc, cfg.block_size)
        elif how == "random":
            scores = torch.rand(q.shape[0], k.shape[1], nc, generator=ctx.options.get("generator"), device=q.device)
        else:
            raise ValueError(f"select must be 'quest', 'oracle' or 'random', got {how!r}")
        idx = select_topk(scores, kk)
    return idx


def decode_selected(q, cache: KVCache, layer: int, idx, end: int, block_size: int, buffers: dict, sel_mask, impl: str) -> torch.Tensor:
    """Run the chosen implementation: "torch" (gather + matmuls) or "cpp" (fused online softmax, `attention/fused.py`)."""
    if impl not in ("torch", "cpp"):
        raise ValueError(f"impl must be 'torch' or 'cpp', got {impl!r}")
    grad = cache.k[layer].requires_grad
    if impl == "cpp" and sel_mask is None and q.dtype == torch.float32 and not q.is_cuda and not grad:
        return fused.fused_sparse_decode(q, cache.k[layer], cache.v[layer], cache.valid, idx, end, block_size)
    b, hkv, nsel = idx.shape
    kv_bytes = 2 * b * hkv * (nsel + 1) * block_size * q.shape[-1] * q.element_size()
    with torch_threads(fused.kernel_threads(kv_bytes)):  # as the fused kernel: threads for the work and the idle cores only
        return sparse_decode(q, cache.k[layer], cache.v[layer], cache.valid, idx, end, block_size, buffers, sel_mask)
