"""`sherman rl`: RL on a task with a named preset (`sherman.rl.grpo`); tyro options from `RLConfig`.

CLI:  sherman rl --preset opo --task countdown --sft-steps 300 --steps 50 --out runs/rl_opo
"""

from __future__ import annotations

import dataclasses
import random
import sys
from dataclasses import dataclass, field
from pathlib import Path

from sherman.core import checkpoint as ckpt
from sherman.core.common import ShermanError, print0, rank, seed_everything, world_size
from sherman.core.model import Transformer
from sherman.rl import grpo
from sherman.rl.config import RLConfig, preset_config
from sherman.rl.evaluation import evaluate, sft_warm_start, tiny_model_config
from sherman.rl.grpo import rl_train


@dataclass
class RLArgs:
    preset: str = "opo"
    """RL algorithm: grpo, dr_grpo, opo, gspo, gmpo, rspo (sets the defaults of the RL options below)."""
    task: str = "countdown"
    """Task (sherman.tasks): countdown, arithmetic, ..."""
    out: str = "runs/rl"
    """Run directory (checkpoints, metrics.jsonl, tokenizer.json)."""
    init: str | None = None
    """Start from a Sherman checkpoint directory (with tokenizer.json beside it or in its parent)."""
    hf: str | None = None
    """Start from a Hugging Face checkpoint folder (config.json, safetensors, tokenizer.json)."""
    sft_steps: int = 0
    """Without --init/--hf: SFT warm-start steps on the task's traces before RL."""
    sft_examples: int = 2000
    """Task traces generated for the warm start."""
    dim: int = 64
    """Fresh model width."""
    n_layers: int = 2
    """Fresh model depth."""
    n_experts: int = 0
    """Fresh model experts per MoE layer (0 = dense)."""
    top_k: int = 2
    """Fresh model experts per token."""
    eval_prompts: int = 64
    """Held-out prompts for pass@1 / pass@8 at the end (0 = no eval)."""
    rl: RLConfig = field(default_factory=RLConfig)
    """RL options."""


def _preset_from_argv(argv: list[str]) -> str:
    for i, a in enumerate(argv):
        if a == "--preset" and i + 1 < len(argv):
            return argv[i + 1]
        if a.startswith("--preset="):
            return a.split("=", 1)[1]
    return RLArgs.preset


def _find_tokenizer(path: Path):
    from sherman.core.tokenizer import load_tokenizer

    for p in (path, path.parent):
        if (p / "tokenizer.json").is_file():
            return load_tokenizer(p)
    raise ShermanError(f"{path}: no tokenizer.json in it or its parent")


def main(argv: list[str]) -> int:
    import tyro

    from sherman.core.tokenizer import CharTokenizer
    from sherman.tasks import get_task

    name = _preset_from_argv(argv)
    default = RLArgs(preset=name, rl=preset_config(name))
    try:
        args = tyro.cli(RLArgs, args=argv, default=default, prog="sherman rl", description=grpo.__doc__.splitlines()[0],
                        config=(tyro.conf.OmitArgPrefixes,))  # fmt: skip
    except SystemExit as e:
        return int(e.code or 0)
    cfg = dataclasses.replace(args.rl)  # re-run validation
    task = get_task(args.task)
    out = Path(args.out)
    cfg.out_dir = str(out)
    cfg.log_every = cfg.log_every or max(1, cfg.steps // 10)
    seed_everything(cfg.seed)
    if args.init and args.hf:
        raise ShermanError("give at most one of --init and --hf")
    if args.init:
        model = ckpt.load_model(args.init)
        tok = _find_tokenizer(Path(args.init))
    elif args.hf:
        from sherman.core.hf import load_hf

        model = load_hf(args.hf)
        tok = _find_tokenizer(Path(args.hf))
    else:
        tok = CharTokenizer(task.alphabet())
        model = Transformer(tiny_model_config(tok.vocab_size, args.dim, args.n_layers, n_experts=args.n_experts, top_k=args.top_k))
        if args.sft_steps:
            print0(f"SFT warm start: {args.sft_steps} steps")
            sft_warm_start(model, task, tok, args.sft_steps, args.sft_examples, seed=cfg.seed)
    if cfg.router_shift and model.cfg.n_experts == 0:
        raise ShermanError(f"preset {name!r} / --router-shift needs an MoE model: pass --n-experts 8 (or an MoE --init/--hf checkpoint)")
    if rank() == 0:
        out.mkdir(parents=True, exist_ok=True)
        tok.save(out / "tokenizer.json")
    eval_fn = None
    if args.eval_prompts > 0:
        rng = random.Random(10_000 + cfg.seed)
        held = [task.sample(rng) for _ in range(args.eval_prompts)]

        def eval_fn(m):
            return evaluate(m, task, tok, held, n_samples=8, ks=(1, 8), temperature=cfg.temperature, max_new_tokens=cfg.max_new_tokens)

    print0(f"RL preset {name} on {args.task}: {cfg.steps} iterations x {cfg.prompts_per_step * cfg.group_size} rollouts, "
           f"{cfg.updates_per_batch} optimizer step(s) per batch, world size {world_size()}")  # fmt: skip
    res = rl_train(model, task, tok, cfg, eval_fn=eval_fn)
    if res.already_complete:
        print0(f"already complete: {res.step} iterations; checkpoints in {out}")
        return 0
    print0(f"done: {res.step} iterations, {res.opt_steps} optimizer steps; final {res.final_eval}; checkpoints in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
