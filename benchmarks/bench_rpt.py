"""RPT rollout-and-update throughput (positions/s): Sherman's `rl_train` on `RPTTask` vs TRL's GRPOTrainer, one run, CPU.

Both train the SAME tiny model (a Sherman Transformer exported with `core.hf.save_hf`, loaded by TRL through
`AutoModelForCausalLM`) on the SAME RPT positions (generated corpus, byte-level BPE, proxy top-16 entropy above the
median), with the same reward function (`RPTTask.reward`: prefix-matching reward over bytes, Eq. 3), the same
tokenizer (our tokenizer.json as a `PreTrainedTokenizerFast`, <bos> prepended), G, prompts per step, generation
budget, temperature 0.8 and learning rate, exact on-policy (Sherman: `rpt.PRESET`; TRL: num_iterations = 1,
steps_per_generation = 1, beta = 0). The model is pre-trained briefly on the corpus and taught the `\\boxed{}` format
first, so completions are realistic (a few tokens).

An RPT prompt is a long document prefix and its completion a few tokens, so almost all the work is on the prompt. The
lever Sherman uses: each group's G identical prompts are prefilled ONCE in the rollout (`core/generate.py`) and run
ONCE in the log-prob pass, the group's completions packed into rows that attend the prompt's keys
(`rl/logprobs.py: shared_prompt_logprobs`); TRL runs G padded prompt + completion rows in both. Reusing one document's
KV cache ACROSS its positions (prefix of position t inside the prefix of t' > t) is not implemented: the positions of a
step are drawn at random over the corpus and rarely share a document.

Positions/s = prompts per step / seconds per step (rollout + update); the measurement alternates the two in `--rounds`
blocks (this VM's speed drifts over minutes), each block's first `--warmup` steps untimed.

Needs the `bench` extra (trl): `pip install -e .[bench]`.
Run:  python benchmarks/bench_rpt.py [--rounds 2] [--steps 6] [--warmup 2] [--prompts 8] [--group 8] [--dim 64] [--layers 2] [--threads 1]
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


def hf_bpe_tokenizer(tok, path: Path):
    """Our BPE tokenizer as a PreTrainedTokenizerFast with identical ids and <bos> prepended (as our prompts have it)."""
    from tokenizers import processors
    from transformers import PreTrainedTokenizerFast

    tok.save(path / "tokenizer.json")
    hf = PreTrainedTokenizerFast(tokenizer_file=str(path / "tokenizer.json"), bos_token="<bos>", eos_token="<eos>", pad_token="<pad>")
    hf.backend_tokenizer.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", tok.bos_id)])
    hf.padding_side = "left"
    hf.save_pretrained(path)
    return hf


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=6, help="timed optimizer steps per framework and round")
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps at the start of every block")
    ap.add_argument("--rounds", type=int, default=2, help="alternating Sherman/TRL blocks")
    ap.add_argument("--prompts", type=int, default=8, help="positions (prompts) per step")
    ap.add_argument("--group", type=int, default=8, help="completions per position (G)")
    ap.add_argument("--dim", type=int, default=64, help="model width")
    ap.add_argument("--layers", type=int, default=2, help="model depth")
    ap.add_argument("--docs", type=int, default=300, help="generated corpus documents")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads for both")
    args = ap.parse_args()
    try:
        import trl
        from datasets import Dataset
        from transformers import AutoModelForCausalLM, TrainerCallback
        from trl import GRPOConfig, GRPOTrainer
    except ImportError as e:
        raise SystemExit(f"bench_rpt needs TRL (pip install -e .[bench]): {e}") from None
    from sherman.core.hf import save_hf
    from sherman.core.model import Transformer
    from sherman.rl import rpt
    from sherman.rl.evaluation import tiny_model_config
    from sherman.rl.grpo import preset_config, rl_train

    torch.set_num_threads(args.threads)
    print(_bench.machine_line(torch.get_num_threads()))
    cfg = rpt.RPTConfig(think_tokens=0, max_pred_tokens=3, min_context=8, quantile=0.5, context_tokens=96)
    texts = rpt.generate_corpus(args.docs, seed=7)
    tok = rpt.corpus_tokenizer(texts, 400, cfg)
    docs = rpt.tokenize_corpus(texts, tok, 128)
    torch.manual_seed(0)
    base = Transformer(tiny_model_config(tok.vocab_size, args.dim, args.layers, n_heads=4, n_kv_heads=2, max_seq_len=160))
    print("pre-training and format warm start ...")
    rpt.ntp_train(base, rpt.lm_data(docs, tok.bos_id), 60, 16, 1e-2, 0, tok.pad_id)
    pos = rpt.select_positions(rpt.proxy_entropies(base, docs, tok.bos_id, 16), cfg)
    task = rpt.RPTTask(tok, docs, pos, cfg)
    rpt.ntp_train(base, rpt.format_sft_data(task, range(0, len(pos), max(1, len(pos) // 512))), 40, 16, 1e-2, 0, tok.pad_id, warmup=0)
    tmp = Path(tempfile.mkdtemp(prefix="bench_rpt_"))
    save_hf(base, tmp / "hf")
    hf_tok = hf_bpe_tokenizer(tok, tmp / "hf")
    n_total = args.warmup + args.steps
    b = args.prompts * args.group
    lr = 1e-4
    ctx_len = statistics.fmean(len(task.example(i).meta["prompt_ids"]) for i in range(0, len(pos), max(1, len(pos) // 200)))

    model = Transformer(base.cfg)
    model.load_state_dict(base.state_dict())

    def run_ours(r: int) -> list[float]:
        stamps: list[float] = []
        rc = preset_config("opo", **{**rpt.PRESET, "steps": n_total, "prompts_per_step": args.prompts, "group_size": args.group,
                                     "max_new_tokens": cfg.max_new_tokens, "lr": lr, "track_kl_to_init": False, "seed": r})  # fmt: skip
        t0 = time.time()
        rl_train(model, task, tok, rc, callback=lambda s, row: stamps.append(time.time()))
        return [y - x for x, y in zip([t0] + stamps[:-1], stamps)]

    rng = random.Random(0)
    examples = [task.sample(rng) for _ in range(args.prompts * n_total * 2)]
    by_prompt = {ex.prompt: ex for ex in examples}
    ds = Dataset.from_list([{"prompt": ex.prompt} for ex in examples])

    def reward(prompts, completions, **kw):
        return [float(task.reward(by_prompt[p], c)) for p, c in zip(prompts, completions)]

    trl_stamps: list[float] = []

    class Clock(TrainerCallback):
        def on_step_end(self, a, state, control, **kw):
            trl_stamps.append(time.time())

    hf_model = AutoModelForCausalLM.from_pretrained(tmp / "hf", dtype=torch.float32)

    def run_trl(r: int) -> list[float]:
        trl_stamps.clear()
        gcfg = GRPOConfig(
            output_dir=str(tmp / "trl"), per_device_train_batch_size=b, gradient_accumulation_steps=1, num_generations=args.group,
            steps_per_generation=1, num_iterations=1, max_completion_length=cfg.max_new_tokens, temperature=0.8, top_p=1.0, top_k=0,
            learning_rate=lr, beta=0.0, max_steps=n_total, logging_steps=1, save_strategy="no", report_to="none", use_cpu=True,
            bf16=False, seed=r, lr_scheduler_type="constant", warmup_steps=0, disable_dropout=True, dataloader_num_workers=0,
        )  # fmt: skip
        trainer = GRPOTrainer(model=hf_model, reward_funcs=reward, args=gcfg, train_dataset=ds, processing_class=hf_tok, callbacks=[Clock()])
        t1 = time.time()
        trainer.train()
        return [y - x for x, y in zip([t1] + trl_stamps[:-1], trl_stamps)]

    ours_t, trl_t = [], []
    for r in range(args.rounds):
        so, st = run_ours(r), run_trl(r)
        print(f"  round {r} per-step s (warm-up then timed): Sherman {' '.join(f'{x:.3f}' for x in so)}")
        print(f"  {'':>38}TRL     {' '.join(f'{x:.3f}' for x in st)}")
        ours_t += so[args.warmup :]
        trl_t += st[args.warmup :]
    o, t = statistics.fmean(ours_t), statistics.fmean(trl_t)
    print()
    print(f"setting: RPT, {args.prompts} positions x G={args.group} per step, mean prompt {ctx_len:.0f} tokens, max {cfg.max_new_tokens} new "
          f"tokens, model {args.dim}x{args.layers} ({sum(p.numel() for p in base.parameters()) / 1e6:.2f}M params), {args.threads} thread(s), "
          f"{args.rounds} alternating rounds of {args.warmup} warm-up + {args.steps} timed steps; TRL {trl.__version__}")  # fmt: skip
    print(f"{'':>10}{'s/step':>10}{'positions/s':>14}{'rollouts/s':>12}")
    print(f"{'Sherman':>10}{o:10.3f}{args.prompts / o:14.2f}{b / o:12.1f}")
    print(f"{'TRL':>10}{t:10.3f}{args.prompts / t:14.2f}{b / t:12.1f}")
    print(f"ratio (Sherman / TRL positions/s): {t / o:.2f}x")


if __name__ == "__main__":
    main()
