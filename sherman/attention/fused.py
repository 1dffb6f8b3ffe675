"""A fused CPU kernel for block-sparse decode: reads the selected blocks in place with an online softmax.

The pure-PyTorch path (`sparse.sparse_decode`) gathers the selected keys and values into buffers and then runs
matmul -> softmax -> matmul, so each kept byte is read, written and read again. This small C++ extension
(compiled on first use with `torch.utils.cpp_extension.load_inline`, cached under ~/.cache/torch_extensions)
walks, for every (row, KV head) in parallel, the selected blocks and then the local block, and for every query
head of the group keeps a running max m, normaliser l and accumulator acc (the online softmax of
Milakov & Gimelshein 2018, as in FlashAttention):
    m' = max(m, max_j s_j);  l = l * exp(m - m') + sum_j exp(s_j - m');  acc = acc * exp(m - m') + sum_j exp(s_j - m') v_j
so K and V are read exactly once and nothing is materialised. Float32, CPU, no autograd.

Used by the sparse backends when `options["impl"] == "cpp"` (default "torch"); `available()` says whether the
extension builds here. Parity with the pure path is tested in tests/attention/test_fused.py.
"""

from __future__ import annotations

import math

import torch

_SRC = r"""
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <cmath>
#include <limits>
#include <vector>

// q (B, H, G, D) pre-scaled; k, v (B, H, T, D); idx (B, H, K) int64 block ids; valid (B, T) bool.
// Attends every query row to the K selected blocks of size bs and to the local slots [lo, end).
torch::Tensor block_sparse_decode(torch::Tensor q, torch::Tensor k, torch::Tensor v, torch::Tensor idx,
                                  torch::Tensor valid, int64_t bs, int64_t lo, int64_t end) {
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
  at::parallel_for(0, B * H, 1, [&](int64_t s0, int64_t s1) {
    const int64_t maxn = std::max<int64_t>(bs, end - lo);
    std::vector<float> m(G), l(G), acc(G * D), sc(maxn);
    for (int64_t bh = s0; bh < s1; ++bh) {
      const int64_t b = bh / H;
      const float* kb = kp + bh * T * D;
      const float* vb = vp + bh * T * D;
      const bool* valid_row = vl + b * vstride;
      std::fill(m.begin(), m.end(), NEG);
      std::fill(l.begin(), l.end(), 0.f);
      std::fill(acc.begin(), acc.end(), 0.f);
      auto run = [&](int64_t t0, int64_t n) {
        for (int64_t g = 0; g < G; ++g) {
          const float* qg = qp + (bh * G + g) * D;
          float mb = NEG;
          for (int64_t j = 0; j < n; ++j) {
            if (!valid_row[t0 + j]) { sc[j] = NEG; continue; }
            const float* kr = kb + (t0 + j) * D;
            float s = 0.f;
#pragma omp simd reduction(+ : s)
            for (int64_t d = 0; d < D; ++d) s += qg[d] * kr[d];
            sc[j] = s;
            mb = std::max(mb, s);
          }
          const float mn = std::max(m[g], mb);
          if (mn == NEG) continue;
          const float scale = std::exp(m[g] - mn);
          float* ag = acc.data() + g * D;
          l[g] *= scale;
#pragma omp simd
          for (int64_t d = 0; d < D; ++d) ag[d] *= scale;
          for (int64_t j = 0; j < n; ++j) {
            if (sc[j] == NEG) continue;
            const float p = std::exp(sc[j] - mn);
            l[g] += p;
            const float* vr = vb + (t0 + j) * D;
#pragma omp simd
            for (int64_t d = 0; d < D; ++d) ag[d] += p * vr[d];
          }
          m[g] = mn;
        }
      };
      for (int64_t kk = 0; kk < K; ++kk) run(ip[bh * K + kk] * bs, bs);
      run(lo, end - lo);
      for (int64_t g = 0; g < G; ++g) {
        float* o = op + (bh * G + g) * D;
        const float inv = 1.f / l[g];
        for (int64_t d = 0; d < D; ++d) o[d] = acc[g * D + d] * inv;
      }
    }
  });
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
                name="sherman_block_sparse_v2",
                cpp_sources=[_SRC],
                # -fopenmp: without it at::parallel_for's OpenMP pragma is dropped and the kernel runs on one thread
                extra_cflags=["-O3", "-march=native", "-fopenmp"],
                extra_ldflags=["-fopenmp"],
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
    out = ext.block_sparse_decode(qg, k_all, v_all, idx.contiguous().long(), valid.contiguous(), block_size, nc * block_size, end)
    return out.reshape(b, hq, 1, d)
