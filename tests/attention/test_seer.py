"""SeerAttention-R gate: hand-derived distillation target, pooling, RoPE inversion, parity, distillation training."""

import pytest
import torch

from sherman.attention.seer import (
    SeerConfig,
    SeerGates,
    SeerTrainConfig,
    capture_qk,
    distill_target,
    gate_logits_dense,
    kl_to_gate,
    pool_blocks,
    query_position,
    rope_at,
    seer_context,
    select_blocks,
    selectable,
    train_gates,
    unrope,
)
from sherman.core.attention import AttnContext
from sherman.core.generate import SamplingParams, generate
from sherman.core.model import ModelConfig, Transformer, apply_rope


def tiny_model(seed=0, **kw):
    torch.manual_seed(seed)
    cfg = dict(vocab_size=50, dim=32, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=64)
    cfg.update(kw)
    return Transformer(ModelConfig(**cfg)).eval()


def test_distill_target_hand_made_matrix():
    # T = 6, block size 2, one KV head with a group of two query heads.
    a = torch.zeros(6, 6)
    b = torch.zeros(6, 6)
    a[4, :5] = torch.tensor([0.1, 0.3, 0.2, 0.2, 0.2])
    b[4, :5] = torch.tensor([0.4, 0.1, 0.1, 0.1, 0.3])
    a[2, :3] = torch.tensor([0.5, 0.25, 0.25])
    b[2, :3] = torch.tensor([0.2, 0.2, 0.6])
    probs = torch.stack([a, b])[None]  # (1, 2, 6, 6)
    target, ok = distill_target(probs, block_size=2, n_kv_heads=1)
    # query 4: block max A = (0.3, 0.2), B = (0.4, 0.1); group max = (0.4, 0.2) -> (2/3, 1/3); block 2 not selectable
    assert torch.allclose(target[0, 0, 4], torch.tensor([2 / 3, 1 / 3, 0.0]))
    # query 2: only block 0 (slots 0-1) selectable -> 1.0
    assert torch.allclose(target[0, 0, 2], torch.tensor([1.0, 0.0, 0.0]))
    # queries 0, 1 have no complete block before their own
    assert target[0, 0, :2].abs().sum() == 0
    assert ok[0].tolist() == [False, False, True, True, True, True]


def test_selectable_mask():
    assert selectable(0, 5, 2, 2).int().tolist() == [[0, 0], [0, 0], [1, 0], [1, 0], [1, 1]]


def test_pool_blocks_hand_values():
    kb = torch.tensor([[[[[1.0], [3.0], [8.0]]]]])  # (1, 1, 1, 3, 1)
    vb = torch.tensor([[[True, True, False]]])
    pooled, has = pool_blocks(kb, vb)
    assert pooled.tolist() == [[[[3.0, 1.0, 2.0]]]]  # max, min, mean over the two valid slots
    assert has.tolist() == [[True]]


def test_kl_zero_when_gate_matches_target():
    target = torch.tensor([[[[0.25, 0.75]]]])
    logits = torch.log(target)
    sel = torch.tensor([[True, True]])
    assert kl_to_gate(target, logits, sel, torch.tensor([[True]])).abs() < 1e-6
    assert kl_to_gate(target, torch.zeros_like(logits), sel, torch.tensor([[True]])) > 0.1


def test_unrope_inverts_rope():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 5, 8)
    pos = torch.tensor([[0, 1, 2, 3, 4], [7, 8, 9, 10, 11]])
    cos, sin = rope_at(pos, 8, 10000.0)
    assert (unrope(apply_rope(x, cos, sin), pos, 10000.0) - x).abs().max() < 1e-5


def test_select_blocks_threshold():
    p = torch.tensor([[[0.5, 0.1, 0.4], [0.05, 0.9, 0.05]]])
    idx, keep = select_blocks(p, 1, threshold=0.3)
    assert idx.shape[-1] == 2
    chosen = [sorted(i for i, k in zip(idx[0, h].tolist(), keep[0, h].tolist()) if k) for h in range(2)]
    assert chosen == [[0, 2], [1]]


def _gates(model, bs=4, seed=0):
    torch.manual_seed(seed)
    return SeerGates(SeerConfig.for_model(model, block_size=bs))


@pytest.mark.parametrize("opts", [{"budget": 1.0}, {"budget": 0.1, "threshold": 0.0}])
def test_seer_full_budget_equals_dense(opts):
    model = tiny_model(seed=1, n_heads=8, n_kv_heads=2)
    gates = _gates(model)
    g = torch.Generator().manual_seed(0)
    prompts = [torch.randint(3, 50, (n,), generator=g).tolist() for n in (41, 26)]
    params = SamplingParams(max_new_tokens=15, temperature=0.0)
    dense = generate(model, prompts, params)
    sp = generate(model, prompts, params, attn=AttnContext(backend="seer", options={"gates": gates, **opts}))
    assert sp.tokens == dense.tokens
    diff = max(abs(a - b) for ra, rb in zip(sp.logprobs, dense.logprobs) for a, b in zip(ra, rb))
    assert diff < 1e-5


def test_seer_low_budget_runs_and_differs(tmp_path):
    model = tiny_model(seed=2)
    gates = _gates(model)
    gates.save(tmp_path / "seer_gates.pt")
    prompts = [list(range(3, 48)), list(range(10, 40))]
    params = SamplingParams(max_new_tokens=10, temperature=0.0)
    dense = generate(model, prompts, params)
    sp = generate(model, prompts, params, attn=seer_context(tmp_path, budget=0.1))
    diff = max(abs(a - b) for ra, rb in zip(sp.logprobs, dense.logprobs) for a, b in zip(ra, rb))
    assert diff > 1e-5  # 1 of ~10 blocks kept: not dense
    loaded = SeerGates.load(tmp_path / "seer_gates.pt")
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), gates.state_dict().values()))


def test_gate_key_cache_matches_recompute():
    model = tiny_model(seed=3)
    gates = _gates(model)
    caches = {}
    orig = model.make_cache

    def make_cache(b, n):
        caches["c"] = orig(b, n)
        return caches["c"]

    model.make_cache = make_cache
    generate(model, [list(range(3, 30)), list(range(3, 12))], SamplingParams(max_new_tokens=25, temperature=0.0), attn=seer_context(gates, budget=0.3))
    cache = caches["c"]
    st = cache.extras["seer"]
    from sherman.core.model import padded_positions

    for layer in range(2):
        n = st.n_done[layer]
        assert n >= 10
        valid = cache.valid[:, : n * 4]
        kg, has = gates.layers[layer].block_keys(cache.k[layer], valid, padded_positions(valid), 0, n)
        assert (st.kg[layer][:, :, :n] - kg).abs().max() < 1e-5
        assert torch.equal(st.has_valid[layer][:, :n], has)
        # the per-block counts behind the windowed positions (no pass over the context per step)
        counts = cache.valid[:, : n * 4].reshape(2, n, 4).sum(-1).cumsum(-1)  # (B, n) valid slots in blocks [0, j]
        assert torch.equal(st.valid_before[layer][:, 1 : n + 1], counts) and not st.valid_before[layer][:, 0].any()
        for end in (n * 4 - 3, n * 4, n * 4 + 1):
            v = cache.valid[:, :end]
            want = (v.sum(-1, keepdim=True) - 1).clamp(min=0)
            assert torch.equal(query_position(st, layer, v, (end - 1) // 4, 4), want)


def test_distillation_loss_falls_and_only_gates_train():
    model = tiny_model(seed=4)
    gates = _gates(model, bs=4)
    before_model = {k: v.clone() for k, v in model.state_dict().items()}
    before_gate = [p.detach().clone() for p in gates.parameters()]
    g = torch.Generator().manual_seed(0)

    def batches():
        while True:
            yield torch.randint(3, 50, (4, 48), generator=g)

    hist = train_gates(model, gates, batches(), SeerTrainConfig(steps=40, lr=1e-2, warmup=2))
    assert sum(hist[-5:]) / 5 < 0.8 * sum(hist[:5]) / 5
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before_model.items())
    assert any(not torch.equal(a, b) for a, b in zip(before_gate, gates.parameters()))
    assert all(p.requires_grad for p in model.parameters())
    # analysis helper gives a distribution over selectable blocks
    cap = capture_qk(model, torch.randint(3, 50, (1, 20), generator=g))
    probs = gate_logits_dense(gates, cap, 0)
    assert torch.allclose(probs[0, :, 19].sum(-1), torch.ones(2))


def test_gates_shape_checked(tmp_path):
    model = tiny_model()
    other = tiny_model(n_layers=3)
    gates = _gates(other)
    with pytest.raises(ValueError):
        gates.check_model(model)
    with pytest.raises(FileNotFoundError):
        SeerGates.load(tmp_path / "missing.pt")
    with pytest.raises(ValueError):
        generate(model, [[1, 2, 3]], SamplingParams(max_new_tokens=2), attn=AttnContext(backend="seer"))
