"""Rollouts of the RL loop: sample `group_size` completions per task prompt with the core sampler
(`sherman.core.generate.generate`), score them with the task's verifiable reward, and lay them out both as padded
rows and as `SharedPrompts` for the log-prob pass.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from sherman.core.generate import SamplingParams, generate
from sherman.core.model import Transformer
from sherman.rl.logprobs import SharedPrompts


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


def prompt_ids(tok, ex) -> list[int]:
    """Token ids of an example's prompt: `ex.meta["prompt_ids"]` when the task gives them (token-exact contexts, e.g.
    RPT's document prefixes), else `tok.encode(ex.prompt, bos=True)`."""
    ids = ex.meta.get("prompt_ids") if ex.meta else None
    return list(ids) if ids is not None else tok.encode(ex.prompt, bos=True)


def stop_ids(tok) -> list[int]:
    return list(getattr(tok, "eos_ids", None) or [tok.eos_id])


def rollout(
    model: Transformer, task, tok, examples: Sequence, group_size: int, params: SamplingParams, generator: torch.Generator
) -> Rollouts:
    """Sample `group_size` completions per example (rows of a group are contiguous) and score them."""
    prompts = [prompt_ids(tok, ex) for ex in examples for _ in range(group_size)]
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
