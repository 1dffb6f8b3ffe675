"""Pure tensor functions for policy-gradient RL on language models.

Every function is small, stateless and documented with its formula and source:

* Advantages
    - GRPO (DeepSeekMath, arXiv 2402.03300, Sec. 4.1): `A_i = (r_i - mean_g r) / (std_g r + eps)`.
    - Dr. GRPO (arXiv 2503.20783, Sec. 3.1): `A_i = r_i - mean_g r` (no std division).
    - OPO (arXiv 2505.23585, Sec. 3.2): optimal baseline under the assumption that the squared
      gradient norm of a sequence grows with its length, `b = sum_i l_i r_i / sum_i l_i`,
      `A_i = r_i - b` (no std division). Group and batch-level variants.
* Ratios: per-token `r_t = exp(logp_t - old_logp_t)`; GSPO (arXiv 2507.18071, Sec. 4.1) sequence ratio
  `s_i = exp(mean_t log r_t)`; GMPO (arXiv 2507.20673, Sec. 3, Eq. 4) geometric-mean objective with the
  token log-ratios clipped to [-clip_low, clip_high] on the side the advantage's sign selects.
* PPO clipped surrogate with separate low/high clip (DAPO's clip-higher, arXiv 2503.14476, Sec. 3.1).
* Loss aggregation: `token_mean`, `seq_mean_token_mean`, `seq_mean_token_sum_norm` (Dr. GRPO).
* KL estimators k1 and k3 (Schulman, "Approximating KL divergence", 2020).
* Router shift (RSPO, arXiv 2510.23027, Sec. 3): for each token, over the experts the OLD router
  selected (top-k at every MoE layer), `gamma = exp(-mean_{layers,k} |log p_new(e) - log p_old(e)|)`,
  floored at `gamma_min` and stop-gradient; it rescales the importance ratio.

Shapes: B sequences, T completion positions, E experts, L MoE layers. `mask` (B, T) is 1 where a
token counts in the loss. Sign convention: losses are to be MINIMISED.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from sherman.rl.config import KL_ESTIMATORS, LOSS_AGGS  # noqa: F401 - the option choices (also `C.LOSS_AGGS`)

# ----------------------------------------------------------------------------- advantages


def _groups(x: torch.Tensor, group_size: int) -> torch.Tensor:
    """(B,) -> (B // G, G); asserts B is a multiple of G (rows of a group are contiguous)."""
    assert x.dim() == 1, f"expected a 1-D tensor, got shape {tuple(x.shape)}"
    assert group_size >= 1 and x.numel() % group_size == 0, f"batch {x.numel()} is not a multiple of group size {group_size}"
    return x.reshape(-1, group_size)


def grpo_advantages(rewards: torch.Tensor, group_size: int, eps: float = 1e-6, unbiased: bool = False) -> torch.Tensor:
    """GRPO: `A_i = (r_i - mean_g) / (std_g + eps)` within each group of `group_size` contiguous rows.

    `unbiased=False` uses the population std (a group of 1 gets A = 0). rewards (B,) -> (B,).
    """
    r = _groups(rewards.float(), group_size)  # (N, G)
    mean = r.mean(-1, keepdim=True)
    std = r.std(-1, unbiased=unbiased, keepdim=True) if (group_size > 1 or not unbiased) else torch.zeros_like(mean)
    return ((r - mean) / (std + eps)).reshape(-1)


def mean_advantages(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    """Dr. GRPO: `A_i = r_i - mean_g r` (no std normalisation). rewards (B,) -> (B,)."""
    r = _groups(rewards.float(), group_size)  # (N, G)
    return (r - r.mean(-1, keepdim=True)).reshape(-1)


def opo_baseline(rewards: torch.Tensor, lengths: torch.Tensor, group_size: int) -> torch.Tensor:
    """OPO length-weighted optimal baseline per group: `b = sum_i l_i r_i / sum_i l_i`, broadcast to rows.

    A singleton group (G = 1) gets baseline 0: a baseline computed from the sample itself would
    cancel its own reward and remove all signal, so the raw reward is used. rewards, lengths (B,) -> (B,).
    """
    r = _groups(rewards.float(), group_size)  # (N, G)
    if group_size == 1:
        return torch.zeros_like(rewards, dtype=torch.float32)
    w = _groups(lengths.float(), group_size).clamp(min=0)  # (N, G)
    den = w.sum(-1, keepdim=True)
    b = torch.where(den > 0, (w * r).sum(-1, keepdim=True) / den.clamp(min=1e-12), r.mean(-1, keepdim=True))
    return b.expand_as(r).reshape(-1)


def opo_advantages(rewards: torch.Tensor, lengths: torch.Tensor, group_size: int) -> torch.Tensor:
    """OPO: `A_i = r_i - sum_g l_j r_j / sum_g l_j` (no std division). rewards, lengths (B,) -> (B,)."""
    return rewards.float() - opo_baseline(rewards, lengths, group_size)


def opo_batch_advantages(rewards: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Batch-level OPO: one baseline `b = sum_i l_i r_i / sum_i l_i` over the whole batch. (B,) -> (B,)."""
    r, w = rewards.float(), lengths.float().clamp(min=0)
    den = w.sum()
    b = (w * r).sum() / den if den > 0 else r.mean()
    return r - b


# ----------------------------------------------------------------------------- ratios and objectives


def log_ratio(logp: torch.Tensor, old_logp: torch.Tensor) -> torch.Tensor:
    """Per-token `log r_t = logp_t - old_logp_t`. (B, T) -> (B, T)."""
    return logp - old_logp


def token_ratio(logp: torch.Tensor, old_logp: torch.Tensor) -> torch.Tensor:
    """Per-token importance ratio `r_t = exp(logp_t - old_logp_t)`. (B, T) -> (B, T)."""
    return torch.exp(logp - old_logp)


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """`sum(x * mask) / sum(mask)` over `dim` (all dims when None); 0 where the mask is empty."""
    mask = mask.to(x.dtype)
    if dim is None:
        return (x * mask).sum() / mask.sum().clamp(min=1.0)
    return (x * mask).sum(dim) / mask.sum(dim).clamp(min=1.0)


def sequence_log_ratio(log_r: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """GSPO: `log s_i = (1/|y_i|) sum_t log r_t`. log_r, mask (B, T) -> (B,)."""
    return masked_mean(log_r, mask, dim=-1)


def sequence_ratio(logp: torch.Tensor, old_logp: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """GSPO sequence-level ratio `s_i = exp(mean_t (logp_t - old_logp_t))`. (B, T) -> (B,)."""
    return torch.exp(sequence_log_ratio(logp - old_logp, mask))


def gmpo_clamped_log_ratio(log_r: torch.Tensor, adv: torch.Tensor, clip_low: float, clip_high: float) -> torch.Tensor:
    """GMPO per-token clamp in log space (arXiv 2507.20673, Eq. 4), before the geometric mean.

    Eq. 4 takes per token `min(r A, clip(r, e^-clip_low, e^clip_high) A)`; in log space, with
    `s = sign(A)`: `y' = min(s log r, s clamp(log r, -clip_low, clip_high))`, returned as `s * y'`.
    Hence for A > 0 the log-ratio is capped at +clip_high (no floor) and for A < 0 it is floored at
    -clip_low (no cap); A = 0 gives 0 (the term carries no weight). log_r (B, T), adv (B,) -> (B, T).
    """
    s = torch.sign(adv).to(log_r.dtype)[:, None]  # (B, 1)
    y = torch.minimum(s * log_r, s * log_r.clamp(-clip_low, clip_high))  # (B, T)
    return s * y


def gmpo_sequence_ratio(log_r: torch.Tensor, adv: torch.Tensor, mask: torch.Tensor, clip_low: float, clip_high: float) -> torch.Tensor:
    """GMPO: geometric mean of the clamped token ratios, `exp(mean_t clamp_s(log r_t))`. -> (B,)."""
    return torch.exp(masked_mean(gmpo_clamped_log_ratio(log_r, adv, clip_low, clip_high), mask, dim=-1))


def clipped_surrogate(ratio: torch.Tensor, adv: torch.Tensor, clip_low: float, clip_high: float) -> torch.Tensor:
    """PPO clipped loss with separate bounds: `-min(r A, clip(r, 1 - clip_low, 1 + clip_high) A)`.

    `adv` broadcasts against `ratio` (pass (B, 1) for token ratios (B, T), (B,) for sequence ratios).
    """
    unclipped = ratio * adv
    clipped = ratio.clamp(1.0 - clip_low, 1.0 + clip_high) * adv
    return -torch.minimum(unclipped, clipped)


def clip_active(ratio: torch.Tensor, adv: torch.Tensor, clip_low: float, clip_high: float) -> torch.Tensor:
    """Where the clip zeroes the gradient: `(r > 1 + clip_high and A > 0) or (r < 1 - clip_low and A < 0)`."""
    return ((ratio > 1.0 + clip_high) & (adv > 0)) | ((ratio < 1.0 - clip_low) & (adv < 0))


def aggregate_loss(loss: torch.Tensor, mask: torch.Tensor, mode: str, norm_len: int | None = None) -> torch.Tensor:
    """Reduce a per-token loss (B, T) to a scalar.

    token_mean:               `sum_{i,t} m l / sum_{i,t} m`                 (DAPO; OPO)
    seq_mean_token_mean:      `(1/B) sum_i (sum_t m l / sum_t m)`           (GRPO as published)
    seq_mean_token_sum_norm:  `(1/B) sum_i (sum_t m l) / norm_len`          (Dr. GRPO; norm_len = generation budget,
                              defaults to T)
    """
    mask = mask.to(loss.dtype)
    if mode == "token_mean":
        return masked_mean(loss, mask)
    if mode == "seq_mean_token_mean":
        return masked_mean(loss, mask, dim=-1).mean()
    if mode == "seq_mean_token_sum_norm":
        n = norm_len if norm_len is not None else loss.shape[-1]
        return ((loss * mask).sum(-1) / float(n)).mean()
    raise ValueError(f"unknown loss aggregation {mode!r}; choose from {LOSS_AGGS}")


def kept_rows_weight(mask: torch.Tensor, keep: torch.Tensor, mode: str) -> float:
    """Factor that turns `aggregate_loss` over the rows `keep` alone into the aggregate over all rows of `mask`
    (B, T), when every other row's per-token loss is exactly zero (a zero advantage in an exact on-policy step):
    token_mean: kept tokens / all tokens; the per-sequence modes: kept rows / all rows."""
    if mode == "token_mean":
        return float(mask[keep].sum().clamp(min=1.0) / mask.sum().clamp(min=1.0))
    if mode in ("seq_mean_token_mean", "seq_mean_token_sum_norm"):
        return keep.numel() / mask.shape[0]
    raise ValueError(f"unknown loss aggregation {mode!r}; choose from {LOSS_AGGS}")


# ----------------------------------------------------------------------------- KL and entropy


def kl_k1(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """k1 estimator of KL(pi || pi_ref) per sampled token: `logp - ref_logp`. (B, T)."""
    return logp - ref_logp


def kl_k3(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """k3 estimator of KL(pi || pi_ref) per sampled token: `exp(d) - d - 1` with `d = ref_logp - logp`; >= 0. (B, T)."""
    d = ref_logp - logp
    return torch.exp(d) - d - 1.0


def kl_estimate(logp: torch.Tensor, ref_logp: torch.Tensor, estimator: str) -> torch.Tensor:
    if estimator == "k1":
        return kl_k1(logp, ref_logp)
    if estimator == "k3":
        return kl_k3(logp, ref_logp)
    raise ValueError(f"unknown KL estimator {estimator!r}; choose from {KL_ESTIMATORS}")


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """Entropy `-sum_v p_v log p_v` of softmax(logits) over the last dim. (..., V) -> (...)."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    return -(logp.exp() * logp).sum(-1)


# ----------------------------------------------------------------------------- router shift (RSPO)


def router_shift(
    new_router_logits: Sequence[torch.Tensor], old_router_logits: Sequence[torch.Tensor], top_k: int, gamma_min: float = 0.0
) -> torch.Tensor:
    """RSPO router-shift weight per token, stop-gradient.

    `gamma = max(gamma_min, exp(-(1 / (L k)) sum_l sum_{e in topk_old(l)} |log p_new^l(e) - log p_old^l(e)|))`
    where `p^l = softmax(router logits of layer l)` and the experts are the top-k selected by the old router.
    new/old: lists (one per MoE layer) of (B, T, E) -> (B, T). gamma = 1 when the router did not move.
    """
    assert len(new_router_logits) == len(old_router_logits) > 0, "router shift needs router logits from at least one MoE layer"
    diffs = []
    for new, old in zip(new_router_logits, old_router_logits):
        lp_new = torch.log_softmax(new.detach().float(), dim=-1)  # (B, T, E)
        lp_old = torch.log_softmax(old.detach().float(), dim=-1)
        top = lp_old.topk(top_k, dim=-1).indices  # (B, T, k) experts chosen by the old router
        diffs.append((lp_new.gather(-1, top) - lp_old.gather(-1, top)).abs())  # (B, T, k)
    mean_abs = torch.stack(diffs, 0).mean(dim=(0, -1))  # (B, T)
    return torch.exp(-mean_abs).clamp(min=gamma_min)


def topk_changed(new_router_logits: Sequence[torch.Tensor], old_router_logits: Sequence[torch.Tensor], top_k: int) -> torch.Tensor:
    """Per (layer, token): 1 where the top-k expert SET differs between new and old router. -> (L, B, T) float."""
    out = []
    for new, old in zip(new_router_logits, old_router_logits):
        a = torch.zeros_like(new, dtype=torch.bool).scatter_(-1, new.topk(top_k, -1).indices, True)  # (B, T, E) one-hot sets
        b = torch.zeros_like(old, dtype=torch.bool).scatter_(-1, old.topk(top_k, -1).indices, True)
        out.append((a != b).any(-1).float())
    return torch.stack(out, 0)


def router_entropy(router_logits: Sequence[torch.Tensor]) -> torch.Tensor:
    """Mean over MoE layers of the router distribution entropy per token. list of (B, T, E) -> (B, T)."""
    return torch.stack([entropy_from_logits(x.detach()) for x in router_logits], 0).mean(0)


# ----------------------------------------------------------------------------- the policy loss


def policy_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    adv: torch.Tensor,
    mask: torch.Tensor,
    *,
    ratio_type: str = "token",
    clip_low: float = 0.2,
    clip_high: float = 0.2,
    loss_agg: str = "token_mean",
    norm_len: int | None = None,
    gamma: torch.Tensor | None = None,
    gamma_mode: str = "before",
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Policy-gradient loss for one mini-batch and its clip statistics.

    ratio_type:
        token      GRPO/PPO: per-token clipped surrogate, reduced with `loss_agg`.
        sequence   GSPO: `-min(s A, clip(s) A)` per sequence, `s = exp(mean_t log r_t)`, mean over sequences.
        geometric  GMPO: `-A exp(mean_t clamp_s(log r_t))` per sequence (clip bounds in log space), mean over sequences.
    gamma: RSPO router shift (B, T), stop-gradient. `gamma_mode="before"` multiplies the token ratio by gamma
        before clipping (in log space: `log r_t + log gamma_t`; for GSPO/GMPO the sequence ratio thus gains the
        geometric mean of gamma); `"after"` multiplies the clipped per-token (or per-sequence, by the geometric
        mean of gamma) loss.
    logp, old_logp, mask (B, T); adv (B,). Returns (scalar loss, {"clip_frac", "ratio_mean", "ratio_var"}).
    """
    mask = mask.to(logp.dtype)
    log_r = log_ratio(logp, old_logp)  # (B, T)
    log_g = None
    if gamma is not None:
        log_g = torch.log(gamma.detach().clamp(min=1e-12)).to(logp.dtype)  # (B, T)
        if gamma_mode == "before":
            log_r = log_r + log_g
        elif gamma_mode != "after":
            raise ValueError(f"gamma_mode must be 'before' or 'after', got {gamma_mode!r}")
    if ratio_type == "token":
        ratio = torch.exp(log_r)  # (B, T)
        a = adv[:, None].to(logp.dtype)  # (B, 1)
        loss_t = clipped_surrogate(ratio, a, clip_low, clip_high)  # (B, T)
        if log_g is not None and gamma_mode == "after":
            loss_t = loss_t * log_g.exp()
        loss = aggregate_loss(loss_t, mask, loss_agg, norm_len)
        active = clip_active(ratio, a.expand_as(ratio), clip_low, clip_high).float()
        stats_ratio, clip_frac = ratio, masked_mean(active, mask)
    elif ratio_type == "sequence":
        s = torch.exp(sequence_log_ratio(log_r, mask))  # (B,)
        loss_s = clipped_surrogate(s, adv.to(s.dtype), clip_low, clip_high)  # (B,)
        if log_g is not None and gamma_mode == "after":
            loss_s = loss_s * torch.exp(masked_mean(log_g, mask, dim=-1))
        loss = loss_s.mean()
        clip_frac = clip_active(s, adv, clip_low, clip_high).float().mean()
        stats_ratio = torch.exp(log_r)
    elif ratio_type == "geometric":
        s = gmpo_sequence_ratio(log_r, adv, mask, clip_low, clip_high)  # (B,)
        loss_s = -adv.to(s.dtype) * s
        if log_g is not None and gamma_mode == "after":
            loss_s = loss_s * torch.exp(masked_mean(log_g, mask, dim=-1))
        loss = loss_s.mean()
        clamped = gmpo_clamped_log_ratio(log_r, adv, clip_low, clip_high)
        clip_frac = masked_mean(((clamped != log_r) & (adv != 0)[:, None]).float(), mask)
        stats_ratio = torch.exp(log_r)
    else:
        raise ValueError(f"unknown ratio_type {ratio_type!r}; choose token, sequence or geometric")
    with torch.no_grad():
        r = stats_ratio.detach()
        r_mean = masked_mean(r, mask)
        r_var = masked_mean((r - r_mean) ** 2, mask)
    return loss, {"clip_frac": clip_frac.detach(), "ratio_mean": r_mean, "ratio_var": r_var}
