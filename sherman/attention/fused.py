"""A fused CPU kernel for block-sparse decode: reads the selected blocks in place with an online softmax.

The pure-PyTorch path (`sparse.sparse_decode`) gathers the selected keys and values into buffers and then runs
matmul -> softmax -> matmul, so each kept byte is read, written and read again. This small C++ extension
(compiled on first use with `torch.utils.cpp_extension.load_inline`, cached under ~/.cache/torch_extensions)
walks, for every (row, KV head) in parallel, the selected blocks and then the local block, and for every query
head of the group keeps a running max m, normaliser l and accumulator acc (the online softmax of
Milakov & Gimelshein 2018, as in FlashAttention):
    m' = max(m, max_j s_j);  l = l * exp(m - m') + sum_j exp(s_j - m');  acc = acc * exp(m - m') + sum_j exp(s_j - m') v_j
so K and V are read exactly once and nothing is materialised. Float32, CPU, no autograd.

Each key and value row is read once for all G query heads of its group. The selected blocks of every (row, KV head)
are split into ~8 chunks, each reduced to a partial (m, l, acc) and merged at the end with the same rescaling, so the
work divides into many small items taken dynamically by the calling thread and helper `std::thread`s started for
the call (`kernel_threads`: one per MiB of K/V to read, at most torch's thread count and the cores other processes
leave idle). There is no OpenMP region: nothing spin-waits, and when another process preempts a helper only the item
it holds waits (issue 20: the OpenMP version fell to 0.37x dense beside a busy process).

Used by the sparse backends when `options["impl"] == "cpp"` (default "torch"); `available()` says whether the
extension builds here. Parity with the pure path is tested in tests/attention/test_fused.py.
"""

from __future__ import annotations

import math
import os
import time

import torch

_SRC = r"""
#include <torch/extension.h>
#include <algorithm>
#include <atomic>
#include <cmath>
#include <limits>
#include <thread>
#include <vector>

// One work item: the selected blocks [c0, c1) of row-head bh (c1 == K + 1 means: up to and including the local block),
// reduced to a partial online-softmax state (m, l, acc) per query head of the group.
struct Partial { std::vector<float> m, l, acc; };

// q (B, H, G, D) pre-scaled; k, v (B, H, T, D); idx (B, H, K) int64 block ids; valid (B, T) bool.
// Attends every query row to the K selected blocks of size bs and to the local slots [lo, end).
// The work is split into items of `chunk` blocks (the local block is one more), taken from a shared counter by the
// calling thread and n_threads - 1 helper std::threads created for this call and joined at its end: no OpenMP
// region, so no thread spin-waits at a barrier, and a helper that another process preempts holds up only the one
// item it is working on (the others are taken by whoever is free).
torch::Tensor block_sparse_decode(torch::Tensor q, torch::Tensor k, torch::Tensor v, torch::Tensor idx,
                                  torch::Tensor valid, int64_t bs, int64_t lo, int64_t end, int64_t chunk,
                                  int64_t n_threads) {
  const int64_t B = q.size(0), H = q.size(1), G = q.size(2), D = q.size(3);
  const int64_t T = k.size(2), K = idx.size(2);
  auto out = torch::empty_like(q);
  const float* qp = q.data_ptr<float>();
  const float* kp = k.data_ptr<float>();
  const float* vp = v.data_ptr<float>();
  const int64_t* ip = idx.data_ptr<int64_t>();
  const bool* vl = valid.data_ptr<bool>();
  const int64_t vstride = valid.size(1);
  float* op = out.data_ptr<float>();
  const float NEG = -std::numeric_limits<float>::infinity();
  chunk = std::max<int64_t>(1, chunk);
  const int64_t per_bh = (K + chunk - 1) / chunk + 1;  // chunks of selected blocks, then the local block
  const int64_t n_items = B * H * per_bh;
  std::vector<Partial> parts(n_items);
  const int64_t maxn = std::max<int64_t>(bs, end - lo);

  auto work = [&](int64_t item, std::vector<float>& sc, std::vector<float>& pr) {
    const int64_t bh = item / per_bh, c = item % per_bh, b = bh / H;
    const float* kb = kp + bh * T * D;
    const float* vb = vp + bh * T * D;
    const float* qb = qp + bh * G * D;
    const bool* valid_row = vl + b * vstride;
    Partial& P = parts[item];
    P.m.assign(G, NEG);
    P.l.assign(G, 0.f);
    P.acc.assign(G * D, 0.f);
    auto run = [&](int64_t t0, int64_t n) {
      // scores of the n slots for all G heads: each key row is read once for the whole group
      for (int64_t j = 0; j < n; ++j) {
        const float* kr = kb + (t0 + j) * D;
        const bool ok = valid_row[t0 + j];
        for (int64_t g = 0; g < G; ++g) {
          if (!ok) { sc[g * n + j] = NEG; continue; }
          const float* qg = qb + g * D;
          float s = 0.f;
#pragma omp simd reduction(+ : s)
          for (int64_t d = 0; d < D; ++d) s += qg[d] * kr[d];
          sc[g * n + j] = s;
        }
      }
      for (int64_t g = 0; g < G; ++g) {
        float* sg = sc.data() + g * n;
        float* pg = pr.data() + g * n;
        float mb = NEG;
        for (int64_t j = 0; j < n; ++j) mb = std::max(mb, sg[j]);
        const float mn = std::max(P.m[g], mb);
        if (mn == NEG) { std::fill(pg, pg + n, 0.f); continue; }
        const float scale = std::exp(P.m[g] - mn);
        float lsum = 0.f;
        for (int64_t j = 0; j < n; ++j) { pg[j] = std::exp(sg[j] - mn); lsum += pg[j]; }
        P.l[g] = P.l[g] * scale + lsum;
        float* ag = P.acc.data() + g * D;
#pragma omp simd
        for (int64_t d = 0; d < D; ++d) ag[d] *= scale;
        P.m[g] = mn;
      }
      // accumulate p v: each value row is read once for the whole group
      for (int64_t j = 0; j < n; ++j) {
        const float* vr = vb + (t0 + j) * D;
        for (int64_t g = 0; g < G; ++g) {
          const float p = pr[g * n + j];
          if (p == 0.f) continue;
          float* ag = P.acc.data() + g * D;
#pragma omp simd
          for (int64_t d = 0; d < D; ++d) ag[d] += p * vr[d];
        }
      }
    };
    if (c < per_bh - 1) {
      const int64_t k1 = std::min(K, (c + 1) * chunk);
      for (int64_t kk = c * chunk; kk < k1; ++kk) run(ip[bh * K + kk] * bs, bs);
    } else if (end > lo) {
      run(lo, end - lo);
    }
  };

  std::atomic<int64_t> next(0);
  auto loop = [&]() {
    std::vector<float> sc(G * maxn), pr(G * maxn);
    for (int64_t item = next.fetch_add(1); item < n_items; item = next.fetch_add(1)) work(item, sc, pr);
  };
  const int64_t nt = std::max<int64_t>(1, std::min<int64_t>(n_threads, n_items));
  std::vector<std::thread> helpers;
  for (int64_t t = 1; t < nt; ++t) helpers.emplace_back(loop);
  loop();
  for (auto& th : helpers) th.join();

  // merge the partial states of each (row, head): m = max m_i, l = sum l_i e^(m_i - m), acc likewise
  for (int64_t bh = 0; bh < B * H; ++bh) {
    for (int64_t g = 0; g < G; ++g) {
      float M = NEG;
      for (int64_t c = 0; c < per_bh; ++c) M = std::max(M, parts[bh * per_bh + c].m[g]);
      float* o = op + (bh * G + g) * D;
      std::fill(o, o + D, 0.f);
      float L = 0.f;
      for (int64_t c = 0; c < per_bh; ++c) {
        const Partial& P = parts[bh * per_bh + c];
        if (P.m[g] == NEG) continue;
        const float w = std::exp(P.m[g] - M);
        L += P.l[g] * w;
        const float* a = P.acc.data() + g * D;
        for (int64_t d = 0; d < D; ++d) o[d] += a[d] * w;
      }
      const float inv = 1.f / L;
      for (int64_t d = 0; d < D; ++d) o[d] *= inv;
    }
  }
  return out;
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) { m.def("block_sparse_decode", &block_sparse_decode); }
"""

_EXT = None
_FAILED: str | None = None


def _load():
    global _EXT, _FAILED
    if _EXT is None and _FAILED is None:
        try:
            import sys

            from torch.utils.cpp_extension import load_inline

            # first use compiles (20-25 s on 2 cores; later runs load torch's build cache): say so instead of a silent pause
            print("sherman: loading the fused C++ sparse-decode kernel (--impl cpp); the first use compiles it, ~20-25 s ...", file=sys.stderr, flush=True)
            _EXT = load_inline(
                name="sherman_block_sparse_v3",
                cpp_sources=[_SRC],
                # -fopenmp-simd: the `omp simd` loop hints only; threads are std::threads (no OpenMP runtime)
                extra_cflags=["-O3", "-march=native", "-fopenmp-simd", "-pthread"],
                extra_ldflags=["-pthread"],
                verbose=False,
            )
        except Exception as e:  # no compiler, no headers: the pure path is used
            _FAILED = f"{type(e).__name__}: {e}"
    return _EXT


def available() -> bool:
    """True when the extension compiled (compiles on first call, ~1 min)."""
    return _load() is not None


def fused_sparse_decode(q: torch.Tensor, k_all: torch.Tensor, v_all: torch.Tensor, valid: torch.Tensor, idx: torch.Tensor, end: int, block_size: int) -> torch.Tensor:
    """Same contract as `sparse.sparse_decode` (without sel_mask): q (B, H_q, 1, D) -> (B, H_q, 1, D)."""
    ext = _load()
    if ext is None:
        raise RuntimeError(f"the fused block-sparse extension is unavailable: {_FAILED}")
    b, hq, _, d = q.shape
    hkv = k_all.shape[1]
    assert q.dtype == torch.float32 and k_all.is_contiguous() and v_all.is_contiguous() and not q.is_cuda, "fused path: fp32, CPU, contiguous"
    nc = (end - 1) // block_size
    qg = (q.reshape(b, hkv, hq // hkv, d) * (1.0 / math.sqrt(d))).contiguous()  # (B, H_kv, G, D)
    n_sel = idx.shape[-1]
    kv_bytes = 2 * b * hkv * (n_sel * block_size + end - nc * block_size) * d * 4  # what the kernel reads
    chunk = max(1, -(-n_sel // 8))  # ~8 items per (row, head): a preempted helper holds up one eighth of a head
    out = ext.block_sparse_decode(qg, k_all, v_all, idx.contiguous().long(), valid.contiguous(), block_size, nc * block_size, end,
                                  chunk, kernel_threads(kv_bytes))  # fmt: skip
    return out.reshape(b, hq, 1, d)


BYTES_PER_THREAD = 1 << 20
"""The kernel adds a helper thread per this many bytes of K and V to read (a thread costs ~20-50 us to start)."""
_IDLE: dict = {}  # the last /proc/stat sample and the estimate made from it


def _cpu_ticks() -> tuple[float, float, float] | None:
    """(busy ticks of all CPUs, total ticks, this process's ticks) now, or None where /proc/stat is missing."""
    try:
        with open("/proc/stat") as f:
            vals = [float(x) for x in f.readline().split()[1:9]]
    except (OSError, ValueError):
        return None
    user, nice, system, idle, iowait, irq, softirq, steal = (vals + [0.0] * 8)[:8]
    t = os.times()
    hz = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    busy = user + nice + system + irq + softirq + steal
    return busy, busy + idle + iowait, (t.user + t.system) * hz


def idle_cores() -> float:
    """Cores that other processes left idle over the last ~second: cpu count x (1 - busy share of the others), where
    the others' share is all CPUs' busy ticks minus this process's own (/proc/stat, os.times); sampled at most every
    0.25 s. Without /proc/stat: cpu count - (1-minute load average - 1). A second thread only pays where a core is free:
    on a 2-core machine where another job holds the other core, each parallel region waits for a time slice."""
    now = time.monotonic()
    last = _IDLE.get("t", -1e9)
    if now - last < 0.25:
        return _IDLE["idle"]
    n = os.cpu_count() or 1
    sample = _cpu_ticks()
    prev = _IDLE.get("sample")
    if sample is not None and prev is not None and sample[1] > prev[1]:
        d_busy, d_total, d_mine = (a - b for a, b in zip(sample, prev))
        others = max(0.0, d_busy - d_mine) / d_total * n
        idle = n - others
    else:
        try:
            idle = n - max(os.getloadavg()[0] - 1.0, 0.0)
        except OSError:
            idle = float(n)
    _IDLE.update(t=now, sample=sample, idle=idle)
    return idle


def kernel_threads(kv_bytes: int) -> int:
    """Threads for one kernel call: torch's intra-op thread count, at most one per `BYTES_PER_THREAD` of K and V, and
    no more than the cores other processes leave idle (at least 1)."""
    want = min(torch.get_num_threads(), max(1, kv_bytes // BYTES_PER_THREAD))
    return max(1, min(want, int(idle_cores() + 0.5)))
