"""A fused CPU kernel for block-sparse decode: reads the selected blocks in place with an online softmax.

The pure-PyTorch path (`sparse.sparse_decode`) gathers the selected keys and values into buffers and then runs
matmul -> softmax -> matmul, so each kept byte is read, written and read again. This small C++ extension
(compiled on first use with `torch.utils.cpp_extension.load_inline`, cached under ~/.cache/torch_extensions)
walks, for every (row, KV head) in parallel, the selected blocks and then the local block, and for every query
head of the group keeps a running max m, normaliser l and accumulator acc (the online softmax of
Milakov & Gimelshein 2018, as in FlashAttention):
    m' = max(m, max_j s_j);  l = l * exp(m - m') + sum_j exp(s_j - m');  acc = acc * exp(m - m') + sum_j exp(s_j - m') v_j
so K and V are read exactly once and nothing is materialised. Float32, CPU, no autograd.

The arithmetic runs on a small SIMD layer chosen at compile time (AVX-512: 16 lanes, AVX2 + FMA: 8, otherwise
scalar): dot products, the p v updates and the exponentials are vectorised, exp by Cephes' range reduction and
polynomial (relative error ~1e-7; scores below -87.3 nats under the running max give exactly 0). While a block's
scores run, its value rows are prefetched, and while its values accumulate, the next selected block's keys are:
the selected blocks are scattered, so the hardware prefetcher would restart at every block. Measured on the 2-core
Intel Xeon (AVX-512) at one thread, CPU time (issue 20): 2.6-3.7 GB/s of K/V before (scalar exp, no prefetch),
7.5-9.2 GB/s after, against ~9.3 GB/s for a one-thread `torch.sum` over DRAM.

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

from sherman.core.simd import SIMD_SRC

_SRC = SIMD_SRC + r"""
// acc_g[d0, d0 + 4W) += sum_j p_g[j] v_j[d0, d0 + 4W) for four heads g (acc rows stride D, p rows stride n): the
// 16 accumulators stay in registers over the n value rows, so each row costs 4 loads and 16 FMAs
static inline void pv_tile(float* acc, const float* p, int64_t n, const float* v, int64_t D, int64_t d0) {
  vf c[4][4];
  for (int g = 0; g < 4; ++g)
    for (int i = 0; i < 4; ++i) c[g][i] = vload(acc + g * D + d0 + i * W);
  for (int64_t j = 0; j < n; ++j) {
    const float* vr = v + j * D + d0;
    const vf x0 = vload(vr), x1 = vload(vr + W), x2 = vload(vr + 2 * W), x3 = vload(vr + 3 * W);
    for (int g = 0; g < 4; ++g) {
      const vf pg = vset(p[g * n + j]);
      c[g][0] = vfma(pg, x0, c[g][0]);
      c[g][1] = vfma(pg, x1, c[g][1]);
      c[g][2] = vfma(pg, x2, c[g][2]);
      c[g][3] = vfma(pg, x3, c[g][3]);
    }
  }
  for (int g = 0; g < 4; ++g)
    for (int i = 0; i < 4; ++i) vstore(acc + g * D + d0 + i * W, c[g][i]);
}

static inline float max_of(const float* x, int64_t n) {
  const float NEG = -std::numeric_limits<float>::infinity();
  vf m = vset(NEG);
  int64_t i = 0;
  for (; i + W <= n; i += W) m = vmax(m, vload(x + i));
  float r = vhmax(m);
  for (; i < n; ++i) r = std::max(r, x[i]);
  return r;
}

static inline float exp_minus(float* p, const float* s, float m, int64_t n) {  // p = exp(s - m); returns sum p
  const vf vm = vset(m);
  vf acc = vset(0.f);
  int64_t i = 0;
  for (; i + W <= n; i += W) {
    vf e = vexp(vadd(vload(s + i), vmul(vm, vset(-1.f))));
    vstore(p + i, e);
    acc = vadd(acc, e);
  }
  float r = vsum(acc);
  for (; i < n; ++i) { p[i] = std::exp(s[i] - m); r += p[i]; }
  return r;
}

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
    // attend the n slots from t0; nt0 >= 0 is the first slot of the block that comes next (prefetched meanwhile)
    auto run = [&](int64_t t0, int64_t n, int64_t nt0) {
      // scores of the n slots for all G heads: each key row is read once for the whole group
      for (int64_t j = 0; j < n; ++j) {
        const float* kr = kb + (t0 + j) * D;
        const bool ok = valid_row[t0 + j];
        prefetch_row(vb + (t0 + j) * D, D);  // the value row this slot needs below, fetched while the scores run
        int64_t g = 0;
        if (ok && D % W == 0) {
          for (; g + 4 <= G; g += 4) {  // four heads per pass: one transpose tree instead of four reductions
            float s4[4];
            dot4(qb + g * D, kr, D, s4);
            for (int i = 0; i < 4; ++i) sc[(g + i) * n + j] = s4[i];
          }
        }
        for (; g < G; ++g) sc[g * n + j] = ok ? dot(qb + g * D, kr, D) : NEG;
      }
      // online-softmax update per head: new max, rescale the running state, exponentiate (vectorised)
      for (int64_t g = 0; g < G; ++g) {
        float* sg = sc.data() + g * n;
        float* pg = pr.data() + g * n;
        const float mn = std::max(P.m[g], max_of(sg, n));
        if (mn == NEG) { std::fill(pg, pg + n, 0.f); continue; }
        const float scale = std::exp(P.m[g] - mn);
        P.l[g] = P.l[g] * scale + exp_minus(pg, sg, mn, n);
        scale_by(P.acc.data() + g * D, scale, D);
        P.m[g] = mn;
      }
      // accumulate p v: each value row is read once for the whole group; tiles of 4 heads x 4W dims in registers,
      // the rest (a head or dimension remainder) by one axpy per row and head
      if (nt0 >= 0)
        for (int64_t j = 0; j < bs; ++j) prefetch_row(kb + (nt0 + j) * D, D);  // the next block's keys
      const float* v0 = vb + t0 * D;
      int64_t g0 = 0;
      for (; g0 + 4 <= G; g0 += 4) {
        int64_t d0 = 0;
        for (; d0 + 4 * W <= D; d0 += 4 * W) pv_tile(P.acc.data() + g0 * D, pr.data() + g0 * n, n, v0, D, d0);
        if (d0 < D)
          for (int64_t j = 0; j < n; ++j)
            for (int64_t g = g0; g < g0 + 4; ++g) axpy(P.acc.data() + g * D + d0, pr[g * n + j], v0 + j * D + d0, D - d0);
      }
      for (int64_t j = 0; j < n; ++j)
        for (int64_t g = g0; g < G; ++g) axpy(P.acc.data() + g * D, pr[g * n + j], v0 + j * D, D);
    };
    if (c < per_bh - 1) {
      const int64_t k1 = std::min(K, (c + 1) * chunk);
      for (int64_t kk = c * chunk; kk < k1; ++kk) run(ip[bh * K + kk] * bs, bs, kk + 1 < k1 ? ip[bh * K + kk + 1] * bs : -1);
    } else if (end > lo) {
      run(lo, end - lo, -1);
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
        axpy(o, w, P.acc.data() + g * D, D);
      }
      scale_by(o, 1.f / L, D);
    }
  }
  return out;
}

// The k best of n scores, ascending block ids (ties: the lower id first), -inf scores last: one partial selection
// instead of torch's topk + sort pair.
static void topk_ascending(const float* s, int64_t n, int64_t k, std::vector<int64_t>& ids, int64_t* out) {
  ids.resize(n);
  for (int64_t i = 0; i < n; ++i) ids[i] = i;
  auto better = [s](int64_t a, int64_t b) { return s[a] > s[b] || (s[a] == s[b] && a < b); };
  std::nth_element(ids.begin(), ids.begin() + (k - 1), ids.end(), better);
  std::sort(ids.begin(), ids.begin() + k);
  std::copy(ids.begin(), ids.begin() + k, out);
}

// Quest / ReSA block selection for one decode step, in one call: the group-mean query m (over the G query heads of
// each KV head), block score sum_d max(m_d kmax_d, m_d kmin_d) = m+ . kmax + m- . kmin over the first nc blocks of
// the summaries, -inf for blocks without a real token, then the k best in ascending order.
// q (B, H, G, D); kmax, kmin (B, H, NB, D) with NB >= nc, rows contiguous; has (B, NB) bool -> (B, H, k) int64.
torch::Tensor quest_select(torch::Tensor q, torch::Tensor kmax, torch::Tensor kmin, torch::Tensor has, int64_t nc,
                           int64_t k) {
  const int64_t B = q.size(0), H = q.size(1), G = q.size(2), D = q.size(3);
  TORCH_CHECK(kmax.stride(3) == 1 && kmin.stride(3) == 1 && kmax.stride(2) == D && kmin.stride(2) == D, "summary rows must be contiguous");
  TORCH_CHECK(k >= 1 && k <= nc && nc <= kmax.size(2), "need 1 <= k <= nc <= blocks");
  auto out = torch::empty({B, H, k}, torch::kLong);
  const float* qp = q.data_ptr<float>();
  const bool* hp = has.data_ptr<bool>();
  int64_t* op = out.data_ptr<int64_t>();
  const float NEG = -std::numeric_limits<float>::infinity();
  std::vector<float> pos(D), neg(D), sc(nc);
  std::vector<int64_t> ids;
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t h = 0; h < H; ++h) {
      const float* qg = qp + (b * H + h) * G * D;
      for (int64_t d = 0; d < D; ++d) {
        float m = 0.f;
        for (int64_t g = 0; g < G; ++g) m += qg[g * D + d];
        m /= (float)G;
        pos[d] = std::max(m, 0.f);
        neg[d] = std::min(m, 0.f);
      }
      const float* xb = kmax.data_ptr<float>() + b * kmax.stride(0) + h * kmax.stride(1);
      const float* nb = kmin.data_ptr<float>() + b * kmin.stride(0) + h * kmin.stride(1);
      const bool* hb = hp + b * has.stride(0);
      for (int64_t i = 0; i < nc; ++i)
        sc[i] = hb[i * has.stride(1)] ? dot(xb + i * D, pos.data(), D) + dot(nb + i * D, neg.data(), D) : NEG;
      topk_ascending(sc.data(), nc, k, ids, op + (b * H + h) * k);
    }
  }
  return out;
}

// scores (B, H, n) float, contiguous -> the k best per row, ascending (B, H, k) int64 (see topk_ascending)
torch::Tensor topk_select(torch::Tensor scores, int64_t k) {
  const int64_t B = scores.size(0), H = scores.size(1), n = scores.size(2);
  TORCH_CHECK(k >= 1 && k <= n, "need 1 <= k <= n");
  auto out = torch::empty({B, H, k}, torch::kLong);
  const float* sp = scores.data_ptr<float>();
  std::vector<int64_t> ids;
  for (int64_t r = 0; r < B * H; ++r) topk_ascending(sp + r * n, n, k, ids, out.data_ptr<int64_t>() + r * k);
  return out;
}

// Rotate x (n even) by RoPE at position pos in the half-split layout (pairs i, i + n/2), sign = +1 rotates, -1 undoes
// the rotation; inv[i] = theta^(-2i/n). Matches `seer.rope_at` + `core.model.apply_rope` to fp32 rounding.
static void rope_inplace(float* x, int64_t n, float pos, const float* inv, float sign) {
  const int64_t half = n / 2;
  for (int64_t i = 0; i < half; ++i) {
    const float f = pos * inv[i], c = std::cos(f), sn = sign * std::sin(f);
    const float a = x[i], b = x[i + half];
    x[i] = a * c - b * sn;
    x[i + half] = b * c + a * sn;
  }
}

// SeerAttention-R's decode-step gate and block selection in one call (`seer.gate_logits` + top-k): per (row, KV head)
// undo RoPE on the G query heads at the query position, project the concatenated pre-RoPE query (G*D) by wq[h] to D_g,
// rotate it at the same position, score the first nc cached gate keys (dot / sqrt(D_g), -inf for empty blocks) and
// keep the k best in ascending order.
// q (B, H*G, 1, D) post-RoPE, contiguous; q_pos (B) int64; wq (H, G*D, D_g) contiguous; kg (B, H, NB, D_g) rows
// contiguous; has (B, NB) bool; inv_d (D/2), inv_g (D_g/2) float RoPE frequencies -> (B, H, k) int64.
torch::Tensor seer_select(torch::Tensor q, torch::Tensor q_pos, torch::Tensor wq, torch::Tensor kg, torch::Tensor has,
                          torch::Tensor inv_d, torch::Tensor inv_g, int64_t nc, int64_t k) {
  const int64_t B = q.size(0), D = q.size(3), H = kg.size(1), Dg = kg.size(3), G = q.size(1) / H;
  TORCH_CHECK(kg.stride(3) == 1 && kg.stride(2) == Dg, "gate-key rows must be contiguous");
  TORCH_CHECK(wq.size(0) == H && wq.size(1) == G * D && wq.size(2) == Dg, "wq must be (H_kv, G*D, D_g)");
  TORCH_CHECK(k >= 1 && k <= nc && nc <= kg.size(2), "need 1 <= k <= nc <= blocks");
  auto out = torch::empty({B, H, k}, torch::kLong);
  const float* qp = q.data_ptr<float>();
  const float* wp = wq.data_ptr<float>();
  const int64_t* pp = q_pos.data_ptr<int64_t>();
  const bool* hp = has.data_ptr<bool>();
  const float NEG = -std::numeric_limits<float>::infinity();
  const float inv_sqrt = 1.f / std::sqrt((float)Dg);
  std::vector<float> pre(G * D), y(Dg), sc(nc);
  std::vector<int64_t> ids;
  for (int64_t b = 0; b < B; ++b) {
    const float pos = (float)pp[b];
    for (int64_t h = 0; h < H; ++h) {
      std::copy(qp + (b * H + h) * G * D, qp + (b * H + h + 1) * G * D, pre.begin());
      for (int64_t g = 0; g < G; ++g) rope_inplace(pre.data() + g * D, D, pos, inv_d.data_ptr<float>(), -1.f);
      std::fill(y.begin(), y.end(), 0.f);
      const float* wh = wp + h * G * D * Dg;
      for (int64_t j = 0; j < G * D; ++j) axpy(y.data(), pre[j], wh + j * Dg, Dg);
      rope_inplace(y.data(), Dg, pos, inv_g.data_ptr<float>(), 1.f);
      const float* kb = kg.data_ptr<float>() + b * kg.stride(0) + h * kg.stride(1);
      const bool* hb = hp + b * has.stride(0);
      for (int64_t i = 0; i < nc; ++i) sc[i] = hb[i * has.stride(1)] ? dot(y.data(), kb + i * Dg, Dg) * inv_sqrt : NEG;
      topk_ascending(sc.data(), nc, k, ids, out.data_ptr<int64_t>() + (b * H + h) * k);
    }
  }
  return out;
}

int64_t simd_width() { return W; }

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) { m.def("block_sparse_decode", &block_sparse_decode); m.def("simd_width", &simd_width);
  m.def("quest_select", &quest_select); m.def("topk_select", &topk_select);
  m.def("seer_select", &seer_select); }
"""

_EXT = None
_FAILED: str | None = None


def build(name: str = "sherman_block_sparse_v7", arch_flags: tuple[str, ...] = ("-march=native",)):
    """Compile (or load from torch's build cache) the extension. `arch_flags` pick the SIMD layer at compile time:
    -march=native gives AVX-512 or AVX2 where the CPU has them; the tests also build "-mno-avx512f" (AVX2) and
    "-mno-avx2" (scalar) variants to check each path against the pure one."""
    from torch.utils.cpp_extension import load_inline

    return load_inline(name=name, cpp_sources=[_SRC], extra_cflags=["-O3", *arch_flags, "-pthread"], extra_ldflags=["-pthread"], verbose=False)


def _load():
    global _EXT, _FAILED
    if _EXT is None and _FAILED is None:
        try:
            import sys

            # first use compiles (20-25 s on 2 cores; later runs load torch's build cache): say so instead of a silent pause
            print("sherman: loading the fused C++ sparse-decode kernel (--impl cpp); the first use compiles it, ~20-25 s ...", file=sys.stderr, flush=True)
            _EXT = build()  # threads are std::threads (no OpenMP runtime)
        except Exception as e:  # no compiler, no headers: the pure path is used
            _FAILED = f"{type(e).__name__}: {e}"
    return _EXT


def available() -> bool:
    """True when the extension compiled (compiles on first call, ~1 min)."""
    return _load() is not None


def fused_sparse_decode(q: torch.Tensor, k_all: torch.Tensor, v_all: torch.Tensor, valid: torch.Tensor, idx: torch.Tensor, end: int, block_size: int,
                        ext=None) -> torch.Tensor:  # fmt: skip
    """Same contract as `sparse.sparse_decode` (without sel_mask): q (B, H_q, 1, D) -> (B, H_q, 1, D). `ext`: a
    module from `build` (default: the one `available()` loads)."""
    ext = ext or _load()
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


def usable(q: torch.Tensor, impl: str) -> bool:
    """The C++ selection applies (block ids carry no gradient): impl "cpp", fp32 on the CPU, and the extension builds."""
    return impl == "cpp" and q.dtype == torch.float32 and not q.is_cuda and available()


def quest_select(q: torch.Tensor, kmax: torch.Tensor, kmin: torch.Tensor, has: torch.Tensor, nc: int, k: int) -> torch.Tensor:
    """`sparse.quest_scores` over the first nc blocks + `sparse.select_topk` in one C++ call: q (B, H_q, 1, D); kmax,
    kmin (B, H_kv, NB, D) the whole summary buffers (NB >= nc); has (B, NB) -> (B, H_kv, k) ascending block ids.
    Ties go to the lower block id (torch's topk leaves them unspecified)."""
    b, hq, _, d = q.shape
    hkv = kmax.shape[1]
    return _load().quest_select(q.reshape(b, hkv, hq // hkv, d).contiguous(), kmax, kmin, has, nc, k)


def topk_select(scores: torch.Tensor, k: int) -> torch.Tensor:
    """`sparse.select_topk` in one C++ call: scores (B, H, n) -> (B, H, k) ascending (ties to the lower id)."""
    return _load().topk_select(scores.float().contiguous(), k)


def seer_select(q: torch.Tensor, q_pos: torch.Tensor, wq: torch.Tensor, kg: torch.Tensor, has: torch.Tensor, nc: int, k: int,
                inv_d: torch.Tensor, inv_g: torch.Tensor) -> torch.Tensor:  # fmt: skip
    """`seer.gate_logits` over the first nc gate keys + top-k in one C++ call: q (B, H_q, 1, D) post-RoPE at positions
    q_pos (B, 1); wq (H_kv, G*D, D_g) the layer gate's query map; kg (B, H_kv, NB, D_g), has (B, NB) the whole gate-key
    cache; inv_d (D/2,), inv_g (D_g/2,) the RoPE frequencies (`seer.inv_freq`) -> (B, H_kv, k) ascending block ids
    (ties to the lower id)."""
    return _load().seer_select(q.contiguous(), q_pos.reshape(-1).long(), wq.float().contiguous(), kg, has, inv_d, inv_g, nc, k)


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
