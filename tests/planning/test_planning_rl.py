import copy
import math

import pytest
import torch

from sherman.rl.planning import (
    ArmConfig,
    EvalConfig,
    Evaluator,
    PlanModelConfig,
    Rollout,
    batch_tensors,
    cut_at_target,
    distinct_correct,
    full_kl,
    outcome_step_rewards,
    pg_loss,
    planning_model,
    pretrain_sft,
    process_step_rewards,
    q_learning_loss,
    q_targets,
    run_continual_sft,
    run_pg,
    run_q_learning,
    sample_paths,
    sft_examples,
)
from sherman.tasks.graphs import DataConfig, GraphConfig, PathGraph, PlanningData, erdos_renyi_dag, make_planning_data, reachability


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    # a 1-layer width-32 model is fastest on one thread; the CPU is shared with other test runs
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def toy_data() -> PlanningData:
    # 0 -> 1 -> 3, 0 -> 2 -> 3, 3 -> 4; one train pair (0, 3)
    g = PathGraph(5, [[1, 2], [3], [3], [4], []])
    r = reachability(g)
    return PlanningData(g, r, [(0, 3)], [(0, 4)], [[0, 1, 3]], r & False)


def test_q_target_two_step_episode_hand_derived():
    # episode 0 -> 1 -> 3 (target 3), process reward scaled by R = 10, gamma = 0.9
    # step 0: r = 0, not done -> y0 = 0 + 0.9 * max_a Q(s1, a) = 0.9 * 2.5 = 2.25
    # step 1: reaches the target: r = +10, done -> y1 = 10
    rew, done, n = process_step_rewards(toy_data(), Rollout(0, 3, [1, 3], 0.0))
    assert (rew, done, n) == ([0.0, 1.0], [0.0, 1.0], 2)
    y = q_targets(10 * torch.tensor([rew]), torch.tensor([[2.5, 7.0]]), torch.tensor([done]), gamma=0.9)
    assert torch.allclose(y, torch.tensor([[2.25, 10.0]]))


def test_q_learning_loss_matches_hand_computation_on_the_model():
    data = toy_data()
    torch.manual_seed(0)
    model = planning_model(data.vocab_size, PlanModelConfig(dim=16, ffn_dim=32))
    roll = Rollout(0, 3, [1, 3], 0.0)
    loss, ret = q_learning_loss(model, data, [roll], "process", gamma=0.5, scale=2.0)
    logits = model(torch.tensor([[0, 3, 0, 1, 3]])).logits[0]  # (5, V)
    q0, q1 = logits[2, 1], logits[3, 3]  # Q(s0, a=1), Q(s1, a=3)
    y0 = 0.0 + 0.5 * logits[3].max()  # bootstrapped from the state after the first step
    y1 = 2.0  # +1 * scale, terminal
    expect = ((q0 - y0) ** 2 + (q1 - y1) ** 2) / 2
    assert torch.allclose(loss, expect, atol=1e-5)
    assert ret == 2.0


def test_step_rewards_on_hand_made_episodes():
    data = toy_data()
    assert process_step_rewards(data, Rollout(0, 3, [3], 0.0)) == ([-1.0], [1.0], 1)  # 0 -> 3 is no edge
    assert process_step_rewards(data, Rollout(0, 3, [2, 4, 3], 0.0)) == ([0.0, -1.0], [0.0, 1.0], 2)  # cut at the bad step
    assert process_step_rewards(data, Rollout(0, 3, [1, 1], 0.0)) == ([0.0, -1.0], [0.0, 1.0], 2)
    assert outcome_step_rewards(data, Rollout(0, 3, [1, 3], 0.0)) == ([0.0, 1.0], [0.0, 1.0], 2)
    assert outcome_step_rewards(data, Rollout(0, 3, [2, 4, 3], 0.0)) == ([0.0, 0.0, 0.0], [0.0, 0.0, 1.0], 3)  # invalid: 0
    assert outcome_step_rewards(data, Rollout(0, 3, [1, 1, 1], 0.0)) == ([0.0, 0.0, 0.0], [0.0, 0.0, 0.0], 3)  # truncated


def test_diversity_counting_on_hand_made_samples():
    paths = [[0, 1, 3], [0, 1, 3], [0, 2, 3], [0, 3], [0, 2, 3]]
    correct = [True, True, True, False, True]
    assert distinct_correct(paths, correct) == 2
    assert distinct_correct(paths, [False] * 5) == 0
    assert distinct_correct([[0, 3], [0, 1, 3]], [True, True]) == 2


def test_cut_kl_and_pg_loss_hand_values():
    assert cut_at_target([5, 3, 7, 3], 3) == [5, 3]
    assert cut_at_target([5, 6], 3) == [5, 6]
    # KL([1/2, 1/2] || [1/4, 3/4]) = 0.5 ln 2 + 0.5 ln(2/3)
    kl = full_kl(torch.log(torch.tensor([0.5, 0.5])), torch.log(torch.tensor([0.25, 0.75])))
    assert math.isclose(float(kl), 0.5 * math.log(2) + 0.5 * math.log(2 / 3), rel_tol=1e-5)
    assert float(full_kl(torch.tensor([1.0, 2.0]), torch.tensor([3.0, 4.0]))) == pytest.approx(0.0, abs=1e-6)
    # two rollouts: rewarded (logp -1, -2) and unrewarded (logp -3, pad); KL 0.1 on each real token, beta = 2
    logp = torch.tensor([[-1.0, -2.0], [-3.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0], [1.0, 0.0]])
    kl = torch.full((2, 2), 0.1)
    # seq 1: -1 * (-3) + 2 * 0.2 = 3.4; seq 2: 0 + 2 * 0.1 = 0.2; mean = 1.8
    assert float(pg_loss(logp, mask, torch.tensor([1.0, 0.0]), kl, 2.0)) == pytest.approx(1.8)


def test_sft_examples_and_batch_tensors():
    data = toy_data()
    ex = sft_examples(data)
    assert ex[0].ids == [0, 3, 0, 1, 3] and ex[0].mask == [0, 0, 0, 1, 1]
    ids, mask = batch_tensors([Rollout(0, 3, [1, 3], 0.0), Rollout(0, 4, [2], 0.0)], pad_id=5)
    assert ids.tolist() == [[0, 3, 0, 1, 3], [0, 4, 0, 2, 5]]
    assert mask.tolist() == [[1.0, 1.0], [1.0, 0.0]]


@pytest.fixture(scope="module")
def small():
    g = erdos_renyi_dag(GraphConfig(n_nodes=20, edge_prob=0.25, seed=1))
    data = make_planning_data(g, DataConfig(train_frac=0.3, paths_per_pair=2, seed=1))
    model = planning_model(data.vocab_size, PlanModelConfig(dim=32, ffn_dim=64), seed=0)
    hist = pretrain_sft(model, data, steps=40, batch_size=32, lr=1e-2)
    ev = Evaluator(data, EvalConfig(n_samples=2, max_pairs=10, adj_targets=2), max_len=10)
    return data, model, hist, ev


def test_evaluator_on_a_prefix_of_its_splits_keeps_their_numbers(small):
    _, model, _, ev = small
    full, part = ev(model, 1.0), ev.only(("train", "test"))(model, 1.0)
    assert list(ev.only(("train", "test")).splits) == ["train", "test"] and len(ev.splits) > 2
    assert {k: v for k, v in full.items() if k.split("/")[-1] in ("train", "test") or k.startswith("adj/")} == part
    with pytest.raises(AssertionError):
        ev.only(("test",))


def test_sft_loss_falls_and_sampling_stops_at_target(small):
    data, model, hist, _ = small
    assert hist[-1]["loss/train"] < 0.7 * hist[0]["loss/train"]
    rolls = sample_paths(model, data.train_pairs[:4], 3, 10, 1.0, torch.Generator().manual_seed(0), data.pad_id)
    assert len(rolls) == 12
    for r in rolls:
        assert r.t not in r.actions[:-1] and (r.actions[-1] == r.t or len(r.actions) == 10)


@pytest.mark.parametrize("arm", ["sft", "pg0", "pg1", "q_outcome", "q_process"])
def test_each_arm_smoke(small, arm):
    data, base, _, ev = small
    model = copy.deepcopy(base)
    cfg = ArmConfig(steps=3, batch_pairs=4, samples_per_pair=2, eval_every=2, max_len=10, lr=1e-3)
    if arm == "sft":
        hist = run_continual_sft(model, data, cfg, ev)
    elif arm.startswith("pg"):
        hist = run_pg(model, base, data, cfg, float(arm[2:]), ev)
    else:
        hist = run_q_learning(model, data, cfg, arm[2:], ev)
    assert [h["step"] for h in hist] == [0, 2, 3]
    for h in hist:
        assert all(math.isfinite(v) for v in h.values()), h
        assert 0.0 <= h["acc/train"] <= 1.0 and 0.0 <= h["adj/precision"] <= 1.0 and 0.0 <= h["stuck/test"] <= 1.0
    moved = sum(float((p - q).detach().abs().sum()) for p, q in zip(model.parameters(), base.parameters()))
    assert moved > 0.0


def test_continual_sft_keeps_one_optimizer_across_evaluations(small, monkeypatch):
    # one optimizer per run: its step count keeps growing across evaluation boundaries (the old loop made a fresh
    # AdamW at every evaluation: 3 optimizers here, the last one at step 1)
    import sherman.core.train as core_train

    made = []

    def spy(params, **kw):
        made.append(real(params, **kw))
        return made[-1]

    real = core_train.adamw
    monkeypatch.setattr(core_train, "adamw", spy)
    data, base, _, _ = small
    calls = []
    cfg = ArmConfig(steps=5, batch_pairs=4, samples_per_pair=2, eval_every=2, lr=1e-3)
    hist = run_continual_sft(copy.deepcopy(base), data, cfg, lambda m, temp: calls.append(1) or {"acc/x": 0.5})
    assert [h["step"] for h in hist] == [0, 2, 4, 5] and len(calls) == 4
    assert all(h["acc/x"] == 0.5 for h in hist) and all(math.isfinite(h["loss/train"]) for h in hist[1:])
    assert len(made) == 1
    steps = {float(st["step"]) for st in made[0].state.values()}
    assert steps == {5.0}


def test_continual_sft_weights_do_not_depend_on_eval_every(small):
    # evaluation is read-only and the optimizer/data stream persist, so evaluating every step or only at the end
    # trains the same weights (restarting Adam at each evaluation broke this)
    data, base, _, ev = small
    ev = ev.only(("train",))
    models = []
    for every in (1, 4):
        m = copy.deepcopy(base)
        run_continual_sft(m, data, ArmConfig(steps=4, batch_pairs=4, samples_per_pair=2, eval_every=every, max_len=10), ev)
        models.append(m)
    for p, q in zip(models[0].parameters(), models[1].parameters()):
        assert torch.equal(p, q)
    assert any(not torch.equal(p, q) for p, q in zip(models[0].parameters(), base.parameters()))


def test_bad_q_reward_is_rejected(small):
    data, base, _, ev = small
    with pytest.raises(ValueError):
        run_q_learning(copy.deepcopy(base), data, ArmConfig(steps=1), "dense", ev)


def test_pg_token_weights_by_hand():
    from sherman.rl.planning import pg_token_weights

    r = torch.tensor([1.0, 0.0])
    m = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    assert torch.allclose(pg_token_weights(r, m), torch.tensor([[1.0, 1.0, 1.0], [0.0, 0.0, 0.0]]))  # plain REINFORCE
    assert torch.allclose(pg_token_weights(r, m, gamma=0.9), torch.tensor([[0.81, 0.9, 1.0], [0.0, 0.0, 0.0]]))
    assert torch.allclose(pg_token_weights(r, m, step_cost=0.1), torch.tensor([[0.7, 0.8, 0.9], [-0.2, -0.1, 0.0]]))
    both = pg_token_weights(r, m, gamma=0.9, step_cost=0.1)  # 0.81 - 0.1 (1 + 0.9 + 0.81), 0.9 - 0.1 * 1.9, 1 - 0.1
    assert torch.allclose(both, torch.tensor([[0.539, 0.71, 0.9], [-0.19, -0.1, 0.0]]))
    # mean baseline: batch mean of G_0 = 0.5 subtracted on the path steps
    assert torch.allclose(pg_token_weights(r, m, baseline="mean"), torch.tensor([[0.5, 0.5, 0.5], [-0.5, -0.5, 0.0]]))
