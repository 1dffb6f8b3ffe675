"""RPT (sherman.rl.rpt): hand-derived rewards, top-k entropy, selection, extraction, and RPTTask through rl_train."""

import functools
import math
import random

import pytest
import torch

from sherman.core.common import ShermanError
from sherman.rl import rpt
from sherman.rl.rpt import RPTConfig, boundaries, prefix_reward

# ----------------------------------------------------------------------------------------- reward (Eq. 3)

# continuation tokens "The", " cat", " sat": bytes 3 + 4 + 4, boundaries {3, 7, 11}
GT_TOKENS = [b"The", b" cat", b" sat"]
GT = b"".join(GT_TOKENS)
B = boundaries(GT_TOKENS)


def test_boundaries_are_cumulative_byte_lengths():
    assert B == [3, 7, 11]


def test_prefix_reward_hand_values():
    assert prefix_reward(b"The", GT, B) == 1.0  # one whole token
    assert prefix_reward(b"The cat", GT, B) == 1.0  # two whole tokens
    assert prefix_reward(b"The c", GT, B) == 0.0  # partial token (5 not a boundary)
    assert prefix_reward(b"Th", GT, B) == 0.0  # partial first token
    assert prefix_reward(b"The cat sat down", GT, B) == 0.0  # runs past the continuation
    assert prefix_reward(b"", GT, B) == 0.0  # empty
    assert prefix_reward(b"The dog", GT, B) == 0.0  # right length, wrong bytes


def test_prefix_reward_multibyte_utf8_split_across_tokens():
    # "é" = C3 A9 split over two byte-level tokens: [b"caf", b"\xc3", b"\xa9!"] -> boundaries {3, 4, 6}
    toks = [b"caf", b"\xc3", b"\xa9!"]
    gt, bd = b"".join(toks), boundaries(toks)
    assert bd == [3, 4, 6]
    assert prefix_reward("caf".encode(), gt, bd) == 1.0
    assert prefix_reward("café".encode(), gt, bd) == 0.0  # 5 bytes: ends inside the third token
    assert prefix_reward("café!".encode(), gt, bd) == 1.0  # 6 bytes: three whole tokens
    assert prefix_reward(b"caf\xc3", gt, bd) == 1.0  # two whole tokens, even though not valid UTF-8 on its own


def test_prefix_reward_string_that_is_two_tokens_but_no_single_vocab_item():
    from sherman.core.tokenizer import train_bpe

    tok = train_bpe(["ab ab ab ab cd cd cd cd"] * 20, 260 + 3)  # merges: "ab", " ab", ...; " abcd" is no token
    tb = rpt.token_bytes_fn(tok)
    ids = tok.encode("ab cd")
    assert len(ids) == 2 and [tb(i) for i in ids] == [b"ab", b" cd"]
    vocab = {tb(i) for i in range(tok.vocab_size)}
    assert b"ab cd" not in vocab  # the prediction is no single vocabulary item
    pieces = [tb(i) for i in ids]
    assert prefix_reward(b"ab cd", b"".join(pieces), boundaries(pieces)) == 1.0


def test_appendix_a_alternatives_hand_values():
    # first token: only the first 3 bytes matter
    assert rpt.first_token_reward(b"The", GT, B) == 1.0
    assert rpt.first_token_reward(b"The dog", GT, B) == 1.0
    assert rpt.first_token_reward(b"Th", GT, B) == 0.0
    # dense: matched whole tokens / tokens reached. "The cat" -> 2/2; "The c" -> 1 matched of 2 reached = 0.5;
    # "The dog" -> 1/2; "The cat sat down" -> 3 matched, reaches 3 tokens + past the end = 4 -> 0.75; "x" -> 0/1
    assert rpt.dense_reward(b"The cat", GT, B) == 1.0
    assert rpt.dense_reward(b"The c", GT, B) == 0.5
    assert rpt.dense_reward(b"The dog", GT, B) == 0.5
    assert rpt.dense_reward(b"The cat sat down", GT, B) == 0.75
    assert rpt.dense_reward(b"x", GT, B) == 0.0
    # conditional dense: 0 unless the first token matches
    assert rpt.conditional_dense_reward(b"The c", GT, B) == 0.5
    assert rpt.conditional_dense_reward(b"Tha cat", GT, B) == 0.0


# ----------------------------------------------------------------------------------------- extraction


def test_extraction_direct_and_malformed():
    cfg = RPTConfig(think_tokens=0, max_pred_bytes=5)
    assert rpt.extract_prediction("47}", cfg) == ("47", "ok")
    assert rpt.extract_prediction("47", cfg) == (None, "unclosed")
    assert rpt.extract_prediction("}", cfg) == (None, "empty")
    assert rpt.extract_prediction("123456}", cfg) == (None, "too_long")
    assert rpt.extract_prediction("4}\\boxed{7}", cfg) == (None, "multiple_answers")
    assert rpt.extract_prediction("4}\\boxed{7}", RPTConfig(on_multiple="last")) == ("7", "ok")


def test_extraction_with_thinking():
    cfg = RPTConfig(think_tokens=8)
    assert rpt.extract_prediction("carry 1 </think>\\boxed{ cat}", cfg) == (" cat", "ok")
    assert rpt.extract_prediction("carry 1 \\boxed{ cat}", cfg) == (None, "no_think_close")
    assert rpt.extract_prediction("a</think>b</think>\\boxed{c}", cfg) == (None, "multiple_think_close")
    assert rpt.extract_prediction("a</think> cat", cfg) == (None, "no_answer")
    assert rpt.extract_prediction("a</think>\\boxed{}", cfg) == (None, "empty")


def test_task_counts_malformed():
    docs, tok, cfg = _tiny_corpus()
    ents = [torch.ones(len(d)) for d in docs]
    task = rpt.RPTTask(tok, docs, rpt.select_positions(ents, cfg), cfg)
    ex = task.sample(random.Random(0))
    nxt = ex.meta["gt"][: ex.meta["bounds"][0]].decode()
    assert task.reward(ex, nxt + "}") == 1.0
    assert task.reward(ex, nxt) == 0.0
    assert task.reward(ex, "}") == 0.0
    assert task.malformed == {"ok": 1, "unclosed": 1, "empty": 1}
    assert task.malformed_frac() == pytest.approx(2 / 3)


# ----------------------------------------------------------------------------------------- entropy and selection


def test_topk_entropy_hand_built_logits():
    # top-2 of [log 1, log 3, -5, -7]: probabilities renormalised to 1/4, 3/4 -> H = -(1/4 ln 1/4 + 3/4 ln 3/4)
    logits = torch.tensor([0.0, math.log(3.0), -5.0, -7.0])
    h = -(0.25 * math.log(0.25) + 0.75 * math.log(0.75))
    assert rpt.topk_entropy(logits, 2).item() == pytest.approx(h, abs=1e-6)
    # 16 equal logits among 20: top-16 entropy = ln 16 whatever the other 4 hold
    lg = torch.cat([torch.zeros(16), torch.full((4,), -3.0)])
    assert rpt.topk_entropy(lg, 16).item() == pytest.approx(math.log(16), abs=1e-6)
    assert rpt.topk_entropy(lg[None, None], 16).shape == (1, 1)


def test_select_positions_threshold_and_quantile():
    ents = [torch.tensor([9.0, 0.2, 1.4, 0.7, 2.0]), torch.tensor([0.1, 1.0, 0.3])]
    cfg = RPTConfig(min_context=1, threshold=1.0, quantile=None)
    assert rpt.select_positions(ents, cfg) == [(0, 2, pytest.approx(1.4)), (0, 4, 2.0), (1, 1, 1.0)]
    # quantile 0.5 of the eligible entropies [0.2, 1.4, 0.7, 2.0, 1.0, 0.3] = 0.85
    cfg = RPTConfig(min_context=1, threshold=None, quantile=0.5)
    assert [(d, t) for d, t, _ in rpt.select_positions(ents, cfg)] == [(0, 2), (0, 4), (1, 1)]
    with pytest.raises(ShermanError, match="selects no position"):
        rpt.select_positions(ents, RPTConfig(min_context=1, threshold=5.0))


def test_split_of_edges():
    edges = (0.5, 1.0, 1.5)
    assert [rpt.split_of(x, edges) for x in (0.4, 0.5, 0.99, 1.0, 1.6)] == [None, "easy", "easy", "medium", "hard"]


def test_proxy_entropies_one_forward_per_document_match_per_position(tmp_path):
    docs, tok, cfg = _tiny_corpus()
    proxy = _model(tok.vocab_size, max_seq_len=16)  # shorter than some documents: windows
    calls = []
    h = proxy.register_forward_hook(lambda m, a, o: calls.append(a[0].shape))
    ents = rpt.proxy_entropies(proxy, docs[:3], tok.bos_id, 16)
    h.remove()
    ids = [tok.bos_id] + docs[0]
    for t in (0, 5, len(docs[0]) - 1):
        lo = max(0, t + 1 - 16)
        ref = rpt.topk_entropy(proxy(torch.tensor([ids[lo : t + 1]])).logits[0, -1], 16)
        if t < 16:
            assert ents[0][t].item() == pytest.approx(ref.item(), abs=1e-5)
    assert len(calls) >= 3
    # cache: same numbers back, and the second call runs no forward
    a = rpt.cached_entropies(proxy, docs[:3], tok.bos_id, 16, tmp_path)
    calls.clear()
    h = proxy.register_forward_hook(lambda m, a_, o: calls.append(1))
    b = rpt.cached_entropies(proxy, docs[:3], tok.bos_id, 16, tmp_path)
    h.remove()
    assert not calls and all(torch.equal(x, y) for x, y in zip(a, b))
    assert len(list(tmp_path.glob("entropy_*.safetensors"))) == 1


# ----------------------------------------------------------------------------------------- bad input


def test_corpus_errors(tmp_path):
    with pytest.raises(ShermanError, match="not found"):
        rpt.load_corpus(tmp_path / "nope.txt")
    (tmp_path / "e.txt").write_text("\n\n")
    with pytest.raises(ShermanError, match="empty"):
        rpt.load_corpus(tmp_path / "e.txt")
    (tmp_path / "b.txt").write_bytes(b"ok\n\xff\xfe bad\n")
    with pytest.raises(ShermanError, match="not UTF-8"):
        rpt.load_corpus(tmp_path / "b.txt")
    (tmp_path / "g.jsonl").write_text('{"text": "one"}\n{"text": "two"}\n')
    assert rpt.load_corpus(tmp_path / "g.jsonl") == ["one", "two"]


def test_vocab_mismatch_error():
    a, b = _model(300), _model(301)
    with pytest.raises(ShermanError, match="vocabulary"):
        rpt.check_vocab(b, a, type("T", (), {"vocab_size": 300})())


# ----------------------------------------------------------------------------------------- helpers


def _tiny_corpus(n=60, vocab=330):
    cfg = RPTConfig(min_context=2, threshold=0.0, quantile=None)
    texts = rpt.generate_corpus(n, seed=0)
    tok = rpt.corpus_tokenizer(texts, vocab, cfg)
    return rpt.tokenize_corpus(texts, tok, 96), tok, cfg


def _model(vocab, n_experts=0, max_seq_len=128, seed=0):
    from sherman.core.model import Transformer
    from sherman.rl.evaluation import tiny_model_config

    torch.manual_seed(seed)
    return Transformer(tiny_model_config(vocab, dim=32, n_layers=2, n_heads=2, n_kv_heads=1, n_experts=n_experts, max_seq_len=max_seq_len))


# ----------------------------------------------------------------------------------------- training through rl_train


def _warm(n_experts=0, seed=0):
    """Tiny corpus, tokenizer and a policy pre-trained a little with NTP, then taught the output format (built once per
    configuration; every call gets a fresh model and task)."""
    state, cfg_model, docs, tok, cfg, pos = _warm_cached(n_experts, seed)
    from sherman.core.model import Transformer

    m = Transformer(cfg_model)
    m.load_state_dict(state)
    return m, rpt.RPTTask(tok, docs, pos[:16], cfg), tok  # RL on a few positions: reward can rise within seconds


@functools.lru_cache(maxsize=4)
def _warm_cached(n_experts, seed):
    docs, tok, cfg = _tiny_corpus()
    cfg = RPTConfig(min_context=2, threshold=0.0, quantile=None, max_pred_tokens=3)  # every position: some are easy
    m = _model(tok.vocab_size, n_experts=n_experts, seed=seed)
    rpt.ntp_train(m, rpt.lm_data(docs, tok.bos_id), 60, 16, 1e-2, seed, tok.pad_id)
    pos = rpt.select_positions(rpt.proxy_entropies(m, docs, tok.bos_id, 16), cfg)
    task = rpt.RPTTask(tok, docs, pos, cfg)
    rpt.ntp_train(m, rpt.format_sft_data(task, range(0, len(pos), max(1, len(pos) // 256))), 40, 16, 1e-2, seed, tok.pad_id, warmup=0)
    return {k: v.clone() for k, v in m.state_dict().items()}, m.cfg, docs, tok, cfg, pos


def _rpt_run(m, task, tok, steps=10):
    from sherman.rl.grpo import preset_config, rl_train

    cfg = preset_config("opo", **{**rpt.PRESET, "steps": steps, "prompts_per_step": 8, "group_size": 8, "max_new_tokens": task.cfg.max_new_tokens,
                                  "lr": 3e-3, "track_kl_to_init": False})  # fmt: skip
    return [r["rollout/reward_mean"] for r in rl_train(m, task, tok, cfg).history]


def _rises(r):
    k = len(r) // 3
    return sum(r[-k:]) / k > sum(r[:k]) / k


def test_rpt_task_trains_through_rl_train_dense_reward_rises():
    m, task, tok = _warm()
    r = _rpt_run(m, task, tok)
    assert _rises(r), r
    assert sum(task.malformed.values()) == 10 * 64


def test_rpt_task_trains_through_rl_train_moe():
    m, task, tok = _warm(n_experts=4)
    r = _rpt_run(m, task, tok)
    assert _rises(r), r


def test_rpt_from_imported_hf_checkpoint(tmp_path):
    """A Qwen2 checkpoint built with transformers, its byte-level BPE tokenizer.json beside it, through `sherman rpt`."""
    pytest.importorskip("transformers")
    from sherman.cli import main
    from sherman.core.hf import save_hf

    m, task, tok = _warm()
    save_hf(m, tmp_path / "hf", arch="qwen2")
    tok.save(tmp_path / "hf" / "tokenizer.json")
    from sherman.rl.rpt_cli import load_any

    m2, tok2 = load_any(str(tmp_path / "hf"))
    assert tok2.encode("so 12+3=") == tok.encode("so 12+3=")
    corpus = tmp_path / "c.jsonl"
    corpus.write_text("\n".join('{"text": "%s"}' % t for t in rpt.generate_corpus(30, seed=3)))
    code = main(["rpt", "train", str(tmp_path / "hf"), "--data", str(corpus), "--out", str(tmp_path / "run"), "--steps", "2",
                 "--prompts-per-step", "2", "--group-size", "4", "--max-pred-tokens", "2"])  # fmt: skip
    assert code == 0
    assert (tmp_path / "run" / "step_0000002").is_dir()
    assert list((tmp_path / "run" / "entropy_cache").glob("entropy_*.safetensors"))
    assert main(["rpt", "eval", str(tmp_path / "run" / "step_0000002"), "--data", str(corpus), "--positions", "8"]) == 0
    assert main(["rpt", "entropy", str(corpus), "--proxy", str(tmp_path / "hf"), "--out", str(tmp_path / "e.safetensors")]) == 0
    assert (tmp_path / "e.json").is_file()


def test_cli_one_line_errors(tmp_path, capsys):
    from sherman.cli import main
    from sherman.core import checkpoint as ckpt

    m, task, tok = _warm()
    ckpt.save_checkpoint(tmp_path / "pol", m, None, 0)
    tok.save(tmp_path / "pol" / "tokenizer.json")
    other = _model(tok.vocab_size + 5)
    ckpt.save_checkpoint(tmp_path / "prox", other, None, 0)
    tok.save(tmp_path / "prox" / "tokenizer.json")
    good = tmp_path / "c.txt"
    good.write_text("\n".join(rpt.generate_corpus(10, seed=4)))
    (tmp_path / "bad.txt").write_bytes(b"\xff\xfe\n")
    (tmp_path / "empty.txt").write_text("")
    cases = [
        (["rpt", "train", str(tmp_path / "pol"), "--data", str(tmp_path / "missing.txt")], "not found"),
        (["rpt", "train", str(tmp_path / "pol"), "--data", str(tmp_path / "empty.txt")], "empty"),
        (["rpt", "train", str(tmp_path / "pol"), "--data", str(tmp_path / "bad.txt")], "not UTF-8"),
        (["rpt", "train", str(tmp_path / "pol"), "--data", str(good), "--proxy", str(tmp_path / "prox")], "vocabulary"),
        (["rpt", "train", str(tmp_path / "pol"), "--data", str(good), "--threshold", "100", "--out", str(tmp_path / "r")], "selects no position"),
        (["rpt", "nope"], "unknown rpt subcommand"),
    ]
    for argv, msg in cases:
        capsys.readouterr()
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip()
        assert msg in err and len(err.splitlines()) == 1, (argv, err)


def test_thinking_format_trace_and_sft_data_extract_ok():
    texts = rpt.generate_corpus(20, seed=1)
    cfg = RPTConfig(think_tokens=6, min_context=2, threshold=0.0, quantile=None)
    tok = rpt.corpus_tokenizer(texts, 320, cfg)
    docs = rpt.tokenize_corpus(texts, tok, 96)
    task = rpt.RPTTask(tok, docs, rpt.select_positions([torch.ones(len(d)) for d in docs], cfg), cfg)
    ex = task.example(3)
    assert ex.meta["prompt_ids"][-1] == tok.token_id("<think>")  # the prompt opens the chain of thought
    assert task.reward(ex, "some thought " + task.trace(ex)) == 1.0
    (sft,) = rpt.format_sft_data(task, [3])
    comp = [i for i, m in zip(sft.ids, sft.mask) if m]
    assert rpt.extract_prediction(tok.decode(comp), cfg)[1] == "ok"
    assert cfg.max_new_tokens == 6 + cfg.max_pred_tokens + 4


def test_compute_accounting():
    m = _model(300)
    emb = 0 if m.cfg.tie_embeddings else 300 * 32  # tied: the table is also the output head and costs FLOPs
    assert rpt.n_params(m) == sum(p.numel() for p in m.parameters()) - emb
    # RPT: 100 prompt tokens (once per group) + 40 completion tokens -> forward 2N and train 6N per token, both passes
    assert rpt.rpt_step_cost(10, 100, 40) == (2.0 * 10 * 140 + 6.0 * 10 * 140, 280)
    assert rpt.ntp_step_cost(10, 50) == (3000.0, 50)


def test_rpt_with_thinking_trains_through_rl_train():
    """think_tokens > 0 through the shared loop: the prompt opens the chain of thought, completions get the thinking
    budget, most are well-formed after the format SFT, and the update moves the policy."""
    cfg = RPTConfig(think_tokens=4, min_context=2, threshold=0.0, quantile=None, max_pred_tokens=3)
    texts = rpt.generate_corpus(60, seed=0)
    tok = rpt.corpus_tokenizer(texts, 330, cfg)  # the thinking delimiters become tokens
    docs = rpt.tokenize_corpus(texts, tok, 96)
    m = _model(tok.vocab_size)
    rpt.ntp_train(m, rpt.lm_data(docs, tok.bos_id), 40, 16, 1e-2, 0, tok.pad_id)
    pos = rpt.select_positions(rpt.proxy_entropies(m, docs, tok.bos_id, 16), cfg)
    task = rpt.RPTTask(tok, docs, pos, cfg)
    rpt.ntp_train(m, rpt.format_sft_data(task, range(0, len(pos), max(1, len(pos) // 256))), 60, 16, 1e-2, 0, tok.pad_id, warmup=0)
    task = rpt.RPTTask(tok, docs, pos[:16], cfg)
    assert task.example(0).meta["prompt_ids"][-1] == tok.token_id("<think>")
    before = {k: v.clone() for k, v in m.state_dict().items()}
    r = _rpt_run(m, task, tok, steps=3)
    assert len(r) == 3 and all(0.0 <= x <= 1.0 for x in r)
    assert sum(task.malformed.values()) == 3 * 64
    assert task.malformed["ok"] > 0.5 * 3 * 64, task.malformed  # the format SFT taught </think> then the answer
    assert any(not torch.equal(before[k], v) for k, v in m.state_dict().items())


def test_format_span_data_hand_built():
    """One document [a, b, c, d, e], a span before token index 3 (min_context 3 leaves only t in {3, 4}; n_spans 1 and a
    seeded rng pick one): bos a b c OPEN d CLOSE d e; targets are the document tokens and the span's completion."""
    texts = rpt.generate_corpus(20, seed=1)
    cfg = RPTConfig(min_context=3, threshold=0.0, quantile=None)
    tok = rpt.corpus_tokenizer(texts, 320, cfg)
    docs = rpt.tokenize_corpus(texts, tok, 96)
    task = rpt.RPTTask(tok, docs, rpt.select_positions([torch.ones(len(d)) for d in docs], cfg), cfg)
    op, cl = tok.encode(cfg.answer_open), tok.encode(cfg.answer_close)
    assert len(op) == 1 and len(cl) == 1
    doc = [11, 12, 13, 14, 15]
    rng = random.Random(0)
    t = random.Random(0).sample(range(3, 5), 1)[0]  # the position the function draws with the same rng
    (ex,) = rpt.format_span_data(task, [doc], 1, rng)
    pre, post = doc[:t], doc[t:]
    assert ex.ids == [tok.bos_id] + pre + op + [doc[t]] + cl + post
    assert ex.mask == [0] + [1] * len(pre) + [0] + [1, 1] + [0] + [1] * (len(post) - 1)
    # the span's prompt part is exactly the RPT prompt of position t, and its targets extract to the true next token
    k = len(pre) + 2  # bos + pre + opener
    assert ex.ids[:k] == rpt.prompt_tokens(tok, doc, t, cfg)
    assert rpt.extract_prediction(tok.decode(ex.ids[k : k + 2]), cfg)[1] == "ok"
    # n_spans >= the eligible positions: every eligible token gets a span; document tokens stay in order
    (full,) = rpt.format_span_data(task, [doc], 10, random.Random(1))
    o, c = op[0], cl[0]
    assert full.ids == [tok.bos_id, 11, 12, 13, o, 14, c, 14, o, 15, c, 15]
    assert full.mask == [0, 1, 1, 1, 0, 1, 1, 0, 0, 1, 1, 0]  # each document token is a target exactly once
    (w,) = rpt.format_span_data(task, [doc], 10, random.Random(1), weight=4.0)  # span targets weighted, the rest as before
    assert w.ids == full.ids and w.mask == [0, 1, 1, 1, 0, 4.0, 4.0, 0, 0, 4.0, 4.0, 0]
    with pytest.raises(ShermanError, match="bare template"):
        rpt.format_span_data(rpt.RPTTask(tok, docs, task.positions, RPTConfig(template="Text: {context}")), [doc], 1, rng)
