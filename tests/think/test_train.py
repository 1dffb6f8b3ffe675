import random
import re

import pytest
import torch

from sherman.core.model import ModelConfig, Transformer
from sherman.core.train import TrainConfig, train
from sherman.tasks.arithmetic import Arithmetic
from sherman.tasks.countdown import Countdown
from sherman.think.backends import ScriptedBackend
from sherman.think.engine import AsyncThinkEngine, ThinkConfig
from sherman.think.protocol import FormatError
from sherman.think.train import TOPOLOGIES, RLConfig, make_tokenizer, organizer_trace, plan, rl_train, rollout_reward, sft_examples

TASKS = [Arithmetic(n_expressions=3, max_digits=2), Countdown(n_solutions=2, max_numbers=4)]


def replay(task, ex, topology, capacity, rng):
    """Play the programmatic trace through the real engine: organizer text from the trace, workers from the plan."""
    p = plan(task, ex)
    segs = organizer_trace(p, topology, capacity, rng)
    org = "".join(t for t, learn in segs if learn)
    workers = dict(zip(p.subqueries, p.worker_traces))

    def script(prompt):
        if "<ORG>" in prompt:
            done = re.sub(r"(<JOIN-(\d+)>).*?</JOIN-\2>", r"\1", prompt.split("<ORG>", 1)[1], flags=re.S)
            return org[len(done):]
        return workers[prompt[: -len("<WORK>")]]

    return AsyncThinkEngine(ScriptedBackend(script), ThinkConfig(capacity=capacity, max_org_tokens=10**4)).run_sync(ex.prompt), segs


@pytest.mark.parametrize("task", TASKS, ids=lambda t: t.name)
@pytest.mark.parametrize("topology", TOPOLOGIES)
@pytest.mark.parametrize("capacity", [2, 3, 4])
def test_programmatic_traces_are_valid_protocol_with_full_accuracy(task, topology, capacity):
    rng = random.Random(capacity)
    for _ in range(5):
        ex = task.sample(rng)
        r, segs = replay(task, ex, topology, capacity, rng)
        assert r.errors == [], (r.errors, segs)
        assert task.reward(ex, "#" + r.answer) == 1.0
        # the engine inserts exactly the text the trace marks as not-learned
        assert r.organizer.generated == "".join(t for t, _ in segs)
        assert (len(r.workers) == 0) == (topology == "no_fork")
        assert r.eta <= capacity


def test_sft_examples_mask_inserted_text():
    tok = make_tokenizer(*TASKS)
    rng = random.Random(0)
    exs = sft_examples(TASKS[0], tok, 20, rng, capacity=3, topologies=("fork_all",))
    org = [e for e in exs if tok.token_id("<ORG>") in e.ids]
    assert len(org) == 20 and len(exs) == 20 * 4  # organizer + 3 workers each
    e = org[0]
    unmasked = tok.decode([t for t, m in zip(e.ids, e.mask) if m], skip_special=False)
    masked_after_prompt = tok.decode([t for t, m in zip(e.ids[e.ids.index(tok.token_id("<ORG>")) + 1 :], e.mask[e.ids.index(tok.token_id("<ORG>")) + 1 :]) if not m], skip_special=False)
    assert "</JOIN-1>" in masked_after_prompt and "</JOIN-" not in unmasked and unmasked.endswith("</ANSWER>")


def test_sft_loss_falls_and_rl_step_moves_params():
    tok = make_tokenizer(*TASKS)
    torch.manual_seed(0)
    task = Arithmetic(n_expressions=2, max_digits=1, ops="+")
    m = Transformer(ModelConfig(vocab_size=tok.vocab_size, dim=48, n_layers=1, n_heads=2, n_kv_heads=1, ffn_dim=96))
    data = sft_examples(task, tok, 40, random.Random(0), capacity=3)
    res = train(m, data, TrainConfig(steps=25, batch_size=16, lr=5e-3, warmup_steps=2))
    losses = [h["loss/train"] for h in res.history if "loss/train" in h]
    assert losses[-1] < 0.7 * losses[0]
    before = [p.detach().clone() for p in m.parameters()]
    think = ThinkConfig(capacity=3, max_org_tokens=24, max_worker_tokens=10)
    hist = rl_train(m, tok, task, think, RLConfig(steps=1, questions=2, group=3, lr=1e-3))
    assert set(hist[0]) >= {"rollout/reward_mean", "rollout/acc_mean", "rollout/eta_mean", "loss/policy"}
    moved = any(not torch.equal(a, b) for a, b in zip(before, m.parameters()))
    assert moved == (hist[0]["loss/policy"] != 0.0)


def test_rollout_reward_format_penalty_and_accuracy():
    task = TASKS[0]
    ex = task.sample(random.Random(1))
    r, _ = replay(task, ex, "fork_all", 4, random.Random(1))
    cfg = RLConfig(lam=0.5, tau=0.5)
    rew, acc = rollout_reward(task, ex, r, 4, cfg)
    assert acc == 1.0 and rew == pytest.approx(1.0 + 0.5 * min(r.eta / 4, 0.5) / 0.5)
    r.errors.append(FormatError("pool_full"))
    assert rollout_reward(task, ex, r, 4, cfg) == (-1.0, 1.0)
