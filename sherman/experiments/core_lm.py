"""core_lm: exercise the whole core end to end (task -> tokenizer -> model -> train loop -> generate -> report).

A small decoder is trained from scratch by SFT on worked arithmetic traces (prompt masked from the loss,
`sherman.core.train`), and held-out exact-match accuracy is measured with greedy KV-cached decoding
(`sherman.core.generate`) during training. Not a paper result: it is the harness's own sanity check,
stated as a claim so it sits in the same table as the reproductions.
"""

from __future__ import annotations

import random
from pathlib import Path

from sherman.core.common import seed_everything
from sherman.core.generate import SamplingParams, generate
from sherman.core.model import ModelConfig, Transformer
from sherman.core.progress import progress
from sherman.core.tokenizer import CharTokenizer
from sherman.core.train import TrainConfig, build_sft_data, train
from sherman.experiments.runner import dump_results
from sherman.tasks import get_task

CLAIM = (
    "Sanity check of the Sherman core (no paper): a small decoder trained from scratch by next-token prediction on "
    "scratchpad traces learns held-out multi-digit addition (>= 90% exact match at the quick budget)."
)

BUDGETS = {
    #         model width/depth, steps, batch, eval problems, digits
    "smoke": dict(dim=32, n_layers=1, steps=30, batch=16, n_eval=16, max_digits=2, eval_every=15, lr=3e-3),
    "quick": dict(dim=128, n_layers=2, steps=1500, batch=32, n_eval=200, max_digits=3, eval_every=150, lr=2e-3),
    "full": dict(dim=192, n_layers=4, steps=6000, batch=64, n_eval=500, max_digits=4, eval_every=500, lr=1.5e-3),
}


def accuracy(model: Transformer, tok: CharTokenizer, task, examples) -> float:
    """Greedy exact-match reward over held-out examples, batched through the one generate loop."""
    prompts = [tok.encode(ex.prompt, bos=True) for ex in examples]
    hits = 0.0
    for i in range(0, len(prompts), 64):
        out = generate(model, prompts[i : i + 64], SamplingParams(max_new_tokens=64, temperature=0.0, stop_token_ids=(tok.eos_id,)), tokenizer=tok)
        hits += sum(task.reward(ex, text) for ex, text in zip(examples[i : i + 64], out.texts))
    return hits / max(1, len(examples))


def run(budget: str, out_dir: Path, seed: int = 0) -> dict:
    b = BUDGETS[budget]
    seed_everything(seed)
    task = get_task("arithmetic", ops="+", min_digits=1, max_digits=b["max_digits"])
    tok = CharTokenizer(task.alphabet())
    rng = random.Random(seed + 1)
    evals, seen = [], set()
    while len(evals) < b["n_eval"]:  # held-out problems, excluded from training below
        ex = task.sample(rng)
        if ex.prompt not in seen:
            seen.add(ex.prompt)
            evals.append(ex)
    data = [d for d in build_sft_data(task, tok, b["steps"] * b["batch"] // 2 + 64, seed) if tok.decode(d.ids[: d.mask.index(1)]) not in seen]
    model = Transformer(ModelConfig(vocab_size=tok.vocab_size, dim=b["dim"], n_layers=b["n_layers"], n_heads=4, n_kv_heads=2, ffn_dim=b["dim"] * 3))

    def eval_fn(m):
        acc = accuracy(m, tok, task, evals)
        return {"eval/accuracy": acc}

    cfg = TrainConfig(steps=b["steps"], batch_size=b["batch"], lr=b["lr"], warmup_steps=max(1, b["steps"] // 20), eval_every=b["eval_every"], seed=seed)
    prog = progress(b["steps"], "training steps")
    res = train(model, data, cfg, eval_fn=eval_fn, callback=lambda step, row: prog.advance(seed=seed))
    prog.close()
    steps = [r["step"] for r in res.history]
    losses = [r["loss/train"] for r in res.history]
    curve = [(r["step"], r["eval/accuracy"]) for r in res.history if "eval/accuracy" in r]
    acc0 = accuracy(Transformer(model.cfg), tok, task, evals[:32])  # an untrained model of the same shape
    final = curve[-1][1]

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 2, figsize=(10, 3.6))
    ax[0].plot(steps, losses)
    ax[0].set(xlabel="step", ylabel="train loss (token CE)", yscale="log", title="SFT loss")
    ax[1].plot(*zip(*curve), marker="o")
    ax[1].set(xlabel="step", ylabel="held-out exact match", ylim=(-0.02, 1.02), title=f"addition, 1-{b['max_digits']} digits")
    fig.tight_layout()
    fig.savefig(out_dir / "core_lm.png", dpi=110)
    plt.close(fig)

    verdict = "reproduced" if final >= 0.9 else "partly" if final >= 0.5 else "not reproduced"
    n_params = sum(p.numel() for p in model.parameters())
    res_d = {
        "name": "core_lm",
        "claim": CLAIM,
        "verdict": verdict,
        "rows": [
            {
                "claim": "held-out exact match of addition after SFT from scratch",
                "paper": "(sanity check) >= 90%",
                "ours": f"{final:.1%} after {b['steps']} steps (untrained: {acc0:.1%}); loss {losses[0]:.2f} -> {losses[-1]:.3f}",
                "verdict": verdict,
            }
        ],
        "plots": ["core_lm.png"],
        "notes": (
            f"{n_params / 1e3:.0f}K-parameter decoder ({b['n_layers']} layers, width {b['dim']}), char tokenizer, "
            f"{len(data)} training traces, {len(evals)} held-out problems, seed {seed}, greedy decoding, budget {budget}."
        ),
        "metrics": {"accuracy_curve": curve, "final_loss": losses[-1], "params": n_params},
    }
    return dump_results(res_d, out_dir)

