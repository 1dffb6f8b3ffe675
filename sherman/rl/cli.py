"""`sherman rl`: RL on a task with a named preset (`sherman.rl.grpo`); options generated from `RLConfig` (no prefix).

CLI:  sherman rl --preset opo --task countdown --sft-steps 300 --steps 50 --out runs/rl_opo
"""

from __future__ import annotations

import random
import sys
from dataclasses import dataclass, field
from pathlib import Path

from sherman.core.config import check, module_doc, parse
from sherman.core.errors import ShermanError
from sherman.rl.config import PRESETS, RLConfig, preset_config


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

    def __post_init__(self) -> None:
        for name in ("dim", "n_layers", "sft_examples"):
            check(getattr(self, name) >= 1, name, f"must be >= 1, got {getattr(self, name)}")
        for name in ("sft_steps", "eval_prompts", "n_experts"):
            check(getattr(self, name) >= 0, name, f"must be >= 0, got {getattr(self, name)}")
        check(self.n_experts == 0 or 1 <= self.top_k <= self.n_experts, "top_k", f"{self.top_k} must be in 1..--n-experts ({self.n_experts})")
        check(not (self.init and self.hf), "hf", "give at most one of --init and --hf")


def _preset_from_argv(argv: list[str]) -> str:
    for i, a in enumerate(argv):
        if a == "--preset" and i + 1 < len(argv):
            return argv[i + 1]
        if a.startswith("--preset="):
            return a.split("=", 1)[1]
    return RLArgs.preset


def main(argv: list[str]) -> int:
    name = _preset_from_argv(argv)
    if name not in PRESETS:
        raise ShermanError(f"--preset: unknown preset {name!r}; choose from {', '.join(sorted(PRESETS))}")
    default = RLArgs(preset=name, rl=preset_config(name, log_every=5))  # the CLI prints every 5 iterations unless told (0 = silent)
    args = parse(RLArgs, argv, prog="sherman rl", description=module_doc("sherman.rl.grpo"), default=default, flatten=("rl",),
                 exclude=("rl.out_dir",))  # fmt: skip
    from sherman.core.common import print0, rank, seed_everything, world_size
    from sherman.core.model import Transformer
    from sherman.core.tokenizer import CharTokenizer
    from sherman.rl.evaluation import evaluate, sft_warm_start, tiny_model_config
    from sherman.rl.grpo import rl_train
    from sherman.tasks import get_task

    cfg = args.rl
    task = get_task(args.task)
    out = Path(args.out)
    cfg.out_dir = str(out)
    seed_everything(cfg.seed)
    if args.init or args.hf:
        from sherman.core.paths import load_model_and_tokenizer

        model, tok, _ = load_model_and_tokenizer(args.init or args.hf, hf=bool(args.hf))
        model.train()
        ex_rng = random.Random(0)
        ex = task.sample(ex_rng)
        try:
            tok.encode(ex.prompt + task.trace(ex, ex_rng))
        except ValueError as e:
            raise ShermanError(f"--{'init' if args.init else 'hf'}: its tokenizer cannot encode task {args.task!r} ({e})") from None
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
