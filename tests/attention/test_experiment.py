"""Smoke run of the sparse_decoding experiment (registered in EXPERIMENTS)."""

from sherman.experiments import EXPERIMENTS
from sherman.experiments.sparse_decoding import run


def test_sparse_decoding_smoke(tmp_path):
    assert EXPERIMENTS["sparse_decoding"] == "sherman.experiments.sparse_decoding"
    res = run("smoke", tmp_path)
    assert res["name"] == "sparse_decoding"
    assert res["verdict"] in ("reproduced", "partly", "not reproduced")
    assert {"claim", "paper", "ours", "verdict"} <= set(res["rows"][0])
    assert (tmp_path / "results.json").is_file() and (tmp_path / "sparse_decoding.png").is_file()
    rec = res["metrics"]["recall"]
    assert set(rec) == {"seer", "quest", "oracle", "random", "local"}
    # the oracle keeps the most attention mass by construction
    for f in ("0.05", "0.1", "0.2"):
        assert all(rec["oracle"][f] >= rec[m][f] - 1e-6 for m in rec)


def test_echo_and_train_sequences_hand_checked():
    import random

    from sherman.core.tokenizer import CharTokenizer
    from sherman.experiments.sparse_decoding import echo_sequence, make_task, train_sequence
    from sherman.tasks.base import Example

    tok = CharTokenizer(make_task(4).alphabet())
    ex = echo_sequence(tok, random.Random(0), 5)
    assert len(ex.ids) == 16 and ex.ids[0] == tok.bos_id
    assert ex.mask == [0] + [0, 0, 1] * 5
    assert all(ex.ids[i] == ex.ids[i - 2] for i in range(3, 16, 3))  # each target repeats the token two back
    # "ab,cd?c" -> "d", then 2 extra queries drawn from {a: b, c: d}; loss on the values and the final eos only
    seq = train_sequence(tok, Example("ab,cd?c", "d", {}), random.Random(1), 3)
    text = tok.decode(seq.ids[1:-1])
    assert text.startswith("ab,cd?cd?") and len(text) == 14 and seq.ids[-1] == tok.eos_id
    for q in text.split("?")[1:]:
        assert q in ("ab", "cd")
    assert [i for i, m in enumerate(seq.mask) if m] == [8, 11, 14, 15]


def test_exact_match_decodes_the_query_and_matches_full_forward():
    import random

    import torch

    from sherman.attention.resa import resa_context
    from sherman.core.model import ModelConfig, Transformer
    from sherman.core.tokenizer import CharTokenizer
    from sherman.experiments.sparse_decoding import exact_match, forced_logprobs, make_task
    from sherman.tasks.base import Example

    torch.manual_seed(0)
    task = make_task(12)
    tok = CharTokenizer(task.alphabet())
    model = Transformer(ModelConfig(vocab_size=tok.vocab_size, dim=32, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=64)).eval()
    exs = [task.sample(random.Random(i)) for i in range(6)]
    ids = torch.tensor([tok.encode(e.prompt, bos=True) + tok.encode(e.answer) for e in exs])  # (B, T)
    n_prefix = ids.shape[1] - 3  # context prefilled; '?', key and value decoded one token per step
    with torch.no_grad():
        full = torch.log_softmax(model(ids).logits.float(), -1)  # (B, T, V)
    forced = forced_logprobs(model, ids, n_prefix, None)
    assert torch.allclose(forced, full[:, n_prefix - 1 : -1], atol=1e-4)
    # relabel each example with the model's own greedy answer: exact match must then be 1 for dense and for a
    # sparse backend whose budget covers every block, and 0 for a wrong answer
    greedy = [Example(e.prompt, tok.decode([int(full[i, -2].argmax())]), e.meta) for i, e in enumerate(exs)]
    assert exact_match(model, tok, task, greedy, None) == 1.0
    assert exact_match(model, tok, task, greedy, resa_context(budget=1.0, block_size=4, rectify_every=0)) == 1.0
    wrong = [Example(e.prompt, "a" if g.answer != "a" else "b", e.meta) for e, g in zip(exs, greedy)]
    assert exact_match(model, tok, task, wrong, None) == 0.0
