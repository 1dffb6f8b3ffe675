import random
import re

import pytest
import torch

from sherman.core.generate import SamplingParams
from sherman.core.model import ModelConfig, Transformer
from sherman.core.train import TrainConfig, train
from sherman.tasks.arithmetic import Arithmetic
from sherman.tasks.countdown import Countdown
from sherman.think.backends import LocalBackend, ScriptedBackend
from sherman.think.engine import AsyncThinkEngine, ThinkConfig
from sherman.think.protocol import FormatError
from sherman.think.train import (
    TOPOLOGIES,
    RLConfig,
    make_tokenizer,
    organizer_trace,
    plan,
    policy_update,
    rl_train,
    rollout_reward,
    rollout_sequences,
    run_many,
    sft_examples,
)

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
        return workers[prompt.split("<WORK>")[1]]

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


def test_sft_loss_falls():
    tok = make_tokenizer(*TASKS)
    torch.manual_seed(0)
    task = Arithmetic(n_expressions=2, max_digits=1, ops="+")
    m = Transformer(ModelConfig(vocab_size=tok.vocab_size, dim=48, n_layers=1, n_heads=2, n_kv_heads=1, ffn_dim=96))
    data = sft_examples(task, tok, 40, random.Random(0), capacity=3)
    res = train(m, data, TrainConfig(steps=20, batch_size=16, lr=5e-3, warmup_steps=2))
    losses = [h["loss/train"] for h in res.history if "loss/train" in h]
    assert losses[-1] < 0.7 * losses[0]


@pytest.mark.slow
def test_rl_train_runs():
    tok = make_tokenizer(*TASKS)
    torch.manual_seed(0)
    task = Arithmetic(n_expressions=2, max_digits=1, ops="+")
    m = Transformer(ModelConfig(vocab_size=tok.vocab_size, dim=48, n_layers=1, n_heads=2, n_kv_heads=1, ffn_dim=96))
    think = ThinkConfig(capacity=3, max_org_tokens=24, max_worker_tokens=10)
    hist = rl_train(m, tok, task, think, RLConfig(steps=2, questions=2, group=2, lr=1e-3))
    assert set(hist[0]) >= {"rollout/reward_mean", "rollout/acc_mean", "rollout/eta_mean", "rollout/format_ok", "loss/policy"}


def seq_logp(m, tok, r):
    """Sum of log p over every decoded token of a rollout (organizer and workers)."""
    total = 0.0
    with torch.no_grad():
        for ids, mask, _ in rollout_sequences(r, tok):
            x = torch.tensor([ids])
            lp = torch.log_softmax(m(x[:, :-1]).logits.float(), -1).gather(-1, x[:, 1:, None]).squeeze(-1)[0]
            total += float((lp * torch.tensor(mask[1:], dtype=torch.float32)).sum())
    return total


def test_policy_update_shares_the_advantage_over_organizer_and_workers():
    tok = make_tokenizer(*TASKS)
    torch.manual_seed(1)
    m = Transformer(ModelConfig(vocab_size=tok.vocab_size, dim=32, n_layers=1, n_heads=2, n_kv_heads=1, ffn_dim=64))
    backend = LocalBackend(m, tok, SamplingParams(temperature=1.0), generator=torch.Generator().manual_seed(0))
    rs = run_many(backend, ThinkConfig(capacity=3, max_org_tokens=16, max_worker_tokens=6), ["1+2;3+4="] * 2)
    # every decoded token is in some sequence, with the logp it was sampled with
    seqs = [s for r in rs for s in rollout_sequences(r, tok)]
    assert sum(sum(mk) for _, mk, _ in seqs) == sum(r.total_tokens for r in rs)
    good, bad = seq_logp(m, tok, rs[0]), seq_logp(m, tok, rs[1])
    assert abs(good - sum(t.logp for t in rs[0].tokens)) < 1e-3
    opt = torch.optim.SGD(m.parameters(), lr=0.05)
    assert policy_update(m, opt, tok, rs, [0.0, 0.0]) == 0.0
    loss = policy_update(m, opt, tok, rs, [1.0, -1.0])
    assert loss != 0.0
    assert seq_logp(m, tok, rs[0]) > good and seq_logp(m, tok, rs[1]) < bad


def test_rollout_reward_format_penalty_and_accuracy():
    task = TASKS[0]
    ex = task.sample(random.Random(1))
    r, _ = replay(task, ex, "fork_all", 4, random.Random(1))
    cfg = RLConfig(lam=0.5, tau=0.5)
    rew, acc = rollout_reward(task, ex, r, 4, cfg)
    assert acc == 1.0 and rew == pytest.approx(1.0 + 0.5 * min(r.eta / 4, 0.5) / 0.5)
    r.errors.append(FormatError("pool_full"))
    assert rollout_reward(task, ex, r, 4, cfg) == (-1.0, 1.0)


@pytest.mark.parametrize("task", TASKS + [Countdown(n_solutions=3, max_numbers=4)], ids=lambda t: f"{t.name}")
def test_every_sft_answer_is_in_the_organizers_context(task):
    """Each answer of each sampled organizer target is a result some worker returned (joined into the context)."""
    tok = make_tokenizer(*TASKS)
    rng = random.Random(3)
    org_id = tok.token_id("<ORG>")
    n_checked = 0
    for e in sft_examples(task, tok, 60, rng, capacity=4, topologies=("interleaved", "fork_all")):
        if org_id not in e.ids:
            continue
        text = tok.decode(e.ids, skip_special=False)
        body = text.split("<ORG>", 1)[1]
        answer = body.split("<ANSWER>", 1)[1].split("</ANSWER>", 1)[0]
        joined = re.findall(r"<JOIN-(\d+)>(.*?)</JOIN-\1>", body.split("<ANSWER>", 1)[0])
        returned = {t for _, t in joined}
        parts = answer.split(";")
        assert parts and all(p in returned for p in parts), (answer, returned)
        n_checked += 1
    assert n_checked == 60


def test_countdown_plan_covers_single_operator_questions():
    """A question whose solutions all share one top operator still gets n workers, each returning a distinct one."""
    from sherman.tasks.base import Example
    from sherman.think.train import countdown_assignments

    task = Countdown(n_solutions=2, max_numbers=3)
    ex = Example("1,2,2>5|2:", "", {"numbers": [1, 2, 2], "target": 5, "n_solutions": 2})  # 1+2+2 and 1+2*2: both top "+"
    assign = countdown_assignments(task, ex)
    assert [(o, k) for o, k, _ in assign] == [("+", 1), ("+", 2)]
    p = plan(task, ex)
    assert len(assign) == 2 and len(p.subqueries) == 2
    assert task.reward(ex, "#" + p.answer) == 1.0
    assert p.answer.split(";") == [t.split("<RETURN>")[1].split("</RETURN>")[0] for t in p.worker_traces]


def _adam_steps(ck) -> set[float]:
    from sherman.core.checkpoint import load_state

    st = load_state(ck)["optimizer"]["state"]
    return {float(v["step"]) for v in st.values()}


def test_rl_is_one_run_with_one_optimizer_across_steps_and_resume(tmp_path, monkeypatch):
    """Straight 4 steps == 2 steps + resume for 2; the Adam step count equals the updates made (state kept).

    An untrained model makes format errors only (every reward equal, no update), so the reward is replaced
    by a deterministic function of the rollout (its token count mod 3): the test is about the optimizer."""
    import sherman.think.train as tt
    from sherman.core.checkpoint import latest_checkpoint

    monkeypatch.setattr(tt, "rollout_reward", lambda task, ex, r, c, cfg: (float(r.total_tokens % 3), 0.0))

    tok = make_tokenizer(*TASKS)
    task = Arithmetic(n_expressions=2, max_digits=1, ops="+")
    think = ThinkConfig(capacity=3, max_org_tokens=24, max_worker_tokens=10)

    def fresh():
        torch.manual_seed(0)
        return Transformer(ModelConfig(vocab_size=tok.vocab_size, dim=32, n_layers=1, n_heads=2, n_kv_heads=1, ffn_dim=64))

    cfg = dict(questions=1, group=4, lr=1e-3, temperature=1.0, format_penalty=-1.0)
    a = fresh()
    init = {k: v.clone() for k, v in a.state_dict().items()}
    ha = rl_train(a, tok, task, think, RLConfig(steps=4, save_every=1, **cfg), run_dir=tmp_path / "a")
    updates = ha[-1]["updates"]
    assert updates >= 3, ha  # the test needs real updates to mean anything
    assert any(not torch.equal(init[k], v) for k, v in a.state_dict().items())
    assert _adam_steps(latest_checkpoint(tmp_path / "a")) == {float(updates)}  # one optimizer over the whole run

    b = fresh()
    rl_train(b, tok, task, think, RLConfig(steps=2, save_every=1, **cfg), run_dir=tmp_path / "b")
    c = fresh()  # a new process: fresh weights, resumed from the checkpoint (weights + optimizer state)
    hc = rl_train(c, tok, task, think, RLConfig(steps=4, save_every=1, **cfg), run_dir=tmp_path / "b")
    assert [h["step"] for h in hc] == [0, 1, 2, 3]
    assert [h["rollout/reward_mean"] for h in hc] == [h["rollout/reward_mean"] for h in ha]
    for k, v in a.state_dict().items():
        assert torch.allclose(v, c.state_dict()[k], atol=1e-6), k
    assert _adam_steps(latest_checkpoint(tmp_path / "b")) == {float(updates)}


def test_latency_precondition_on_ground_truth_traces():
    """Long sub-problems (3-digit products) let fork-join beat parallel thinking's latency by >= 30%; 1-digit
    sums (a few thinking tokens each, as in the old experiment) cannot: fork/join/answer tokens dominate."""
    from sherman.think.train import latency_precondition, replay_trace, sequential_length

    long_, short = Arithmetic(n_expressions=3, min_digits=3, max_digits=3, ops="*"), Arithmetic(n_expressions=3, max_digits=1, ops="+-")
    tok = make_tokenizer(long_, short)
    ex = long_.sample(random.Random(0))
    p = plan(long_, ex)
    assert sequential_length(long_, ex, tok) == len(tok.encode(p.solo)) + len(tok.encode(ex.answer)) + 2
    r = replay_trace(long_, ex, tok, "fork_all", 4, random.Random(0))
    # fork_all with c = 4: three forks, then the joins; the critical path is at least the longest worker plus the answer
    longest = max(len(tok.encode(t)) for t in p.worker_traces)
    assert r.errors == [] and r.latency >= longest + len(tok.encode(f"<ANSWER>{ex.answer}</ANSWER>"))
    good, bad = latency_precondition(long_, tok, 8, 4), latency_precondition(short, tok, 8, 4)
    assert good["passed"] and good["fork_all_ratio"] <= 0.7
    assert not bad["passed"] and bad["best_ratio"] > 1.0


@pytest.mark.parametrize("topology,mode", [("interleaved", "index"), ("fork_all", "index"), ("fork_all", "letter")])
def test_index_subqueries_fork_by_position_and_replay_to_full_accuracy(topology, mode):
    """subquery='index': the organizer forks expression k by its position ("k", one token), the worker (which sees the
    question) works expression k; the ground-truth trace is valid protocol and answers everything right."""
    from sherman.think.train import replay_trace

    task = Arithmetic(n_expressions=3, min_digits=3, max_digits=3, ops="+")
    tok = make_tokenizer(task)
    rng = random.Random(5)
    for _ in range(4):
        ex = task.sample(rng)
        p = plan(task, ex, subquery=mode)
        names = "123" if mode == "index" else "abc"
        assert p.subqueries == list(names)
        assert p.worker_traces == plan(task, ex).worker_traces  # same work, only the sub-query's text differs
        forks = [t for t, learn in organizer_trace(p, topology, 4, rng) if learn and t.startswith("<FORK-")]
        assert all(len(tok.encode(f)) == 3 for f in forks)  # <FORK-i>, k, </FORK-i>
        r = replay_trace(task, ex, tok, topology, 4, rng, subquery=mode)
        assert r.errors == [] and task.reward(ex, "#" + r.answer) == 1.0
        prompts = sorted(log.segments[0].text for log in r.worker_logs.values())
        assert prompts == [f"{ex.prompt}<WORK>{k}<WORK>" for k in names]
        assert not set("abc") & set(ex.prompt)
    with pytest.raises(ValueError, match="subquery"):
        plan(task, task.sample(rng), subquery="bogus")


@pytest.mark.parametrize("task", [Arithmetic(n_expressions=3, min_digits=2, max_digits=2, ops="+", style="digits"),
                                  Countdown(n_solutions=2, max_numbers=4)], ids=lambda t: t.name)
@pytest.mark.parametrize("topology", ["interleaved", "fork_all"])
def test_sft_contexts_equal_the_engines_runtime_contexts(task, topology):
    """What SFT trains on is token-identical to what the engine shows the model at inference for the same trace:
    every prompt the engine streams from (the organizer's first one and each resume after a join, each worker's) is
    the SFT example's prefix up to a learned token, and the engine's rollout (ids, mask) equals the SFT (ids, mask)."""
    from sherman.think.train import organizer_example, worker_example

    tok = make_tokenizer(task)
    think = ThinkConfig(capacity=4, max_org_tokens=10**4, max_worker_tokens=10**4)
    rng = random.Random(11)
    for _ in range(6):
        ex = task.sample(rng)
        p = plan(task, ex, "letter" if isinstance(task, Arithmetic) else "expr")
        segs = organizer_trace(p, topology, 4, rng)
        org_text = "".join(t for t, learn in segs if learn)
        workers = dict(zip(p.subqueries, p.worker_traces))
        prompts: list[str] = []

        def script(prompt, prompts=prompts, org_text=org_text, workers=workers):
            prompts.append(prompt)
            if "<ORG>" in prompt:
                done = re.sub(r"(<JOIN-(\d+)>).*?</JOIN-\2>", r"\1", prompt.split("<ORG>", 1)[1], flags=re.S)
                return org_text[len(done):]
            return workers[prompt.split("<WORK>")[1]]

        r = AsyncThinkEngine(ScriptedBackend(script, tokenizer=tok), think).run_sync(ex.prompt)
        assert not r.errors and r.answer == p.answer and task.reward(ex, "#" + r.answer) == 1.0
        org = organizer_example(tok, think, ex.prompt, segs)
        org_prompts = [q for q in prompts if "<ORG>" in q]
        assert len(org_prompts) == 1 + sum(1 for t, learn in segs if not learn)  # one resume per join
        for q in org_prompts:
            ids = tok.encode(q, bos=True)
            assert org.ids[: len(ids)] == ids and org.mask[len(ids)] == 1, q  # resumes where SFT's model text resumes
        seqs = rollout_sequences(r, tok)
        assert (seqs[0][0], seqs[0][1]) == (org.ids, org.mask)
        for (ids, mask, _), (q, tr) in zip(seqs[1:], zip(p.subqueries, p.worker_traces)):
            w = worker_example(tok, think, ex.prompt, q, tr)
            assert (ids, mask) == (w.ids, w.mask)
        assert len(seqs) == 1 + len(p.subqueries)
