"""Sherman's RL loop vs TRL's GRPOTrainer: rollout samples per second and wall time per optimizer step, one run, on CPU.

Both train the SAME tiny model (a Sherman Transformer exported to Hugging Face format with `core.hf.save_hf` and
loaded by TRL through `AutoModelForCausalLM`), on the same task (Countdown, reward = the task's verifier), with the
same group size, prompts per step, generation length, temperature and learning rate, exact on-policy (one optimizer
step per rollout batch: Sherman's `opo` preset; TRL with num_iterations = 1, steps_per_generation = 1, beta = 0), and
the same character tokenizer (wrapped as a `PreTrainedTokenizerFast` for TRL). The first `--warmup` steps of each
are not timed. The model is briefly SFT-warmed first (so completions end on <eos> at realistic lengths).

Needs the `bench` extra (trl; installs accelerate and datasets): `pip install -e .[bench]`.
Run:  python benchmarks/bench_rl.py [--steps 6] [--warmup 1] [--prompts 8] [--group 8] [--max-new 32] [--threads 1]
"""

from __future__ import annotations

import argparse
import random
import statistics
import tempfile
import time
from pathlib import Path

import torch


def hf_char_tokenizer(tok, path: Path):
    """Our CharTokenizer as a PreTrainedTokenizerFast with identical ids (BOS prepended, chars fused on decode)."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {s: i for i, s in enumerate(tok.vocab)}
    tk = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<pad>"))
    tk.add_special_tokens(list(tok.specials))
    tk.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    tk.decoder = decoders.Fuse()
    tk.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", tok.bos_id)])
    hf = PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>")
    hf.padding_side = "left"
    hf.save_pretrained(path)
    return hf


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=6, help="timed optimizer steps per framework")
    ap.add_argument("--warmup", type=int, default=1, help="untimed steps before timing")
    ap.add_argument("--prompts", type=int, default=8, help="prompts per step")
    ap.add_argument("--group", type=int, default=8, help="completions per prompt (G)")
    ap.add_argument("--max-new", type=int, default=32, help="max completion tokens")
    ap.add_argument("--dim", type=int, default=64, help="model width")
    ap.add_argument("--layers", type=int, default=2, help="model depth")
    ap.add_argument("--sft-steps", type=int, default=150, help="SFT warm-up of the shared model")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads for both (1 is fastest for tiny models)")
    args = ap.parse_args()

    try:
        import trl
        from datasets import Dataset
        from transformers import AutoModelForCausalLM
        from trl import GRPOConfig, GRPOTrainer
    except ImportError as e:
        raise SystemExit(f"bench_rl needs TRL (pip install -e .[bench]): {e}") from None
    from transformers import TrainerCallback

    from sherman.core.hf import save_hf
    from sherman.core.model import Transformer
    from sherman.core.tokenizer import CharTokenizer
    from sherman.rl.grpo import preset_config, rl_train, sft_warm_start, tiny_model_config
    from sherman.tasks import get_task

    torch.set_num_threads(args.threads)
    task = get_task("countdown", min_numbers=3, max_numbers=3, max_number=9, scratchpad=True)
    tok = CharTokenizer(task.alphabet())
    torch.manual_seed(0)
    base = Transformer(tiny_model_config(tok.vocab_size, args.dim, args.layers, n_heads=4, n_kv_heads=2, max_seq_len=128))
    print(f"SFT warm start ({args.sft_steps} steps) ...")
    sft_warm_start(base, task, tok, args.sft_steps, 2000, batch_size=32, lr=3e-3)
    tmp = Path(tempfile.mkdtemp(prefix="bench_rl_"))
    save_hf(base, tmp / "hf")
    hf_tok = hf_char_tokenizer(tok, tmp / "hf")
    n_total = args.warmup + args.steps
    b = args.prompts * args.group
    lr = 1e-4

    # ---------------- Sherman
    model = Transformer(base.cfg)
    model.load_state_dict(base.state_dict())
    stamps: list[float] = []
    lens: list[float] = []
    cfg = preset_config("opo", steps=n_total, prompts_per_step=args.prompts, group_size=args.group, max_new_tokens=args.max_new, lr=lr,
                        track_kl_to_init=False, seed=0)  # fmt: skip
    t0 = time.time()
    rl_train(model, task, tok, cfg, callback=lambda s, row: (stamps.append(time.time()), lens.append(row["rollout/len_mean"])))
    ours_step = (stamps[-1] - stamps[args.warmup - 1]) / args.steps if args.warmup else (stamps[-1] - t0) / args.steps
    ours_len = statistics.fmean(lens[args.warmup :])

    # ---------------- TRL
    rng = random.Random(0)
    examples = [task.sample(rng) for _ in range(args.prompts * n_total * 2)]
    by_prompt = {ex.prompt: ex for ex in examples}
    ds = Dataset.from_list([{"prompt": ex.prompt} for ex in examples])

    def reward(prompts, completions, **kw):
        return [float(task.reward(by_prompt[p], c)) for p, c in zip(prompts, completions)]

    trl_stamps: list[float] = []
    trl_lens: list[float] = []

    class Clock(TrainerCallback):
        def on_step_end(self, a, state, control, **kw):
            trl_stamps.append(time.time())

        def on_log(self, a, state, control, logs=None, **kw):
            if logs and "completions/mean_length" in logs:
                trl_lens.append(float(logs["completions/mean_length"]))

    hf_model = AutoModelForCausalLM.from_pretrained(tmp / "hf", dtype=torch.float32)
    gcfg = GRPOConfig(
        output_dir=str(tmp / "trl"), per_device_train_batch_size=b, gradient_accumulation_steps=1, num_generations=args.group,
        steps_per_generation=1, num_iterations=1, max_completion_length=args.max_new, temperature=1.0, top_p=1.0, top_k=0,
        learning_rate=lr, beta=0.0, max_steps=n_total, logging_steps=1, save_strategy="no", report_to="none", use_cpu=True,
        bf16=False, seed=0, lr_scheduler_type="constant", warmup_steps=0, disable_dropout=True, dataloader_num_workers=0,
    )  # fmt: skip
    trainer = GRPOTrainer(model=hf_model, reward_funcs=reward, args=gcfg, train_dataset=ds, processing_class=hf_tok, callbacks=[Clock()])
    t1 = time.time()
    trainer.train()
    trl_step = (trl_stamps[-1] - trl_stamps[args.warmup - 1]) / args.steps if args.warmup else (trl_stamps[-1] - t1) / args.steps
    trl_len = statistics.fmean(trl_lens[args.warmup :]) if len(trl_lens) > args.warmup else float("nan")

    print()
    print(f"setting: countdown, {args.prompts} prompts x G={args.group} = {b} rollouts/step, max {args.max_new} new tokens, "
          f"model dim {args.dim} x {args.layers} layers, {args.threads} threads, {args.steps} timed steps; TRL {trl.__version__}")  # fmt: skip
    print(f"{'':28}{'Sherman':>12}{'TRL':>12}{'ratio':>10}")
    print(f"{'s / optimizer step':28}{ours_step:12.3f}{trl_step:12.3f}{trl_step / ours_step:9.2f}x")
    print(f"{'rollout samples / s':28}{b / ours_step:12.1f}{b / trl_step:12.1f}{trl_step / ours_step:9.2f}x")
    print(f"{'mean completion length':28}{ours_len:12.1f}{trl_len:12.1f}")


if __name__ == "__main__":
    main()
