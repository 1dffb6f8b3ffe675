"""RoPE scaling (linear, dynamic NTK, YaRN, Llama 3) and Llama/Qwen3 attention biases: hand-derived frequency values,
parity with tiny random `transformers` models past the original context (full forward and KV-cached greedy decode),
and exact export round trips."""

from __future__ import annotations

import math

import pytest
import torch
import transformers  # a dev dependency: its absence is a failure, not a skip
from safetensors.torch import load_file

from sherman.core.generate import SamplingParams, generate
from sherman.core.hf import load_hf, save_hf
from sherman.core.model import (
    ModelConfig,
    RopeScaling,
    Transformer,
    default_inv_freq,
    dynamic_inv_freq,
    linear_inv_freq,
    llama3_inv_freq,
    yarn_attention_factor,
    yarn_inv_freq,
)

from .hf_helpers import random_hf

L0 = 16  # the "original" context of the tiny models; the tests run to 3-5x past it
COMMON = dict(vocab_size=64, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
              intermediate_size=96, rms_norm_eps=1e-6, tie_word_embeddings=False)
ROPES = {
    "linear": dict(max_position_embeddings=L0, rope_parameters={"rope_type": "linear", "rope_theta": 100.0, "factor": 4.0}),
    "dynamic": dict(max_position_embeddings=L0, rope_parameters={"rope_type": "dynamic", "rope_theta": 100.0, "factor": 3.0}),
    "yarn": dict(max_position_embeddings=4 * L0, rope_parameters={"rope_type": "yarn", "rope_theta": 100.0, "factor": 4.0,
                                                                  "original_max_position_embeddings": L0}),
    "yarn_mscale": dict(max_position_embeddings=4 * L0, rope_parameters={
        "rope_type": "yarn", "rope_theta": 100.0, "factor": 4.0, "original_max_position_embeddings": L0, "mscale": 1.0,
        "mscale_all_dim": 0.5, "beta_fast": 8.0, "beta_slow": 2.0}),
    "llama3": dict(max_position_embeddings=8 * L0, rope_parameters={
        "rope_type": "llama3", "rope_theta": 500.0, "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
        "original_max_position_embeddings": L0}),
}


def build_hf(model_type: str, seed: int = 0, **extra):
    cfg = transformers.AutoConfig.for_model(model_type, **{**COMMON, **extra})
    return random_hf(cfg, seed)


def full_logits(hf, ids):
    with torch.no_grad():
        return hf(input_ids=ids).logits  # (B, T, V)


# ---------------------------------------------------------------------------------------------------- pure functions


def test_frequency_functions_by_hand():
    inv = default_inv_freq(8, 10000.0)  # 10000^(-i/4), i = 0..3
    assert torch.allclose(inv, torch.tensor([1.0, 0.1, 0.01, 0.001]))
    assert torch.equal(linear_inv_freq(inv, 4.0), inv / 4.0)
    # llama3 with old_len = 2 pi * 100: wavelengths 2pi, 20pi, 200pi, 2000pi; high band < 2pi*100/4 = 50pi kept,
    # low band > 2pi*100/1 = 200pi divided by 8, 200pi itself sits on the band edge: s = (100/100 - 1)/(4 - 1) = 0
    old = 2 * math.pi * 100
    got = llama3_inv_freq(inv, 8.0, 1.0, 4.0, old)
    assert torch.allclose(got, torch.tensor([1.0, 0.1, 0.01 / 8, 0.001 / 8]), rtol=1e-6)
    # yarn: rotations over old_len of dim i are old_len f_i / 2pi; beta_fast=32, beta_slow=1 with theta=10000, D=8,
    # old_len=2pi*1000 -> correction dims floor(4 ln(1000/32)/ln(1e4)) = 1, ceil(4 ln(1000)/ln(1e4)) = 3:
    # ramp over i = 1..3: keep = 1 - (i-1)/2 -> i=0: f, i=1: f, i=2: (f/4 + f)/2, i=3: f/4
    got = yarn_inv_freq(inv, 10000.0, 4.0, int(2 * math.pi * 1000), 32.0, 1.0)
    want = torch.tensor([1.0, 0.1, 0.5 * (0.01 / 4 + 0.01), 0.001 / 4])
    assert torch.allclose(got, want, rtol=1e-6)
    assert yarn_attention_factor(RopeScaling("yarn", 4.0, original_max_len=8)) == pytest.approx(0.1 * math.log(4) + 1)
    assert yarn_attention_factor(RopeScaling("yarn", 4.0, original_max_len=8, mscale=1.0, mscale_all_dim=1.0)) == pytest.approx(1.0)
    # dynamic NTK: L = 2 L0, factor 2 -> base 10000 * (2*2 - 1)^(8/6); within the context the plain frequencies
    got = dynamic_inv_freq(8, 10000.0, 2.0, 16, torch.tensor([32, 10]))
    base = 10000.0 * 3.0 ** (8 / 6)
    assert torch.allclose(got[0], torch.tensor([base ** (-i / 4) for i in range(4)]), rtol=1e-5)
    assert torch.allclose(got[1], inv)


def test_rope_scaling_config_round_trips_through_dict():
    cfg = ModelConfig(vocab_size=10, dim=32, n_heads=2, n_kv_heads=1, rope_scaling=RopeScaling("yarn", 2.0, original_max_len=8), o_bias=True,
                      attn_bias=True)
    back = ModelConfig.from_dict(cfg.to_dict())
    assert back == cfg and isinstance(back.rope_scaling, RopeScaling)
    with pytest.raises(ValueError, match="unknown RoPE scaling type"):
        RopeScaling("ntk-by-parts")
    with pytest.raises(ValueError, match="original_max_len"):
        RopeScaling("llama3", 8.0)


# ---------------------------------------------------------------------------------------------------- transformers parity


@pytest.mark.parametrize("rope", list(ROPES))
def test_scaled_rope_matches_transformers_past_the_original_context(rope, tmp_path):
    """Full forward over 4-5x the original context, then greedy KV-cached decoding across it (prefill inside the
    original context, decode past it): logits / log-probs within 1e-4 and the same tokens."""
    hf = build_hf("llama", **ROPES[rope])
    hf.save_pretrained(tmp_path / "hf")
    model = load_hf(tmp_path / "hf")
    assert model.cfg.rope_scaling is not None and model.cfg.rope_scaling.rope_type == rope.split("_")[0]
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 64, (2, 5 * L0), generator=g)
    ref = full_logits(hf, ids)
    with torch.no_grad():
        ours = model(ids).logits
    assert (ours - ref).abs().max() < 1e-4
    # plain RoPE on the same weights is far off past the context: the scaling really is in play
    plain = Transformer(ModelConfig(**{**model.cfg.to_dict(), "rope_scaling": None}))
    plain.load_state_dict(model.state_dict())
    with torch.no_grad():
        assert (plain(ids).logits - ref)[:, L0:].abs().max() > 1e-2
    # greedy generation through the KV cache (prefill 10 < L0 tokens, decode to 4 L0): the same ids and log-probs
    prompt = ids[:1, :10]
    n = 4 * L0 - 10
    fresh = build_hf("llama", **ROPES[rope])  # dynamic RoPE keeps state across calls in transformers: a fresh model
    fresh.load_state_dict(hf.state_dict())
    with torch.no_grad():
        out = fresh.generate(input_ids=prompt, attention_mask=torch.ones_like(prompt), do_sample=False, max_new_tokens=n, min_new_tokens=n, pad_token_id=0, eos_token_id=None,
                             output_logits=True, return_dict_in_generate=True)
    theirs = out.sequences[0, 10:].tolist()
    their_lp = torch.stack([torch.log_softmax(step[0], -1)[t] for step, t in zip(out.logits, theirs)])
    mine = generate(model, [prompt[0].tolist()], SamplingParams(max_new_tokens=n, temperature=0.0))
    assert mine.tokens[0] == theirs
    assert (torch.tensor(mine.logprobs[0]) - their_lp).abs().max() < 1e-4
    # cached decode vs one full forward over the generated sequence: equal for the static tables; dynamic NTK
    # rotates each cached key with the frequencies of its own step, so there (as in transformers) they differ
    seq = torch.tensor([prompt[0].tolist() + mine.tokens[0]])
    with torch.no_grad():
        lp_full = torch.log_softmax(model(seq).logits[0, 9:-1], -1).gather(-1, seq[0, 10:, None])[:, 0]
    gap = float((torch.tensor(mine.logprobs[0]) - lp_full).abs().max())
    if rope == "dynamic":
        assert gap > 1e-3
    else:
        assert gap < 1e-4


@pytest.mark.parametrize("model_type", ["llama", "qwen3"])
def test_attention_bias_matches_transformers_and_round_trips(model_type, tmp_path):
    hf = build_hf(model_type, attention_bias=True, max_position_embeddings=64, head_dim=16)
    assert hf.model.layers[0].self_attn.o_proj.bias is not None
    hf.save_pretrained(tmp_path / "hf")
    model = load_hf(tmp_path / "hf")
    assert model.cfg.attn_bias and model.cfg.o_bias
    ids = torch.randint(0, 64, (2, 20), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert (model(ids).logits - full_logits(hf, ids)).abs().max() < 1e-4
    save_hf(model, tmp_path / "out")
    assert load_file(tmp_path / "out" / "model.safetensors").keys() == load_file(tmp_path / "hf" / "model.safetensors").keys()
    back = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "out", dtype=torch.float32, attn_implementation="eager").eval()
    assert type(back).__name__ == type(hf).__name__
    assert (full_logits(back, ids) - full_logits(hf, ids)).abs().max() < 1e-6


@pytest.mark.parametrize("rope", list(ROPES))
@pytest.mark.parametrize("model_type", ["llama", "qwen2"])
def test_export_round_trip_is_exact(rope, model_type, tmp_path):
    """Sherman -> HF folder -> Sherman: the same config and bit-identical state dict; transformers reads the export
    with the same scaling (logits equal to the source model's)."""
    hf = build_hf(model_type, **ROPES[rope])
    hf.save_pretrained(tmp_path / "hf")
    model = load_hf(tmp_path / "hf")
    save_hf(model, tmp_path / "out", arch=model_type)
    again = load_hf(tmp_path / "out")
    assert again.cfg == model.cfg
    a, b = model.state_dict(), again.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    back = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "out", dtype=torch.float32, attn_implementation="eager").eval()
    ids = torch.randint(0, 64, (1, 4 * L0), generator=torch.Generator().manual_seed(3))
    assert (full_logits(back, ids) - full_logits(hf, ids)).abs().max() < 1e-6
