"""Evaluation and warm start for RL: unbiased pass@k on held-out prompts, a tiny model config, SFT warm start."""

from __future__ import annotations

import math
from typing import Sequence

import torch

from sherman.core.generate import SamplingParams, generate
from sherman.core.model import ModelConfig, Transformer
from sherman.rl.rollout import prompt_ids, stop_ids


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
        out = generate(model, [prompt_ids(tok, ex) for _, ex in part], params, generator=gen, pad_id=tok.pad_id)
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
