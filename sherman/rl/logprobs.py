"""The log-prob pass of the RL loop: next-token log-probs of completions under softmax(logits / T).

`forward_logprobs` is the plain padded pass; `shared_prompt_logprobs` runs each distinct prompt of an RL group once,
with the group's completions packed first-fit into rows that attend the prompt's keys (`SharedPrompts` is that
layout, `pack_groups` the packing, `share_prompts` builds it from padded rows); `unshared_logprobs` gives the same
numbers the plain way when the packed pass's dense mask would be too large.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Sequence

import torch

from sherman.core.attention import AttnContext, additive_mask
from sherman.core.common import ShermanError


def forward_logprobs(model: torch.nn.Module, ids: torch.Tensor, temperature: float, want_router: bool):
    """Next-token log-probs of ids[:, 1:] under softmax(logits / T), one padded forward.

    -> (logp (B, L-1), logits (B, L-1, V), router logits per MoE layer (B, L-1, E) | None).
    """
    out = model(ids[:, :-1], return_router_logits=want_router)
    logits = out.logits.float() / temperature  # (B, L-1, V)
    logp = torch.log_softmax(logits, -1).gather(-1, ids[:, 1:, None]).squeeze(-1)  # (B, L-1)
    return logp, logits, out.router_logits


@dataclass
class SharedPrompts:
    """Rows of prompt + completion laid out so that each distinct prompt is run once (`shared_prompt_logprobs`).

    Everything is completion-aligned: position j of a row is its j-th completion token.
    """

    prompt_ids: torch.Tensor
    """(U, P) the U distinct prompts, right padded."""
    prompt_valid: torch.Tensor
    """(U, P) bool: real prompt token."""
    row_prompt: torch.Tensor
    """(b,) index of each row's prompt in prompt_ids."""
    comp_ids: torch.Tensor
    """(b, T) completion tokens, right padded."""
    comp_mask: torch.Tensor
    """(b, T) float: 1 on real completion tokens (the loss mask)."""

    def rows(self, idx: torch.Tensor) -> SharedPrompts:
        """The layout of rows `idx` only: just the prompts they use, trimmed to their own longest prompt/completion."""
        used, inv = torch.unique(self.row_prompt[idx], return_inverse=True)  # (U',), (b',)
        pv = self.prompt_valid[used]
        p = max(1, int(pv.sum(-1).max()))
        t = max(1, int(self.comp_mask[idx].sum(-1).max()))
        return SharedPrompts(self.prompt_ids[used, :p], pv[:, :p], inv, self.comp_ids[idx, :t], self.comp_mask[idx, :t])

    def to(self, device) -> SharedPrompts:
        return SharedPrompts(*(getattr(self, f.name).to(device) for f in dataclasses.fields(self)))

    @classmethod
    def build(cls, prompts: Sequence[Sequence[int]], completions: Sequence[Sequence[int]], pad_id: int, device=None) -> SharedPrompts:
        """Per-row prompt and completion token lists -> the layout; rows with equal prompts share one entry (an RL
        group). Plain Python plus one small tensor per field (cheaper than tensor ops at these sizes)."""
        slot: dict[tuple[int, ...], int] = {}
        uniq: list[list[int]] = []
        row_prompt = []
        for x in prompts:
            key = tuple(x)
            if key not in slot:
                slot[key] = len(uniq)
                uniq.append(list(x))
            row_prompt.append(slot[key])
        P, T = max(len(x) for x in uniq), max(1, max(len(c) for c in completions))
        return cls(
            torch.tensor([x + [pad_id] * (P - len(x)) for x in uniq], dtype=torch.long, device=device),  # (U, P)
            torch.tensor([[True] * len(x) + [False] * (P - len(x)) for x in uniq], device=device),  # (U, P)
            torch.tensor(row_prompt, device=device),  # (b,)
            torch.tensor([list(c) + [pad_id] * (T - len(c)) for c in completions], dtype=torch.long, device=device),  # (b, T)
            torch.tensor([[1.0] * len(c) + [0.0] * (T - len(c)) for c in completions], device=device),  # (b, T)
        )


def share_prompts(ids: torch.Tensor, mask: torch.Tensor, pad_id: int) -> SharedPrompts:
    """Rows ids (b, L) of prompt + completion + right padding, mask (b, L-1) = 1 on the targets ids[:, 1:] that
    are completion tokens (one contiguous run per row, as `rollout` builds it) -> `SharedPrompts`. A row's prompt is
    everything before its first completion token."""
    prompts, comps = [], []
    for row, mk in zip(ids.tolist(), mask.tolist()):
        on = [j for j, x in enumerate(mk) if x > 0]
        if on and on[-1] - on[0] + 1 != len(on):
            raise ShermanError("share_prompts needs one contiguous run of completion targets per row")
        p = on[0] + 1 if on else 1  # prompt length (>= 1)
        prompts.append(row[:p])
        comps.append(row[p : p + len(on)])
    return SharedPrompts.build(prompts, comps, pad_id, ids.device)


def pack_groups(prompt_lens: Sequence[int], lengths: Sequence[int], groups: Sequence[int], capacity: int,
                pack: bool = True) -> list[tuple[int, list[int]]]:  # fmt: skip
    """Rows of a training pass: each group's prompt opens its group's first row, and the group's completions fill
    rows of at most `capacity` tokens first-fit in decreasing length (pack=False: the prompt and each completion
    in a row of its own).

    prompt_lens[g]: prompt tokens of group g; lengths[i], groups[i]: tokens and group of completion i (rows of
    length 0 are left out). -> [(group, completions in the row)]; the first row of each group holds its prompt.
    """
    bins: list[tuple[int, list[int]]] = []
    space: list[int] = []
    first: dict[int, int] = {}
    for g in dict.fromkeys(groups):  # groups in order of first appearance
        first[g] = len(bins)
        bins.append((g, []))
        space.append(capacity - prompt_lens[g])
    for i in sorted((i for i, n in enumerate(lengths) if n > 0), key=lambda i: (groups[i], -lengths[i], i)):
        g = groups[i]
        fits = (j for j in range(first[g], len(bins)) if bins[j][0] == g and space[j] >= lengths[i])
        j = next(fits, None) if pack else None
        if j is None:
            bins.append((g, [i]))
            space.append(capacity - lengths[i])
        else:
            bins[j][1].append(i)
            space[j] -= lengths[i]
    return bins


MAX_MASK_ELEMENTS = 1 << 26
"""`shared_prompt_logprobs` falls back to one plain causal row per completion when its explicit attention mask would
have more entries than this (rows x slots x keys: 64M entries = 256 MiB in fp32, reached with completions of a few
thousand tokens), since the packed pass needs a dense mask."""


def unshared_logprobs(model: torch.nn.Module, sp: SharedPrompts, temperature: float, want_router: bool):
    """`shared_prompt_logprobs`' numbers the plain way: one right-padded prompt + completion row per completion,
    causal attention without a mask (`forward_logprobs`), then the completion positions picked out."""
    b, T = sp.comp_ids.shape
    dev = sp.comp_ids.device
    plen = sp.prompt_valid.sum(-1)[sp.row_prompt]  # (b,)
    p_max = sp.prompt_ids.shape[1]
    col = torch.arange(p_max + T, device=dev)[None]  # (1, P + T)
    from_prompt = sp.prompt_ids[sp.row_prompt].gather(1, col.clamp(max=p_max - 1).expand(b, -1))  # (b, P + T)
    from_comp = sp.comp_ids.gather(1, (col - plen[:, None]).clamp(0, T - 1))  # (b, P + T)
    ids = torch.where(col < plen[:, None], from_prompt, from_comp)  # (b, P + T): pads past the completion are harmless
    ids = ids[:, : int((plen + sp.comp_mask.sum(-1).long()).max())]
    lp, lg, rt = forward_logprobs(model, ids, temperature, want_router)  # (b, L-1)
    at = (plen[:, None] - 1 + torch.arange(T, device=dev)[None]).clamp(max=ids.shape[1] - 2)  # (b, T) column of completion token j
    on = sp.comp_mask > 0
    logp = lp.gather(1, at) * on
    logits = lg.gather(1, at[..., None].expand(b, T, lg.shape[-1])) * on[..., None]
    router = [r.gather(1, at[..., None].expand(b, T, r.shape[-1])) * on[..., None] for r in rt] if want_router else None
    return logp, logits, router


def shared_prompt_logprobs(model: torch.nn.Module, sp: SharedPrompts, temperature: float, want_router: bool, pack: bool = True,
                           max_mask_elements: int = MAX_MASK_ELEMENTS):  # fmt: skip
    """Completion log-probs under softmax(logits / T) with each distinct prompt run ONCE, in one forward pass.

    The pass's rows: each group's prompt opens the group's first row; the completions (their tokens 0..n-2 are
    inputs; token 0 is scored from the prompt's last position) fill that row and further rows, packed first-fit
    into rows no longer than max(longest completion, longest prompt) (pack=False: one completion per row). Every
    row's keys start with its group's prompt keys, taken from the row that holds the prompt (`AttnContext.prefix_rows`:
    autograd flows back into it), and an explicit mask lets a completion token see the prompt and the earlier tokens of
    its own completion, and a prompt token the earlier prompt tokens. So an RL group of G completions costs one prompt
    plus G completions of arithmetic, with almost no padding, instead of G padded prompt + completion rows.
    The same numbers as `forward_logprobs` on the concatenated rows, at the completion positions (test). The
    router logits of a target are those of the input position that predicts it (as in `forward_logprobs`).
    Where the pass's dense mask would exceed `max_mask_elements` entries (long sequences), `unshared_logprobs` runs
    instead (same numbers, prompt recomputed per row).
    -> (logp (b, T), logits (b, T, V), router logits per MoE layer (b, T, E) | None), zero past each completion.
    """
    dev = sp.comp_ids.device
    b, T = sp.comp_ids.shape
    plen = sp.prompt_valid.sum(-1)  # (U,)
    m = (sp.comp_mask.sum(-1).long() - 1).clamp(min=0)  # (b,) completion tokens fed as inputs
    plen_l, m_l, g_l = plen.tolist(), m.tolist(), sp.row_prompt.tolist()
    cap = max(max(m_l, default=0), max(plen_l))
    bins = pack_groups(plen_l, m_l, g_l, cap, pack)
    n_r, p_max = len(bins), max(plen_l)
    if n_r * cap * (p_max + cap) > max_mask_elements:
        return unshared_logprobs(model, sp, temperature, want_router)
    first_row: dict[int, int] = {}
    bin_of, off_of = [0] * b, [0] * b
    for r, (g, rows) in enumerate(bins):
        off = 0
        if g not in first_row:
            first_row[g], off = r, plen_l[g]
        for i in rows:
            bin_of[i], off_of[i], off = r, off, off + m_l[i]
    n_u = len(plen_l)
    prow = torch.tensor([first_row[g] for g in range(n_u)], device=dev)  # (U,) row holding each prompt
    # flat slots (R * cap) of prompt tokens and completion inputs
    pj = torch.arange(p_max, device=dev)[None]  # (1, P)
    p_real = pj < plen[:, None]  # (U, P)
    p_dest = (prow[:, None] * cap + pj)[p_real]  # (n_prompt_tokens,)
    jj = torch.arange(max(T - 1, 0), device=dev)[None]  # (1, T-1)
    c_real = jj < m[:, None]  # (b, T-1): completion token j is an input
    dest = (torch.tensor(bin_of, device=dev) * cap + torch.tensor(off_of, device=dev))[:, None] + jj  # (b, T-1)
    c_dest = dest[c_real]
    n = n_r * cap
    ids = torch.zeros(n, dtype=torch.long, device=dev)  # pads: id 0, masked
    ids[p_dest] = sp.prompt_ids[p_real]
    ids[c_dest] = sp.comp_ids[:, : T - 1][c_real]
    pos = torch.zeros(n, dtype=torch.long, device=dev)
    pos[p_dest] = pj.expand(n_u, p_max)[p_real]
    pos[c_dest] = (plen[sp.row_prompt][:, None] + jj)[c_real]
    seg = torch.full((n,), -1, dtype=torch.long, device=dev)  # completion i -> i, prompt g -> b + g, pad -> -1
    seg[p_dest] = (b + torch.arange(n_u, device=dev))[:, None].expand(n_u, p_max)[p_real]
    seg[c_dest] = torch.arange(b, device=dev)[:, None].expand(b, T - 1)[c_real]
    seg = seg.view(n_r, cap)
    row_group = torch.tensor([g for g, _ in bins], device=dev)  # (R,)
    is_comp = (seg >= 0) & (seg < b)  # (R, cap) query is a completion token
    see_prompt = is_comp[:, :, None] & p_real[row_group][:, None, :]  # (R, cap, P)
    causal = torch.ones(cap, cap, dtype=torch.bool, device=dev).tril()
    own = (seg[:, :, None] == seg[:, None, :]) & causal  # (R, cap, cap)
    mask = additive_mask(torch.cat([see_prompt, own], -1)[:, None], model_dtype(model))  # (R, 1, cap, P + cap) 0 / -inf
    attn = AttnContext(mask=mask, prefix_rows=(prow[row_group], p_max))
    out = model(ids.view(n_r, cap), positions=pos.view(n_r, cap), attn=attn, return_router_logits=want_router)
    # completion position j of row i is scored by slot src[i, j]: the prompt's last slot for j = 0, else input j - 1
    src = torch.zeros(b, T, dtype=torch.long, device=dev)
    src[:, 0] = (prow * cap + plen - 1)[sp.row_prompt]
    if T > 1:
        src[:, 1:] = torch.where(c_real, dest, torch.zeros_like(dest))
    on = sp.comp_mask > 0  # (b, T)
    logits = out.logits.reshape(n, -1)[src] * on[..., None]  # (b, T, V)
    router = [r.reshape(n, -1)[src] * on[..., None] for r in out.router_logits] if want_router else None
    logits = logits.float() / temperature
    logp = torch.log_softmax(logits, -1).gather(-1, sp.comp_ids[..., None]).squeeze(-1) * on  # (b, T)
    return logp, logits, router


def model_dtype(model: torch.nn.Module) -> torch.dtype:
    return next(model.parameters()).dtype
