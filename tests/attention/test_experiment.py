"""The sparse_decoding experiment: data, the decode path it measures through, oracle/random selection, smoke run."""

import random

import torch

from sherman.attention.resa import resa_context
from sherman.attention.sparse import oracle_scores
from sherman.core.model import ModelConfig, Transformer
from sherman.core.tokenizer import CharTokenizer
from sherman.experiments import EXPERIMENTS
from sherman.experiments.sparse_decoding import (
    ALPHABET,
    FILLER,
    KEYS,
    claims,
    copy_sequence,
    decode_forced,
    decode_forced_per_step,
    eval_batch,
    forced_logprobs,
    haystack,
    long_data,
    prefill,
    query_sequence,
    run,
    sparse_ctx,
    train_data,
    window_stats,
)


def test_haystack_and_sequences_hand_checked():
    ctx, pairs = haystack(5, 200, random.Random(0))
    assert len(ctx) == 200 and len(pairs) == 5 and len({k for k, _ in pairs}) == 5
    for k, v in pairs:  # each key occurs once, followed by its value and a comma
        assert ctx.count(k) == 1 and ctx[ctx.index(k) + 1 : ctx.index(k) + 3] == v + ","
    assert set(ctx) <= set(KEYS + "0123456789" + FILLER + ",")
    tok = CharTokenizer(ALPHABET)
    seq = query_sequence(tok, 3, 60, 4, random.Random(1))
    text = tok.decode(seq.ids[1:-1])
    assert len(text) == 60 + 4 * 3 and seq.ids[-1] == tok.eos_id
    answers = dict(haystack(3, 60, random.Random(1))[1])
    for q in text.split("?")[1:]:
        assert answers[q[0]] == q[1]  # every query's answer is its key's value
    assert [i for i, m in enumerate(seq.mask) if m] == [63, 66, 69, 72, 73]  # bos + 60 context; "?" 61, key 62, value 63
    ex = copy_sequence(tok, random.Random(0), 12)
    n = (len(ex.ids) - 1) // 2  # bos + s + s
    assert 4 <= n <= 12 and ex.ids[1 : n + 1] == ex.ids[n + 1 :] and ex.ids[0] == tok.bos_id
    assert set(tok.decode(ex.ids[1:])) <= set(KEYS + "0123456789")
    assert [i for i, m in enumerate(ex.mask) if m] == list(range(n + 2, 2 * n + 1))  # the second copy after its first token


def test_oracle_scores_by_hand():
    # one KV head, one query head, D = 1; keys 0, 0, ln 3, ln 3 (blocks of 2) -> exp weights 1, 1, 3, 3 over 8
    q = torch.ones(1, 1, 1, 1)
    k = torch.tensor([0.0, 0.0, 1.0986123, 1.0986123]).view(1, 1, 4, 1)
    s = oracle_scores(q, k, torch.ones(1, 4, dtype=torch.bool), 2, 2)
    assert torch.allclose(s, torch.tensor([[[0.25, 0.75]]]), atol=1e-5)


def test_forced_decoding_matches_full_forward_and_full_budget_equals_dense():
    torch.manual_seed(0)
    tok = CharTokenizer(ALPHABET)
    model = Transformer(ModelConfig(vocab_size=tok.vocab_size, dim=32, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=64)).eval()
    ids, answers = eval_batch(tok, 4, 70, 3, random.Random(2))
    assert all(tok.decode([int(i)]) == a for i, a in zip(ids[:, -1], answers))
    n_prefix = ids.shape[1] - 3
    with torch.no_grad():
        full = torch.log_softmax(model(ids).logits.float(), -1)  # (B, T, V)
    assert torch.allclose(forced_logprobs(model, ids, n_prefix, None), full[:, n_prefix - 1 : -1], atol=1e-4)
    cache, first = prefill(model, ids, n_prefix, chunk=32)  # chunked prefill = one pass
    assert torch.allclose(first, full[:, n_prefix - 1], atol=1e-4)
    dense = decode_forced(model, cache, first, ids, n_prefix, None)
    for method in ("quest", "oracle", "random"):
        ctx = sparse_ctx(method, 16, gen=torch.Generator().manual_seed(0))
        ctx.options["budget"] = 1.0  # every block kept: must equal dense, after the cache was rewound from another run
        assert torch.allclose(decode_forced(model, cache, first, ids, n_prefix, ctx), dense, atol=1e-4)
    low = sparse_ctx("oracle", 16)
    assert not torch.allclose(decode_forced(model, cache, first, ids, n_prefix, low), dense, atol=1e-4)
    assert torch.allclose(decode_forced(model, cache, first, ids, n_prefix, resa_context(budget=1.0, block_size=16, rectify_every=4)), dense, atol=1e-4)
    # per-step floor: with every block kept it is dense; at a low budget its first step equals sparse-only decoding's
    # (same dense cache) and it differs later only through the cache, which it keeps dense
    full = resa_context(budget=1.0, block_size=16, rectify_every=0)
    assert torch.allclose(decode_forced_per_step(model, cache, first, ids, n_prefix, full), dense, atol=1e-4)
    q10 = sparse_ctx("quest", 16)
    step, only = decode_forced_per_step(model, cache, first, ids, n_prefix, q10), decode_forced(model, cache, first, ids, n_prefix, q10)
    assert torch.allclose(step[:, :2], only[:, :2], atol=1e-5) and not torch.allclose(step[:, 1], dense[:, 1], atol=1e-4)
    assert not torch.allclose(step[:, 2:], only[:, 2:], atol=1e-6)


def test_sparse_decoding_smoke(tmp_path):
    assert EXPERIMENTS["sparse_decoding"] == "sherman.experiments.sparse_decoding"
    res = run("smoke", tmp_path)
    assert res["name"] == "sparse_decoding"
    assert res["verdict"] in ("reproduced", "partly", "not reproduced", "not testable here")
    assert len(res["rows"]) == 3 and all({"claim", "paper", "ours", "verdict"} <= set(r) for r in res["rows"])
    assert (tmp_path / "results.json").is_file() and (tmp_path / "sparse_decoding.png").is_file()
    rec = res["metrics"]["recall"]
    for n, by_method in rec.items():  # the oracle keeps the most attention mass by construction
        for bs in ("16", "32"):
            assert all(min(by_method["oracle"][bs]) >= max(by_method[m][bs]) - 1e-6 for m in by_method), (n, bs)
    em = res["metrics"]["exact_match"]
    assert set(em) == {"128", "256"} and {"dense", "seer/bs16/seed0", "quest/bs32", "oracle/bs16", "random/bs32/seed1"} <= set(em["128"])
    assert set(res["metrics"]["drift"]) == {"none", "f=16", "f=64", "per-step", "dense"}
    none = res["metrics"]["drift"]["none"]
    assert len(none["kl_answer"]) == len(none["kl"]) and len(none["answer_last_rows"]) == len(none["last_rows"]) == 2
    assert set(res["metrics"]["cpu_s"]) == {"lm", "gates", "eval", "resa", "speed"} and all(v >= 0 for v in res["metrics"]["cpu_s"].values())


def _synthetic(seer, quest, dense=0.9, none_last=(0.1, 0.2, 0.1, 0.2), rect_last=None, step_last=None):
    """Made-up results in the shape `claims` reads: one length, blocks 16 and 64, three gate seeds, f = 16."""
    lens, blocks, seeds = [256], [16, 64], [0, 1, 2]
    em = {256: {"dense": dense}}
    recall = {256: {}}
    for bs in blocks:
        for i, s in enumerate(seeds):
            em[256][f"seer/bs{bs}/seed{s}"] = seer[bs][i]
            em[256][f"random/bs{bs}/seed{s}"] = 0.1
        em[256][f"quest/bs{bs}"], em[256][f"oracle/bs{bs}"] = quest[bs], dense
    for m in ("seer", "quest", "oracle", "random"):
        recall[256][m] = {bs: [0.5] * len(seeds) for bs in blocks}
    rect_last = list(rect_last or none_last)

    def rows(last, first=(0.01,) * 4):  # the same values at the answers and over all positions
        return {"first_rows": list(first), "last_rows": list(last), "answer_first_rows": list(first), "answer_last_rows": list(last), "ppl": [1.0]}

    drift = {"none": rows(none_last), "f=16": rows(rect_last), "dense": {"ppl": [1.0]}}
    if step_last is not None:
        drift["per-step"] = rows(step_last)
    b = {"lens": lens, "blocks": blocks, "gate_seeds": seeds, "rect": [16]}
    return claims(b, em, recall, drift)[0]


def test_claims_inside_the_spread_or_between_failures_are_never_reproduced():
    # Seer 0.883 vs dense 0.90: the gap (1.7 points) is within the 2-point tolerance, but its spread over gate seeds
    # (2 s.e. = 2 * 0.0764 / sqrt(3) = 0.088) is far wider: not shown lossless; and it does not beat Quest (0.88) beyond it
    wide = {16: [0.95, 0.80, 0.90], 64: [0.95, 0.80, 0.90]}
    rows = _synthetic(wide, {16: 0.88, 64: 0.88})
    assert rows[0]["verdict"] == "not reproduced" and rows[1]["verdict"] == "not reproduced"
    # the same mean gap with no spread between gate seeds is within tolerance beyond the spread
    tight = {16: [0.883] * 3, 64: [0.883] * 3}
    assert _synthetic(tight, {16: 0.88, 64: 0.88})[0]["verdict"] == "reproduced"
    # Seer and Quest both at chance: a comparison of two failures is not testable, never reproduced
    fail = {16: [0.05, 0.06, 0.04], 64: [0.1, 0.09, 0.08]}
    rows = _synthetic(fail, {16: 0.0, 64: 0.02})
    assert rows[1]["verdict"] == "not testable here" and rows[0]["verdict"] == "not reproduced"
    # ReSA: rectified late KL inside the spread of the sparse-only one -> not reproduced; clearly lower -> reproduced
    assert _synthetic(tight, {16: 0.88, 64: 0.88}, rect_last=(0.09, 0.21, 0.1, 0.19))[2]["verdict"] == "not reproduced"
    assert _synthetic(tight, {16: 0.88, 64: 0.88}, none_last=(0.10, 0.11, 0.10, 0.11), rect_last=(0.011, 0.012, 0.011, 0.012))[2]["verdict"] == "reproduced"


def test_quick_budget_keeps_the_issue_design():
    from sherman.experiments.sparse_decoding import BUDGETS

    q = BUDGETS["quick"]
    assert q["blocks"] == [16, 32, 64] and min(q["lens"]) == 512 and max(q["lens"]) == 4096 and len(q["gate_seeds"]) == 3
    assert q["resa_gen"] >= 1024 and set(q["rect"]) == {16, 64, 256} and q["resa_block"] == 16


def test_train_data_copy_phase_then_retrieval_curriculum():
    from sherman.experiments.sparse_decoding import BUDGETS

    b = dict(BUDGETS["smoke"], steps=10, batch=4, copy_steps=3, warm_steps=2, warm_len=40, train_len=(20, 90), aux_frac=0.0)
    tok = CharTokenizer(ALPHABET)
    data = train_data(b, tok, random.Random(0))
    assert len(data) == 40
    is_copy = ["?" not in tok.decode(e.ids[1:]) for e in data]
    assert all(is_copy[:12]) and not any(is_copy[12:])  # copy only for 3 steps x 4, then retrieval (aux_frac 0)
    ctx_len = [tok.decode(e.ids[1:]).index("?") for e in data[12:]]  # characters before the first query
    assert max(ctx_len[:8]) <= 40 and max(ctx_len) <= 90 and min(ctx_len) >= 20


def test_resa_claim_needs_error_carried_in_the_cache():
    # sparse-only drift equal to the per-step floor: nothing for rectification to repair -> not testable here
    tight = {16: [0.883] * 3, 64: [0.883] * 3}
    none = (0.10, 0.11, 0.10, 0.11)
    rows = _synthetic(tight, {16: 0.88, 64: 0.88}, none_last=none, rect_last=(0.011, 0.012, 0.011, 0.012), step_last=(0.10, 0.11, 0.10, 0.11))
    assert rows[2]["verdict"] == "not testable here"
    # a floor well below: the carried error is there, and rectification that removes it reproduces
    rows = _synthetic(tight, {16: 0.88, 64: 0.88}, none_last=none, rect_last=(0.011, 0.012, 0.011, 0.012), step_last=(0.01, 0.011, 0.01, 0.011))
    assert rows[2]["verdict"] == "reproduced" and "carried in the cache" in rows[2]["ours"]


def test_long_phase_one_length_per_step_every_pair_queried_once():
    from sherman.experiments.sparse_decoding import BUDGETS

    b = dict(BUDGETS["smoke"], long_steps=6, long_batch=3, long_lens=[64, 128], long_pairs=(4, 8))
    tok = CharTokenizer(ALPHABET)
    data = long_data(b, tok, random.Random(0))
    assert len(data) == 18
    for step in range(6):
        batch = [tok.decode(e.ids[1:-1]) for e in data[3 * step : 3 * step + 3]]
        ctx_len = {t.index("?") for t in batch}
        assert len(ctx_len) == 1 and ctx_len <= {64, 128}  # one context length per step, from long_lens
        for text, ex in zip(batch, data[3 * step : 3 * step + 3]):
            ctx, queries = text[: text.index("?")], text[text.index("?") :].split("?")[1:]
            keys = [q[0] for q in queries]
            assert 4 <= len(keys) <= 8 and len(set(keys)) == len(keys) == sum(c in KEYS for c in ctx)  # each pair once
            assert all(ctx[ctx.index(q[0]) + 1] == q[1] for q in queries)
            assert sum(ex.mask) == len(keys) + 1  # the values and the eos


def test_window_stats_answer_positions_by_hand():
    kl = torch.tensor([[1.0, 3.0, 5.0, 7.0], [2.0, 2.0, 4.0, 8.0]])
    mask = torch.tensor([[0, 1, 0, 1], [1, 1, 0, 0]], dtype=torch.bool)
    w = window_stats(kl, torch.zeros_like(kl), mask, 2)
    assert w["kl"] == [2.0, 6.0] and w["first_rows"] == [2.0, 2.0] and w["last_rows"] == [6.0, 6.0]
    assert w["answer_first_rows"] == [3.0, 2.0] and w["answer_last_rows"] == [7.0, 0.0]  # a row without answers in a window: 0
    assert w["kl_answer"] == [2.5, 3.5] and w["ppl"] == [1.0, 1.0]
    w = window_stats(kl[:, :3], torch.zeros(2, 3), mask[:, :3], 2)  # windows [0, 2), [2, 3); "last" = the last 2 positions
    assert w["start"] == [0, 2] and w["last_rows"] == [4.0, 3.0] and w["answer_last_rows"] == [3.0, 2.0]


def test_sparse_decoding_stages_resume_to_the_unstaged_numbers(tmp_path, count_calls):
    """Staged (LM, each gate, each length, ReSA) and resumed runs give exactly the unstaged run's numbers: each stage
    stores the prompt stream's state after it and a reused one restores it. A resumed run trains and evaluates nothing;
    a stale evaluation stage is recomputed from the restored stream, never reused, and gives the same numbers."""
    import json

    from sherman.experiments import sparse_decoding as sd
    from tests.conftest import make_stale

    def numbers(res):
        m = dict(res["metrics"])
        m.pop("cpu_s"), m.pop("speed")
        return json.loads(json.dumps(m, sort_keys=True))

    plain = numbers(sd.run("smoke", tmp_path / "plain"))
    assert numbers(sd.run("smoke", tmp_path / "a", stage_dir=tmp_path / "st")) == plain
    calls = count_calls(sd, {"train_model": "lm", "gate_one": "gate", "eval_length": "eval", "resa_drift": "resa"})
    assert numbers(sd.run("smoke", tmp_path / "b", stage_dir=tmp_path / "st")) == plain and calls == []
    make_stale(tmp_path / "st" / "smoke" / "seed0" / f"eval_len{sd.BUDGETS['smoke']['lens'][0]}.json")
    assert numbers(sd.run("smoke", tmp_path / "c", stage_dir=tmp_path / "st")) == plain
    assert calls == ["eval"]


def test_sparse_decoding_lm_training_resumes_from_its_checkpoints(tmp_path, monkeypatch):
    """A checkpointed LM training killed in its first phase and rerun resumes from the last checkpoint and ends with
    the unbroken run's weights and loss curve; with a stage dir the run keeps its checkpoints under a keyed directory
    while it trains and removes them once the LM stage is stored, and its numbers equal the unstaged run's."""
    import json
    import random as _random

    import pytest

    from sherman.core.tokenizer import CharTokenizer
    from sherman.experiments import sparse_decoding as sd

    b = {**sd.BUDGETS["smoke"], "ckpt_every": 2}
    tok = CharTokenizer(sd.ALPHABET)

    def trained(ckpt_dir=None):
        torch.manual_seed(0)
        return sd.train_model(b, tok, _random.Random(0), 0, ckpt_dir)

    ref, ref_loss, _ = trained()

    class Killed(Exception):
        pass

    real = sd.progress

    def dying(total, label):
        bar, calls = real(total, label), [0]

        def advance(**kw):
            calls[0] += 1
            if calls[0] == 5:  # after step 5 of 8: the last checkpoint is step 4
                raise Killed
            return bar_advance(**kw)

        bar_advance = bar.advance
        bar.advance = advance
        return bar

    monkeypatch.setattr(sd, "progress", dying)
    with pytest.raises(Killed):
        trained(tmp_path / "ck")
    assert (tmp_path / "ck" / "main").is_dir() and not (tmp_path / "ck" / "long").exists()
    steps_run = []

    def counting(total, label):
        bar = real(total, label)
        bar_advance = bar.advance
        bar.advance = lambda **kw: (steps_run.append(1), bar_advance(**kw))[1]
        return bar

    monkeypatch.setattr(sd, "progress", counting)
    got, loss, _ = trained(tmp_path / "ck")
    assert len(steps_run) == (b["steps"] - 4) + b["long_steps"]  # resumed at the step-4 checkpoint, not from scratch
    monkeypatch.setattr(sd, "progress", real)
    assert loss == ref_loss and len(loss) == b["steps"] + b["long_steps"]
    for k, v in ref.state_dict().items():
        assert torch.equal(v, got.state_dict()[k]), k

    def numbers(res):
        m = dict(res["metrics"])
        m.pop("cpu_s"), m.pop("speed")
        return json.loads(json.dumps(m, sort_keys=True))

    monkeypatch.setitem(sd.BUDGETS, "smoke", b)
    plain = numbers(sd.run("smoke", tmp_path / "plain"))
    (tmp_path / "st" / "smoke" / "seed0" / "lm_ckpt_stale").mkdir(parents=True)
    assert numbers(sd.run("smoke", tmp_path / "staged", stage_dir=tmp_path / "st")) == plain
    assert not list((tmp_path / "st" / "smoke" / "seed0").glob("lm_ckpt_*"))  # stale and own checkpoints removed
