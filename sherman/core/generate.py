"""The one sampling loop. RL rollouts, AsyncThink workers, the server and the experiments all call it.

`generate(model, prompts, SamplingParams(...))` takes ragged prompts (lists of token ids), left pads
them into one batch with per-row RoPE positions that count only real tokens (so a padded row computes
exactly what it would alone), prefills a preallocated `KVCache`, then decodes one token per row per
step until every row has stopped.

Sampling: temperature (0 = greedy), nucleus top-p, max new tokens, stop token ids and stop strings.
Returned log-probs are `log softmax(logits / T)` of the chosen token, before top-p truncation (at
T = 1 this is the policy's own log-prob, which is what RL needs). A row stops on the first stop token
id (kept in its output) or when its decoded text contains a stop string (the token that completed it
is kept; `texts` is cut before the stop string).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from sherman.core import cpu_decode
from sherman.core.attention import AttnContext
from sherman.core.linear import packed_weights
from sherman.core.model import Transformer, padded_positions


@dataclass
class SamplingParams:
    max_new_tokens: int = 64
    """Maximum tokens generated per row."""
    temperature: float = 1.0
    """Softmax temperature; 0 means greedy decoding."""
    top_p: float = 1.0
    """Nucleus sampling mass in (0, 1]."""
    stop_token_ids: Sequence[int] = ()
    """A row stops after emitting any of these ids (the id is kept in its output)."""
    stop_strings: Sequence[str] = ()
    """A row stops once its decoded text contains any of these (needs a tokenizer)."""

    def __post_init__(self) -> None:
        if self.max_new_tokens < 0:
            raise ValueError(f"max_new_tokens must be >= 0, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")


@dataclass
class GenerateOutput:
    tokens: list[list[int]]
    """Generated ids per row (prompt excluded)."""
    logprobs: list[list[float]]
    """log p of each generated id under the tempered model distribution."""
    finish_reasons: list[str]
    """'stop' (stop id or string) or 'length' per row."""
    texts: list[str] | None = None
    """Decoded completions when a tokenizer was given (cut before a matched stop string)."""
    stats: dict = field(default_factory=dict)
    """Timing and counts: prefill_tokens, decode_steps."""

    def padded(self, pad_id: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(ids (B, T), logprobs (B, T), mask (B, T)) right padded to the longest completion."""
        b = len(self.tokens)
        t = max((len(x) for x in self.tokens), default=0)
        ids = torch.full((b, t), pad_id, dtype=torch.long)
        lp = torch.zeros(b, t)
        mask = torch.zeros(b, t)
        for i, (toks, lps) in enumerate(zip(self.tokens, self.logprobs)):
            ids[i, : len(toks)] = torch.tensor(toks, dtype=torch.long)
            lp[i, : len(lps)] = torch.tensor(lps)
            mask[i, : len(toks)] = 1.0
        return ids, lp, mask


def left_pad(prompts: Sequence[Sequence[int]], pad_id: int = 0, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Ragged prompts -> ids (B, P), valid (B, P) with padding on the left."""
    if len(prompts) == 0:
        raise ValueError("generate needs at least one prompt")
    p = max(len(x) for x in prompts)
    if p == 0:
        raise ValueError("every prompt is empty; give at least one token (e.g. a BOS id)")
    for i, x in enumerate(prompts):
        if len(x) == 0:
            raise ValueError(f"prompt {i} is empty; give at least one token (e.g. a BOS id)")
    ids = torch.tensor([[pad_id] * (p - len(x)) + list(x) for x in prompts], dtype=torch.long, device=device)  # (B, P)
    valid = torch.tensor([[False] * (p - len(x)) + [True] * len(x) for x in prompts], device=device)  # (B, P)
    return ids, valid


DROP_FINISHED_ROWS = True
"""`generate` drops finished rows from its batch (dense attention); set False to keep every row to the end."""
SHARE_PROMPTS = True
"""`generate` prefills each distinct prompt once and copies its KV rows to the repeats (dense attention)."""


FAST_DECODE = True
"""`generate` runs one-token decode steps through `Transformer.decode_step` (same numbers, ~30% less overhead on
small models) when the model has no MoE layers and no module hooks; set False to use the general forward pass."""


def _has_hooks(model: torch.nn.Module) -> bool:
    """True when any forward hook is registered on a module of `model` or globally (the fast decode step skips them)."""
    from torch.nn.modules import module as mod

    if mod._global_forward_hooks or mod._global_forward_pre_hooks:
        return True
    return any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())


FLAT_SEARCH_MAX_VOCAB = 512
"""`sample_next` draws with one flat fp64 cumsum at or below this vocabulary size (`cumsum_search` above it)."""


def _sorted_asc(x: torch.Tensor) -> torch.Tensor:
    """Values of x (B, V) sorted ascending along the last dim. On CPU this uses NumPy's SIMD sort: torch's
    batched CPU sort of a (16, 8192) tensor takes ~7 ms in torch 2.13 builds, NumPy's ~0.2 ms."""
    if x.device.type == "cpu":
        return torch.from_numpy(np.sort(x.detach().numpy(), axis=-1))
    return x.sort(dim=-1).values


def cumsum_search(x: torch.Tensor, frac: torch.Tensor | float, offset: float, right: bool, block: int = 128) -> torch.Tensor:
    """x (B, V) >= 0 -> (B,) index of the first position whose cumulative sum is > t (right=True) or >= t
    (right=False), t = frac * x.sum(-1) + offset (frac: (B,) or a float), clamped to V - 1. The same as
    `searchsorted(x.cumsum(-1), t)` up to rounding, but without a full cumsum, a slow sequential scan on CPU
    (~1.3 ns per element here, ~0.2 ms for 16 x 8192): fp32 sums of `block`-sized blocks, a search over their
    fp64 cumulative sums, then a fp64 cumsum and search inside the one block found.

    Rounding (fp32 block sums, relative error ~1e-7) can land the search on a zero entry at a block edge;
    `sample_next` checks for that and redoes such rows with a flat fp64 cumsum.
    """
    b, v = x.shape
    pad = (-v) % block
    xb = (F.pad(x, (0, pad)) if pad else x).view(b, -1, block)  # (B, nb, block)
    nb = xb.shape[1]
    bc = xb.sum(-1).double().cumsum(-1)  # (B, nb) cumulative block sums
    frac = torch.as_tensor(frac, dtype=torch.float64, device=x.device)
    t = (frac * bc[:, -1] + offset).reshape(b, 1)  # (B, 1)
    j = torch.searchsorted(bc, t, right=right).clamp(max=nb - 1)  # (B, 1) block holding the answer
    before = torch.where(j > 0, bc.gather(-1, (j - 1).clamp(min=0)), torch.zeros_like(t))  # (B, 1) mass of earlier blocks
    inner = xb.gather(1, j[:, :, None].expand(b, 1, block)).squeeze(1).double().cumsum(-1) + before  # (B, block)
    k = torch.searchsorted(inner, t, right=right).clamp(max=block - 1)  # (B, 1)
    return (j * block + k).squeeze(-1).clamp(max=v - 1)


def _flat_search(x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Reference inverse-CDF draw: first index whose fp64 cumsum of x (B, V) exceeds u (B,) * total."""
    cdf = x.double().cumsum(-1)  # (B, V)
    return torch.searchsorted(cdf, (u * cdf[:, -1])[:, None], right=True).squeeze(-1).clamp(max=x.shape[-1] - 1)


def keep_at_least(probs: torch.Tensor, threshold: torch.Tensor) -> torch.Tensor:
    """probs (B, V) >= 0, threshold (B, 1) -> probs where probs >= threshold, else 0: exactly `probs * (probs >=
    threshold)`, in float ops only. step(p - t) = clamp(sign(p - t) + 1, max=1) is 1 for p >= t and 0 below (IEEE
    subtraction of finite floats is zero only for equal operands and keeps the sign otherwise, denormals included);
    on CPU the bool compare and the float-times-bool product take ~3x longer than these four float passes (measured:
    ~180 vs ~590 us for 16 x 8192)."""
    return (probs - threshold).sign_().add_(1.0).clamp_(max=1.0).mul_(probs)


def sample_next(
    logits: torch.Tensor, temperature: float, top_p: float, generator: torch.Generator | None, u: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """logits (B, V) -> (token (B,), log p(token) (B,) under softmax(logits / T)).

    u: optional (B,) uniforms in [0, 1) to use instead of drawing them from `generator` (`generate` draws one
    per original row so that dropping finished rows never changes the other rows' draws).

    Top-p keeps the smallest prefix of the probability-sorted vocabulary whose mass reaches top_p, found as a
    probability threshold (tokens tied with the last kept one are all kept): over the ascending sort, the
    first kept position is the first whose cumulative mass reaches total - top_p. The token is drawn by
    inverse-CDF sampling (one uniform per row against the cumulative distribution of the kept mass, in
    vocabulary order), which is exact and avoids `torch.multinomial`'s per-entry exponential draws. Both
    searches use `cumsum_search` (no full-vocabulary cumsum). The log-prob is log of the fp32 softmax entry
    (within ~1e-7 of log_softmax for any token that can be drawn). Inside an inference context on CPU
    (`cpu_decode.active`: every `generate` call) `cpu_decode.sample_top_p` computes the same threshold and draw
    without the sort (same uniforms; results equal up to fp32 rounding at the edges of the kept set).
    """
    logits = logits.float()
    if temperature == 0.0:
        tok = logits.argmax(-1)
        logp = torch.log_softmax(logits, -1).gather(-1, tok[:, None]).squeeze(-1)
        return tok, logp
    if cpu_decode.active(logits) and logits.dim() == 2:  # inference on CPU: the same draw in one C++ pass per row
        if u is None:
            u = torch.rand(logits.shape[0], generator=generator)
        return cpu_decode.sample_top_p(logits, temperature, top_p, u)
    probs = torch.softmax(logits / temperature if temperature != 1.0 else logits, dim=-1)  # (B, V)
    kept = probs
    if top_p < 1.0:
        sa = _sorted_asc(probs)  # (B, V)
        i0 = cumsum_search(sa, 1.0, -top_p, right=False)  # (B,) first kept position: mass before it (descending) <= top_p
        threshold = sa.gather(-1, i0[:, None])  # (B, 1) smallest kept probability
        kept = keep_at_least(probs, threshold)  # (B, V)
    if u is None:
        u = torch.rand(probs.shape[0], generator=generator, device=probs.device)  # float32 draw < 1 - 2^-24
    u = u.double()
    if kept.shape[-1] <= FLAT_SEARCH_MAX_VOCAB:  # small vocabulary: one exact fp64 cumsum is cheapest
        tok = _flat_search(kept, u)
    else:
        tok = cumsum_search(kept, u, 0.0, right=True)  # (B,) first index with cdf > u * total
        bad = kept.gather(-1, tok[:, None]).squeeze(-1) == 0  # (B,) a block-edge rounding miss (rare)
        if bool(bad.any()):  # redo those rows exactly
            tok[bad] = _flat_search(kept[bad], u[bad])
    logp = probs.gather(-1, tok[:, None]).squeeze(-1).log()  # (B,) tempered, untruncated
    return tok, logp


def _find_stop(text: str, stops: Sequence[str]) -> int:
    """Index of the earliest stop string in text, or -1."""
    hits = [i for i in (text.find(s) for s in stops) if i >= 0]
    return min(hits) if hits else -1


def decode_forward(model: Transformer, cache, toks: torch.Tensor, step: int, pos: torch.Tensor, attn: AttnContext | None,
                   fast: bool = False) -> torch.Tensor:  # fmt: skip
    """Decode step `step`: feeds toks[:, step] (B,) at RoPE positions pos (B,) -> the final normed hidden state of
    that token (B, C).

    With `attn.options["rectify_every"] = f > 0` (ReSA dense rectification, `sherman/attention/resa.py`), every
    f-th step rewinds the cache by f - 1 slots and re-encodes the last f generated tokens densely through the
    whole model (`options["dense"] = True`), overwriting their sparse-era keys and values; f = 1 is dense decoding.
    fast: one-token steps go through `Transformer.decode_step` (same numbers; module hooks do not fire).
    """
    f = int(attn.options.get("rectify_every", 0) or 0) if attn is not None else 0
    if f > 0 and (step + 1) % f == 0:
        back = f - 1
        cache.rewind(cache.length - back)
        window = toks[:, step - back : step + 1]  # (B, f)
        positions = pos[:, None] + torch.arange(-back, 1, device=pos.device)  # (B, f)
        dense = dataclasses.replace(attn, options={**attn.options, "dense": True})
        return model(window, positions=positions, cache=cache, attn=dense, compute_logits=False).hidden[:, -1]
    if fast:
        return model.decode_step(toks[:, step], pos, cache, attn)
    return model(toks[:, step : step + 1], positions=pos[:, None], cache=cache, attn=attn, compute_logits=False).hidden[:, -1]


@torch.inference_mode()
def generate(
    model: Transformer,
    prompts: Sequence[Sequence[int]],
    params: SamplingParams | None = None,
    *,
    tokenizer=None,
    generator: torch.Generator | None = None,
    attn: AttnContext | None = None,
    pad_id: int = 0,
    on_step: Callable[[int, torch.Tensor], None] | None = None,
) -> GenerateOutput:
    """Sample completions for a batch of ragged prompts. See the module docstring.

    tokenizer: needed for stop strings and `texts` (anything with `decode(list[int]) -> str`).
    generator: a torch.Generator for reproducible sampling.
    attn: attention backend and options (default dense); sparse backends read it.
    on_step: called as on_step(step, tokens (B,)) after each decode step (streaming hooks); `tokens` is an
        inference-mode tensor (the loop runs under `torch.inference_mode()`, ~15% less per-op overhead than no_grad
        on small models): copy it (`.clone()` outside inference mode, or `.tolist()`) to keep it for autograd use.
    """
    params = params or SamplingParams()
    if params.stop_strings and tokenizer is None:
        raise ValueError("stop_strings need a tokenizer")
    with packed_weights(model):  # oneDNN-prepacked fp32 CPU weights for this call (core/linear.py)
        return _generate(model, prompts, params, tokenizer, generator, attn, pad_id, on_step)


def _generate(model, prompts, params: SamplingParams, tokenizer, generator, attn, pad_id: int, on_step) -> GenerateOutput:
    was_training = model.training
    if was_training:  # (walking the module tree costs ~0.1 ms: only when the mode changes)
        model.eval()
    dev = model.device
    ids, valid = left_pad(prompts, pad_id, dev)
    b, p = ids.shape
    n_new = params.max_new_tokens
    dense = attn is None or (attn.backend == "dense" and not attn.options.get("rectify_every"))
    slot: dict[tuple, int] = {}  # distinct prompt -> its index among the prefilled rows
    first_rows, expand_l = [], []  # row of each distinct prompt's first occurrence; each row's prefilled index
    for i, x in enumerate(prompts):
        if tuple(x) not in slot:
            slot[tuple(x)] = len(first_rows)
            first_rows.append(i)
        expand_l.append(slot[tuple(x)])
    if SHARE_PROMPTS and dense and len(first_rows) < b:  # repeated prompts (RL groups): prefill each once, copy its rows
        uniq = torch.tensor(first_rows, device=dev)  # (U,) rows to prefill
        expand = torch.tensor(expand_l, device=dev)  # (B,) row -> its prefilled row
        cache = model.make_cache(len(uniq), p + n_new)
        out = model(ids[uniq], positions=padded_positions(valid[uniq]), cache=cache, key_valid=valid[uniq], attn=attn, compute_logits=False)
        cache.select_rows(expand)
        logits = model.lm_logits(out.hidden[expand, -1])  # (B, V)
    else:
        cache = model.make_cache(b, p + n_new)
        out = model(ids, positions=padded_positions(valid), cache=cache, key_valid=valid, attn=attn, compute_logits=False)
        logits = model.lm_logits(out.hidden[:, -1])  # (B, V)
    pos = valid.sum(-1)  # (B,) next RoPE position per row
    toks = torch.full((b, n_new), pad_id, dtype=torch.long, device=dev)
    lps = torch.zeros(b, n_new, device=dev)
    lengths = [n_new] * b
    done = torch.zeros(b, dtype=torch.bool, device=dev)
    reasons = ["length"] * b
    stop_ids = torch.tensor(list(params.stop_token_ids), dtype=torch.long, device=dev)
    texts_cut: dict[int, str] = {}
    steps = 0
    # Finished rows are dropped from the cache and the forward pass once a quarter of the running rows are done
    # (dense attention only: sparse backends keep per-row block state in cache.extras). `rows` maps cache rows
    # to batch rows; uniforms are drawn for every batch row each step, so outputs do not depend on the dropping.
    rows: torch.Tensor | None = None  # None = all b rows are in the cache
    can_drop = DROP_FINISHED_ROWS and dense
    fast = FAST_DECODE and model.cfg.n_experts == 0 and not _has_hooks(model)
    n_rows, n_dead, n_done = b, 0, 0  # rows in the cache, finished rows still in it, finished rows in all
    for step in range(n_new):
        u = torch.rand(b, generator=generator, device=dev) if params.temperature > 0 else None
        if rows is None:
            tok, lp = sample_next(logits, params.temperature, params.top_p, generator, u)
        else:
            tok_r, lp_r = sample_next(logits, params.temperature, params.top_p, generator, None if u is None else u[rows])
            tok = torch.full((b,), pad_id, dtype=torch.long, device=dev).index_copy_(0, rows, tok_r)
            lp = torch.zeros(b, device=dev).index_copy_(0, rows, lp_r.to(lps.dtype))
        if n_done:
            tok = tok.masked_fill(done, pad_id)
        toks[:, step], lps[:, step] = tok, lp
        steps = step + 1
        if stop_ids.numel() or params.stop_strings:
            if stop_ids.numel():
                hit = tok == stop_ids[0] if stop_ids.numel() == 1 else torch.isin(tok, stop_ids)
                newly = hit & ~done if n_done else hit
            else:
                newly = torch.zeros_like(done)
            if params.stop_strings:
                for i in torch.nonzero(~done & ~newly).flatten().tolist():
                    text = tokenizer.decode(toks[i, : step + 1].tolist())
                    j = _find_stop(text, params.stop_strings)
                    if j >= 0:
                        newly[i] = True
                        texts_cut[i] = text[:j]
            for i in torch.nonzero(newly).flatten().tolist():
                lengths[i] = step + 1
                reasons[i] = "stop"
                n_dead, n_done = n_dead + 1, n_done + 1
            done |= newly
        if on_step is not None:
            on_step(step, tok)
        if n_done == b or step == n_new - 1:
            break
        if can_drop and n_dead > 0 and 4 * n_dead >= n_rows:
            cur = rows if rows is not None else torch.arange(b, device=dev)
            keep = (~done[cur]).nonzero().flatten()  # cache rows still running
            cache.select_rows(keep)
            rows, n_rows, n_dead = cur[keep], keep.numel(), 0
        if rows is None:
            hidden = decode_forward(model, cache, toks, step, pos, attn, fast)  # (B, C)
        else:
            hidden = decode_forward(model, cache, toks[rows], step, pos[rows], attn, fast)
        logits = model.lm_logits(hidden)
        pos = pos + 1
    if was_training:
        model.train()
    toks_l, lps_l = toks.cpu().tolist(), lps.cpu().tolist()
    tokens = [toks_l[i][: min(lengths[i], steps)] for i in range(b)]
    logprobs = [lps_l[i][: len(tokens[i])] for i in range(b)]
    texts = None
    if tokenizer is not None:
        texts = [texts_cut.get(i, tokenizer.decode(tokens[i])) for i in range(b)]
    stats = {"prefill_tokens": int(valid.sum()), "decode_steps": steps, "new_tokens": sum(len(t) for t in tokens)}
    return GenerateOutput(tokens=tokens, logprobs=logprobs, finish_reasons=reasons, texts=texts, stats=stats)
