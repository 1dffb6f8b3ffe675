"""One RL loop for language models with named presets: GRPO, Dr. GRPO, OPO, GSPO, GMPO, RSPO (+ the `rs` switch).

Each iteration: sample `prompts_per_step` task prompts, draw `group_size` completions per prompt with the core
sampler (`sherman.core.generate.generate`), score them with the task's verifiable reward, compute per-sequence
advantages within each group, then take `epochs * mini_batches` optimizer steps on the rollout batch with the
policy loss of `sherman.rl.core.policy_loss` (prompt tokens are masked out of the loss).

Presets (`PRESETS`, plain dicts of `RLConfig` overrides):
    grpo     DeepSeekMath GRPO (arXiv 2402.03300, Sec. 4.1): group-normalised advantages, PPO token clip, per-sequence
             token mean, several mini-batch steps per rollout batch (off-policy after the first), k3 KL to the initial
             policy with beta = 0.04.
    dr_grpo  Dr. GRPO (arXiv 2503.20783, Sec. 3.1): mean-only advantages, sum over tokens / generation budget, no KL.
    opo      OPO (arXiv 2505.23585, Secs. 3.1-3.2): EXACT on-policy (one optimizer step per rollout batch, so the ratio
             is exactly 1 and the update is the REINFORCE gradient), length-weighted optimal baseline, token-mean
             aggregation, no KL, no entropy bonus.
    gspo     GSPO (arXiv 2507.18071, Sec. 4.1): sequence-level ratio exp(mean token log-ratio), clip 3e-4 / 4e-4.
    gmpo     GMPO (arXiv 2507.20673, Sec. 3): geometric mean of sign-aware clamped token ratios, log-space clip 0.4.
    rspo     RSPO (arXiv 2510.23027, Sec. 3): GMPO + router-shift rescaling of the importance ratio (MoE only).
The `router_shift` switch ("rs") adds the RSPO router-shift weight to any preset (grpo, gspo, ...).

Diagnostics logged every iteration: rollout reward mean/std and pass@1, mean token entropy, k3 KL to the initial
policy, clip fraction, ratio variance, and for MoE models the fraction of (layer, token) routing decisions whose
top-k set changed since the rollout, router-shift gamma mean and 5th percentile, router entropy.

Runs unchanged under `torchrun` (DDP, gloo on CPU): each rank draws its own prompts; gradients are averaged.
Checkpoints `out_dir/step_<7-digit step>` (model, optimizer, RNG) and resumes exactly; the initial policy (KL reference) is
saved once to `out_dir/init`.

CLI:  sherman rl --preset opo --task countdown --sft-steps 300 --steps 50 --out runs/rl_opo
"""

from __future__ import annotations

import copy
import dataclasses
import math
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F

from sherman.core import checkpoint as ckpt
from sherman.core.common import (
    MetricLogger,
    ShermanError,
    adamw,
    init_distributed_from_env,
    is_dist,
    print0,
    rank,
    seed_everything,
    world_size,
)
from sherman.core.generate import SamplingParams, generate
from sherman.core.attention import AttnContext, additive_mask
from sherman.core.model import ModelConfig, Transformer
from sherman.rl import core as C

ADVANTAGES = ("grpo", "mean", "opo", "opo_batch")
RATIO_TYPES = ("token", "sequence", "geometric")


@dataclass
class RLConfig:
    steps: int = 50
    """RL iterations (rollout batches)."""
    prompts_per_step: int = 8
    """Distinct prompts per rollout batch (per rank)."""
    group_size: int = 8
    """Completions sampled per prompt (G)."""
    max_new_tokens: int = 48
    """Generation budget per completion (also the Dr. GRPO normaliser)."""
    temperature: float = 1.0
    """Sampling temperature; log-probs in the loss use the same temperature."""
    top_p: float = 1.0
    """Nucleus sampling mass for rollouts."""
    lr: float = 1e-4
    """AdamW learning rate (constant after warmup)."""
    warmup_steps: int = 0
    """Linear warmup in optimizer steps."""
    betas: tuple[float, float] = (0.9, 0.99)
    """AdamW betas."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    grad_clip: float = 1.0
    """Max global grad norm; 0 disables clipping."""
    mini_batches: int = 1
    """Optimizer steps per pass over the rollout batch (the batch is split into this many shuffled mini-batches)."""
    epochs: int = 1
    """Passes over each rollout batch; optimizer steps per iteration = epochs * mini_batches."""
    pack_completions: bool = True
    """Log-prob forwards run each group's prompt once, in the same pass as its completions
    (`shared_prompt_logprobs`). On: a group's completions are packed first-fit into rows no longer than the
    longest completion or prompt (little padding compute); off: one completion per row. Same numbers either way."""
    advantage: str = "grpo"
    """'grpo' (r - mean)/(std + eps), 'mean' (Dr. GRPO), 'opo' (length-weighted baseline per group), 'opo_batch'."""
    adv_eps: float = 1e-6
    """Epsilon in the GRPO std normalisation."""
    ratio_type: str = "token"
    """'token' (PPO/GRPO), 'sequence' (GSPO) or 'geometric' (GMPO)."""
    clip_low: float = 0.2
    """Lower clip: ratio >= 1 - clip_low (token/sequence); log-ratio >= -clip_low (geometric)."""
    clip_high: float = 0.2
    """Upper clip: ratio <= 1 + clip_high (token/sequence); log-ratio <= clip_high (geometric)."""
    loss_agg: str = "seq_mean_token_mean"
    """Token-ratio loss reduction: token_mean, seq_mean_token_mean or seq_mean_token_sum_norm."""
    kl_coef: float = 0.0
    """Weight of the KL penalty to the initial policy in the loss (0 = none)."""
    kl_estimator: str = "k3"
    """KL estimator used in the loss: k1 or k3 (diagnostics always report k3)."""
    entropy_coef: float = 0.0
    """Weight of the entropy bonus (0 = none)."""
    router_shift: bool = False
    """RSPO router-shift rescaling of the importance ratio (MoE models only): the `rs` switch."""
    gamma_min: float = 0.0
    """Floor of the router-shift weight gamma (the paper's gamma_min; its value is not given, 0 = no floor)."""
    gamma_mode: str = "before"
    """Apply gamma to the ratio 'before' clipping (the paper's v2 reading) or to the clipped loss 'after'."""
    track_kl_to_init: bool = True
    """Keep a frozen copy of the initial policy and log k3 KL to it every step (needed when kl_coef > 0)."""
    seed: int = 0
    """Seed for prompts and sampling (each rank and step derives its own stream)."""
    eval_every: int = 0
    """Run eval_fn every N iterations and at the end (0 = only at the end, if given)."""
    ckpt_every: int = 0
    """Checkpoint every N iterations and at the end (0 = only at the end when out_dir is set)."""
    keep_ckpts: int = 2
    """Keep the newest N step checkpoints (0 = all)."""
    out_dir: str | None = None
    """Run directory for checkpoints and metrics.jsonl; None = nothing written."""
    resume: bool = False
    """Resume from the newest checkpoint under out_dir (a finished run: 'already complete', or on to a larger steps)."""
    trust_pickle: bool = False
    """Also resume from an old pickled state.pt. RISK: unpickling runs any code the file contains; use only on checkpoints you wrote."""
    log_every: int = 0
    """Print metrics every N iterations on rank 0 (0 = silent)."""

    def __post_init__(self) -> None:
        _check(self.advantage in ADVANTAGES, f"advantage must be one of {ADVANTAGES}, got {self.advantage!r}")
        _check(self.ratio_type in RATIO_TYPES, f"ratio_type must be one of {RATIO_TYPES}, got {self.ratio_type!r}")
        _check(self.loss_agg in C.LOSS_AGGS, f"loss_agg must be one of {C.LOSS_AGGS}, got {self.loss_agg!r}")
        _check(self.kl_estimator in C.KL_ESTIMATORS, f"kl_estimator must be one of {C.KL_ESTIMATORS}, got {self.kl_estimator!r}")
        _check(self.gamma_mode in ("before", "after"), f"gamma_mode must be 'before' or 'after', got {self.gamma_mode!r}")
        _check(
            self.steps >= 0 and self.prompts_per_step >= 1 and self.group_size >= 1, "steps >= 0, prompts_per_step >= 1, group_size >= 1"
        )
        _check(self.mini_batches >= 1 and self.epochs >= 1, "mini_batches and epochs must be >= 1")
        _check(self.prompts_per_step * self.group_size >= self.mini_batches, "need at least one rollout per mini-batch")
        _check(self.max_new_tokens >= 1, f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        _check(self.temperature > 0, "temperature must be > 0 for RL rollouts (log-probs are of softmax(logits / T))")
        _check(0 <= self.gamma_min <= 1, f"gamma_min must be in [0, 1], got {self.gamma_min}")
        _check(self.kl_coef == 0 or self.track_kl_to_init, "kl_coef > 0 needs track_kl_to_init")

    @property
    def updates_per_batch(self) -> int:
        return self.epochs * self.mini_batches


def _check(ok: bool, msg: str) -> None:
    if not ok:
        raise ShermanError(msg)


PRESETS: dict[str, dict[str, Any]] = {
    "grpo": dict(
        advantage="grpo", ratio_type="token", clip_low=0.2, clip_high=0.2, loss_agg="seq_mean_token_mean", mini_batches=4, kl_coef=0.04
    ),
    "dr_grpo": dict(
        advantage="mean", ratio_type="token", clip_low=0.2, clip_high=0.2, loss_agg="seq_mean_token_sum_norm", mini_batches=4, kl_coef=0.0
    ),
    "opo": dict(advantage="opo", ratio_type="token", loss_agg="token_mean", mini_batches=1, epochs=1, kl_coef=0.0, entropy_coef=0.0),
    "gspo": dict(advantage="grpo", ratio_type="sequence", clip_low=3e-4, clip_high=4e-4, mini_batches=4, kl_coef=0.0),
    "gmpo": dict(advantage="grpo", ratio_type="geometric", clip_low=0.4, clip_high=0.4, mini_batches=4, kl_coef=0.0),
    "rspo": dict(advantage="grpo", ratio_type="geometric", clip_low=0.4, clip_high=0.4, mini_batches=4, kl_coef=0.0, router_shift=True),
}


def preset_config(name: str, **overrides: Any) -> RLConfig:
    """RLConfig of a named preset with field overrides (`router_shift=True` is the `rs` switch)."""
    if name not in PRESETS:
        raise ShermanError(f"unknown RL preset {name!r}; choose from {sorted(PRESETS)}")
    return RLConfig(**{**PRESETS[name], **overrides})


# ----------------------------------------------------------------------------------------- rollouts


@dataclass
class Rollouts:
    ids: torch.Tensor
    """(B, L) prompt + completion, right padded."""
    mask: torch.Tensor
    """(B, L-1) 1 where target ids[:, 1:] is a completion token (the loss mask)."""
    rewards: torch.Tensor
    """(B,) task rewards."""
    lengths: torch.Tensor
    """(B,) completion lengths in tokens."""
    texts: list[str]
    """Decoded completions."""
    shared: SharedPrompts
    """The same rows laid out for `shared_prompt_logprobs` (each distinct prompt once, completions apart)."""


def stop_ids(tok) -> list[int]:
    return list(getattr(tok, "eos_ids", None) or [tok.eos_id])


def rollout(
    model: Transformer, task, tok, examples: Sequence, group_size: int, params: SamplingParams, generator: torch.Generator
) -> Rollouts:
    """Sample `group_size` completions per example (rows of a group are contiguous) and score them."""
    prompts = [tok.encode(ex.prompt, bos=True) for ex in examples for _ in range(group_size)]
    out = generate(model, prompts, params, generator=generator, pad_id=tok.pad_id)
    texts = [tok.decode(t) for t in out.tokens]
    rewards = torch.tensor([float(task.reward(examples[i // group_size], s)) for i, s in enumerate(texts)])
    seqs = [p + c for p, c in zip(prompts, out.tokens)]
    L = max(len(s) for s in seqs)
    ids = torch.tensor([s + [tok.pad_id] * (L - len(s)) for s in seqs], dtype=torch.long)  # (B, L)
    plen = torch.tensor([len(p) for p in prompts])  # (B,)
    clen = torch.tensor([len(c) for c in out.tokens])  # (B,)
    j = torch.arange(L - 1)[None]  # (1, L-1): target ids[:, j + 1]
    mask = ((j >= plen[:, None] - 1) & (j < (plen + clen)[:, None] - 1)).float()  # (B, L-1) targets ids[len(p) : len(p) + len(c)]
    return Rollouts(ids, mask, rewards, clen.float(), texts, SharedPrompts.build(prompts, out.tokens, tok.pad_id))


def compute_advantages(rewards: torch.Tensor, lengths: torch.Tensor, cfg: RLConfig) -> torch.Tensor:
    """Per-sequence advantages (B,) for the configured estimator."""
    if cfg.advantage == "grpo":
        return C.grpo_advantages(rewards, cfg.group_size, cfg.adv_eps)
    if cfg.advantage == "mean":
        return C.mean_advantages(rewards, cfg.group_size)
    if cfg.advantage == "opo":
        return C.opo_advantages(rewards, lengths, cfg.group_size)
    return C.opo_batch_advantages(rewards, lengths)


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


# ----------------------------------------------------------------------------------------- the loop


@dataclass
class RLResult:
    step: int
    """Iterations completed."""
    opt_steps: int
    """Optimizer steps taken in this call."""
    history: list[dict] = field(default_factory=list)
    final_eval: dict = field(default_factory=dict)
    already_complete: bool = False
    """True when resume found a checkpoint at (or past) the requested iterations: nothing was trained."""


def _quantile(x: torch.Tensor, q: float) -> float:
    return float(torch.quantile(x.float(), q)) if x.numel() else float("nan")


def rl_train(
    model: Transformer,
    task,
    tok,
    cfg: RLConfig,
    eval_fn: Callable[[Transformer], dict] | None = None,
    callback: Callable[[int, dict], None] | None = None,
) -> RLResult:
    """Train `model` in place with the configured RL algorithm. Works alone or under torchrun."""
    init_distributed_from_env()
    base = model
    moe = base.cfg.n_experts > 0
    if cfg.router_shift and not moe:
        raise ShermanError("router_shift (RSPO / rs) needs an MoE model (n_experts > 0)")
    top_k = base.cfg.n_experts_per_tok
    dev = base.device
    train_model: torch.nn.Module = base
    if is_dist():
        from torch.nn.parallel import DistributedDataParallel as DDP

        train_model = DDP(base, find_unused_parameters=moe)
    opt = adamw(base.parameters(), lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / cfg.warmup_steps) if cfg.warmup_steps else 1.0)
    logger = MetricLogger(Path(cfg.out_dir) / "metrics.jsonl" if cfg.out_dir else None)

    step = 0
    ref = None
    if cfg.track_kl_to_init:
        ref = copy.deepcopy(base).eval()
        for p in ref.parameters():
            p.requires_grad_(False)
    if cfg.out_dir:
        if cfg.resume and rank() == 0:
            for p in ckpt.remove_stale(cfg.out_dir):
                print0(f"removed stale temporary {p}")
        last = ckpt.latest_checkpoint(cfg.out_dir) if cfg.resume else None
        init_dir = Path(cfg.out_dir) / "init"
        if last is not None:
            step, _ = ckpt.load_checkpoint(last, base, opt, sched, trust_pickle=cfg.trust_pickle)
            if step >= cfg.steps:
                print0(f"{last}: run already complete ({step} of {cfg.steps} iterations); nothing to do")
                return RLResult(step=step, opt_steps=0, already_complete=True)
            if ref is not None:
                ckpt.load_checkpoint(init_dir, ref, restore_rng=False, trust_pickle=cfg.trust_pickle)
            print0(f"resumed from {last} at iteration {step}")
        elif rank() == 0:
            ckpt.save_checkpoint(init_dir, base, None, 0)
        if is_dist():
            torch.distributed.barrier()

    def save(s: int) -> None:
        if cfg.out_dir and rank() == 0:
            ckpt.save_checkpoint(ckpt.step_dir(cfg.out_dir, s), base, opt, s, extra={"rl": dataclasses.asdict(cfg)}, scheduler=sched)
            ckpt.prune_checkpoints(cfg.out_dir, cfg.keep_ckpts)
        if is_dist():
            torch.distributed.barrier()

    params = SamplingParams(max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature, top_p=cfg.top_p, stop_token_ids=stop_ids(tok))
    history: list[dict] = []
    final: dict = {}
    opt_steps = 0
    single_update = cfg.updates_per_batch == 1
    while step < cfg.steps:
        # ---- rollouts (deterministic per seed, rank and iteration, so resume replays the same prompts)
        t0 = time.time()
        rng = random.Random(f"{cfg.seed}-{rank()}-{step}")
        gen = torch.Generator(device=dev).manual_seed(cfg.seed * 1_000_003 + rank() * 10_007 + step)
        examples = [task.sample(rng) for _ in range(cfg.prompts_per_step)]
        base.eval()  # rollouts in eval mode, updates in train mode (one mode switch each)
        ro = rollout(base, task, tok, examples, cfg.group_size, params, gen)
        t_roll = time.time() - t0
        # each group's prompt runs once in every log-prob forward; tensors below are completion-aligned (B, T)
        sp = ro.shared.to(dev)
        adv = compute_advantages(ro.rewards, ro.lengths, cfg).to(dev)  # (B,)
        b = sp.comp_ids.shape[0]

        # ---- old policy (rollout-time) log-probs and router logits; reference log-probs
        t1 = time.time()
        old_logp, old_router = None, None
        if not single_update:
            with torch.no_grad():
                old_logp, _, old_router = shared_prompt_logprobs(base, sp, cfg.temperature, moe, cfg.pack_completions)
        ref_logp = None
        if ref is not None:
            with torch.no_grad():
                ref_logp, _, _ = shared_prompt_logprobs(ref, sp, cfg.temperature, False, cfg.pack_completions)

        # ---- updates
        agg: dict[str, list[float]] = {}
        gammas, changed = [], []
        train_model.train()
        for _ in range(cfg.epochs):
            perm = torch.randperm(b, generator=gen, device=dev) if cfg.mini_batches > 1 else torch.arange(b, device=dev)
            for chunk in perm.chunk(cfg.mini_batches):
                msp = sp if cfg.mini_batches == 1 else sp.rows(chunk)  # this mini-batch's rows and prompts, trimmed
                mb_mask, mb_adv = msp.comp_mask, adv[chunk]  # (b, T), (b,)
                t_mb = mb_mask.shape[1]
                logp, logits, router = shared_prompt_logprobs(train_model, msp, cfg.temperature, moe, cfg.pack_completions)  # (b, T), (b, T, V)
                if single_update:
                    mb_old, mb_old_router = logp.detach(), [r.detach() for r in router] if moe else None
                else:
                    mb_old = old_logp[chunk, :t_mb]
                    mb_old_router = [r[chunk, :t_mb] for r in old_router] if moe else None
                gamma = None
                if moe:
                    g = C.router_shift(router, mb_old_router, top_k, cfg.gamma_min)  # (b, T)
                    tok_mask = mb_mask.bool()
                    gammas.append(g[tok_mask])
                    changed.append(C.topk_changed([r.detach() for r in router], mb_old_router, top_k)[:, tok_mask].flatten())
                    agg.setdefault("moe/router_entropy", []).append(float(C.masked_mean(C.router_entropy(router), mb_mask)))
                    if cfg.router_shift:
                        gamma = g
                loss, st = C.policy_loss(
                    logp, mb_old, mb_adv, mb_mask, ratio_type=cfg.ratio_type, clip_low=cfg.clip_low, clip_high=cfg.clip_high,
                    loss_agg=cfg.loss_agg, norm_len=cfg.max_new_tokens, gamma=gamma, gamma_mode=cfg.gamma_mode,
                )  # fmt: skip
                ent = C.entropy_from_logits(logits if cfg.entropy_coef else logits.detach())  # (b, T); graph only when it is a loss term
                total = loss
                if cfg.entropy_coef:
                    total = total - cfg.entropy_coef * C.aggregate_loss(ent, mb_mask, cfg.loss_agg, cfg.max_new_tokens)
                if ref_logp is not None:
                    mb_ref = ref_logp[chunk, :t_mb]
                    kl3 = C.kl_k3(logp, mb_ref)
                    agg.setdefault("kl/to_init_k3", []).append(float(C.masked_mean(kl3.detach(), mb_mask)))
                    if cfg.kl_coef:
                        kl = C.kl_estimate(logp, mb_ref, cfg.kl_estimator)
                        total = total + cfg.kl_coef * C.aggregate_loss(kl, mb_mask, cfg.loss_agg, cfg.max_new_tokens)
                opt.zero_grad(set_to_none=True)
                total.backward()
                gnorm = torch.nn.utils.clip_grad_norm_(base.parameters(), cfg.grad_clip) if cfg.grad_clip > 0 else torch.tensor(0.0)
                opt.step()
                sched.step()
                opt_steps += 1
                for k, v in (("loss/policy", loss), ("loss/total", total), ("opt/grad_norm", gnorm), ("clip/frac", st["clip_frac"]),
                             ("ratio/mean", st["ratio_mean"]), ("ratio/var", st["ratio_var"]),
                             ("policy/entropy", C.masked_mean(ent.detach(), mb_mask))):  # fmt: skip
                    agg.setdefault(k, []).append(float(v.detach()) if isinstance(v, torch.Tensor) else float(v))
        t_upd = time.time() - t1
        step += 1

        r = ro.rewards
        row: dict[str, Any] = {
            "rollout/reward_mean": float(r.mean()),
            "rollout/reward_std": float(r.std(unbiased=False)),
            "rollout/pass@1": float((r >= 1.0).float().mean()),
            "rollout/len_mean": float(ro.lengths.mean()),
            "adv/abs_mean": float(adv.abs().mean()),
            **{k: sum(v) / len(v) for k, v in agg.items()},
            "opt/steps_total": opt_steps,
            "opt/steps_this_batch": cfg.updates_per_batch,
            "opt/lr": sched.get_last_lr()[0],
            "perf/rollout_s": t_roll,
            "perf/update_s": t_upd,
            "perf/samples_per_s": b / max(t_roll + t_upd, 1e-9),
        }
        if moe:
            g = torch.cat(gammas)
            row["moe/gamma_mean"] = float(g.mean()) if g.numel() else 1.0
            row["moe/gamma_p5"] = _quantile(g, 0.05) if g.numel() else 1.0
            ch = torch.cat(changed)
            row["moe/topk_changed_frac"] = float(ch.mean()) if ch.numel() else 0.0
        if eval_fn is not None and ((cfg.eval_every and step % cfg.eval_every == 0) or step == cfg.steps):
            row.update(eval_fn(base))
            if step == cfg.steps:
                final = {k: v for k, v in row.items() if k.startswith("eval/")}
        history.append({"step": step, **row})
        logger.log(step, row)
        if cfg.log_every and step % cfg.log_every == 0:
            keys = (
                "rollout/reward_mean",
                "rollout/pass@1",
                "policy/entropy",
                "kl/to_init_k3",
                "clip/frac",
                "moe/gamma_mean",
                "eval/pass@1",
            )
            print0(f"it {step}: " + "  ".join(f"{k}={row[k]:.4g}" for k in keys if k in row))
        if callback is not None:
            callback(step, row)
        if cfg.out_dir and ((cfg.ckpt_every and step % cfg.ckpt_every == 0) or step == cfg.steps):
            save(step)
    return RLResult(step=step, opt_steps=opt_steps, history=history, final_eval=final)


# ----------------------------------------------------------------------------------------- evaluation and warm start


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k (Chen et al. 2021): 1 - C(n - c, k) / C(n, k) for c correct of n samples."""
    if n - c < k:
        return 1.0
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


@torch.no_grad()
def evaluate(model: Transformer, task, tok, examples: Sequence, n_samples: int = 8, ks: Sequence[int] = (1, 8), temperature: float = 1.0,
             max_new_tokens: int = 48, seed: int = 0, batch: int = 256) -> dict[str, float]:  # fmt: skip
    """Held-out pass@k (unbiased, from `n_samples` samples per prompt) and mean reward; greedy accuracy at temperature 0."""
    assert all(k <= n_samples for k in ks), f"pass@k needs n_samples >= max(ks) = {max(ks)}"
    gen = torch.Generator(device=model.device).manual_seed(seed)
    params = SamplingParams(max_new_tokens=max_new_tokens, temperature=temperature, stop_token_ids=stop_ids(tok))
    correct = [0] * len(examples)
    reward_sum = 0.0
    flat = [(i, ex) for i, ex in enumerate(examples) for _ in range(n_samples)]
    for s in range(0, len(flat), batch):
        part = flat[s : s + batch]
        out = generate(model, [tok.encode(ex.prompt, bos=True) for _, ex in part], params, generator=gen, pad_id=tok.pad_id)
        for (i, ex), t in zip(part, out.tokens):
            rwd = float(task.reward(ex, tok.decode(t)))
            reward_sum += rwd
            correct[i] += int(rwd >= 1.0)
    res = {f"eval/pass@{k}": sum(pass_at_k(n_samples, c, k) for c in correct) / len(examples) for k in ks}
    res["eval/reward_mean"] = reward_sum / len(flat)
    return res


def tiny_model_config(vocab_size: int, dim: int = 64, n_layers: int = 2, n_heads: int = 4, n_kv_heads: int = 2, n_experts: int = 0,
                      top_k: int = 2, max_seq_len: int = 256) -> ModelConfig:  # fmt: skip
    """A small dense or MoE config for experiments and tests."""
    return ModelConfig(
        vocab_size=vocab_size, dim=dim, n_layers=n_layers, n_heads=n_heads, n_kv_heads=n_kv_heads, ffn_dim=int(dim * 8 / 3),
        n_experts=n_experts, n_experts_per_tok=top_k, moe_ffn_dim=max(16, dim // 2), max_seq_len=max_seq_len,
    )  # fmt: skip


def sft_warm_start(model: Transformer, task, tok, steps: int, n_examples: int = 2000, batch_size: int = 32, lr: float = 3e-3,
                   seed: int = 0) -> list[dict]:  # fmt: skip
    """Briefly supervise `model` on the task's worked traces (prompt masked) with the core train loop. Returns history."""
    from sherman.core.train import TrainConfig, build_sft_data, train

    if steps <= 0:
        return []
    data = build_sft_data(task, tok, n_examples, seed)
    res = train(
        model, data, TrainConfig(steps=steps, batch_size=batch_size, lr=lr, warmup_steps=min(10, steps), seed=seed), pad_id=tok.pad_id
    )
    return res.history


# ----------------------------------------------------------------------------------------- CLI


@dataclass
class RLArgs:
    preset: str = "opo"
    """RL algorithm: grpo, dr_grpo, opo, gspo, gmpo, rspo (sets the defaults of the RL options below)."""
    task: str = "countdown"
    """Task (sherman.tasks): countdown, arithmetic, ..."""
    out: str = "runs/rl"
    """Run directory (checkpoints, metrics.jsonl, tokenizer.json)."""
    init: str | None = None
    """Start from a Sherman checkpoint directory (with tokenizer.json beside it or in its parent)."""
    hf: str | None = None
    """Start from a Hugging Face checkpoint folder (config.json, safetensors, tokenizer.json)."""
    sft_steps: int = 0
    """Without --init/--hf: SFT warm-start steps on the task's traces before RL."""
    sft_examples: int = 2000
    """Task traces generated for the warm start."""
    dim: int = 64
    """Fresh model width."""
    n_layers: int = 2
    """Fresh model depth."""
    n_experts: int = 0
    """Fresh model experts per MoE layer (0 = dense)."""
    top_k: int = 2
    """Fresh model experts per token."""
    eval_prompts: int = 64
    """Held-out prompts for pass@1 / pass@8 at the end (0 = no eval)."""
    rl: RLConfig = field(default_factory=RLConfig)
    """RL options."""


def _preset_from_argv(argv: list[str]) -> str:
    for i, a in enumerate(argv):
        if a == "--preset" and i + 1 < len(argv):
            return argv[i + 1]
        if a.startswith("--preset="):
            return a.split("=", 1)[1]
    return RLArgs.preset


def _find_tokenizer(path: Path):
    from sherman.core.tokenizer import load_tokenizer

    for p in (path, path.parent):
        if (p / "tokenizer.json").is_file():
            return load_tokenizer(p)
    raise ShermanError(f"{path}: no tokenizer.json in it or its parent")


def main(argv: list[str]) -> int:
    import tyro

    from sherman.core.tokenizer import CharTokenizer
    from sherman.tasks import get_task

    name = _preset_from_argv(argv)
    default = RLArgs(preset=name, rl=preset_config(name))
    try:
        args = tyro.cli(RLArgs, args=argv, default=default, prog="sherman rl", description=__doc__.splitlines()[0],
                        config=(tyro.conf.OmitArgPrefixes,))  # fmt: skip
    except SystemExit as e:
        return int(e.code or 0)
    cfg = dataclasses.replace(args.rl)  # re-run validation
    task = get_task(args.task)
    out = Path(args.out)
    cfg.out_dir = str(out)
    cfg.log_every = cfg.log_every or max(1, cfg.steps // 10)
    seed_everything(cfg.seed)
    if args.init and args.hf:
        raise ShermanError("give at most one of --init and --hf")
    if args.init:
        model = ckpt.load_model(args.init)
        tok = _find_tokenizer(Path(args.init))
    elif args.hf:
        from sherman.core.hf import load_hf

        model = load_hf(args.hf)
        tok = _find_tokenizer(Path(args.hf))
    else:
        tok = CharTokenizer(task.alphabet())
        model = Transformer(tiny_model_config(tok.vocab_size, args.dim, args.n_layers, n_experts=args.n_experts, top_k=args.top_k))
        if args.sft_steps:
            print0(f"SFT warm start: {args.sft_steps} steps")
            sft_warm_start(model, task, tok, args.sft_steps, args.sft_examples, seed=cfg.seed)
    if cfg.router_shift and model.cfg.n_experts == 0:
        raise ShermanError(f"preset {name!r} / --router-shift needs an MoE model: pass --n-experts 8 (or an MoE --init/--hf checkpoint)")
    if rank() == 0:
        out.mkdir(parents=True, exist_ok=True)
        tok.save(out / "tokenizer.json")
    eval_fn = None
    if args.eval_prompts > 0:
        rng = random.Random(10_000 + cfg.seed)
        held = [task.sample(rng) for _ in range(args.eval_prompts)]

        def eval_fn(m):
            return evaluate(m, task, tok, held, n_samples=8, ks=(1, 8), temperature=cfg.temperature, max_new_tokens=cfg.max_new_tokens)

    print0(f"RL preset {name} on {args.task}: {cfg.steps} iterations x {cfg.prompts_per_step * cfg.group_size} rollouts, "
           f"{cfg.updates_per_batch} optimizer step(s) per batch, world size {world_size()}")  # fmt: skip
    res = rl_train(model, task, tok, cfg, eval_fn=eval_fn)
    if res.already_complete:
        print0(f"already complete: {res.step} iterations; checkpoints in {out}")
        return 0
    print0(f"done: {res.step} iterations, {res.opt_steps} optimizer steps; final {res.final_eval}; checkpoints in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
