"""One-query decode attention over a long KV cache: torch SDPA vs our dense path vs our block-sparse paths.

For each context length and head layout, one decode step (B = 1, one query per query head) is timed for
  * sdpa   : torch.nn.functional.scaled_dot_product_attention(..., enable_gqa=True)   (the peer)
  * dense  : sherman.attention.dense.decode_attention (grouped heads folded into the query dim)
  * quest  : the "quest"/"resa" backend step: Quest scores from block min/max, top-k, gather, attend
  * seer   : the "seer" backend step: gate query, scores against the cached compressed keys, top-k, gather, attend
  * *-cpp  : the same steps with the fused C++ kernel (online softmax over the selected blocks in place)
at kept fractions {1, 0.2, 0.1, 0.05}. Sparse timings include their scoring ("gate") cost; block summaries
and compressed keys are maintained incrementally by the backends and are not re-built per step.
A sparse step's time is the mean over one block's worth of consecutive decode steps: a step whose new token completes
a block also compresses that block (Quest's min/max summary, Seer's gate key), the other bs - 1 do not, so
ms/step = ((bs - 1) * mid-block step + block-completing step) / bs, both timed; `x dense@blk` is the
block-completing step alone (the worst case), and the targets are checked on both.
Effective GB/s = bytes the method must read (K and V of attended slots plus summaries) / time, printed beside
the machine's read bandwidth measured in the same run. Speedups are ratios measured in this one run.

With `--busy N`, N competing processes spin on the CPU for the whole run (a contention run: the sparse steps keep
their scoring on one thread and the fused kernel starts helper threads only for cores other jobs leave idle).

Run: python benchmarks/bench_decode_attention.py [--contexts 16384 32768 65536 131072] [--threads N] [--busy N]
"""

from __future__ import annotations

import argparse
import statistics
import time

import _bench  # (this checkout's sherman first on sys.path)
import torch
import torch.nn.functional as F

from sherman.attention import fused
from sherman.attention.dense import decode_attention
from sherman.attention.seer import SeerConfig, SeerGates, seer_attention
from sherman.attention.sparse import quest_attention
from sherman.core.attention import AttnContext
from sherman.core.kv_cache import KVCache


def read_bandwidth_gbs(n_bytes: int = 1 << 30, reps: int = 5) -> float:
    """Measured read bandwidth: sum over a large fp32 tensor (best of reps)."""
    x = torch.ones(n_bytes // 4)
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        x.sum()
        best = min(best, time.perf_counter() - t)
    return n_bytes / best / 1e9


def time_interleaved(fns: dict, reps: int, rounds: int = 5) -> dict:
    """Median ms per call of each function, timed in `rounds` interleaved rounds of about reps / rounds calls each
    (one untimed warm-up call per function per round): a drift in this VM's speed over a minute hits every method
    alike instead of whichever ran last."""
    per = max(1, -(-reps // rounds))
    ts: dict = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            fn()
            for _ in range(per):
                t0 = time.perf_counter()
                fn()
                ts[name].append(time.perf_counter() - t0)
    return {name: 1e3 * statistics.median(x) for name, x in ts.items()}


def bench_case(t: int, hkv: int, hq: int, d: int, bs: int, fracs: list[float], reps: int, use_cpp: bool) -> list[dict]:
    torch.manual_seed(0)
    cache = KVCache.allocate(1, 1, hkv, t, d)
    cache.k[0].normal_()
    cache.v[0].normal_()
    cache.reserve(t)
    k, v = cache.k[0], cache.v[0]
    q = torch.randn(1, hq, 1, d)
    kv_bytes = 2 * k.numel() * 4
    gates = SeerGates(SeerConfig(1, hq, hkv, d, block_size=bs))
    rows = []

    def row(method, frac, ms, read_bytes, ms_end=None):
        rows.append({"ctx": t, "heads": f"{hkv}/{hq}x{d}", "method": method, "kept": frac, "ms": ms, "gbs": read_bytes / (ms / 1e3) / 1e9,
                     "ms_end": ms if ms_end is None else ms_end})  # fmt: skip

    def step_ctx(name, end, opts):
        """The context of the decode step whose query sits at slot end - 1 (the keys of slots [0, end) are cached)."""
        return AttnContext(backend=name.split("-")[0], q_start=end - 1, key_valid=cache.valid, cache=cache, options=opts)

    fns = {"sdpa": lambda: F.scaled_dot_product_attention(q, k, v, enable_gqa=True), "dense": lambda: decode_attention(q, k, v, None)}
    meta = {}  # name -> (method, kept, bytes read)
    for frac in fracs:
        methods = [("quest", quest_attention, {}), ("seer", seer_attention, {"gates": gates})]
        if use_cpp:
            methods += [("quest-cpp", quest_attention, {"impl": "cpp"}), ("seer-cpp", seer_attention, {"gates": gates, "impl": "cpp"})]
        for name, fn, extra in methods:
            opts = {"budget": frac, "block_size": bs, **extra}
            nb = t // bs
            kept_blocks = max(1, round(frac * (nb - 1))) + 1
            summ = 2 * hkv * nb * d * 4 if name.startswith("quest") else hkv * nb * gates.cfg.gate_dim * 4
            meta[(name, frac)] = kv_bytes * kept_blocks / nb + summ
            for e, where in ((t, "end"), (t - bs // 2, "mid")):  # the block-completing step, a mid-block step
                c = step_ctx(name, e, opts)
                fns[(name, frac, where)] = lambda fn=fn, e=e, c=c: fn(q, k[:, :, :e], v[:, :, :e], c)
    with torch.no_grad():
        ms = time_interleaved(fns, reps)
    row("sdpa", 1.0, ms["sdpa"], kv_bytes)
    row("dense", 1.0, ms["dense"], kv_bytes)
    ms_sdpa, ms_dense = ms["sdpa"], ms["dense"]
    for (name, frac), read in meta.items():
        ms_end, ms_mid = ms[(name, frac, "end")], ms[(name, frac, "mid")]
        row(name, frac, ((bs - 1) * ms_mid + ms_end) / bs, read, ms_end)  # one decode step in bs completes a block
    for r in rows:
        r["x_dense_end"] = ms_dense / r["ms_end"]
        r["x_dense"] = ms_dense / r["ms"]
        r["x_sdpa"] = ms_sdpa / r["ms"]
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--contexts", type=int, nargs="+", default=[16384, 32768, 65536, 131072])
    ap.add_argument("--fracs", type=float, nargs="+", default=[1.0, 0.2, 0.1, 0.05])
    ap.add_argument("--block-size", type=int, default=64)
    ap.add_argument("--reps", type=int, default=10, help="timed calls per method, spread over 5 interleaved rounds")
    ap.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0 = torch default)")
    ap.add_argument("--no-cpp", action="store_true", help="skip the fused C++ kernel (compiles on first use)")
    ap.add_argument("--small-only", action="store_true", help="only the small-head case")
    ap.add_argument("--busy", type=int, default=0, help="competing processes spinning on the CPU during the run")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    use_cpp = not args.no_cpp and fused.available()
    print(_bench.machine_line(torch.get_num_threads()))
    with _bench.busy_processes(args.busy):
        run(args, use_cpp)


def run(args, use_cpp: bool) -> None:
    bw = read_bandwidth_gbs()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.busy} competing busy processes; "
          f"measured read bandwidth {bw:.1f} GB/s")
    layouts = [(2, 8, 64)] if args.small_only else [(8, 32, 128), (2, 8, 64)]
    print(f"{'ctx':>7} {'heads':>10} {'KV MiB':>7} {'method':>9} {'kept':>5} {'ms/step':>9} {'GB/s':>7} {'%bw':>5} {'x dense':>8} "
          f"{'x sdpa':>7} {'x dense@blk':>11}")  # fmt: skip
    target: dict[str, list[float]] = {}
    for hkv, hq, d in layouts:
        for t in args.contexts:
            kv_mib = 2 * t * hkv * d * 4 / 2**20  # K and V of one layer, B = 1
            for r in bench_case(t, hkv, hq, d, args.block_size, args.fracs, args.reps, use_cpp):
                print(f"{r['ctx']:>7} {r['heads']:>10} {kv_mib:>7.0f} {r['method']:>9} {r['kept']:>5.2f} {r['ms']:>9.3f} {r['gbs']:>7.1f} "
                      f"{100 * r['gbs'] / bw:>5.0f} {r['x_dense']:>8.2f} {r['x_sdpa']:>7.2f} {r['x_dense_end']:>11.2f}", flush=True)  # fmt: skip
                if kv_mib >= 64 and abs(r["kept"] - 0.1) < 1e-9:
                    target.setdefault(r["method"], []).append(r["x_dense"])
                    target.setdefault(r["method"] + "@blk", []).append(r["x_dense_end"])
    print("targets (issue 5): at 10% kept with KV >= 64 MiB/layer, sparse (gate included) >= 5x our dense; our dense >= 2x SDPA.")
    for method, xs in target.items():
        print(f"  {method:>9} at 10% kept, rows with KV >= 64 MiB/layer: min {min(xs):.2f}x dense over {len(xs)} rows")


if __name__ == "__main__":
    main()
