"""SeerAttention-R: a learned block-selection gate for sparse decoding (Gao et al., arXiv 2506.08889).

Sec. 2 (architecture). Per layer, an AttnGate scores KV blocks for the current query:
  * K branch: the keys of each block, taken before RoPE, are pooled over the block with max, min and mean;
    the three (D,) vectors are concatenated (3D,) and projected per KV head to the gate width D_g; RoPE is
    re-applied at the block's position (here: the RoPE position of the block's first slot).
  * Q branch: the G query heads of a GQA group, before RoPE, are concatenated (G*D,) and projected per KV
    head to one gate query (no query pooling), RoPE applied at the query's position. All heads of a group
    therefore share one block choice, which is what makes the gathered KV read shared by the group.
  * Gate score: softmax over blocks of q_g . k_g / sqrt(D_g).
Our cache holds post-RoPE keys and the backend receives post-RoPE queries, so both are de-rotated (RoPE is
a rotation, its inverse is the rotation by -theta) with the per-row RoPE positions derived from the cache's
validity mask (left padding counts no position), matching the core model's positions.

Sec. 3 (training). Self-distillation on the FROZEN model: for every query t, the target over blocks is the
true attention of each head max-pooled within each block, then max-pooled across the heads of the group,
renormalised to sum to one; the loss is KL(target || gate softmax). Only the gate parameters train.
Selectable blocks for query t are the complete blocks before its own block (j < t // bs), exactly the set a
decode step at slot t chooses from (the local block is always attended; see `sparse.py`).

Sec. 4 (inference). Selection by a token budget (top budget / block_size blocks) or by a threshold on the
gate softmax (keep blocks with probability >= tau). The compressed keys k_g are cached per layer in
`cache.extras["seer"]` and computed only when a block completes.

Run: `sherman seer train CKPT` (saves `seer_gates.pt` beside the checkpoint), then
`sherman generate CKPT --attn seer --budget 0.1`.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn as nn

from sherman.attention import fused
from sherman.attention.sparse import decode_selected, mark_written, n_keep, select_topk, serial_ops
from sherman.core.attention import AttnContext, dense_attention
from sherman.core.common import ShermanError
from sherman.core.kv_cache import KVCache
from sherman.core.model import Transformer, apply_rope, default_inv_freq, padded_positions

GATES_FILE = "seer_gates.pt"


@dataclass
class SeerConfig:
    """Shape and hyper-parameters of the gates of one model."""

    n_layers: int
    """Decoder layers of the model (one gate each)."""
    n_heads: int
    """Query heads of the model."""
    n_kv_heads: int
    """KV heads of the model (one gate query per group)."""
    head_dim: int
    """Per-head width of the model."""
    rope_theta: float = 10000.0
    """RoPE base, the model's (used to de-rotate q, k and to rotate the gate's q_g, k_g)."""
    block_size: int = 64
    """KV block size the gate scores (the paper's 64)."""
    gate_dim: int = 0
    """Gate width D_g (even); 0 = head_dim."""

    def __post_init__(self) -> None:
        if self.gate_dim == 0:
            self.gate_dim = self.head_dim
        assert self.gate_dim % 2 == 0, f"gate_dim must be even for RoPE, got {self.gate_dim}"
        assert self.block_size >= 1 and self.n_heads % self.n_kv_heads == 0

    @classmethod
    def for_model(cls, model: Transformer, block_size: int = 64, gate_dim: int = 0) -> SeerConfig:
        c = model.cfg
        if c.rope_scaling is not None:  # the gate de-rotates q and k with plain RoPE (`unrope`)
            raise ShermanError(f"SeerAttention-R's gate supports plain RoPE only, this model uses {c.rope_scaling.rope_type!r} scaling")
        return cls(c.n_layers, c.n_heads, c.n_kv_heads, c.head_dim, c.rope_theta, block_size, gate_dim)


# ----------------------------------------------------------------------------------------------------------------
# pure functions


_INV_FREQ: dict[tuple, torch.Tensor] = {}


def inv_freq(dim: int, theta: float, device=None) -> torch.Tensor:
    """The core model's plain RoPE frequencies (`default_inv_freq`, (dim/2,) float32), cached per (dim, theta, device)."""
    key = (dim, theta, torch.device(device) if device is not None else torch.device("cpu"))
    inv = _INV_FREQ.get(key)
    if inv is None:
        inv = _INV_FREQ[key] = default_inv_freq(dim, theta, key[2])  # (dim/2,)
    return inv


def rope_at(positions: torch.Tensor, dim: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """positions (B, T) -> cos, sin (B, 1, T, dim) in the core model's half-split layout."""
    f = positions.float()[..., None] * inv_freq(dim, theta, positions.device)  # (B, T, dim/2)
    emb = torch.cat([f, f], dim=-1)[:, None]  # (B, 1, T, dim)
    return emb.cos(), emb.sin()


def unrope(x: torch.Tensor, positions: torch.Tensor, theta: float) -> torch.Tensor:
    """Undo RoPE: x (B, H, T, D) rotated at positions (B, T) -> the pre-RoPE vectors."""
    cos, sin = rope_at(positions, x.shape[-1], theta)
    return apply_rope(x, cos.to(x.dtype), -sin.to(x.dtype))


def pool_blocks(kb: torch.Tensor, vb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """kb (B, H, n, bs, D) pre-RoPE keys, vb (B, n, bs) validity -> [max, min, mean] (B, H, n, 3D), has (B, n).

    Only valid slots are pooled; a block without one gets zeros (and is masked by `has`)."""
    m = vb[:, None, :, :, None]  # (B, 1, n, bs, 1)
    cnt = m.sum(3).clamp(min=1)  # (B, 1, n, 1)
    kmax = kb.masked_fill(~m, float("-inf")).amax(3)
    kmin = kb.masked_fill(~m, float("inf")).amin(3)
    kmean = kb.masked_fill(~m, 0.0).sum(3) / cnt
    has = vb.any(-1)  # (B, n)
    hm = has[:, None, :, None]
    return torch.cat([kmax.where(hm, 0.0), kmin.where(hm, 0.0), kmean], dim=-1), has


def distill_target(probs: torch.Tensor, block_size: int, n_kv_heads: int, q_start: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """The gate's self-distillation target (SeerAttention-R Sec. 3).

    probs (B, H_q, T_q, T_k): true attention of queries at slots q_start.. -> target (B, H_kv, T_q, NB) with
    NB = T_k // block_size: max-pooled within each block, max-pooled across the heads of each group, restricted
    to the selectable blocks j < t // bs and renormalised to sum to one; and has (B, T_q) = the query has at
    least one selectable block (rows without one are all zero).
    """
    b, hq, tq, tk = probs.shape
    bs = block_size
    nb = tk // bs
    pooled = probs[..., : nb * bs].reshape(b, hq, tq, nb, bs).amax(-1)  # (B, H_q, T_q, NB)
    pooled = pooled.reshape(b, n_kv_heads, hq // n_kv_heads, tq, nb).amax(2)  # (B, H_kv, T_q, NB)
    sel = selectable(q_start, tq, nb, bs, probs.device)  # (T_q, NB)
    pooled = pooled * sel
    z = pooled.sum(-1, keepdim=True)
    return pooled / z.clamp(min=1e-30), sel.any(-1)[None].expand(b, tq)


def selectable(q_start: int, t_q: int, nb: int, block_size: int, device=None) -> torch.Tensor:
    """(T_q, NB) bool: block j is a complete block before query t's own block (j < t // bs)."""
    t = torch.arange(q_start, q_start + t_q, device=device)[:, None]
    return torch.arange(nb, device=device)[None, :] < (t // block_size)


def kl_to_gate(target: torch.Tensor, logits: torch.Tensor, sel: torch.Tensor, row_ok: torch.Tensor) -> torch.Tensor:
    """Mean over rows with a selectable block of KL(target || softmax(logits over selectable blocks)).

    target, logits (B, H, T, NB); sel (T, NB) bool; row_ok (B, T) bool."""
    logp = torch.log_softmax(logits.masked_fill(~sel, float("-inf")), dim=-1)
    logp = logp.masked_fill(~sel, 0.0)
    kl = (target * (torch.log(target.clamp(min=1e-30)) - logp)).sum(-1)  # (B, H, T)
    w = row_ok[:, None, :].expand_as(kl).float()
    return (kl * w).sum() / w.sum().clamp(min=1)


# ----------------------------------------------------------------------------------------------------------------
# the gate


class AttnGate(nn.Module):
    """One layer's gate: per-KV-head linear maps for the K branch (3D -> D_g) and the Q branch (G*D -> D_g)."""

    def __init__(self, cfg: SeerConfig):
        super().__init__()
        self.cfg = cfg
        g = cfg.n_heads // cfg.n_kv_heads
        d, dg = cfg.head_dim, cfg.gate_dim
        self.wq = nn.Parameter(torch.randn(cfg.n_kv_heads, g * d, dg) / math.sqrt(g * d))
        self.wk = nn.Parameter(torch.randn(cfg.n_kv_heads, 3 * d, dg) / math.sqrt(3 * d))

    def gate_q(self, q_pre: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """q_pre (B, H_q, T, D) pre-RoPE queries at positions (B, T) -> gate queries (B, H_kv, T, D_g)."""
        b, hq, t, d = q_pre.shape
        hkv = self.cfg.n_kv_heads
        x = q_pre.reshape(b, hkv, hq // hkv, t, d).permute(0, 1, 3, 2, 4).reshape(b, hkv, t, -1)  # (B, H_kv, T, G*D)
        y = torch.einsum("bhtx,hxe->bhte", x, self.wq.to(x.dtype))  # (B, H_kv, T, D_g)
        cos, sin = rope_at(positions, y.shape[-1], self.cfg.rope_theta)
        return apply_rope(y, cos.to(y.dtype), sin.to(y.dtype))

    def gate_k(self, pooled: torch.Tensor, block_pos: torch.Tensor) -> torch.Tensor:
        """pooled (B, H_kv, n, 3D) block summaries of pre-RoPE keys at block positions (B, n) -> (B, H_kv, n, D_g)."""
        y = torch.einsum("bhnx,hxe->bhne", pooled, self.wk.to(pooled.dtype))
        cos, sin = rope_at(block_pos, y.shape[-1], self.cfg.rope_theta)
        return apply_rope(y, cos.to(y.dtype), sin.to(y.dtype))

    def block_keys(self, k_post: torch.Tensor, valid: torch.Tensor, slot_pos: torch.Tensor, lo: int, hi: int,
                   pos_from: int = 0) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
        """Compressed keys of blocks [lo, hi) from post-RoPE keys k_post (B, H_kv, >= hi*bs, D).

        valid (B, >= hi*bs) bool; slot_pos (B, >= hi*bs - pos_from): RoPE position of every slot from slot pos_from on
        (pos_from <= lo*bs). Returns (B, H_kv, n, D_g), has (B, n)."""
        bs = self.cfg.block_size
        b, h, _, d = k_post.shape
        n = hi - lo
        pos = slot_pos[:, lo * bs - pos_from : hi * bs - pos_from]  # (B, n*bs)
        k = unrope(k_post[:, :, lo * bs : hi * bs], pos, self.cfg.rope_theta)  # (B, H, n*bs, D)
        pooled, has = pool_blocks(k.reshape(b, h, n, bs, d), valid[:, lo * bs : hi * bs].reshape(b, n, bs))
        return self.gate_k(pooled, pos[:, ::bs]), has


class SeerGates(nn.Module):
    """The gates of every layer of one model, saved as `seer_gates.pt` ({"config", "state_dict"} in safetensors + JSON)."""

    def __init__(self, cfg: SeerConfig):
        super().__init__()
        self.cfg = cfg
        self.layers = nn.ModuleList(AttnGate(cfg) for _ in range(cfg.n_layers))

    def save(self, path: str | Path) -> None:
        """A safetensors file (weights + JSON config in its header; no pickle), whatever the file name."""
        from sherman.core.checkpoint import save_tree_file

        save_tree_file(Path(path), {"config": asdict(self.cfg), "state_dict": self.state_dict()})

    @classmethod
    def load(cls, path: str | Path, map_location="cpu") -> SeerGates:
        p = Path(path)
        if not p.is_file():
            raise FileNotFoundError(f"{p}: no Seer gates file (train them with `sherman seer train CKPT`)")
        from sherman.core.checkpoint import load_tree_file

        blob = load_tree_file(p)
        gates = cls(SeerConfig(**blob["config"]))
        gates.load_state_dict(blob["state_dict"])
        return gates.to(map_location).eval()

    def check_model(self, model: Transformer) -> None:
        c, m = self.cfg, model.cfg
        got = (c.n_layers, c.n_heads, c.n_kv_heads, c.head_dim)
        want = (m.n_layers, m.n_heads, m.n_kv_heads, m.head_dim)
        if got != want:
            raise ValueError(f"Seer gates built for (layers, heads, kv_heads, head_dim) = {got}, model has {want}")


_LOADED: dict[str, SeerGates] = {}


def resolve_gates(g) -> SeerGates:
    """options["gates"]: a SeerGates, or a path to seer_gates.pt / a directory holding one (loaded once)."""
    if isinstance(g, SeerGates):
        return g
    if g is None:
        raise ValueError("the seer backend needs options['gates'] (a SeerGates or the path of seer_gates.pt)")
    p = Path(g)
    p = p / GATES_FILE if p.is_dir() else p
    key = str(p.resolve())
    if key not in _LOADED:
        _LOADED[key] = SeerGates.load(p)
    return _LOADED[key]


# ----------------------------------------------------------------------------------------------------------------
# the backend


@dataclass
class SeerState:
    """Per-layer compressed-key cache of the gate, in cache.extras["seer"]."""

    kg: list[torch.Tensor]  # per layer (B, H_kv, NB_max, D_g)
    has_valid: list[torch.Tensor]  # per layer (B, NB_max)
    n_done: list[int]
    valid_before: list[torch.Tensor]  # per layer (B, NB_max + 1) int64: valid slots in blocks [0, j), for j <= n_done
    buffers: dict = field(default_factory=dict)

    @classmethod
    def allocate(cls, cache: KVCache, cfg: SeerConfig) -> SeerState:
        b, h, t_max, _ = cache.k[0].shape
        nb = t_max // cfg.block_size
        n, dt, dev = len(cache.k), cache.k[0].dtype, cache.k[0].device
        return cls(
            kg=[torch.zeros(b, h, nb, cfg.gate_dim, dtype=dt, device=dev) for _ in range(n)],
            has_valid=[torch.zeros(b, nb, dtype=torch.bool, device=dev) for _ in range(n)],
            n_done=[0] * n,
            valid_before=[torch.zeros(b, nb + 1, dtype=torch.long, device=dev) for _ in range(n)],
        )


def seer_state(cache: KVCache, cfg: SeerConfig) -> SeerState:
    st = cache.extras.get("seer")
    if st is None or st.kg[0].shape[0] != cache.batch:
        st = cache.extras["seer"] = SeerState.allocate(cache, cfg)
    return st


def update_gate_keys(st: SeerState, gate: AttnGate, layer: int, k: torch.Tensor, valid: torch.Tensor, q_start: int) -> None:
    """Invalidate blocks from q_start // bs on, then compress every complete block of k (B, H_kv, T, D)."""
    bs = gate.cfg.block_size
    lo = mark_written(st.n_done, layer, q_start, bs)
    hi = k.shape[2] // bs
    if hi <= lo:
        return
    # RoPE positions of the window's slots (`padded_positions` of the whole row, computed from the window alone: each
    # decode step costs O(block), not O(context))
    before = st.valid_before[layer][:, lo : lo + 1]  # (B, 1) valid slots before the window
    csum = valid[:, lo * bs : hi * bs].long().cumsum(-1)  # (B, n*bs)
    slot_pos = (before + csum - 1).clamp(min=0)  # (B, n*bs)
    kg, has = gate.block_keys(k, valid, slot_pos, lo, hi, pos_from=lo * bs)
    st.kg[layer][:, :, lo:hi] = kg
    st.has_valid[layer][:, lo:hi] = has
    st.valid_before[layer][:, lo + 1 : hi + 1] = before + csum[:, bs - 1 :: bs]
    st.n_done[layer] = hi


def query_position(st: SeerState, layer: int, valid: torch.Tensor, nc: int, block_size: int) -> torch.Tensor:
    """RoPE position of the query at the last slot of valid (B, end) -> (B, 1), = (valid.sum(-1) - 1).clamp(min=0)
    from the block counts of `st` (blocks [0, nc) must be done) plus the local block: no pass over the context."""
    n = st.valid_before[layer][:, nc : nc + 1] + valid[:, nc * block_size :].sum(-1, keepdim=True)  # (B, 1)
    return (n - 1).clamp(min=0)


def gate_logits(gate: AttnGate, q: torch.Tensor, kg: torch.Tensor, has: torch.Tensor, q_pos: torch.Tensor) -> torch.Tensor:
    """Decode-step gate logits: q (B, H_q, 1, D) post-RoPE at positions q_pos (B, 1); kg (B, H_kv, n, D_g).

    Returns the scaled scores (B, H_kv, n), -inf for empty blocks."""
    qg = gate.gate_q(unrope(q, q_pos, gate.cfg.rope_theta), q_pos)  # (B, H_kv, 1, D_g)
    s = torch.matmul(qg, kg.transpose(-1, -2)).squeeze(2) / math.sqrt(kg.shape[-1])  # (B, H_kv, n)
    return s.masked_fill_(~has[:, None, :], float("-inf"))


def gate_scores(gate: AttnGate, q: torch.Tensor, kg: torch.Tensor, has: torch.Tensor, q_pos: torch.Tensor) -> torch.Tensor:
    """Decode-step gate probabilities: softmax of `gate_logits` over the n blocks (B, H_kv, n); empty blocks get 0."""
    return torch.softmax(gate_logits(gate, q, kg, has, q_pos), dim=-1)


def select_blocks(probs: torch.Tensor, k: int, threshold: float | None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Budget selection (top k) or threshold selection (p >= threshold) -> idx (B, H, k'), keep mask or None."""
    if threshold is None:
        return select_topk(probs, k), None
    keep = probs >= threshold  # (B, H, n)
    kmax = max(1, int(keep.sum(-1).max()))
    idx = select_topk(probs, kmax)
    return idx, keep.gather(-1, idx)


def seer_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, ctx: AttnContext) -> torch.Tensor:
    """Backend "seer". Options: gates (SeerGates or path), budget, min_blocks, threshold (None = budget selection), impl,
    capture (a dict: prefill passes record {layer: (q, k, key_valid)} for distillation)."""
    opts = ctx.options
    cap = opts.get("capture")
    if cap is not None:
        cap[ctx.layer] = (q.detach(), k.detach(), ctx.key_valid)
    if ctx.cache is None:
        return dense_attention(q, k, v, ctx)
    gates = resolve_gates(opts.get("gates"))
    cfg = gates.cfg
    if "block_size" in opts and int(opts["block_size"]) != cfg.block_size:
        raise ValueError(f"seer gates were trained with block_size {cfg.block_size}, options ask for {opts['block_size']}")
    if gates.layers[0].wq.device != q.device:
        gates.to(q.device)
    gate = gates.layers[ctx.layer]
    cache, layer, end = ctx.cache, ctx.layer, k.shape[2]
    st = seer_state(cache, cfg)
    valid = cache.valid[:, :end]
    if q.shape[2] != 1 or opts.get("dense", False):
        with torch.no_grad():
            update_gate_keys(st, gate, layer, k, valid, ctx.q_start)
        return dense_attention(q, k, v, ctx)
    with serial_ops():  # the gate: tiny ops on one thread (`sparse.serial_ops`); the KV read below keeps torch's threads
        idx, keep = seer_select(q, k, ctx, st, gate, valid, end)
    return decode_selected(q, cache, layer, idx, end, cfg.block_size, st.buffers, keep, opts.get("impl", "torch"))


def seer_select(q: torch.Tensor, k: torch.Tensor, ctx: AttnContext, st: SeerState, gate: AttnGate, valid: torch.Tensor,
                end: int) -> tuple[torch.Tensor, torch.Tensor | None]:  # fmt: skip
    """A decode step's gate: compress the block that just completed, score the complete blocks, select -> idx, keep."""
    opts, layer, cfg = ctx.options, ctx.layer, gate.cfg
    with torch.no_grad():
        update_gate_keys(st, gate, layer, k, valid, ctx.q_start)
    bs = cfg.block_size
    nc = (end - 1) // bs
    budget = float(opts.get("budget", 0.1))
    if budget <= 0:
        raise ValueError(f"budget must be > 0, got {budget}")
    kk = n_keep(budget, nc, bs, int(opts.get("min_blocks", 1)))
    threshold = opts.get("threshold")
    if nc == 0 or (kk == nc and threshold is None):
        idx, keep = torch.arange(nc, device=q.device).expand(q.shape[0], k.shape[1], nc), None
    else:
        with torch.no_grad():
            q_pos = query_position(st, layer, valid, nc, bs)  # (B, 1)
            args = (gate, q, st.kg[layer][:, :, :nc], st.has_valid[layer][:, :nc], q_pos)
            if threshold is None and kk >= 1 and fused.usable(q, opts.get("impl", "torch")):  # the gate + top-k in one C++ call
                inv_d, inv_g = inv_freq(q.shape[-1], cfg.rope_theta), inv_freq(cfg.gate_dim, cfg.rope_theta)
                idx, keep = fused.seer_select(q, q_pos, gate.wq, st.kg[layer], st.has_valid[layer], nc, kk, inv_d, inv_g), None
            elif threshold is None:  # top-k of the logits = top-k of the softmax (monotone), without the exp pass
                idx, keep = select_topk(gate_logits(*args), kk), None
            else:
                idx, keep = select_blocks(gate_scores(*args), kk, float(threshold))
    return idx, keep


# ----------------------------------------------------------------------------------------------------------------
# distillation


def attention_probs(q: torch.Tensor, k: torch.Tensor, key_valid: torch.Tensor | None, q_start: int = 0) -> torch.Tensor:
    """True causal attention q (B, H_q, T_q, D) over k (B, H_kv, T_k, D) -> (B, H_q, T_q, T_k) fp32."""
    b, hq, tq, d = q.shape
    hkv, tk = k.shape[1], k.shape[2]
    g = hq // hkv
    s = torch.matmul(q.float().reshape(b, hkv, g * tq, d), k.float().transpose(-1, -2)).reshape(b, hq, tq, tk) / math.sqrt(d)
    qi = torch.arange(q_start, q_start + tq, device=q.device)[:, None]
    allowed = (torch.arange(tk, device=q.device)[None, :] <= qi)[None, None]  # (1, 1, T_q, T_k)
    if key_valid is not None:
        allowed = allowed & key_valid[:, None, None, :tk]
        allowed = allowed | (torch.arange(tk, device=q.device)[None, :] == qi)[None, None]
    return torch.softmax(s.masked_fill(~allowed, float("-inf")), dim=-1)


def capture_qk(model: Transformer, ids: torch.Tensor, key_valid: torch.Tensor | None = None) -> dict[int, tuple]:
    """Run the frozen model once and return {layer: (q, k, key_valid)} (post-RoPE, as attention sees them)."""
    cap: dict[int, tuple] = {}
    pos = padded_positions(key_valid) if key_valid is not None else None
    with torch.no_grad():
        model(ids, positions=pos, key_valid=key_valid, attn=AttnContext(backend="seer", options={"capture": cap}), compute_logits=False)
    return cap


def distill_loss(gates: SeerGates, cap: dict[int, tuple], q_chunk: int = 256) -> torch.Tensor:
    """Mean over layers of the KL between the distillation target and the gate, from captured q, k."""
    cfg = gates.cfg
    bs = cfg.block_size
    losses = []
    for layer, (q, k, key_valid) in sorted(cap.items()):
        gate = gates.layers[layer]
        b, _, t, _ = q.shape
        valid = key_valid if key_valid is not None else torch.ones(b, t, dtype=torch.bool, device=q.device)
        pos = padded_positions(valid)  # (B, T)
        nb = t // bs
        if nb == 0:
            continue
        kg, has = gate.block_keys(k, valid, pos, 0, nb)  # (B, H_kv, NB, D_g)
        qg = gate.gate_q(unrope(q, pos, cfg.rope_theta), pos)  # (B, H_kv, T, D_g)
        layer_loss, rows = q.new_zeros(()), 0
        for s in range(bs, t, q_chunk):  # queries before slot bs have no selectable block
            e = min(t, s + q_chunk)
            with torch.no_grad():
                probs = attention_probs(q[:, :, s:e], k, valid, q_start=s)  # (B, H_q, c, T)
                target, row_ok = distill_target(probs, bs, cfg.n_kv_heads, q_start=s)
                row_ok = row_ok & valid[:, s:e]
            logits = torch.matmul(qg[:, :, s:e], kg.transpose(-1, -2)) / math.sqrt(cfg.gate_dim)  # (B, H_kv, c, NB)
            logits = logits.masked_fill(~has[:, None, None, :], -1e9)
            sel = selectable(s, e - s, nb, bs, q.device)
            n_rows = int(row_ok.sum())
            layer_loss = layer_loss + kl_to_gate(target, logits, sel, row_ok) * n_rows
            rows += n_rows
        losses.append(layer_loss / max(rows, 1))
    return torch.stack(losses).mean()


@dataclass
class SeerTrainConfig:
    """Gate distillation settings."""

    steps: int = 200
    """Optimizer steps."""
    lr: float = 1e-3
    """AdamW learning rate (constant after a short warm-up)."""
    warmup: int = 10
    """Linear warm-up steps."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    log_every: int = 0
    """Print the loss every this many steps (0 = never)."""


def train_gates(model: Transformer, gates: SeerGates, batches, cfg: SeerTrainConfig) -> list[float]:
    """Self-distil the gates on a frozen model. batches: an iterator of ids (B, T) or (ids, key_valid).

    Only gate parameters receive gradients; the model is left untouched. Returns the loss per step."""
    gates.check_model(model)
    was_training = model.training
    model.eval()
    frozen = [p.requires_grad for p in model.parameters()]
    for p in model.parameters():
        p.requires_grad_(False)
    opt = torch.optim.AdamW(gates.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    gates.train()
    hist: list[float] = []
    try:
        for step in range(cfg.steps):
            batch = next(batches)
            ids, kv = batch if isinstance(batch, tuple) else (batch, None)
            for gr in opt.param_groups:
                gr["lr"] = cfg.lr * min(1.0, (step + 1) / max(1, cfg.warmup))
            cap = capture_qk(model, ids, kv)
            loss = distill_loss(gates, cap)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            hist.append(float(loss.detach()))
            if cfg.log_every and (step + 1) % cfg.log_every == 0:
                print(f"seer step {step + 1}/{cfg.steps}  loss/kl {hist[-1]:.4f}")
    finally:
        for p, r in zip(model.parameters(), frozen):
            p.requires_grad_(r)
        model.train(was_training)
        gates.eval()
    return hist


def seer_context(gates: SeerGates | str | Path, budget: float = 0.1, threshold: float | None = None, min_blocks: int = 1) -> AttnContext:
    """An AttnContext for Seer decoding through `core.generate.generate`."""
    g = resolve_gates(gates)
    return AttnContext(backend="seer", options={"gates": g, "budget": budget, "threshold": threshold, "min_blocks": min_blocks, "block_size": g.cfg.block_size})


def gate_logits_dense(gates: SeerGates, cap: dict[int, tuple], layer: int) -> torch.Tensor:
    """Gate probabilities for every query of a captured prefill (B, H_kv, T, NB), selectable blocks only (analysis)."""
    cfg = gates.cfg
    q, k, key_valid = cap[layer]
    b, _, t, _ = q.shape
    valid = key_valid if key_valid is not None else torch.ones(b, t, dtype=torch.bool, device=q.device)
    pos = padded_positions(valid)
    nb = t // cfg.block_size
    gate = gates.layers[layer]
    with torch.no_grad():
        kg, has = gate.block_keys(k, valid, pos, 0, nb)
        qg = gate.gate_q(unrope(q, pos, cfg.rope_theta), pos)
        s = torch.matmul(qg, kg.transpose(-1, -2)) / math.sqrt(cfg.gate_dim)
        sel = selectable(0, t, nb, cfg.block_size, q.device) & has[:, None, None, :]
        return torch.softmax(s.masked_fill(~sel, float("-inf")), -1).nan_to_num(0.0)


__all__ = [
    "AttnGate",
    "SeerConfig",
    "SeerGates",
    "SeerTrainConfig",
    "attention_probs",
    "capture_qk",
    "distill_loss",
    "distill_target",
    "gate_logits_dense",
    "pool_blocks",
    "seer_attention",
    "seer_context",
    "train_gates",
]
