"""`sherman generate CKPT --prompt TEXT ...`: sample completions from a Sherman checkpoint (or --hf DIR).

The checkpoint directory holds the model (see core/checkpoint.py) and its `tokenizer.json`
(written by `sherman train`); a Hugging Face directory holds config.json + safetensors + tokenizer.json.
Prompts come from --prompt (repeatable) or a file with one prompt per line.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tyro.conf import Positional, UseAppendAction

from sherman.core.attention import AttnContext
from sherman.core.common import ShermanError
from sherman.core.generate import SamplingParams, generate


@dataclass
class GenerateArgs:
    ckpt: Positional[str]
    """Sherman checkpoint directory (a run directory picks its latest step_*) or, with --hf, a Hugging Face directory."""
    prompt: UseAppendAction[list[str]] = field(default_factory=list)
    """Prompt text; repeat the flag for a batch."""
    prompts_file: str | None = None
    """A file with one prompt per line (added to --prompt)."""
    hf: bool = False
    """Treat CKPT as a Hugging Face checkpoint directory."""
    max_new_tokens: int = 64
    """Tokens to generate per prompt."""
    temperature: float = 0.0
    """0 = greedy."""
    top_p: float = 1.0
    """Nucleus mass."""
    stop: UseAppendAction[list[str]] = field(default_factory=list)
    """Stop strings (repeatable)."""
    seed: int = 0
    """Sampling seed."""
    attn: str = "dense"
    """Attention backend (see sherman.core.attention.BACKENDS)."""
    budget: float = 1.0
    """Sparse backends: fraction of KV blocks kept per step."""
    block_size: int = 64
    """Sparse backends: KV block size in tokens."""
    rectify_every: int = 32
    """ReSA only: dense rectification period in tokens."""
    gates: str | None = None
    """Seer only: trained gates (`sherman seer train` output: a checkpoint directory or seer_gates.pt); default: beside CKPT."""
    threshold: float | None = None
    """Seer only: select blocks whose gate probability exceeds this instead of a token budget."""
    impl: str = "torch"
    """Sparse kernels: 'torch' (pure PyTorch) or 'cpp' (fused C++ extension, compiled on first use)."""
    json_out: bool = False
    """Print one JSON object per prompt instead of plain text."""


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint dir, or a run dir whose newest step_* is used; clear error otherwise."""
    from sherman.core.checkpoint import latest_checkpoint

    p = Path(path)
    if not p.exists():
        raise ShermanError(f"{p}: no such checkpoint directory")
    if (p / "config.json").is_file():
        return p
    last = latest_checkpoint(p)
    if last is None:
        raise ShermanError(f"{p}: neither a checkpoint (config.json) nor a run directory with step_* checkpoints")
    return last


def load_for_inference(path: str | Path, hf: bool = False):
    """(model, tokenizer) from a Sherman checkpoint/run dir or a Hugging Face dir."""
    from sherman.core.tokenizer import load_tokenizer

    if hf:
        from sherman.core.hf import load_hf

        return load_hf(path), load_tokenizer(path)
    from sherman.core.checkpoint import load_model

    ck = resolve_checkpoint(path)
    model = load_model(ck)
    for cand in (ck / "tokenizer.json", ck.parent / "tokenizer.json"):
        if cand.is_file():
            return model, load_tokenizer(cand)
    raise ShermanError(f"{ck}: no tokenizer.json in the checkpoint or its run directory")


def main(argv: list[str]) -> int:
    import tyro

    args = tyro.cli(GenerateArgs, args=argv, prog="sherman generate", description=__doc__.splitlines()[0])
    prompts = list(args.prompt)
    if args.prompts_file:
        pf = Path(args.prompts_file)
        if not pf.is_file():
            raise ShermanError(f"{pf}: no such prompts file")
        prompts += [line.rstrip("\n") for line in pf.read_text().splitlines() if line.strip()]
    if not prompts:
        raise ShermanError("give at least one --prompt or --prompts-file")
    try:
        params = SamplingParams(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_p=args.top_p, stop_strings=tuple(args.stop))
    except ValueError as e:
        raise ShermanError(str(e)) from None
    model, tok = load_for_inference(args.ckpt, args.hf)
    try:
        ids = [tok.encode(p, bos=True) for p in prompts]
    except ValueError as e:
        raise ShermanError(f"prompt cannot be encoded: {e}") from None
    from sherman.core.attention import BACKENDS

    if args.attn not in BACKENDS:
        raise ShermanError(f"unknown --attn {args.attn!r}; available: {sorted(BACKENDS)}")
    options: dict = {"budget": args.budget, "block_size": args.block_size, "impl": args.impl}
    if args.attn == "resa":
        options["rectify_every"] = args.rectify_every
    if args.attn == "seer":
        options["gates"] = args.gates or str(resolve_checkpoint(args.ckpt) if not args.hf else args.ckpt)
        options["threshold"] = args.threshold
    if not 0.0 < args.budget <= 1.0:
        raise ShermanError(f"--budget must be in (0, 1], got {args.budget}")
    attn = AttnContext(backend=args.attn, options=options)
    stops = [tok.eos_id] if getattr(tok, "eos_id", None) is not None else []
    params.stop_token_ids = tuple(stops)
    t0 = time.time()
    try:
        out = generate(model, ids, params, tokenizer=tok, generator=torch.Generator().manual_seed(args.seed), attn=attn)
    except (ValueError, FileNotFoundError) as e:  # e.g. gates trained with another block size, missing gates file
        raise ShermanError(str(e)) from None
    dt = time.time() - t0
    for p, text, toks, why in zip(prompts, out.texts, out.tokens, out.finish_reasons):
        if args.json_out:
            print(json.dumps({"prompt": p, "completion": text, "n_tokens": len(toks), "finish_reason": why}))
        else:
            print(f"{p}{text}")
    n = sum(len(t) for t in out.tokens)
    if not args.json_out:
        print(f"[{n} tokens in {dt:.2f}s, {n / max(dt, 1e-9):.1f} tok/s, attention={args.attn}]")
    return 0
