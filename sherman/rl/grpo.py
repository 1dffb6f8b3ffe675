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

Modules: `config` (RLConfig, PRESETS), `rollout` (sampling a rollout batch), `logprobs` (prompt sharing/packing and
the log-prob pass), `evaluation` (pass@k, SFT warm start), `cli` (`sherman rl`); this module is the loop and
re-exports their names.

CLI:  sherman rl --preset opo --task countdown --sft-steps 300 --steps 50 --out runs/rl_opo
"""

from __future__ import annotations

import copy
import dataclasses
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from sherman.core import checkpoint as ckpt
from sherman.core.common import (
    MetricLogger,
    ShermanError,
    adamw,
    init_distributed_from_env,
    is_dist,
    print0,
    rank,
)
from sherman.core.generate import SamplingParams, generate  # noqa: F401  (re-exported)
from sherman.core.model import Transformer
from sherman.core.moe import MoEFFN, RoutingRecord, RoutingReplay, routing_hook
from sherman.rl import core as C
from sherman.rl.config import ADVANTAGES, PRESETS, RATIO_TYPES, RLConfig, preset_config  # noqa: F401  (re-exported)
from sherman.rl.evaluation import evaluate, pass_at_k, sft_warm_start, tiny_model_config  # noqa: F401  (re-exported)
from sherman.rl.logprobs import (  # noqa: F401  (re-exported)
    MAX_MASK_ELEMENTS,
    SharedPrompts,
    forward_logprobs,
    model_dtype,
    pack_groups,
    share_prompts,
    shared_prompt_logprobs,
    unshared_logprobs,
)
from sherman.rl.rollout import Rollouts, rollout, stop_ids  # noqa: F401  (re-exported)


def compute_advantages(rewards: torch.Tensor, lengths: torch.Tensor, cfg: RLConfig) -> torch.Tensor:
    """Per-sequence advantages (B,) for the configured estimator."""
    if cfg.advantage == "grpo":
        return C.grpo_advantages(rewards, cfg.group_size, cfg.adv_eps)
    if cfg.advantage == "mean":
        return C.mean_advantages(rewards, cfg.group_size)
    if cfg.advantage == "opo":
        return C.opo_advantages(rewards, lengths, cfg.group_size)
    return C.opo_batch_advantages(rewards, lengths)


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
    if (cfg.routing_replay or cfg.freeze_router) and not moe:
        raise ShermanError("routing_replay and freeze_router need an MoE model (n_experts > 0)")
    if cfg.freeze_router:
        for m in base.modules():
            if isinstance(m, MoEFFN):
                m.gate.weight.requires_grad_(False)
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
    # exact on-policy, policy loss only: rows with a zero advantage can be left out of the backward pass (RLConfig docs)
    skip_dead = cfg.skip_zero_advantage and single_update and not moe and ref is None and not cfg.entropy_coef and not is_dist()
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
        replay_src = None  # routing replay: the rollout-time weights, to record the old expert choice per mini-batch layout
        if cfg.routing_replay and not single_update:
            replay_src = copy.deepcopy(base).eval()
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
                weight, dead_ent = 1.0, None
                if replay_src is not None:
                    with torch.no_grad(), routing_hook(replay_src, RoutingRecord()) as rec:
                        shared_prompt_logprobs(replay_src, msp, cfg.temperature, False, cfg.pack_completions)
                    with routing_hook(base, RoutingReplay(rec.ids)):
                        logp, logits, router = shared_prompt_logprobs(train_model, msp, cfg.temperature, moe, cfg.pack_completions)
                elif skip_dead:
                    # rows with a zero advantage carry no gradient: no-grad forward (logged entropy) + backward over the rest
                    live = (mb_adv != 0).nonzero().squeeze(1)  # (b_live,)
                    if live.numel() < mb_adv.numel():
                        dead = (mb_adv == 0).nonzero().squeeze(1)  # (b_dead,)
                        with torch.no_grad():
                            _, dead_logits, _ = shared_prompt_logprobs(train_model, msp.rows(dead), cfg.temperature, False, cfg.pack_completions)
                        dead_mask = mb_mask[dead, : dead_logits.shape[1]]  # (b_dead, T')
                        dead_ent = (C.entropy_from_logits(dead_logits) * dead_mask).sum(), dead_mask.sum()
                        weight = C.kept_rows_weight(mb_mask, live, cfg.loss_agg)
                        msp, mb_adv = msp.rows(live) if live.numel() else None, mb_adv[live]
                        mb_mask = msp.comp_mask if msp is not None else mb_mask[live]
                    if msp is not None:
                        logp, logits, router = shared_prompt_logprobs(train_model, msp, cfg.temperature, moe, cfg.pack_completions)
                else:
                    logp, logits, router = shared_prompt_logprobs(train_model, msp, cfg.temperature, moe, cfg.pack_completions)  # (b, T), (b, T, V)
                if msp is None:  # every row of this batch has a zero advantage: a zero gradient (AdamW still steps)
                    for prm in base.parameters():
                        if prm.requires_grad:
                            prm.grad = torch.zeros_like(prm)
                    opt.step()
                    sched.step()
                    opt_steps += 1
                    for k, v in (("loss/policy", 0.0), ("loss/total", 0.0), ("opt/grad_norm", 0.0), ("clip/frac", 0.0),
                                 ("ratio/mean", 1.0), ("ratio/var", 0.0), ("policy/entropy", float(dead_ent[0] / dead_ent[1].clamp(min=1.0)))):  # fmt: skip
                        agg.setdefault(k, []).append(v)
                    continue
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
                loss = loss * weight  # the whole batch's aggregate when zero-advantage rows were left out (weight 1 otherwise)
                ent = C.entropy_from_logits(logits if cfg.entropy_coef else logits.detach())  # (b, T); graph only when it is a loss term
                ent_log = C.masked_mean(ent.detach(), mb_mask)
                if dead_ent is not None:  # the logged entropy is over every row, trained or not
                    ent_log = ((ent.detach() * mb_mask).sum() + dead_ent[0]) / (mb_mask.sum() + dead_ent[1]).clamp(min=1.0)
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
                             ("policy/entropy", ent_log)):  # fmt: skip
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


def main(argv: list[str]) -> int:
    """`sherman rl` (kept here for callers of `sherman.rl.grpo:main`; the CLI lives in `sherman.rl.cli`)."""
    from sherman.rl.cli import main as cli_main

    return cli_main(argv)
