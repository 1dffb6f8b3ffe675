"""OPO learns: from a briefly SFT-warmed tiny model, held-out pass@1 on Countdown rises within a fixed number of RL iterations."""

import random

import pytest
import torch

from sherman.core.model import Transformer
from sherman.core.tokenizer import CharTokenizer
from sherman.rl import grpo
from sherman.tasks import get_task


@pytest.mark.slow
def test_opo_raises_pass_at_1_from_warm_start():
    task = get_task("countdown", min_numbers=3, max_numbers=3, max_number=9, scratchpad=True)
    tok = CharTokenizer(task.alphabet())
    torch.manual_seed(0)
    model = Transformer(grpo.tiny_model_config(tok.vocab_size, 64, 2))
    grpo.sft_warm_start(model, task, tok, steps=400, n_examples=4000, batch_size=32, lr=3e-3, seed=0)
    rng = random.Random(4242)
    held = [task.sample(rng) for _ in range(128)]
    before = grpo.evaluate(model, task, tok, held, n_samples=8, ks=(1,), max_new_tokens=24, seed=1)["eval/pass@1"]
    cfg = grpo.preset_config("opo", steps=40, prompts_per_step=8, group_size=8, max_new_tokens=24, lr=3e-4, seed=0)
    res = grpo.rl_train(model, task, tok, cfg)
    after = grpo.evaluate(model, task, tok, held, n_samples=8, ks=(1,), max_new_tokens=24, seed=1)["eval/pass@1"]
    assert res.opt_steps == 40
    assert 0.02 < before < 0.9, f"warm start out of the useful range: {before}"
    assert after > before + 0.03, f"OPO did not improve pass@1: {before:.3f} -> {after:.3f}"
