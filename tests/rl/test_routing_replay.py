"""Routing replay (core/moe.py hook) and the RL loop's routing-replay / frozen-router controls."""

import copy

import pytest
import torch

from sherman.core.common import ShermanError
from sherman.core.moe import MoEFFN, RoutingRecord, RoutingReplay, route, routing_hook
from sherman.rl import grpo
from tests.rl.test_grpo import TASK, TOK, small_cfg, tiny


def test_moe_replay_uses_recorded_experts_with_current_weights():
    torch.manual_seed(0)
    a = MoEFFN(dim=8, n_experts=6, top_k=2, expert_hidden=12)
    b = copy.deepcopy(a)
    with torch.no_grad():
        b.gate.weight.copy_(torch.randn_like(b.gate.weight) * 3)  # a different router, same experts
    x = torch.randn(2, 5, 8)  # (B, T, C)
    with routing_hook(a, RoutingRecord()) as rec:
        a(x)
    old_ids = rec.ids[0]  # (N, k)
    _, own_ids = route(b.gate(x.reshape(-1, 8)), 2, True)
    assert not torch.equal(own_ids.sort(-1).values, old_ids.sort(-1).values)  # b alone would route differently
    with routing_hook(b, RoutingReplay([old_ids])) as rep:
        out, logits = b(x)
    assert torch.equal(rep.used[0], old_ids)
    # by hand: b's router probabilities of a's experts, renormalised, times b's (= a's) experts
    flat = x.reshape(-1, 8)
    p = torch.softmax(b.gate(flat), -1)  # (N, E)
    want = torch.zeros_like(flat)
    for n in range(flat.shape[0]):
        w = p[n, old_ids[n]] / p[n, old_ids[n]].sum()
        for j in range(2):
            want[n] += w[j] * b.experts[int(old_ids[n, j])](flat[n : n + 1])[0]
    assert torch.allclose(out.reshape(-1, 8), want, atol=1e-6)
    assert b.routing is None  # the hook is detached afterwards
    # the router still gets a gradient through the mixing weights
    with routing_hook(b, RoutingReplay([old_ids])):
        b(x)[0].sum().backward()
    assert b.gate.weight.grad is not None and b.gate.weight.grad.abs().sum() > 0


def test_rl_routing_replay_update_uses_old_expert_choice(monkeypatch):
    m = tiny(n_experts=4)
    model0 = copy.deepcopy(m).eval()
    calls = []  # (msp, replay hook) of every update forward
    real = grpo.shared_prompt_logprobs

    def spy(model, sp, *a, **k):
        blocks = [x for x in model.modules() if isinstance(x, MoEFFN)]
        hook = blocks[0].routing if blocks else None
        if isinstance(hook, RoutingReplay) and model is m:
            calls.append((sp, hook))
        return real(model, sp, *a, **k)

    monkeypatch.setattr(grpo, "shared_prompt_logprobs", spy)
    cfg = small_cfg("grpo", steps=1, mini_batches=4, lr=0.05, routing_replay=True, track_kl_to_init=False, kl_coef=0.0)
    grpo.rl_train(m, TASK, TOK, cfg)
    assert len(calls) == 4  # every update forward of the iteration ran under replay
    moved = 0
    for sp, hook in calls:
        with torch.no_grad(), routing_hook(model0, RoutingRecord()) as rec:
            real(model0, sp, 1.0, False, True)  # the rollout-time policy's expert choice on this mini-batch's layout
        assert len(hook.used) == len(rec.ids) == 2
        for used, old in zip(hook.used, rec.ids):
            assert torch.equal(used, old)
        with torch.no_grad(), routing_hook(m, RoutingRecord()) as now:
            real(m, sp, 1.0, False, True)
        moved += sum(int((u.sort(-1).values != n.sort(-1).values).any(-1).sum()) for u, n in zip(hook.used, now.ids))
    assert moved > 0  # the trained router routes some tokens elsewhere now, yet the updates used the old choice


def test_freeze_router_keeps_gates_and_dense_rejects_moe_controls():
    m = tiny(n_experts=4)
    gates = [x.gate.weight.detach().clone() for x in m.modules() if isinstance(x, MoEFFN)]
    experts = [x.experts[0].up_proj.weight.detach().clone() for x in m.modules() if isinstance(x, MoEFFN)]
    grpo.rl_train(m, TASK, TOK, small_cfg("grpo", steps=2, freeze_router=True, lr=0.05))
    blocks = [x for x in m.modules() if isinstance(x, MoEFFN)]
    assert all(torch.equal(g, x.gate.weight) for g, x in zip(gates, blocks))
    assert any(not torch.equal(e, x.experts[0].up_proj.weight) for e, x in zip(experts, blocks))
    for kw in (dict(routing_replay=True), dict(freeze_router=True)):
        with pytest.raises(ShermanError):
            grpo.rl_train(tiny(0), TASK, TOK, small_cfg("grpo", steps=1, **kw))
