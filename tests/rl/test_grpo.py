"""Smoke, bookkeeping, checkpoint and HF tests of the RL loop (sherman.rl.grpo) on tiny models."""

import math
import random

import pytest
import torch
from torch.optim.optimizer import register_optimizer_step_post_hook

from sherman.core.common import ShermanError
from sherman.core.model import Transformer
from sherman.core.tokenizer import CharTokenizer
from sherman.rl import grpo
from sherman.tasks.base import Example


class OnesTask:
    """Toy task with a dense reward: the fraction of '1' characters in the completion."""

    name = "ones"

    def sample(self, rng: random.Random) -> Example:
        return Example(prompt=str(rng.randint(0, 9)), answer="111")

    def reward(self, ex: Example, completion: str) -> float:
        return completion.count("1") / max(1, len(completion)) if completion else 0.0

    def trace(self, ex: Example, rng=None) -> str:
        return "111"

    def alphabet(self) -> str:
        return "0123456789"


TASK = OnesTask()
TOK = CharTokenizer(TASK.alphabet())


def tiny(n_experts: int = 0, seed: int = 0) -> Transformer:
    torch.manual_seed(seed)
    return Transformer(grpo.tiny_model_config(TOK.vocab_size, dim=32, n_layers=2, n_heads=2, n_kv_heads=1, n_experts=n_experts, top_k=2))


def small_cfg(preset: str, **kw) -> grpo.RLConfig:
    base = dict(steps=2, prompts_per_step=2, group_size=4, max_new_tokens=6, lr=3e-3)
    return grpo.preset_config(preset, **{**base, **kw})


def _flat(m):
    return torch.cat([p.detach().flatten().clone() for p in m.parameters()])


CASES = [(p, 0) for p in grpo.PRESETS if p != "rspo"] + [(p, 4) for p in ("grpo", "gspo", "gmpo", "rspo", "opo")]


@pytest.mark.parametrize("preset,n_experts", CASES)
def test_preset_smoke_moves_params_and_logs_finite(preset, n_experts):
    m = tiny(n_experts)
    before = _flat(m)
    counter = {"n": 0}

    def hook(opt, args, kwargs):
        counter["n"] += 1

    handle = register_optimizer_step_post_hook(hook)
    try:
        steps = 2 if preset == "opo" else 1  # opo: 1 update per batch; KL to init is 0 during the first
        res = grpo.rl_train(m, TASK, TOK, small_cfg(preset, steps=steps))
    finally:
        handle.remove()
    assert not torch.equal(before, _flat(m)), f"{preset}: parameters did not move"
    per_batch = grpo.PRESETS[preset].get("mini_batches", 1) * grpo.PRESETS[preset].get("epochs", 1)
    assert counter["n"] == res.opt_steps == steps * per_batch
    for row in res.history:
        for k, v in row.items():
            if isinstance(v, float):
                assert math.isfinite(v), f"{preset}: metric {k} = {v}"
        for k in ("rollout/reward_mean", "rollout/pass@1", "policy/entropy", "kl/to_init_k3", "clip/frac", "ratio/var"):
            assert k in row
        if n_experts:
            for k in ("moe/topk_changed_frac", "moe/gamma_mean", "moe/gamma_p5", "moe/router_entropy"):
                assert k in row
    assert res.history[-1]["kl/to_init_k3"] > 0  # the policy moved away from the initial one


def test_opo_exactly_one_optimizer_step_per_rollout_batch():
    m = tiny()
    calls = []
    handle = register_optimizer_step_post_hook(lambda opt, a, k: calls.append(1))
    rollouts = []
    orig = grpo.rollout

    def counting_rollout(*a, **k):
        rollouts.append(1)
        return orig(*a, **k)

    grpo.rollout = counting_rollout
    try:
        res = grpo.rl_train(m, TASK, TOK, small_cfg("opo", steps=3))
    finally:
        grpo.rollout = orig
        handle.remove()
    assert len(rollouts) == 3 and len(calls) == 3 and res.opt_steps == 3
    assert all(r["opt/steps_this_batch"] == 1 for r in res.history)
    # exact on-policy: ratio identically 1, nothing clipped
    assert all(r["ratio/mean"] == 1.0 and r["clip/frac"] == 0.0 for r in res.history)


def test_opo_update_equals_reinforce_with_length_weighted_baseline():
    """One OPO step from a fixed rollout equals a hand-built REINFORCE step with b = sum l r / sum l."""
    m = tiny()
    cfg = small_cfg("opo", steps=1, grad_clip=0.0, lr=1e-2, track_kl_to_init=False)
    gen = torch.Generator().manual_seed(0)
    examples = [TASK.sample(random.Random(0))]
    ro = grpo.rollout(m, TASK, TOK, examples, 4, grpo.SamplingParams(max_new_tokens=6, stop_token_ids=[TOK.eos_id]), gen)
    adv = grpo.compute_advantages(ro.rewards, ro.lengths, cfg)
    b = float((ro.lengths * ro.rewards).sum() / ro.lengths.sum())
    assert torch.allclose(adv, ro.rewards - b)
    assert adv.abs().sum() > 0, "degenerate rollout: all rewards equal"
    params = list(m.parameters())
    logp, _, _ = grpo.forward_logprobs(m, ro.ids, 1.0, False)
    loss, _ = grpo.C.policy_loss(logp, logp.detach(), adv, ro.mask, loss_agg="token_mean")
    g_loss = torch.autograd.grad(loss, params)
    logp, _, _ = grpo.forward_logprobs(m, ro.ids, 1.0, False)
    reinforce = -(adv[:, None] * logp * ro.mask).sum() / ro.mask.sum()
    g_ref = torch.autograd.grad(reinforce, params)
    for a, b_ in zip(g_loss, g_ref):
        assert torch.allclose(a, b_, atol=1e-6)


def test_router_shift_requires_moe_and_presets_validate():
    with pytest.raises(ShermanError):
        grpo.rl_train(tiny(), TASK, TOK, small_cfg("rspo"))
    with pytest.raises(ShermanError):
        grpo.preset_config("ppo")
    with pytest.raises(ShermanError):
        grpo.RLConfig(advantage="bogus")
    with pytest.raises(ShermanError):
        grpo.RLConfig(prompts_per_step=1, group_size=2, mini_batches=4)
    # the rs switch on grpo
    cfg = grpo.preset_config("grpo", router_shift=True)
    assert cfg.router_shift and cfg.ratio_type == "token"


def test_checkpoint_resume_is_exact(tmp_path):
    a = tiny()
    grpo.rl_train(a, TASK, TOK, small_cfg("grpo", steps=3, mini_batches=2, out_dir=None))
    b = tiny()
    grpo.rl_train(b, TASK, TOK, small_cfg("grpo", steps=2, mini_batches=2, out_dir=str(tmp_path)))
    c = tiny(seed=123)  # different init: everything must come from the checkpoint
    res = grpo.rl_train(c, TASK, TOK, small_cfg("grpo", steps=3, mini_batches=2, out_dir=str(tmp_path), resume=True))
    assert res.step == 3 and res.opt_steps == 2
    assert torch.allclose(_flat(a), _flat(c), atol=1e-6)


def test_hf_checkpoint_roundtrip_runs(tmp_path):
    from sherman.core.hf import load_hf, save_hf

    m = tiny(4)
    save_hf(m, tmp_path / "hf")
    m2 = load_hf(tmp_path / "hf")
    res = grpo.rl_train(m2, TASK, TOK, small_cfg("rspo", steps=1))
    assert res.opt_steps == 4 and math.isfinite(res.history[-1]["loss/policy"])


def test_pass_at_k():
    assert grpo.pass_at_k(8, 0, 1) == 0.0
    assert grpo.pass_at_k(8, 2, 1) == pytest.approx(2 / 8)
    # 1 - C(6, 8) / C(8, 8) = 1 (fewer than k failures)
    assert grpo.pass_at_k(8, 2, 8) == 1.0
    assert grpo.pass_at_k(4, 1, 2) == pytest.approx(1 - 3 / 6)


def test_cli_smoke(tmp_path, capsys):
    from sherman.cli import main

    code = main(["rl", "--preset", "opo", "--task", "arithmetic", "--steps", "1", "--prompts-per-step", "2", "--group-size", "2",
                 "--max-new-tokens", "4", "--dim", "32", "--eval-prompts", "2", "--out", str(tmp_path / "run")])  # fmt: skip
    assert code == 0
    assert (tmp_path / "run" / "metrics.jsonl").is_file() and (tmp_path / "run" / "tokenizer.json").is_file()
    assert "1 optimizer steps" in capsys.readouterr().out
    assert main(["rl", "--preset", "nope"]) == 2


def test_pack_groups_first_fit_decreasing_after_the_prompt():
    # capacity 6. group 0: prompt 2, completions 5, 3, 2, 4 -> [prompt, 4], [5], [3, 2];
    # group 1: prompt 3, completions 6, 0 (left out), 1 -> [prompt, 1], [6]
    bins = grpo.pack_groups([2, 3], [5, 3, 2, 4, 6, 0, 1], [0, 0, 0, 0, 1, 1, 1], 6)
    assert bins == [(0, [3]), (1, [6]), (0, [0]), (0, [1, 2]), (1, [4])]
    unpacked = grpo.pack_groups([2, 3], [5, 3, 2, 4, 6, 0, 1], [0, 0, 0, 0, 1, 1, 1], 6, pack=False)
    assert unpacked == [(0, []), (1, []), (0, [0]), (0, [3]), (0, [1]), (0, [2]), (1, [4]), (1, [6])]


def test_share_prompts_layout_by_hand():
    pad = TOK.pad_id
    # rows: prompt [5, 6] + completion [7, 8]; the same prompt + [9]; prompt [5] + completion [4, 4, 4]
    ids = torch.tensor([[5, 6, 7, 8, pad], [5, 6, 9, pad, pad], [5, 4, 4, 4, pad]])
    mask = torch.tensor([[0, 1, 1, 0], [0, 1, 0, 0], [1, 1, 1, 0]], dtype=torch.float32)
    sp = grpo.share_prompts(ids, mask, pad)
    assert sp.prompt_ids.tolist() == [[5, 6], [5, pad]] and sp.prompt_valid.tolist() == [[True, True], [True, False]]
    assert sp.row_prompt.tolist() == [0, 0, 1]
    assert sp.comp_ids.tolist() == [[7, 8, pad], [9, pad, pad], [4, 4, 4]]
    assert sp.comp_mask.tolist() == [[1, 1, 0], [1, 0, 0], [1, 1, 1]]
    sub = sp.rows(torch.tensor([1]))  # one row: its prompt only, trimmed
    assert sub.prompt_ids.tolist() == [[5, 6]] and sub.row_prompt.tolist() == [0] and sub.comp_ids.tolist() == [[9]]
    with pytest.raises(ShermanError, match="contiguous"):
        grpo.share_prompts(ids, torch.tensor([[0, 1, 0, 1], [0, 1, 0, 0], [1, 1, 1, 0]], dtype=torch.float32), pad)


@pytest.mark.parametrize("n_experts,pack,max_mask", [(0, False, None), (0, True, None), (4, False, None), (4, True, None), (0, True, 0), (4, True, 0)])
def test_shared_prompt_logprobs_equal_one_padded_forward(n_experts, pack, max_mask):
    """Each prompt run once + completions attending its keys = one forward over the concatenated rows: same
    log-probs, logits, router logits and gradients on every scored position."""
    m = tiny(n_experts)
    g = torch.Generator().manual_seed(0)
    groups, G, L = 3, 4, 18
    b = groups * G
    ids = torch.full((b, L), TOK.pad_id)
    mask = torch.zeros(b, L - 1)
    for gi in range(groups):
        p = 2 + 2 * gi  # prompts of different lengths per group
        prompt = torch.randint(1, TOK.vocab_size, (p,), generator=g)
        for r in range(gi * G, (gi + 1) * G):
            c = int(torch.randint(1, L - p + 1, (1,), generator=g))  # ragged completion lengths
            ids[r, :p] = prompt
            ids[r, p : p + c] = torch.randint(1, TOK.vocab_size, (c,), generator=g)
            mask[r, p - 1 : p - 1 + c] = 1.0
    moe = n_experts > 0
    sp = grpo.share_prompts(ids, mask, TOK.pad_id)
    assert sp.prompt_ids.shape[0] == groups
    lp1, lg1, r1 = grpo.forward_logprobs(m, ids, 0.7, moe)  # (b, L-1)
    kw = {} if max_mask is None else {"max_mask_elements": max_mask}  # 0: the unshared fallback (long sequences)
    lp2, lg2, r2 = grpo.shared_prompt_logprobs(m, sp, 0.7, moe, pack, **kw)  # (b, T) completion-aligned
    on, son = mask.bool(), sp.comp_mask.bool()
    assert torch.allclose(lp1[on], lp2[son], atol=1e-5) and torch.allclose(lg1[on], lg2[son], atol=1e-4)
    assert (lp2[~son] == 0).all()
    if moe:
        assert all(torch.allclose(a[on], c[son], atol=1e-5) for a, c in zip(r1, r2))
    params = [p for p in m.parameters() if p.requires_grad]
    w = torch.rand(int(on.sum()), generator=g)  # any weighting of the scored log-probs
    g1 = torch.autograd.grad((lp1[on] * w).sum(), params, allow_unused=True, retain_graph=True)
    g2 = torch.autograd.grad((lp2[son] * w).sum(), params, allow_unused=True)
    for a, c in zip(g1, g2):
        assert (a is None and c is None) or torch.allclose(a, c, atol=1e-5)


class HalfConstantTask(OnesTask):
    """Prompts 0-4 always earn 1.0 (a group with a zero advantage); 5-9 earn the dense fraction of '1's."""

    def reward(self, ex: Example, completion: str) -> float:
        return 1.0 if int(ex.prompt) < 5 else super().reward(ex, completion)


class ConstantTask(OnesTask):
    def reward(self, ex: Example, completion: str) -> float:
        return 1.0


@pytest.mark.parametrize("task,preset,extra", [
    (HalfConstantTask(), "opo", {}),
    (HalfConstantTask(), "grpo", dict(mini_batches=1, kl_coef=0.0)),  # seq_mean_token_mean aggregation
    (HalfConstantTask(), "dr_grpo", dict(mini_batches=1)),  # seq_mean_token_sum_norm
    (ConstantTask(), "opo", {}),  # every advantage 0: a zero gradient, AdamW still steps (weight decay, momentum)
])  # fmt: skip
def test_skipping_zero_advantage_rows_gives_the_same_update(task, preset, extra, monkeypatch):
    calls = []
    orig = grpo.C.kept_rows_weight
    monkeypatch.setattr(grpo.C, "kept_rows_weight", lambda *a: calls.append(1) or orig(*a))
    runs = []
    for skip in (True, False):
        m = tiny()
        cfg = small_cfg(preset, steps=4, prompts_per_step=4, track_kl_to_init=False, weight_decay=0.1, skip_zero_advantage=skip, **extra)
        res = grpo.rl_train(m, task, TOK, cfg)
        runs.append((_flat(m), res.history))
    assert calls, "no batch had a zero-advantage row: the test does not exercise the skip"
    (p_skip, h_skip), (p_full, h_full) = runs
    assert torch.allclose(p_skip, p_full, atol=1e-6, rtol=1e-5)
    for a, b in zip(h_skip, h_full):
        for k in ("loss/policy", "policy/entropy", "opt/grad_norm", "ratio/mean", "clip/frac", "rollout/reward_mean"):
            assert a[k] == pytest.approx(b[k], rel=1e-5, abs=1e-6), k
