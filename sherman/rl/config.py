"""RL configuration: `RLConfig` (every option of the RL loop in `sherman.rl.grpo`) and the named `PRESETS`.

See `sherman.rl.grpo` for what each preset implements and the papers they follow.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sherman.core.config import check
from sherman.core.errors import ShermanError

ADVANTAGES = ("grpo", "mean", "opo", "opo_batch")
RATIO_TYPES = ("token", "sequence", "geometric")
LOSS_AGGS = ("token_mean", "seq_mean_token_mean", "seq_mean_token_sum_norm")
KL_ESTIMATORS = ("k1", "k3")
# The choices live here, not in the tensor code (`rl/core.py` imports them), so that building the `sherman rl` parser
# imports no torch.


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
    skip_zero_advantage: bool = True
    """Exact on-policy steps (one update per rollout batch) without KL, entropy bonus or MoE: rows whose advantage is
    exactly 0 (e.g. a group whose rewards are all equal) add exactly nothing to the gradient, so they are left out of
    the backward pass (the loss keeps the whole batch's normaliser; a no-grad forward still gives their logged
    entropy). Same update up to fp32 summation order; False runs every row through the backward pass."""
    router_shift: bool = False
    """RSPO router-shift rescaling of the importance ratio (MoE models only): the `rs` switch."""
    gamma_min: float = 0.0
    """Floor of the router-shift weight gamma (the paper's gamma_min; its value is not given, 0 = no floor)."""
    gamma_mode: str = "before"
    """Apply gamma to the ratio 'before' clipping (the paper's v2 reading) or to the clipped loss 'after'."""
    routing_replay: bool = False
    """Routing replay (MoE only): each update forward reuses the expert choice of the rollout-time (old) policy on the
    same tokens (`core/moe.py` `RoutingReplay`); the router still gets gradients through the mixing weights."""
    freeze_router: bool = False
    """Freeze the MoE routers (gate weights get no gradient): a control where off-policyness cannot come from routing."""
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
        _check(self.loss_agg in LOSS_AGGS, f"loss_agg must be one of {LOSS_AGGS}, got {self.loss_agg!r}")
        _check(self.kl_estimator in KL_ESTIMATORS, f"kl_estimator must be one of {KL_ESTIMATORS}, got {self.kl_estimator!r}")
        _check(self.gamma_mode in ("before", "after"), f"gamma_mode must be 'before' or 'after', got {self.gamma_mode!r}")
        _check(
            self.steps >= 0 and self.prompts_per_step >= 1 and self.group_size >= 1, "steps >= 0, prompts_per_step >= 1, group_size >= 1"
        )
        check(self.group_size >= 2 or self.advantage == "opo_batch", "group_size",
              f"must be >= 2 with advantage {self.advantage!r}: a group of one has a zero advantage, so nothing is learned")  # fmt: skip
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
