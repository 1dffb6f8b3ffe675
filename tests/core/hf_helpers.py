"""Shared by the HF parity tests: a tiny random `transformers` model whose weights are scaled so mistakes show."""

import torch
import transformers


def random_hf(cfg, seed: int = 0):
    """The causal LM of `cfg` in fp32 with eager attention; norms near 1, other weights N(0, 0.15^2)."""
    cfg._attn_implementation = "eager"
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(cfg, dtype=torch.float32).eval()
    with torch.no_grad():
        for n, p in model.named_parameters():
            if n.endswith("norm.weight") or n.endswith("layernorm.weight"):
                p.copy_(1.0 + 0.2 * torch.randn_like(p))
            else:
                p.normal_(0.0, 0.15)
    return model
