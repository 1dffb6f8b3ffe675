"""Decode throughput and peak memory: Sherman `generate` vs Hugging Face `transformers` `generate`, same weights, CPU.

A ~10M-parameter Qwen3-style Sherman model (dim 256, 6 layers, 8 heads / 4 KV heads, QK-norm, vocab 8192) is
exported with `save_hf` and loaded by `transformers.AutoModelForCausalLM` (fp32, sdpa attention), so both
sides run the same weights (checked: max |logit difference| on a ragged batch is printed). Each side then
samples batch 16 ragged prompts (24..40 tokens, left padded) x 256 new tokens at temperature 1.0 / top-p 0.95
(transformers: do_sample, top_k=0, min_new_tokens=256 so no row stops early; Sherman: no stop ids).

Each side runs in its own fresh child process (spawn) so that neither inherits the other's allocator state:
the child loads the model, does one short warm-up generate, resets the kernel's peak-RSS counter
(`/proc/self/clear_refs` <- 5), runs the timed generate, and reports
    tok/s      = batch * new_tokens / wall seconds of the timed generate call (prefill included); the process CPU
                 seconds of the same call are printed too (less sensitive to other jobs on a shared machine)
    peak mem   = VmHWM - VmRSS just before the call: the peak resident-set growth during generation (MiB),
                 i.e. KV cache, activations and framework overhead, not the weights.

What makes Sherman faster here (see `sherman/core/linear.py`, `core/generate.py`): fp32 matmuls go through oneDNN with
weights prepacked once per `generate` call (q/k/v and gate/up fused into one GEMM each) instead of MKL, which does not
use its AVX-512 kernels on this AMD CPU; the top-p sampler sorts with NumPy and finds the nucleus threshold and the
inverse-CDF draw with a two-level block search instead of full-vocabulary cumsums (torch's CPU sort of a 16 x 8192
batch takes ~7 ms here, which `transformers`' top-p warper pays every step); the KV cache is preallocated, and decode
attention is one `baddbmm`/`bmm` pair with grouped heads folded into the query. The prepacked copy of the weights is
part of Sherman's peak memory growth (about one extra copy of the linear weights for the duration of the call).

Run:  python benchmarks/bench_generate.py [--batch 16] [--new-tokens 256] [--threads 1] [--repeats 1] [--temperature 1] [--top-p 0.95]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import tempfile
import time
from pathlib import Path

import _bench  # (this checkout's sherman first on sys.path, in the spawned children too)
import torch

CFG = dict(vocab_size=8192, dim=256, n_layers=6, n_heads=8, n_kv_heads=4, ffn_dim=1024, qk_norm=True, tie_embeddings=False,
           max_seq_len=512, rope_theta=1e6)
TEMPERATURE, TOP_P = 1.0, 0.95  # defaults; --temperature / --top-p override them (in the children too)


def prompts(batch: int, vocab: int, seed: int = 0) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(24, 41, (batch,), generator=g).tolist()
    return [torch.randint(1, vocab, (n,), generator=g).tolist() for n in lengths]


def _status(field: str) -> int:
    """A /proc/self/status field in KiB (VmRSS, VmHWM)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def _reset_peak() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _run_sherman(ckpt: str, ps: list[list[int]], new: int, seed: int):
    from sherman.core.checkpoint import load_model
    from sherman.core.generate import SamplingParams, generate

    model = load_model(ckpt).eval()
    sp = SamplingParams(max_new_tokens=new, temperature=TEMPERATURE, top_p=TOP_P)
    generate(model, ps, SamplingParams(max_new_tokens=8, temperature=TEMPERATURE, top_p=TOP_P), generator=torch.Generator().manual_seed(1))

    def call():
        return generate(model, ps, sp, generator=torch.Generator().manual_seed(seed)).tokens

    return call


def _run_hf(hf_dir: str, ps: list[list[int]], new: int, seed: int):
    import transformers

    from sherman.core.generate import left_pad

    transformers.logging.set_verbosity_error()
    model = transformers.AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32, attn_implementation="sdpa").eval()
    ids, valid = left_pad(ps, pad_id=0)
    mask = valid.long()
    kw = dict(do_sample=True, temperature=TEMPERATURE, top_p=TOP_P, top_k=0, use_cache=True, pad_token_id=0, eos_token_id=None)
    with torch.no_grad():
        model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=8, min_new_tokens=8, **kw)

    def call():
        torch.manual_seed(seed)
        with torch.no_grad():
            out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=new, min_new_tokens=new, **kw)
        return out[:, ids.shape[1]:].tolist()

    return call


def _child(side: str, path: str, ps: list[list[int]], new: int, threads: int, repeats: int, sampling: tuple[float, float], q) -> None:
    global TEMPERATURE, TOP_P
    TEMPERATURE, TOP_P = sampling
    torch.set_num_threads(threads)
    call = (_run_sherman if side == "sherman" else _run_hf)(path, ps, new, seed=0)
    best, best_cpu, peak_kib, n_tok = float("inf"), float("inf"), 0, 0
    for _ in range(repeats):
        ok = _reset_peak()
        before = _status("VmRSS")
        c0, t0 = time.process_time(), time.perf_counter()
        toks = call()
        dt, dc = time.perf_counter() - t0, time.process_time() - c0
        peak_kib = max(peak_kib, _status("VmHWM") - before if ok else -1)
        best, best_cpu = min(best, dt), min(best_cpu, dc)
        n_tok = sum(len(t) for t in toks)
    q.put({"side": side, "seconds": best, "cpu_seconds": best_cpu, "tokens": n_tok, "peak_mib": peak_kib / 1024})


def measure(side: str, path: str, ps, new: int, threads: int, repeats: int) -> dict:
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=_child, args=(side, path, ps, new, threads, repeats, (TEMPERATURE, TOP_P), q))
    p.start()
    res = q.get()
    p.join()
    return res


def main() -> None:
    global TEMPERATURE, TOP_P
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--new-tokens", type=int, default=256)
    ap.add_argument("--threads", type=int, default=1,
                    help="torch intra-op threads in each child (1: on a busy shared machine 2 OpenMP threads make timings noise)")
    ap.add_argument("--repeats", type=int, default=1, help="timed runs per side; the fastest is reported")
    ap.add_argument("--temperature", type=float, default=TEMPERATURE)
    ap.add_argument("--top-p", type=float, default=TOP_P)
    args = ap.parse_args()
    TEMPERATURE, TOP_P = args.temperature, args.top_p
    assert TEMPERATURE > 0, "sampling benchmark: temperature must be > 0"
    load0 = os.getloadavg()[0]

    import transformers

    from sherman.core.checkpoint import save_checkpoint
    from sherman.core.generate import left_pad
    from sherman.core.hf import save_hf
    from sherman.core.model import ModelConfig, Transformer, padded_positions

    torch.manual_seed(0)
    model = Transformer(ModelConfig(**CFG)).eval()
    n_params = sum(p.numel() for p in model.parameters())
    ps = prompts(args.batch, CFG["vocab_size"])
    with tempfile.TemporaryDirectory() as tmp:
        ckpt, hf_dir = Path(tmp) / "sherman", Path(tmp) / "hf"
        save_checkpoint(ckpt, model)
        save_hf(model, hf_dir, arch="qwen3")
        # same weights: logits of a ragged batch agree
        hf = transformers.AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32, attn_implementation="sdpa").eval()
        ids, valid = left_pad(ps, pad_id=0)
        pos = padded_positions(valid)
        with torch.no_grad():
            diff = (model(ids, positions=pos, key_valid=valid).logits - hf(input_ids=ids, attention_mask=valid.long(), position_ids=pos).logits)
        diff = float(diff.abs()[valid].max())
        del hf
        print(_bench.machine_line(args.threads))
        print(f"model: {n_params / 1e6:.2f}M params, {CFG}; same weights: max |logit diff| = {diff:.2e}")
        print(f"workload: batch {args.batch}, prompts {min(map(len, ps))}..{max(map(len, ps))} tokens, {args.new_tokens} new tokens, "
              f"T={TEMPERATURE} top-p={TOP_P}, {args.threads} threads, transformers {transformers.__version__}, torch {torch.__version__}")
        ours = measure("sherman", str(ckpt), ps, args.new_tokens, args.threads, args.repeats)
        peer = measure("hf", str(hf_dir), ps, args.new_tokens, args.threads, args.repeats)
    for r in (ours, peer):
        assert r["tokens"] == args.batch * args.new_tokens, f"{r['side']} generated {r['tokens']} tokens"
        r["tok_s"] = r["tokens"] / r["seconds"]
    print(f"{'':<14}{'tok/s':>10}{'wall s':>10}{'CPU s':>10}{'peak mem growth (MiB)':>24}")
    for name, r in (("sherman", ours), ("transformers", peer)):
        print(f"{name:<14}{r['tok_s']:>10.0f}{r['seconds']:>10.2f}{r['cpu_seconds']:>10.2f}{r['peak_mib']:>24.1f}")
    print(f"speed ratio sherman / transformers = {ours['tok_s'] / peer['tok_s']:.2f}x wall, "
          f"{peer['cpu_seconds'] / ours['cpu_seconds']:.2f}x CPU time (target >= 3x); "
          f"peak memory growth transformers / sherman = {peer['peak_mib'] / max(ours['peak_mib'], 1e-9):.2f}x; "
          f"load average at start {load0:.1f} on {os.cpu_count()} cores")


if __name__ == "__main__":
    main()
