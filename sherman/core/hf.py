"""Hugging Face interop: load `config.json` + safetensors checkpoints into the Sherman model, and export back.

Supported architectures (`model_type` in config.json):
    llama      LlamaForCausalLM     (no attention / MLP bias)
    qwen2      Qwen2ForCausalLM     (q/k/v bias)
    qwen3      Qwen3ForCausalLM     (per-head QK RMSNorm)
    qwen3_moe  Qwen3MoeForCausalLM  (QK-norm, softmax top-k router, optional top-k renormalisation, dense `mlp_only_layers`)
    mixtral    MixtralForCausalLM   (softmax top-k router, always renormalised)
    qwen2_moe  Qwen2MoeForCausalLM  (q/k/v bias, sigmoid-gated shared expert)

Our parameter names mirror Hugging Face's Llama/Qwen names (`model.layers.3.self_attn.q_proj.weight` is our
`layers.3.self_attn.q_proj.weight`, `lm_head.weight` is `lm_head.weight`), so the mapping is a renaming only for
Mixtral (`block_sparse_moe.experts.j.w1/w3/w2` = gate/up/down, router `block_sparse_moe.gate`) and for fused
experts. Checkpoints may store experts either per expert (`mlp.experts.j.gate_proj.weight`, what
`save_pretrained` of transformers 4.x and 5.x writes) or fused as 3-D tensors, the in-memory layout of
transformers 5 (`mlp.experts.gate_up_proj` (E, 2*I, C) with gate rows first, `mlp.experts.down_proj` (E, C, I));
both load. Export writes the per-expert layout, which every transformers version reads.

RoPE scaling: linear, dynamic (NTK), yarn and llama3 load and export (`RopeScaling` in `core/model.py`, the same
formulas as transformers' `ROPE_INIT_FUNCTIONS`); Llama / Qwen3 `attention_bias=True` (q, k, v and o_proj biases)
too. Other RoPE variants (longrope, per-layer-type), sliding-window attention, partial rotary embeddings and MLP
biases are rejected with a clear error rather than loaded wrongly.

Python:
    model = load_hf("path/to/hf_dir")                 # fp32 on CPU by default
    save_hf(model, "out_dir", arch="qwen3")           # config.json + model.safetensors (or shards + index)
    save_hf(model, "out_dir", tokenizer=tok)          # + tokenizer.json, tokenizer_config.json (chat template),
                                                      #   generation_config.json, bos/eos/pad ids in config.json
CLI (`core/convert_cli.py`):
    sherman convert --from-hf HF_DIR --out CKPT_DIR
    sherman convert --to-hf CKPT_DIR --out HF_DIR [--arch auto|llama|qwen2|qwen3|qwen3_moe|mixtral|qwen2_moe] [--chat-template plain|roles]
        (the checkpoint's tokenizer.json, when present, is exported too; --from-hf imports the folder's tokenizer)
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from sherman.core.common import ShermanError
from sherman.core.config import parse_size  # noqa: F401 - re-exported: `from sherman.core.hf import parse_size`
from sherman.core.model import ROPE_TYPES, ModelConfig, RopeScaling, Transformer, rope_tables

ARCHITECTURES: dict[str, str] = {
    "llama": "LlamaForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
    "qwen3": "Qwen3ForCausalLM",
    "qwen3_moe": "Qwen3MoeForCausalLM",
    "mixtral": "MixtralForCausalLM",
    "qwen2_moe": "Qwen2MoeForCausalLM",
}
"""model_type -> the transformers class written into `architectures`."""

MOE_TYPES = ("qwen3_moe", "mixtral", "qwen2_moe")
DEFAULT_ROPE_THETA = {"mixtral": 1e6}  # transformers' defaults when config.json names no theta; others 10000
MAX_INITIAL_ROPE = 32768  # initial RoPE table length; the model grows it on demand beyond this

DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
          "float16": torch.float16, "fp16": torch.float16}


# ----------------------------------------------------------------------------------------------------------
# Config


def _rope_params(hf: dict, model_type: str) -> tuple[float, RopeScaling | None]:
    """RoPE base and scaling from a transformers 4.x (`rope_theta`, `rope_scaling`) or 5.x (`rope_parameters`) config,
    read as transformers' `standardize_rope_params` and `ROPE_INIT_FUNCTIONS` read them."""
    params = hf.get("rope_parameters") or {}
    scaling = hf.get("rope_scaling") or {}
    if not isinstance(params, dict) or not isinstance(scaling, dict):
        raise ShermanError(f"unsupported rope_parameters / rope_scaling in config: {params or scaling!r}")
    if any(isinstance(v, dict) for v in params.values()):
        raise ShermanError("per-layer-type rope_parameters are not supported (only one global RoPE)")
    kinds = {d.get("rope_type", d.get("type", "default")) for d in (params, scaling) if d} - {"default", None}
    if len(kinds) > 1:
        raise ShermanError(f"rope_parameters and rope_scaling disagree on the RoPE type: {sorted(kinds)}")
    kind = kinds.pop() if kinds else "default"
    if kind not in ("default", *ROPE_TYPES):
        raise ShermanError(f"RoPE scaling type {kind!r} is not implemented in Sherman (supported: default, {', '.join(ROPE_TYPES)})")
    d = {**scaling, **params} if params.get("rope_type", params.get("type", "default")) == kind else {**params, **scaling}
    for src in (d, hf):
        if src.get("partial_rotary_factor", 1.0) not in (None, 1.0):
            raise ShermanError(f"partial_rotary_factor={src['partial_rotary_factor']} is not supported")
    theta = float(d.get("rope_theta") or hf.get("rope_theta") or DEFAULT_ROPE_THETA.get(model_type, 10000.0))
    if kind == "default":
        return theta, None
    max_pos = int(hf.get("max_position_embeddings") or 4096)
    orig = int(hf.get("original_max_position_embeddings") or d.get("original_max_position_embeddings") or max_pos)
    factor = d.get("factor")
    if factor is None:
        if kind != "yarn":
            raise ShermanError(f"RoPE scaling {kind!r} needs a 'factor'")
        factor = max_pos / orig
    try:
        if kind == "linear":
            return theta, RopeScaling("linear", float(factor))
        if kind == "dynamic":
            return theta, RopeScaling("dynamic", float(factor), original_max_len=max_pos)
        if kind == "llama3":
            return theta, RopeScaling("llama3", float(factor), original_max_len=orig, low_freq_factor=float(d["low_freq_factor"]),
                                      high_freq_factor=float(d["high_freq_factor"]))
        opt = lambda k: None if d.get(k) is None else float(d[k])  # noqa: E731
        return theta, RopeScaling("yarn", float(factor), original_max_len=orig, beta_fast=float(d.get("beta_fast") or 32),
                                  beta_slow=float(d.get("beta_slow") or 1), attention_factor=opt("attention_factor"),
                                  mscale=opt("mscale"), mscale_all_dim=opt("mscale_all_dim"), truncate=bool(d.get("truncate", True)))
    except KeyError as e:
        raise ShermanError(f"RoPE scaling {kind!r} lacks parameter {e.args[0]!r}") from None
    except (TypeError, ValueError) as e:
        raise ShermanError(f"invalid RoPE scaling parameters {d!r}: {e}") from None


def rope_to_hf(cfg: ModelConfig) -> dict:
    """ModelConfig's RoPE -> transformers' `rope_parameters` dict."""
    out: dict = {"rope_type": "default", "rope_theta": cfg.rope_theta}
    r = cfg.rope_scaling
    if r is None:
        return out
    out.update(rope_type=r.rope_type, factor=r.factor)
    if r.rope_type == "llama3":
        out.update(original_max_position_embeddings=r.original_max_len, low_freq_factor=r.low_freq_factor, high_freq_factor=r.high_freq_factor)
    elif r.rope_type == "yarn":
        out.update(original_max_position_embeddings=r.original_max_len, beta_fast=r.beta_fast, beta_slow=r.beta_slow, truncate=r.truncate)
        out.update({k: getattr(r, k) for k in ("attention_factor", "mscale", "mscale_all_dim") if getattr(r, k) is not None})
    return out


def _need(hf: dict, key: str) -> int:
    if hf.get(key) is None:
        raise ShermanError(f"config.json lacks required field {key!r}")
    return int(hf[key])


def config_from_hf(hf: dict) -> ModelConfig:
    """A Hugging Face config.json dict -> ModelConfig. Raises ShermanError for what Sherman cannot represent."""
    mt = hf.get("model_type")
    if mt not in ARCHITECTURES:
        raise ShermanError(f"unsupported Hugging Face architecture model_type={mt!r} (architectures={hf.get('architectures')}); "
                           f"supported: {', '.join(ARCHITECTURES)}")
    if hf.get("hidden_act", "silu") != "silu":
        raise ShermanError(f"hidden_act={hf['hidden_act']!r} is not supported (SwiGLU with silu only)")
    if mt == "mixtral" and hf.get("attention_bias", False):
        raise ShermanError("mixtral with attention_bias=True is not supported")
    if hf.get("mlp_bias", False):
        raise ShermanError("mlp_bias=True is not supported")
    if hf.get("use_sliding_window", False):
        raise ShermanError("sliding-window attention (use_sliding_window=True) is not supported")
    if mt == "mixtral" and hf.get("sliding_window"):
        raise ShermanError(f"mixtral with sliding_window={hf['sliding_window']} is not supported")
    theta, scaling = _rope_params(hf, mt)
    bias_all = mt in ("llama", "qwen3", "qwen3_moe") and bool(hf.get("attention_bias", False))  # q, k, v and o_proj
    dim, n_layers, n_heads = _need(hf, "hidden_size"), _need(hf, "num_hidden_layers"), _need(hf, "num_attention_heads")
    kw: dict = dict(
        vocab_size=_need(hf, "vocab_size"),
        dim=dim,
        n_layers=n_layers,
        n_heads=n_heads,
        n_kv_heads=int(hf.get("num_key_value_heads") or n_heads),
        head_dim=int(hf.get("head_dim") or dim // n_heads),
        ffn_dim=_need(hf, "intermediate_size"),
        norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
        rope_theta=theta,
        rope_scaling=scaling,
        max_seq_len=min(int(hf.get("max_position_embeddings") or 4096), MAX_INITIAL_ROPE),
        qk_norm=mt in ("qwen3", "qwen3_moe"),
        attn_bias=bias_all or mt == "qwen2" or (mt == "qwen2_moe" and bool(hf.get("qkv_bias", True))),
        o_bias=bias_all,
        tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
    )
    if mt in MOE_TYPES:
        n_exp = hf.get("num_local_experts") if mt == "mixtral" else hf.get("num_experts", hf.get("num_local_experts"))
        if not n_exp:
            raise ShermanError(f"{mt} config.json lacks the number of experts (num_experts / num_local_experts)")
        kw.update(n_experts=int(n_exp), n_experts_per_tok=_need(hf, "num_experts_per_tok"))
        if mt == "mixtral":
            kw.update(moe_ffn_dim=kw["ffn_dim"], norm_topk_prob=True)
        else:
            step = int(hf.get("decoder_sparse_step", 1) or 1)
            dense = set(hf.get("mlp_only_layers") or []) | {i for i in range(n_layers) if (i + 1) % step != 0}
            kw.update(moe_ffn_dim=_need(hf, "moe_intermediate_size"), norm_topk_prob=bool(hf.get("norm_topk_prob", False)),
                      mlp_only_layers=sorted(dense))
        if mt == "qwen2_moe":
            kw["shared_expert_dim"] = _need(hf, "shared_expert_intermediate_size")
            if kw["shared_expert_dim"] <= 0:
                raise ShermanError("qwen2_moe with shared_expert_intermediate_size=0 is not supported")
    try:
        return ModelConfig(**kw)
    except (AssertionError, ValueError) as e:
        raise ShermanError(f"invalid model shape in config.json: {e}") from None


def pick_arch(cfg: ModelConfig) -> str:
    """The Hugging Face architecture that represents a Sherman config exactly (used by `arch="auto"`)."""
    if cfg.n_experts > 0:
        if cfg.shared_expert_dim > 0:
            return "qwen2_moe"
        if cfg.qk_norm or cfg.attn_bias or cfg.o_bias or not cfg.norm_topk_prob or cfg.mlp_only_layers:
            return "qwen3_moe"
        return "mixtral"
    if cfg.qk_norm:
        return "qwen3"
    if cfg.o_bias:
        return "llama"
    return "qwen2" if cfg.attn_bias else "llama"


def _check_exportable(cfg: ModelConfig, arch: str) -> None:
    """Raise ShermanError when `arch` cannot represent `cfg` exactly."""
    problems = []
    moe = cfg.n_experts > 0
    if arch in MOE_TYPES and not moe:
        problems.append("it is a dense model")
    if arch not in MOE_TYPES and moe:
        problems.append("it is a Mixture-of-Experts model")
    if cfg.qk_norm != (arch in ("qwen3", "qwen3_moe")):
        problems.append(f"qk_norm={cfg.qk_norm}")
    if cfg.o_bias and arch not in ("llama", "qwen3", "qwen3_moe"):
        problems.append("o_bias=True")
    elif cfg.attn_bias and not cfg.o_bias and arch not in ("qwen2", "qwen2_moe"):
        problems.append("attn_bias=True without o_bias (only Qwen2 biases q/k/v alone)")
    if moe and (cfg.shared_expert_dim > 0) != (arch == "qwen2_moe"):
        problems.append(f"shared_expert_dim={cfg.shared_expert_dim}")
    if arch == "mixtral" and (not cfg.norm_topk_prob or cfg.mlp_only_layers):
        problems.append("mixtral always renormalises top-k weights and has no dense layers")
    if problems:
        raise ShermanError(f"cannot export as {arch}: {'; '.join(problems)} (try --arch auto, which picks {pick_arch(cfg)})")


def config_to_hf(cfg: ModelConfig, arch: str, dtype: torch.dtype = torch.float32) -> dict:
    """ModelConfig -> a config.json dict for `arch` that transformers 4.x and 5.x read."""
    dynamic = cfg.rope_scaling is not None and cfg.rope_scaling.rope_type == "dynamic"
    hf: dict = {
        "architectures": [ARCHITECTURES[arch]],
        "model_type": arch,
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.dim,
        "intermediate_size": cfg.moe_ffn_dim if arch == "mixtral" else cfg.ffn_dim,
        "num_hidden_layers": cfg.n_layers,
        "num_attention_heads": cfg.n_heads,
        "num_key_value_heads": cfg.n_kv_heads,
        "head_dim": cfg.head_dim,
        "hidden_act": "silu",
        "rms_norm_eps": cfg.norm_eps,
        "rope_theta": cfg.rope_theta,
        "rope_parameters": rope_to_hf(cfg),
        "max_position_embeddings": cfg.rope_scaling.original_max_len if dynamic else cfg.max_seq_len,
        "tie_word_embeddings": cfg.tie_embeddings,
        "attention_bias": cfg.o_bias,
        "use_cache": True,
        "torch_dtype": str(dtype).removeprefix("torch."),
        "dtype": str(dtype).removeprefix("torch."),
    }
    if cfg.rope_scaling is not None:  # transformers 4.x reads rope_scaling
        hf["rope_scaling"] = {k: v for k, v in hf["rope_parameters"].items() if k != "rope_theta"}
    if arch in ("qwen2", "qwen2_moe"):
        hf.update(use_sliding_window=False, sliding_window=None)
    if arch == "qwen2_moe":
        hf.update(qkv_bias=True)  # zero biases are written when the Sherman model has none
    if arch == "mixtral":
        hf.update(num_local_experts=cfg.n_experts, num_experts_per_tok=cfg.n_experts_per_tok, sliding_window=None)
    elif arch in MOE_TYPES:
        hf.update(num_experts=cfg.n_experts, num_experts_per_tok=cfg.n_experts_per_tok, moe_intermediate_size=cfg.moe_ffn_dim,
                  norm_topk_prob=cfg.norm_topk_prob, decoder_sparse_step=1, mlp_only_layers=list(cfg.mlp_only_layers))
    if arch == "qwen2_moe":
        hf["shared_expert_intermediate_size"] = cfg.shared_expert_dim
    return hf


# ----------------------------------------------------------------------------------------------------------
# Weights: names


_MIXTRAL_W = {"w1": "gate_proj", "w3": "up_proj", "w2": "down_proj"}
_FUSED = re.compile(r"^layers\.(\d+)\.mlp\.experts\.(gate_up_proj|down_proj)$")


def _normalise(name: str) -> str:
    """A Hugging Face tensor name -> our name (fused expert tensors keep their name; see `_split_fused`)."""
    if name.startswith("model."):
        name = name[len("model."):]
    name = name.replace(".block_sparse_moe.", ".mlp.")
    m = re.match(r"^(layers\.\d+\.mlp\.experts\.\d+)\.(w[123])\.weight$", name)
    if m:
        name = f"{m.group(1)}.{_MIXTRAL_W[m.group(2)]}.weight"
    return name


def _split_fused(name: str, t: torch.Tensor, moe_ffn_dim: int) -> dict[str, torch.Tensor]:
    """Fused (E, 2I, C) gate_up_proj or (E, C, I) down_proj -> per-expert (I, C) / (C, I) tensors."""
    layer, kind = _FUSED.match(name).groups()
    if t.dim() != 3:
        raise ShermanError(f"fused expert tensor {name} has shape {tuple(t.shape)}, expected 3 dimensions")
    out = {}
    for e in range(t.shape[0]):
        prefix = f"layers.{layer}.mlp.experts.{e}"
        if kind == "gate_up_proj":
            if t.shape[1] != 2 * moe_ffn_dim:
                raise ShermanError(f"fused {name} has shape {tuple(t.shape)}, expected (E, 2*{moe_ffn_dim}, hidden)")
            out[f"{prefix}.gate_proj.weight"] = t[e, :moe_ffn_dim]
            out[f"{prefix}.up_proj.weight"] = t[e, moe_ffn_dim:]
        else:
            out[f"{prefix}.down_proj.weight"] = t[e]
    return out


def _few(names) -> str:
    names = sorted(names)
    return ", ".join(names[:5]) + (f" (+{len(names) - 5} more)" if len(names) > 5 else "")


def _export_name(arch: str, ours: str) -> str:
    """Our parameter name -> its Hugging Face name for `arch`."""
    if ours == "lm_head.weight":
        return ours
    name = "model." + ours
    if arch == "mixtral":  # every Mixtral FFN is MoE: mlp.gate -> block_sparse_moe.gate, experts.j.gate_proj -> w1, ...
        name = name.replace(".mlp.", ".block_sparse_moe.")
        for w, ours_w in _MIXTRAL_W.items():
            name = name.replace(f".{ours_w}.weight", f".{w}.weight")
    return name


# ----------------------------------------------------------------------------------------------------------
# Load


def _shard_files(path: Path) -> list[Path]:
    index = path / "model.safetensors.index.json"
    single = path / "model.safetensors"
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise ShermanError(f"{index}: corrupted index ({type(e).__name__}: {e})") from None
        files = [path / f for f in sorted(set(weight_map.values()))]
        missing = [f.name for f in files if not f.is_file()]
        if missing:
            raise ShermanError(f"{index} names missing shard files: {_few(missing)}")
        return files
    if single.is_file():
        return [single]
    if list(path.glob("*.bin")):
        raise ShermanError(f"{path} holds only PyTorch .bin weights; convert them to safetensors first (Sherman reads safetensors only)")
    raise ShermanError(f"{path} has no model.safetensors or model.safetensors.index.json")


def read_hf_config(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_dir():
        raise ShermanError(f"{path}: not a directory (expected a Hugging Face model folder with config.json)")
    cfg_path = path / "config.json"
    if not cfg_path.is_file():
        raise ShermanError(f"{cfg_path}: missing (is {path} a Hugging Face model folder?)")
    try:
        return json.loads(cfg_path.read_text())
    except json.JSONDecodeError as e:
        raise ShermanError(f"{cfg_path}: not valid JSON ({e})") from None


def _resolve_dtype(dtype: torch.dtype | str | None, hf: dict) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype in (None, "auto"):
        name = hf.get("dtype") or hf.get("torch_dtype") or "float32"
        return DTYPES.get(name, torch.float32) if dtype == "auto" else torch.float32
    if dtype not in DTYPES:
        raise ShermanError(f"unknown dtype {dtype!r}; choose one of {sorted(DTYPES)} or 'auto'")
    return DTYPES[dtype]


def _empty_model(cfg: ModelConfig, device: torch.device | str, dtype: torch.dtype) -> Transformer:
    """A Transformer with uninitialised parameters in `dtype` (skips the random init of a model about to be overwritten)."""
    with torch.device("meta"):
        model = Transformer(cfg).to(dtype)
    if {n for n, _ in model.named_buffers()} != {"rope_cos", "rope_sin"}:
        return Transformer(cfg).to(device, dtype)  # unknown buffers: build normally so they hold real values
    model = model.to_empty(device=device)
    cos, sin = rope_tables(cfg.head_dim, cfg.max_seq_len, cfg.rope_theta, device, cfg.rope_scaling)
    model.rope_cos, model.rope_sin = cos.to(dtype), sin.to(dtype)  # as `Transformer(cfg).to(dtype)` would hold them
    return model


def load_hf(path: str | Path, dtype: torch.dtype | str | None = torch.float32, device: torch.device | str = "cpu") -> Transformer:
    """Load a Hugging Face checkpoint folder (config.json + model.safetensors, or shards with an index) as a Transformer.

    dtype: parameter dtype (default fp32, e.g. to run a bf16 checkpoint on CPU); "auto" keeps the checkpoint's dtype.
    """
    path = Path(path)
    hf = read_hf_config(path)
    cfg = config_from_hf(hf)
    dt = _resolve_dtype(dtype, hf)
    files = _shard_files(path)
    model = _empty_model(cfg, device, dt)
    params = dict(model.state_dict())  # ours: name -> tensor (views into the model)
    filled: set[str] = set()
    unexpected: list[str] = []
    for f in files:
        try:
            with safe_open(str(f), framework="pt") as sf:
                for key in sf.keys():
                    name = _normalise(key)
                    if name.endswith("rotary_emb.inv_freq"):
                        continue
                    if name == "lm_head.weight" and cfg.tie_embeddings:
                        continue  # a tied head stored anyway
                    if _FUSED.match(name):
                        tensors = _split_fused(name, sf.get_tensor(key), cfg.moe_ffn_dim)
                    elif name in params:
                        tensors = {name: sf.get_tensor(key)}
                    else:
                        unexpected.append(key)
                        continue
                    for n, t in tensors.items():
                        if n not in params:
                            unexpected.append(f"{key} -> {n}")
                            continue
                        if tuple(t.shape) != tuple(params[n].shape):
                            raise ShermanError(f"{f.name}: tensor {key} has shape {tuple(t.shape)}, config.json implies {tuple(params[n].shape)}")
                        params[n].copy_(t)
                        filled.add(n)
        except (SafetensorError, OSError) as e:
            raise ShermanError(f"{f}: unreadable safetensors file ({str(e).splitlines()[0][:160]})") from None
    if unexpected:
        raise ShermanError(f"{path}: unexpected tensors for {hf['model_type']}: {_few(unexpected)}")
    missing = set(params) - filled
    if missing:
        raise ShermanError(f"{path}: missing tensors for {hf['model_type']}: {_few(missing)}")
    return model.eval()


# ----------------------------------------------------------------------------------------------------------
# Save


def hf_state_dict(model: Transformer, arch: str, dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
    """Our weights under their Hugging Face names for `arch` (tied head omitted, zero q/k/v biases added for Qwen2)."""
    cfg = model.cfg
    out = {}
    for name, t in model.state_dict().items():
        out[_export_name(arch, name)] = t
    if (arch in ("qwen2", "qwen2_moe") or cfg.o_bias) and not cfg.attn_bias:  # the format has q/k/v biases; ours are zero
        for i in range(cfg.n_layers):
            for proj, width in (("q_proj", cfg.n_heads), ("k_proj", cfg.n_kv_heads), ("v_proj", cfg.n_kv_heads)):
                out[f"model.layers.{i}.self_attn.{proj}.bias"] = torch.zeros(width * cfg.head_dim, dtype=model.dtype)
    dt = dtype or model.dtype
    return {k: v.detach().to("cpu", dt).contiguous().clone() for k, v in out.items()}


def save_hf(model: Transformer, path: str | Path, arch: str = "auto", max_shard_bytes: int | str = "5GB",
            dtype: torch.dtype | None = None, tokenizer=None, chat_template: str = "plain") -> Path:
    """Export a Sherman model to a Hugging Face folder that `AutoModelForCausalLM.from_pretrained` loads.

    arch: one of ARCHITECTURES or "auto" (picks the architecture that represents the model exactly).
    max_shard_bytes: above this total size the weights are split into model-0000i-of-0000n.safetensors shards
        with a model.safetensors.index.json, as transformers does.
    dtype: weight dtype in the files (default the model's).
    tokenizer: a Sherman tokenizer; when given, the folder also gets tokenizer.json, tokenizer_config.json (with the
        chat template `chat_template`, see `core.tokenizer.CHAT_TEMPLATES`), special_tokens_map.json and
        generation_config.json, and config.json names the bos/eos/pad ids, so `AutoTokenizer` and vLLM run it.
    """
    from sherman.core.checkpoint import atomic_write, atomic_write_text

    cfg = model.cfg
    arch = pick_arch(cfg) if arch == "auto" else arch
    if arch not in ARCHITECTURES:
        raise ShermanError(f"unknown architecture {arch!r}; choose one of auto, {', '.join(ARCHITECTURES)}")
    _check_exportable(cfg, arch)
    limit = parse_size(max_shard_bytes)
    sd = hf_state_dict(model, arch, dtype)
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ShermanError(f"{path} exists and is not a directory")
    path.mkdir(parents=True, exist_ok=True)
    for stale in list(path.glob("model*.safetensors")) + [path / "model.safetensors.index.json"]:
        stale.unlink(missing_ok=True)  # old weights of a previous export would shadow or mix with the new ones
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for name, t in sd.items():
        nbytes = t.numel() * t.element_size()
        if shards[-1] and size + nbytes > limit:
            shards.append({})
            size = 0
        shards[-1][name] = t
        size += nbytes
    meta = {"format": "pt"}
    if len(shards) == 1:
        atomic_write(path / "model.safetensors", lambda p: save_file(shards[0], p, metadata=meta))
    else:
        weight_map = {}
        for i, shard in enumerate(shards):
            fname = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
            atomic_write(path / fname, lambda p, s=shard: save_file(s, p, metadata=meta))
            weight_map.update({k: fname for k in shard})
        total = sum(t.numel() * t.element_size() for t in sd.values())
        index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
        atomic_write_text(path / "model.safetensors.index.json", json.dumps(index, indent=2))
    hf = config_to_hf(cfg, arch, dtype or model.dtype)
    extra_files: dict[str, str] = {}
    if tokenizer is not None:
        from sherman.core.tokenizer import hf_special_ids, hf_tokenizer_files

        if tokenizer.vocab_size > cfg.vocab_size:
            raise ShermanError(f"the tokenizer has {tokenizer.vocab_size} tokens, the model only {cfg.vocab_size}")
        ids = {k: v for k, v in hf_special_ids(tokenizer).items() if v is not None}
        hf.update(ids)
        extra_files = hf_tokenizer_files(tokenizer, chat_template, cfg.max_seq_len)
        extra_files["generation_config.json"] = json.dumps({**ids, "_from_model_config": False}, indent=2)
    atomic_write_text(path / "config.json", json.dumps(hf, indent=2))
    for name, text in extra_files.items():
        atomic_write_text(path / name, text)
    umask = os.umask(0)
    os.umask(umask)
    for f in [path / "config.json", path / "model.safetensors.index.json", *path.glob("model*.safetensors"), *(path / n for n in extra_files)]:
        if f.exists():  # atomic_write's temporary files are private (0600); an export is meant to be shared
            f.chmod(0o666 & ~umask)
    return path


# ----------------------------------------------------------------------------------------------------------
# CLI


from sherman.core.convert_cli import ConvertArgs, main  # noqa: E402,F401 - `sherman convert` (re-exported; it imports this module lazily)
