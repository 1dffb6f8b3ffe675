"""Hugging Face interop: tiny random `transformers` models load into Sherman with the same logits and export back."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
import transformers  # a dev dependency: its absence is a failure, not a skip
from safetensors.torch import load_file, save_file

from sherman.core.common import ShermanError
from sherman.core.generate import SamplingParams, generate, left_pad
from sherman.core.hf import config_from_hf, load_hf, main, parse_size, pick_arch, save_hf
from sherman.core.model import padded_positions

from .hf_helpers import random_hf

V = 100
COMMON = dict(vocab_size=V, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
              intermediate_size=96, max_position_embeddings=128, rms_norm_eps=1e-6)
MOE = dict(num_experts_per_tok=2, moe_intermediate_size=32, norm_topk_prob=False)
CASES = {  # name: (model_type, extra config kwargs)
    "llama_tied": ("llama", dict(tie_word_embeddings=True, rope_parameters={"rope_type": "default", "rope_theta": 5000.0})),
    "llama": ("llama", dict(tie_word_embeddings=False)),
    "qwen2": ("qwen2", dict(tie_word_embeddings=True)),
    "qwen3": ("qwen3", dict(tie_word_embeddings=False, head_dim=24)),
    "qwen3_moe": ("qwen3_moe", dict(tie_word_embeddings=False, num_experts=4, **MOE)),
    "mixtral": ("mixtral", dict(tie_word_embeddings=False, num_local_experts=4, num_experts_per_tok=2)),
    "qwen2_moe": ("qwen2_moe", dict(tie_word_embeddings=True, num_experts=4, shared_expert_intermediate_size=48, **MOE)),
}
PROMPTS = [[5, 17, 3, 99, 42, 8, 1, 64, 23], [7, 7, 2], [11, 50, 50, 12, 90, 33]]


def build_hf(name: str, seed: int = 0):
    """A tiny random transformers model, fp32, eager attention, weights scaled so that mistakes show in the logits."""
    model_type, extra = CASES[name]
    cfg = transformers.AutoConfig.for_model(model_type, **COMMON, **extra)
    return random_hf(cfg, seed)


def batch():
    ids, valid = left_pad(PROMPTS, pad_id=0)  # (B, P)
    return ids, valid, padded_positions(valid)


def hf_logits(model, ids, valid, pos) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=valid.long(), position_ids=pos).logits  # (B, P, V)


def ours_logits(model, ids, valid, pos) -> torch.Tensor:
    with torch.no_grad():
        return model(ids, positions=pos, key_valid=valid).logits  # (B, P, V)


def max_diff(a, b, valid) -> float:
    return float((a - b).abs()[valid].max())


@pytest.mark.parametrize("name", list(CASES))
def test_load_matches_transformers_and_exports_back(name, tmp_path):
    hf = build_hf(name)
    hf_dir, out_dir = tmp_path / "hf", tmp_path / "export"
    hf.save_pretrained(hf_dir)
    model = load_hf(hf_dir)
    ids, valid, pos = batch()
    ref = hf_logits(hf, ids, valid, pos)
    ours = ours_logits(model, ids, valid, pos)
    assert ref.abs().max() > 1.0  # logits are far from uniform, so a wrong mapping cannot hide
    assert max_diff(ours, ref, valid) < 1e-4
    model_type = CASES[name][0]
    assert pick_arch(model.cfg) == model_type
    save_hf(model, out_dir, arch=model_type)
    back = transformers.AutoModelForCausalLM.from_pretrained(out_dir, dtype=torch.float32, attn_implementation="eager").eval()
    assert type(back).__name__ == type(hf).__name__
    assert max_diff(hf_logits(back, ids, valid, pos), ref, valid) < 1e-6


def test_sharded_checkpoints_both_ways(tmp_path):
    hf = build_hf("qwen3")
    hf.save_pretrained(tmp_path / "hf", max_shard_size="40KB")
    assert (tmp_path / "hf" / "model.safetensors.index.json").is_file()
    model = load_hf(tmp_path / "hf")
    ids, valid, pos = batch()
    ref = hf_logits(hf, ids, valid, pos)
    assert max_diff(ours_logits(model, ids, valid, pos), ref, valid) < 1e-4
    save_hf(model, tmp_path / "out", max_shard_bytes=50_000)
    index = json.loads((tmp_path / "out" / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) >= 3 and not (tmp_path / "out" / "model.safetensors").exists()
    assert all(load_file(tmp_path / "out" / s) for s in shards)
    back = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "out", dtype=torch.float32, attn_implementation="eager").eval()
    assert max_diff(hf_logits(back, ids, valid, pos), ref, valid) < 1e-6
    # the export also reloads into Sherman; a re-export into the same folder as one file removes the stale shards
    assert max_diff(ours_logits(load_hf(tmp_path / "out"), ids, valid, pos), ref, valid) < 1e-4
    save_hf(model, tmp_path / "out")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["config.json", "model.safetensors"]


@pytest.mark.parametrize("name", ["qwen3_moe", "mixtral"])
def test_fused_expert_layout_loads(name, tmp_path):
    """transformers 5 keeps experts fused in memory: mlp.experts.gate_up_proj (E, 2I, C) and down_proj (E, C, I)."""
    hf = build_hf(name)
    sd = {k: v.contiguous() for k, v in hf.state_dict().items()}
    assert "model.layers.0.mlp.experts.gate_up_proj" in sd
    (tmp_path / "fused").mkdir()
    save_file(sd, tmp_path / "fused" / "model.safetensors", metadata={"format": "pt"})
    hf.config.to_json_file(tmp_path / "fused" / "config.json")
    model = load_hf(tmp_path / "fused")
    ids, valid, pos = batch()
    assert max_diff(ours_logits(model, ids, valid, pos), hf_logits(hf, ids, valid, pos), valid) < 1e-4


def test_greedy_generate_matches_transformers(tmp_path):
    hf = build_hf("qwen3")
    hf.save_pretrained(tmp_path / "hf")
    model = load_hf(tmp_path / "hf")
    n = 12
    ours = generate(model, PROMPTS, SamplingParams(max_new_tokens=n, temperature=0.0))
    ids, valid = left_pad(PROMPTS, pad_id=0)
    with torch.no_grad():
        seq = hf.generate(input_ids=ids, attention_mask=valid.long(), do_sample=False, max_new_tokens=n, min_new_tokens=n,
                          pad_token_id=0, eos_token_id=None)
    theirs = seq[:, ids.shape[1]:].tolist()
    assert ours.tokens == theirs
    assert len(set(map(tuple, theirs))) == len(PROMPTS)  # rows really differ


def test_cli_round_trip(tmp_path, capsys):
    hf = build_hf("mixtral")
    hf.save_pretrained(tmp_path / "hf")
    assert main(["--from-hf", str(tmp_path / "hf"), "--out", str(tmp_path / "ckpt")]) == 0
    assert (tmp_path / "ckpt" / "model.safetensors").is_file()
    assert main(["--to-hf", str(tmp_path / "ckpt"), "--out", str(tmp_path / "back"), "--max-shard-size", "60KB"]) == 0
    assert "MixtralForCausalLM" in capsys.readouterr().out
    back = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "back", dtype=torch.float32, attn_implementation="eager").eval()
    ids, valid, pos = batch()
    assert max_diff(hf_logits(back, ids, valid, pos), hf_logits(hf, ids, valid, pos), valid) < 1e-6
    with pytest.raises(ShermanError, match="exactly one"):
        main(["--out", str(tmp_path / "x")])
    with pytest.raises(ShermanError, match="no such checkpoint directory"):
        main(["--from-hf", str(tmp_path / "nope"), "--out", str(tmp_path / "x")])
    with pytest.raises(ShermanError, match="cannot export as llama"):
        main(["--to-hf", str(tmp_path / "ckpt"), "--out", str(tmp_path / "y"), "--arch", "llama"])


def test_missing_and_unexpected_tensors_are_named(tmp_path):
    hf = build_hf("llama")
    hf.save_pretrained(tmp_path / "hf")
    sd = load_file(tmp_path / "hf" / "model.safetensors")
    bad = tmp_path / "bad"
    shutil.copytree(tmp_path / "hf", bad)
    del sd["model.layers.1.mlp.up_proj.weight"]
    save_file(sd, bad / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ShermanError, match=r"missing tensors.*layers\.1\.mlp\.up_proj\.weight"):
        load_hf(bad)
    sd["model.layers.1.mlp.up_proj.weight"] = torch.zeros(96, 64)
    sd["model.layers.0.mlp.extra.weight"] = torch.zeros(3)
    save_file(sd, bad / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ShermanError, match=r"unexpected tensors.*model\.layers\.0\.mlp\.extra\.weight"):
        load_hf(bad)
    del sd["model.layers.0.mlp.extra.weight"]
    sd["model.norm.weight"] = torch.ones(65)
    save_file(sd, bad / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ShermanError, match=r"model\.norm\.weight has shape \(65,\)"):
        load_hf(bad)
    (bad / "model.safetensors").write_bytes(b"\x00garbage")
    with pytest.raises(ShermanError, match="unreadable safetensors"):
        load_hf(bad)
    (bad / "model.safetensors").unlink()
    with pytest.raises(ShermanError, match="no model.safetensors"):
        load_hf(bad)


BASE = dict(model_type="qwen3_moe", vocab_size=50, hidden_size=32, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=1,
            intermediate_size=80, moe_intermediate_size=16, num_experts=8, num_experts_per_tok=2, head_dim=16, rms_norm_eps=1e-5)


def test_config_mapping_by_hand():
    cfg = config_from_hf({**BASE, "rope_theta": 1e6, "decoder_sparse_step": 2, "mlp_only_layers": [0], "norm_topk_prob": True})
    # layers 0 (listed) and 2 ((2+1) % 2 != 0) are dense; sparse when (i+1) % step == 0 -> layers 1 and 3
    assert cfg.mlp_only_layers == [0, 2]
    assert (cfg.n_experts, cfg.n_experts_per_tok, cfg.moe_ffn_dim, cfg.ffn_dim) == (8, 2, 16, 80)
    assert cfg.qk_norm and not cfg.attn_bias and not cfg.tie_embeddings and cfg.norm_topk_prob
    assert (cfg.rope_theta, cfg.norm_eps, cfg.head_dim, cfg.n_kv_heads) == (1e6, 1e-5, 16, 1)
    # transformers 5 keeps theta in rope_parameters; it wins over nothing else
    cfg = config_from_hf({**BASE, "rope_parameters": {"rope_type": "default", "rope_theta": 123.0}})
    assert cfg.rope_theta == 123.0 and cfg.mlp_only_layers == []
    mix = config_from_hf({**BASE, "model_type": "mixtral", "num_local_experts": 4, "num_experts": None})
    assert mix.norm_topk_prob and mix.moe_ffn_dim == 80 and mix.n_experts == 4 and mix.rope_theta == 1e6 and not mix.qk_norm
    q2 = config_from_hf({**BASE, "model_type": "qwen2"})
    assert q2.attn_bias and not q2.qk_norm and q2.n_experts == 0


@pytest.mark.parametrize("bad, message", [
    ({"model_type": "gpt2"}, "unsupported Hugging Face architecture model_type='gpt2'"),
    ({"rope_scaling": {"type": "longrope", "factor": 2.0}}, "RoPE scaling type 'longrope'"),
    ({"rope_parameters": {"rope_type": "llama3", "rope_theta": 1e4, "factor": 4.0}}, "lacks parameter 'low_freq_factor'"),
    ({"rope_scaling": {"type": "linear"}}, "needs a 'factor'"),
    ({"rope_scaling": {"type": "linear", "factor": 2.0}, "rope_parameters": {"rope_type": "yarn", "factor": 2.0}}, "disagree"),
    ({"hidden_act": "gelu"}, "hidden_act='gelu'"),
    ({"model_type": "mixtral", "num_local_experts": 4, "attention_bias": True}, "attention_bias=True"),
    ({"use_sliding_window": True}, "sliding-window"),
    ({"num_key_value_heads": 3}, "invalid model shape"),
    ({"hidden_size": None}, "hidden_size"),
])
def test_config_rejects_what_we_cannot_represent(bad, message):
    with pytest.raises(ShermanError, match=message.replace("(", r"\(").replace(")", r"\)")):
        config_from_hf({**BASE, **bad})


def test_parse_size():
    assert parse_size("5GB") == 5 * 10**9 and parse_size("40KB") == 40_000 and parse_size("2MiB") == 2 * 2**20 and parse_size(7) == 7
    with pytest.raises(ShermanError):
        parse_size("lots")


def test_bf16_checkpoint_loads_as_fp32_by_default(tmp_path):
    hf = build_hf("llama_tied")
    hf.to(torch.bfloat16).save_pretrained(tmp_path / "hf")
    assert load_file(tmp_path / "hf" / "model.safetensors")["model.norm.weight"].dtype == torch.bfloat16
    model = load_hf(tmp_path / "hf")
    assert model.dtype == torch.float32
    assert load_hf(tmp_path / "hf", dtype="auto").dtype == torch.bfloat16
    # bf16 values are exact in fp32: transformers' own fp32 load of the bf16 files must agree (hf.float() would keep
    # its RoPE inv_freq buffer rounded to bf16)
    hf32 = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf", dtype=torch.float32, attn_implementation="eager").eval()
    ids, valid, pos = batch()
    assert max_diff(ours_logits(model, ids, valid, pos), hf_logits(hf32, ids, valid, pos), valid) < 1e-4
    with pytest.raises(ShermanError, match="unknown dtype"):
        load_hf(tmp_path / "hf", dtype="int3")
