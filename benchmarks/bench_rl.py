"""Sherman's RL loop vs TRL's GRPOTrainer: rollout samples per second and wall time per optimizer step, one run, on CPU.

Both train the SAME tiny model (a Sherman Transformer exported to Hugging Face format with `core.hf.save_hf` and
loaded by TRL through `AutoModelForCausalLM`), on the same task (Countdown, reward = the task's verifier), with the
same group size, prompts per step, generation length, temperature and learning rate, exact on-policy (one optimizer
step per rollout batch: Sherman's `opo` preset; TRL with num_iterations = 1, steps_per_generation = 1, beta = 0), and
the same character tokenizer (wrapped as a `PreTrainedTokenizerFast` for TRL). The first `--warmup` steps of each
are not timed. The model is briefly SFT-warmed first (so completions end on <eos> at realistic lengths).

Two model sizes by default: width 64 x 2 layers (every op is tiny, so both sides are bound by per-op overhead) and
width 256 x 4 (~2.9M parameters; bound by matmul arithmetic). Where Sherman's step time goes down (all default on,
same numbers as without, up to fp32 rounding):
- rollouts: each group's shared prompt prefilled once, finished rows dropped from decoding, prepacked weights;
- the training forward runs each group's prompt ONCE and packs the group's completions into rows with almost no
  padding, in one pass (`rl/logprobs.py: shared_prompt_logprobs`); TRL runs prompt + completion per row, padded;
- fp32 matmuls through oneDNN forward and backward (`core/linear.py`; MKL, which TRL's model uses through plain
  torch, does not use AVX-512 on this AMD CPU), row counts bucketed so that oneDNN's JIT-compiled kernels are reused;
- a closed-form RMSNorm backward, fused AdamW.
TRL runs with its defaults for these settings. The measurement alternates the two in `--rounds` blocks (this VM's
speed drifts over minutes); every block starts with the same untimed warm-up steps.

Needs the `bench` extra (trl; installs accelerate and datasets): `pip install -e .[bench]`.
Run:  python benchmarks/bench_rl.py [--sizes 64x2 256x4] [--rounds 3] [--steps 10] [--warmup 3] [--prompts 8] [--group 8] [--max-new 32] [--threads 1]
"""

from __future__ import annotations

import argparse
import random
import statistics
import tempfile
import time
from pathlib import Path

import _bench  # (this checkout's sherman first on sys.path)
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


def run_size(args, dim: int, layers: int) -> dict:
    """One Sherman-vs-TRL measurement on a model of the given width and depth."""
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from sherman.core.hf import save_hf
    from sherman.core.model import Transformer
    from sherman.core.tokenizer import CharTokenizer
    from sherman.rl.grpo import preset_config, rl_train, sft_warm_start, tiny_model_config
    from sherman.tasks import get_task

    task = get_task("countdown", min_numbers=3, max_numbers=3, max_number=9, scratchpad=True)
    tok = CharTokenizer(task.alphabet())
    torch.manual_seed(0)
    base = Transformer(tiny_model_config(tok.vocab_size, dim, layers, n_heads=4, n_kv_heads=2, max_seq_len=128))
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

    def run_ours(r: int) -> tuple[list[float], list[float]]:
        """One block of warm-up + timed steps (seed r) -> (per-step seconds, mean completion length per step)."""
        stamps: list[float] = []
        lens: list[float] = []
        cfg = preset_config("opo", steps=n_total, prompts_per_step=args.prompts, group_size=args.group, max_new_tokens=args.max_new,
                            lr=lr, track_kl_to_init=False, seed=r)  # fmt: skip
        t0 = time.time()
        rl_train(model, task, tok, cfg, callback=lambda s, row: (stamps.append(time.time()), lens.append(row["rollout/len_mean"])))
        return [b - a for a, b in zip([t0] + stamps[:-1], stamps)], lens

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

    def run_trl(r: int) -> tuple[list[float], list[float]]:
        """One GRPOTrainer run of warm-up + timed steps (seed r) on the same HF model -> (per-step s, lengths)."""
        trl_stamps.clear()
        trl_lens.clear()
        gcfg = GRPOConfig(
            output_dir=str(tmp / "trl"), per_device_train_batch_size=b, gradient_accumulation_steps=1, num_generations=args.group,
            steps_per_generation=1, num_iterations=1, max_completion_length=args.max_new, temperature=1.0, top_p=1.0, top_k=0,
            learning_rate=lr, beta=0.0, max_steps=n_total, logging_steps=1, save_strategy="no", report_to="none", use_cpu=True,
            bf16=False, seed=r, lr_scheduler_type="constant", warmup_steps=0, disable_dropout=True, dataloader_num_workers=0,
        )  # fmt: skip
        trainer = GRPOTrainer(model=hf_model, reward_funcs=reward, args=gcfg, train_dataset=ds, processing_class=hf_tok, callbacks=[Clock()])
        t1 = time.time()
        trainer.train()
        return [b - a for a, b in zip([t1] + trl_stamps[:-1], trl_stamps)], list(trl_lens)

    # Rounds alternate the two (Sherman block, TRL block, Sherman block, ...): this VM's speed drifts over minutes,
    # and alternating puts both through the same phases. Each block's first `warmup` steps are not timed.
    ours_t, trl_t, ours_l, trl_l = [], [], [], []
    for r in range(args.rounds):
        steps_o, lens_o = run_ours(r)
        steps_t, lens_t = run_trl(r)
        print(f"  round {r} per-step s, warm-up then timed: Sherman {' '.join(f'{x:.3f}' for x in steps_o)}")
        print(f"  {'':>38}TRL     {' '.join(f'{x:.3f}' for x in steps_t)}")
        ours_t += steps_o[args.warmup :]
        trl_t += steps_t[args.warmup :]
        ours_l += lens_o[args.warmup :]
        trl_l += lens_t[args.warmup :]
    ours_step, trl_step = statistics.fmean(ours_t), statistics.fmean(trl_t)
    ours_len = statistics.fmean(ours_l)
    trl_len = statistics.fmean(trl_l) if trl_l else float("nan")
    return {"dim": dim, "layers": layers, "params": sum(p.numel() for p in base.parameters()), "ours_step": ours_step,
            "trl_step": trl_step, "ours_len": ours_len, "trl_len": trl_len, "b": b}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=10, help="timed optimizer steps per framework and round")
    ap.add_argument("--warmup", type=int, default=3, help="untimed steps at the start of every block (both frameworks)")
    ap.add_argument("--rounds", type=int, default=3, help="alternating Sherman/TRL blocks (the machine's speed drifts over time)")
    ap.add_argument("--prompts", type=int, default=8, help="prompts per step")
    ap.add_argument("--group", type=int, default=8, help="completions per prompt (G)")
    ap.add_argument("--max-new", type=int, default=32, help="max completion tokens")
    ap.add_argument("--sizes", nargs="+", default=["64x2", "256x4"],
                    help="model sizes WIDTHxLAYERS (64x2 is bound by per-op overhead, 256x4 by matmul arithmetic)")
    ap.add_argument("--sft-steps", type=int, default=150, help="SFT warm-up of the shared model")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads for both (1 is fastest for tiny models)")
    args = ap.parse_args()

    try:
        import trl
    except ImportError as e:
        raise SystemExit(f"bench_rl needs TRL (pip install -e .[bench]): {e}") from None
    torch.set_num_threads(args.threads)
    print(_bench.machine_line(args.threads))
    results = []
    for size in args.sizes:
        dim, layers = (int(v) for v in size.lower().split("x"))
        print(f"== model width {dim} x {layers} layers")
        results.append(run_size(args, dim, layers))
    b = args.prompts * args.group
    print()
    print(f"setting: countdown, {args.prompts} prompts x G={args.group} = {b} rollouts/step, max {args.max_new} new tokens, "
          f"{args.threads} threads, {args.rounds} alternating rounds of {args.warmup} warm-up + {args.steps} timed steps; TRL {trl.__version__}")  # fmt: skip
    print(f"{'model':>22}{'s/step Sherman':>16}{'s/step TRL':>12}{'samples/s Sherman':>19}{'samples/s TRL':>15}{'ratio':>8}{'mean len S/T':>14}")
    for r in results:
        name = f"{r['dim']}x{r['layers']} ({r['params'] / 1e6:.2f}M)"
        print(f"{name:>22}{r['ours_step']:16.3f}{r['trl_step']:12.3f}{r['b'] / r['ours_step']:19.1f}{r['b'] / r['trl_step']:15.1f}"
              f"{r['trl_step'] / r['ours_step']:7.2f}x{r['ours_len']:8.1f}/{r['trl_len']:.1f}")  # fmt: skip


if __name__ == "__main__":
    main()
