"""C++ CPU kernels for the small ops of a decode step: a tiled skinny GEMM, RMSNorm, q/k RMSNorm + RoPE, and dense
one-query attention over the KV cache (issue 20: doing less work per decode step on CPUs whose BLAS is slow on
skinny products).

Why (measured on the 2-core Intel Xeon of issue 20, one thread, the 10M `bench_generate` model at batch 16, ~24 ms
per decode step): the four GEMMs of a layer are a third of the step and run at 3-4 GB/s of weight reads, because
MKL's kernels for 16-row products re-read the weight in a strided pattern; decode attention (`baddbmm`, softmax,
`bmm` over 64 (row, KV head) pairs of 2 x 32 by 32 x T) pays MKL's per-matrix overhead 64 times per call; and the
q/k RMSNorm over (B, 1, 12, 32) strided rows costs ~120 us in PyTorch's reduction, ~40 times what its bytes need.
Each kernel here reads its operands once, in order:

  * `tiled_linear`: y = x W^T + b for x (M, K) with W packed once (per `packed_weights` context) into column tiles of
    NT = 4 SIMD widths, (N / NT, K, NT) contiguous, so one tile is one sequential stream; per tile and group of up to
    6 rows the 6 x 4 vector accumulators stay in registers over all K. (The same register-blocking idea as every
    BLAS micro-kernel; the packed layout is what makes the weight read sequential for skinny M.)
  * `rms_norm`: rows of x (any leading strides, contiguous last dim) -> x * rsqrt(mean(x^2) + eps) * w (the formula of
    `F.rms_norm` in fp32), optionally after a residual add x + y (the add is returned too).
  * `qk_norm_rope`: the fused q/k/v projection output (B, T, H_q + 2 H_kv, D) -> q, k RMS-normed per head (weights of
    `q_norm`/`k_norm`, or none) and rotated (`rope_signed`: x cos + roll(x, D/2) ssin), v copied; each (B, H, T, D).
  * `decode_attention`: softmax(q k^T / sqrt(D) + mask) v for one query per row, grouped heads read each key and value
    row once; the masked slots (`key_valid` False) get probability 0. Exponentials by the shared vectorised exp.

They are used only inside an inference context (`inference()`, entered by `core.linear.packed_weights`, i.e. by every
`generate` call) on fp32 CPU tensors with no gradient, and only when the extension builds here (first use compiles
it, ~15-20 s on 2 cores, then torch's build cache loads it). `SHERMAN_CPP=0` disables them (pure PyTorch, e.g. to
compare). The results equal the PyTorch ops to fp32 rounding (different summation order; tests/core/test_cpu_decode.py).
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading

import torch

from sherman.core.simd import SIMD_SRC

_SRC = SIMD_SRC + r"""
#include <ATen/Parallel.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <cstring>


// ---------------- tiled skinny GEMM ----------------
// wp (tiles, K, NT): column tile t holds W^T[:, t*NT : (t+1)*NT] row by row (N padded with zero columns to tiles*NT).
// For a group of MR <= 6 rows of x, the MR x 4 vector accumulators stay in registers over the K rows of the tile.
template <int MR>
static inline void tile_rows(const float* x, int64_t ldx, const float* wt, int64_t K, const float* bias, float* y,
                             int64_t ldy, int64_t ncols) {
  vf c[MR][4];  // fully unrolled loops below, so the 4 MR accumulators live in registers (not on the stack)
#pragma GCC unroll 8
  for (int r = 0; r < MR; ++r)
#pragma GCC unroll 4
    for (int i = 0; i < 4; ++i) c[r][i] = bias ? vload(bias + i * W) : vset(0.f);
  for (int64_t k = 0; k < K; ++k) {
    const float* wr = wt + k * 4 * W;
    __builtin_prefetch(wr + 16 * 4 * W, 0, 1);
    const vf w0 = vload(wr), w1 = vload(wr + W), w2 = vload(wr + 2 * W), w3 = vload(wr + 3 * W);
#pragma GCC unroll 8
    for (int r = 0; r < MR; ++r) {
      const vf xv = vset(x[r * ldx + k]);
      c[r][0] = vfma(xv, w0, c[r][0]);
      c[r][1] = vfma(xv, w1, c[r][1]);
      c[r][2] = vfma(xv, w2, c[r][2]);
      c[r][3] = vfma(xv, w3, c[r][3]);
    }
  }
  if (ncols == 4 * W) {
#pragma GCC unroll 8
    for (int r = 0; r < MR; ++r)
#pragma GCC unroll 4
      for (int i = 0; i < 4; ++i) vstore(y + r * ldy + i * W, c[r][i]);
  } else {  // the last, partial tile: through a buffer, only the real columns
    float buf[4 * W];
#pragma GCC unroll 8
    for (int r = 0; r < MR; ++r) {
#pragma GCC unroll 4
      for (int i = 0; i < 4; ++i) vstore(buf + i * W, c[r][i]);
      for (int64_t j = 0; j < ncols; ++j) y[r * ldy + j] = buf[j];
    }
  }
}

torch::Tensor tiled_linear(torch::Tensor x, torch::Tensor wp, c10::optional<torch::Tensor> bias_p, int64_t n_out) {
  TORCH_CHECK(x.dim() == 2 && x.stride(1) == 1 && x.scalar_type() == at::kFloat, "x must be (M, K) fp32 with contiguous rows");
  TORCH_CHECK(wp.is_contiguous() && wp.dim() == 3 && wp.size(1) == x.size(1) && wp.size(2) == 4 * W, "packed weight must be (tiles, K, 4W)");
  const int64_t M = x.size(0), K = x.size(1), NT = 4 * W, tiles = wp.size(0), ldx = x.stride(0);
  TORCH_CHECK(n_out <= tiles * NT && n_out > (tiles - 1) * NT, "n_out does not match the packed tiles");
  auto y = torch::empty({M, n_out}, x.options());
  const float* xp = x.data_ptr<float>();
  const float* w = wp.data_ptr<float>();
  const float* bp = nullptr;
  if (bias_p.has_value()) {
    TORCH_CHECK(bias_p->is_contiguous() && bias_p->numel() == tiles * NT, "bias must be padded to tiles * 4W");
    bp = bias_p->data_ptr<float>();
  }
  float* yp = y.data_ptr<float>();
  const int64_t grain = std::max<int64_t>(1, (int64_t)(1 << 18) / std::max<int64_t>(1, M * K * NT / 16));
  at::parallel_for(0, tiles, grain, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      const float* wt = w + t * K * NT;
      const float* bt = bp ? bp + t * NT : nullptr;
      const int64_t nc = std::min<int64_t>(NT, n_out - t * NT);
      int64_t m = 0;
      for (; m + 6 <= M; m += 6) tile_rows<6>(xp + m * ldx, ldx, wt, K, bt, yp + m * n_out + t * NT, n_out, nc);
      const float* xm = xp + m * ldx;
      float* ym = yp + m * n_out + t * NT;
      switch (M - m) {
        case 5: tile_rows<5>(xm, ldx, wt, K, bt, ym, n_out, nc); break;
        case 4: tile_rows<4>(xm, ldx, wt, K, bt, ym, n_out, nc); break;
        case 3: tile_rows<3>(xm, ldx, wt, K, bt, ym, n_out, nc); break;
        case 2: tile_rows<2>(xm, ldx, wt, K, bt, ym, n_out, nc); break;
        case 1: tile_rows<1>(xm, ldx, wt, K, bt, ym, n_out, nc); break;
        default: break;
      }
    }
  });
  return y;
}

// ---------------- RMSNorm ----------------
static inline float sum_squares(const float* x, int64_t n) {
  vf s0 = vset(0.f), s1 = vset(0.f);
  int64_t i = 0;
  for (; i + 2 * W <= n; i += 2 * W) {
    const vf a = vload(x + i), b = vload(x + i + W);
    s0 = vfma(a, a, s0);
    s1 = vfma(b, b, s1);
  }
  for (; i + W <= n; i += W) { const vf a = vload(x + i); s0 = vfma(a, a, s0); }
  float s = vsum(vadd(s0, s1));
  for (; i < n; ++i) s += x[i] * x[i];
  return s;
}

static inline float norm_row(const float* x, const float* w, float eps, float* out, int64_t n) {  // out = x r w; returns r
  const float r = 1.f / std::sqrt(sum_squares(x, n) / (float)n + eps);
  const vf vr = vset(r);
  int64_t i = 0;
  if (w) {
    for (; i + W <= n; i += W) vstore(out + i, vmul(vmul(vload(x + i), vr), vload(w + i)));
    for (; i < n; ++i) out[i] = (x[i] * r) * w[i];
  } else {
    for (; i + W <= n; i += W) vstore(out + i, vmul(vload(x + i), vr));
    for (; i < n; ++i) out[i] = x[i] * r;
  }
  return r;
}

// x (N, C) rows (row stride any, last dim contiguous), w (C) -> (N, C) contiguous. With y given: s = x + y is
// normed and returned as well (the residual stream after a sublayer), y (N, C) with contiguous rows.
std::vector<torch::Tensor> rms_norm(torch::Tensor x, torch::Tensor w, double eps, c10::optional<torch::Tensor> y_opt) {
  TORCH_CHECK(x.dim() == 2 && x.stride(1) == 1 && x.scalar_type() == at::kFloat, "x must be (N, C) fp32 with contiguous rows");
  const int64_t N = x.size(0), C = x.size(1);
  TORCH_CHECK(w.is_contiguous() && w.numel() == C, "weight must be (C,) contiguous");
  auto out = torch::empty({N, C}, x.options());
  const float* xp = x.data_ptr<float>();
  const float* wp = w.data_ptr<float>();
  float* op = out.data_ptr<float>();
  if (!y_opt.has_value()) {
    for (int64_t n = 0; n < N; ++n) norm_row(xp + n * x.stride(0), wp, (float)eps, op + n * C, C);
    return {out};
  }
  const auto& y = *y_opt;
  TORCH_CHECK(y.dim() == 2 && y.size(0) == N && y.size(1) == C && y.stride(1) == 1, "y must be (N, C) with contiguous rows");
  auto s = torch::empty({N, C}, x.options());
  const float* yp = y.data_ptr<float>();
  float* sp = s.data_ptr<float>();
  for (int64_t n = 0; n < N; ++n) {
    const float* xr = xp + n * x.stride(0);
    const float* yr = yp + n * y.stride(0);
    float* sr = sp + n * C;
    int64_t i = 0;
    for (; i + W <= C; i += W) vstore(sr + i, vadd(vload(xr + i), vload(yr + i)));
    for (; i < C; ++i) sr[i] = xr[i] + yr[i];
    norm_row(sr, wp, (float)eps, op + n * C, C);
  }
  return {s, out};
}

// One head row of q or k: u = rmsnorm(x) w (w null: u = x), out = u cos + roll(u, D/2) ssin (`rope_signed`).
static inline void norm_rope_row(const float* x, const float* w, float eps, const float* c, const float* s, float* u, float* out, int64_t D) {
  if (w) norm_row(x, w, eps, u, D);
  else std::copy(x, x + D, u);
  const int64_t half = D / 2;
  for (int64_t i = 0; i < D; ++i) out[i] = u[i] * c[i] + (i < half ? u[i + half] : u[i - half]) * s[i];
}

// ---------------- q/k RMSNorm + RoPE ----------------
// qkv (B, T, Hq + 2 Hkv, D), last dim contiguous; w (Hq + Hkv, D) or empty (no q/k norm); cos, ssin (B or 1, T, D)
// with contiguous last dim. Returns q (B, Hq, T, D), k (B, Hkv, T, D) rotated, v (B, Hkv, T, D) copied.
// Per head row: u = rmsnorm(x) * w (if normed), out = u * cos + roll(u, D/2) * ssin.
std::vector<torch::Tensor> qk_norm_rope(torch::Tensor qkv, int64_t hq, int64_t hkv, c10::optional<torch::Tensor> w_opt, double eps,
                                        torch::Tensor cos, torch::Tensor ssin) {
  TORCH_CHECK(qkv.dim() == 4 && qkv.stride(3) == 1 && qkv.scalar_type() == at::kFloat, "qkv must be (B, T, H, D) fp32, contiguous D");
  const int64_t B = qkv.size(0), T = qkv.size(1), H = qkv.size(2), D = qkv.size(3);
  TORCH_CHECK(H == hq + 2 * hkv && D % 2 == 0, "qkv heads must be hq + 2 hkv with an even head dim");
  TORCH_CHECK(cos.dim() == 3 && cos.size(1) == T && cos.size(2) == D && cos.stride(2) == 1 && ssin.sizes() == cos.sizes() &&
              ssin.stride(2) == 1 && (cos.size(0) == B || cos.size(0) == 1), "cos/ssin must be (B or 1, T, D)");
  const float* wp = nullptr;
  if (w_opt.has_value()) {
    TORCH_CHECK(w_opt->is_contiguous() && w_opt->numel() == (hq + hkv) * D, "q/k norm weight must be (Hq + Hkv, D)");
    wp = w_opt->data_ptr<float>();
  }
  auto q = torch::empty({B, hq, T, D}, qkv.options());
  auto k = torch::empty({B, hkv, T, D}, qkv.options());
  auto v = torch::empty({B, hkv, T, D}, qkv.options());
  const float* xp = qkv.data_ptr<float>();
  const float* cp = cos.data_ptr<float>();
  const float* sp = ssin.data_ptr<float>();
  const int64_t cb = cos.size(0) == 1 ? 0 : cos.stride(0), sb = ssin.size(0) == 1 ? 0 : ssin.stride(0);
  std::vector<float> u(D);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t t = 0; t < T; ++t) {
      const float* xr = xp + b * qkv.stride(0) + t * qkv.stride(1);
      const float* c = cp + b * cb + t * cos.stride(1);
      const float* s = sp + b * sb + t * ssin.stride(1);
      for (int64_t h = 0; h < hq + hkv; ++h) {
        float* o = h < hq ? q.data_ptr<float>() + ((b * hq + h) * T + t) * D : k.data_ptr<float>() + ((b * hkv + h - hq) * T + t) * D;
        norm_rope_row(xr + h * qkv.stride(2), wp ? wp + h * D : nullptr, (float)eps, c, s, u.data(), o, D);
      }
      for (int64_t h = 0; h < hkv; ++h) {
        const float* x = xr + (hq + hkv + h) * qkv.stride(2);
        std::copy(x, x + D, v.data_ptr<float>() + ((b * hkv + h) * T + t) * D);
      }
    }
  return {q, k, v};
}

// ---------------- dense one-query decode attention ----------------
// s[t] = q . k_t for four consecutive keys (rows kstride apart), one transpose tree for the four sums (D % W == 0)
static inline void dot_4keys(const float* q, const float* k, int64_t kstride, int64_t D, float* out) {
  vf a0 = vset(0.f), a1 = vset(0.f), a2 = vset(0.f), a3 = vset(0.f);
  for (int64_t i = 0; i < D; i += W) {
    const vf x = vload(q + i);
    a0 = vfma(x, vload(k + i), a0);
    a1 = vfma(x, vload(k + kstride + i), a1);
    a2 = vfma(x, vload(k + 2 * kstride + i), a2);
    a3 = vfma(x, vload(k + 3 * kstride + i), a3);
  }
  vsum4(a0, a1, a2, a3, out);
}

// o_g[d0, d0 + NV W) = sum_t p_g[t] v_t[d0, d0 + NV W) for NG heads g (p rows Tk apart, o rows D apart): the NG x NV
// accumulators stay in registers over all value rows
template <int NG, int NV>
static inline void pv_tile(const float* p, int64_t Tk, const float* vb, int64_t vstride, int64_t d0, float* o, int64_t D) {
  vf acc[NG][NV];
  for (int g = 0; g < NG; ++g)
    for (int j = 0; j < NV; ++j) acc[g][j] = vset(0.f);
  for (int64_t t = 0; t < Tk; ++t) {
    const float* vr = vb + t * vstride + d0;
    vf x[NV];
    for (int j = 0; j < NV; ++j) x[j] = vload(vr + j * W);
    for (int g = 0; g < NG; ++g) {
      const vf pg = vset(p[g * Tk + t]);
      for (int j = 0; j < NV; ++j) acc[g][j] = vfma(pg, x[j], acc[g][j]);
    }
  }
  for (int g = 0; g < NG; ++g)
    for (int j = 0; j < NV; ++j) vstore(o + g * D + d0 + j * W, acc[g][j]);
}

template <int NG>
static inline void pv_heads(const float* p, int64_t Tk, const float* vb, int64_t vstride, float* o, int64_t D) {
  int64_t d0 = 0;
  for (; d0 + 4 * W <= D; d0 += 4 * W) pv_tile<NG, 4>(p, Tk, vb, vstride, d0, o, D);
  switch ((D - d0) / W) {
    case 3: pv_tile<NG, 3>(p, Tk, vb, vstride, d0, o, D); d0 += 3 * W; break;
    case 2: pv_tile<NG, 2>(p, Tk, vb, vstride, d0, o, D); d0 += 2 * W; break;
    case 1: pv_tile<NG, 1>(p, Tk, vb, vstride, d0, o, D); d0 += W; break;
    default: break;
  }
  if (d0 < D) {  // dims past the last full vector
    for (int g = 0; g < NG; ++g)
      for (int64_t d = d0; d < D; ++d) {
        float a = 0.f;
        for (int64_t t = 0; t < Tk; ++t) a += p[g * Tk + t] * vb[t * vstride + d];
        o[g * D + d] = a;
      }
  }
}

// q (B, Hq, 1, D) contiguous; k, v (B, Hkv, Tk, D) with contiguous D (cache views); valid (B, >= Tk) bool or empty.
// out (B, Hq, 1, D) = softmax(q k^T * scale + mask) v, each key/value row read once for the G heads of its group.
torch::Tensor decode_attention(torch::Tensor q, torch::Tensor k, torch::Tensor v, c10::optional<torch::Tensor> valid_opt, double scale) {
  TORCH_CHECK(q.is_contiguous() && q.dim() == 4 && q.size(2) == 1 && q.scalar_type() == at::kFloat, "q must be (B, Hq, 1, D) contiguous fp32");
  TORCH_CHECK(k.dim() == 4 && k.stride(3) == 1 && v.stride(3) == 1 && k.sizes() == v.sizes(), "k, v must be (B, Hkv, Tk, D) with contiguous D");
  const int64_t B = q.size(0), Hq = q.size(1), D = q.size(3), Hkv = k.size(1), Tk = k.size(2), G = Hq / Hkv;
  TORCH_CHECK(k.size(0) == B && k.size(3) == D && Hq % Hkv == 0, "q and k shapes disagree");
  const bool* vp = nullptr;
  int64_t vs = 0;
  if (valid_opt.has_value()) {
    TORCH_CHECK(valid_opt->scalar_type() == at::kBool && valid_opt->dim() == 2 && valid_opt->size(0) == B && valid_opt->size(1) >= Tk &&
                valid_opt->stride(1) == 1, "valid must be (B, >= Tk) bool with contiguous slots");
    vp = valid_opt->data_ptr<bool>();
    vs = valid_opt->stride(0);
  }
  auto out = torch::empty_like(q);
  const float* qp = q.data_ptr<float>();
  const float* kp = k.data_ptr<float>();
  const float* vvp = v.data_ptr<float>();
  float* op = out.data_ptr<float>();
  const int64_t ksb = k.stride(0), ksh = k.stride(1), kst = k.stride(2), vsb = v.stride(0), vsh = v.stride(1), vst = v.stride(2);
  const float NEG = -std::numeric_limits<float>::infinity();
  const float sc = (float)scale;
  const int64_t grain = std::max<int64_t>(1, (int64_t)(1 << 15) / std::max<int64_t>(1, Tk * D * G));
  at::parallel_for(0, B * Hkv, grain, [&](int64_t i0, int64_t i1) {
    std::vector<float> s(G * Tk);
    for (int64_t item = i0; item < i1; ++item) {
      const int64_t b = item / Hkv, h = item % Hkv;
      const float* kb = kp + b * ksb + h * ksh;
      const float* vb = vvp + b * vsb + h * vsh;
      const float* qg = qp + (b * Hq + h * G) * D;  // the G query heads of this KV head, rows of D
      const bool* valid = vp ? vp + b * vs : nullptr;
      for (int64_t g = 0; g < G; ++g) {  // scores, four keys per transpose tree
        float* sg = s.data() + g * Tk;
        const float* qr = qg + g * D;
        int64_t t = 0;
        if (D % W == 0)
          for (; t + 4 <= Tk; t += 4) dot_4keys(qr, kb + t * kst, kst, D, sg + t);
        for (; t < Tk; ++t) sg[t] = dot(qr, kb + t * kst, D);
        const vf vsc = vset(sc);
        for (t = 0; t + W <= Tk; t += W) vstore(sg + t, vmul(vload(sg + t), vsc));
        for (; t < Tk; ++t) sg[t] *= sc;
        if (valid)
          for (t = 0; t < Tk; ++t) if (!valid[t]) sg[t] = NEG;
      }
      for (int64_t g = 0; g < G; ++g) {  // softmax of row g in place (masked slots: probability 0)
        float* sg = s.data() + g * Tk;
        vf vm = vset(NEG);
        int64_t t = 0;
        for (; t + W <= Tk; t += W) vm = vmax(vm, vload(sg + t));
        float m = vhmax(vm);
        for (; t < Tk; ++t) m = std::max(m, sg[t]);
        if (m == NEG) m = 0.f;  // every slot masked: all probabilities 0 (output 0)
        vf acc = vset(0.f);
        for (t = 0; t + W <= Tk; t += W) { const vf e = vexp(vadd(vload(sg + t), vset(-m))); vstore(sg + t, e); acc = vadd(acc, e); }
        float l = vsum(acc);
        for (; t < Tk; ++t) { float e = sg[t] == NEG ? 0.f : std::exp(sg[t] - m); sg[t] = e; l += e; }
        scale_by(sg, l > 0.f ? 1.f / l : 0.f, Tk);
      }
      float* ob = op + (b * Hq + h * G) * D;
      int64_t g = 0;
      for (; g + 4 <= G; g += 4) pv_heads<4>(s.data() + g * Tk, Tk, vb, vst, ob + g * D, D);
      switch (G - g) {
        case 3: pv_heads<3>(s.data() + g * Tk, Tk, vb, vst, ob + g * D, D); break;
        case 2: pv_heads<2>(s.data() + g * Tk, Tk, vb, vst, ob + g * D, D); break;
        case 1: pv_heads<1>(s.data() + g * Tk, Tk, vb, vst, ob + g * D, D); break;
        default: break;
      }
    }
  });
  return out;
}

// ---------------- temperature / top-p sampling ----------------
// logits (B, V) fp32 with contiguous rows, u (B,) fp64 uniforms in [0, 1). Per row: p = softmax(logits / T) (fp32;
// exp by the vectorised exp, normalised by the reciprocal of the sum); with top_p < 1 the kept set is {p >= tau},
// tau the smallest probability value whose cumulative mass over the ascending order, ties included, reaches
// total - top_p (the same set as `generate.sample_next`'s sort-based threshold), found by a bisection over the bit
// patterns of non-negative floats (ordered like the values) with one masked-sum pass per step, no sort. The draw is
// inverse-CDF over the kept mass in vocabulary order (fp64 running sum; first index whose sum exceeds u * kept).
// Returns token (B,) int64 and log p(token) (B,) fp32 (tempered, untruncated).
static inline uint32_t fbits(float x) { uint32_t b; std::memcpy(&b, &x, 4); return b; }
static inline float bfloat(uint32_t b) { float x; std::memcpy(&x, &b, 4); return x; }

// Split the entries of x[0, n) (non-negative floats) at v: those <= v to lo_out (count *nl, sum returned), those > v
// to hi_out (count *nh). lo_out or hi_out may alias x (writes never pass the entries still to be read).
static double split_at(const float* x, int64_t n, float v, float* lo_out, int64_t* nl, float* hi_out, int64_t* nh) {
  int64_t a = 0, b = 0, i = 0;
#if defined(__AVX512F__)
  const vf vv = vset(v);
  vf acc = vset(0.f);
  for (; i + W <= n; i += W) {
    const vf xv = vload(x + i);
    const __mmask16 le = _mm512_cmp_ps_mask(xv, vv, _CMP_LE_OQ);
    acc = _mm512_mask_add_ps(acc, le, acc, xv);
    _mm512_mask_compressstoreu_ps(lo_out + a, le, xv);
    a += __builtin_popcount(le);
    _mm512_mask_compressstoreu_ps(hi_out + b, (__mmask16)~le, xv);
    b += W - __builtin_popcount(le);
  }
  double s = (double)vsum(acc);
#else
  double s = 0.0;
#endif
  float tail = 0.f;
  for (; i < n; ++i) {
    const float xv = x[i];
    if (xv <= v) { tail += xv; lo_out[a++] = xv; } else { hi_out[b++] = xv; }
  }
  *nl = a;
  *nh = b;
  return s + (double)tail;
}

// Sum of the entries of p[0, n) that are >= t (non-negative floats).
static double mass_at_least(const float* p, int64_t n, float t) {
  int64_t i = 0;
#if defined(__AVX512F__)
  const vf vt = vset(t);
  vf a0 = vset(0.f), a1 = vset(0.f);
  for (; i + 2 * W <= n; i += 2 * W) {
    const vf x0 = vload(p + i), x1 = vload(p + i + W);
    a0 = _mm512_mask_add_ps(a0, _mm512_cmp_ps_mask(x0, vt, _CMP_GE_OQ), a0, x0);
    a1 = _mm512_mask_add_ps(a1, _mm512_cmp_ps_mask(x1, vt, _CMP_GE_OQ), a1, x1);
  }
  double s = (double)vsum(a0) + (double)vsum(a1);
#else
  double s = 0.0;
#endif
  float tail = 0.f;
  for (; i < n; ++i) tail += p[i] >= t ? p[i] : 0.f;
  return s + (double)tail;
}

static inline vf vmax_row(const float* x, int64_t n, float* tail_max) {  // lanes of the max over x[0, n - n % W)
  vf m = vset(-std::numeric_limits<float>::infinity());
  float t = -std::numeric_limits<float>::infinity();
  int64_t i = 0;
  for (; i + W <= n; i += W) m = vmax(m, vload(x + i));
  for (; i < n; ++i) t = std::max(t, x[i]);
  *tail_max = t;
  return m;
}

std::vector<torch::Tensor> sample_top_p(torch::Tensor logits, double temperature, double top_p, torch::Tensor u) {
  TORCH_CHECK(logits.dim() == 2 && logits.stride(1) == 1 && logits.scalar_type() == at::kFloat, "logits must be (B, V) fp32, contiguous rows");
  TORCH_CHECK(u.dim() == 1 && u.size(0) == logits.size(0) && u.scalar_type() == at::kDouble && u.is_contiguous(), "u must be (B,) fp64");
  TORCH_CHECK(temperature > 0.0 && top_p > 0.0 && top_p <= 1.0, "temperature must be > 0 and top_p in (0, 1]");
  const int64_t B = logits.size(0), V = logits.size(1), BLK = 256;
  auto tok = torch::empty({B}, logits.options().dtype(at::kLong));
  auto logp = torch::empty({B}, logits.options());
  const float* lp = logits.data_ptr<float>();
  const double* up = u.data_ptr<double>();
  int64_t* tp = tok.data_ptr<int64_t>();
  float* op = logp.data_ptr<float>();
  const float T = (float)temperature;
  at::parallel_for(0, B, 1, [&](int64_t r0, int64_t r1) {
    std::vector<float> pv(V), work(V), work2(V);
    float* p = pv.data();
    for (int64_t r = r0; r < r1; ++r) {
      const float* l = lp + r * logits.stride(0);
      const float* x = l;
      if (temperature != 1.0) {  // logits / T, a division as in torch
        for (int64_t i = 0; i < V; ++i) p[i] = l[i] / T;
        x = p;
      }
      float mt;
      const float m = std::max(vhmax(vmax_row(x, V, &mt)), mt);
      vf acc = vset(0.f);
      int64_t i = 0;
      for (; i + W <= V; i += W) { const vf e = vexp(vadd(vload(x + i), vset(-m))); vstore(p + i, e); acc = vadd(acc, e); }
      float sum = vsum(acc);
      for (; i < V; ++i) { p[i] = std::exp(x[i] - m); sum += p[i]; }
      scale_by(p, 1.f / sum, V);
      float tau = 0.f;  // keep p >= tau
      if (top_p < 1.0) {
        const double total = mass_at_least(p, V, 0.f);
        const double need = total - top_p;  // mass of the smallest entries that may be dropped
        if (need > 0.0) {
          // bisection over bit patterns: the answer is the smallest v in [lo, hi] with mass(<= v) >= need; `work`
          // holds the entries in [lo, hi], `below` the mass of the entries under lo
          float pmin_t, pmax_t;
          const float pmax = std::max(vhmax(vmax_row(p, V, &pmax_t)), pmax_t);
          vf vmn = vset(pmax);
          int64_t j = 0;
          for (; j + W <= V; j += W) vmn = vmin(vmn, vload(p + j));
          float pmin = pmax;
          for (; j < V; ++j) pmin = std::min(pmin, p[j]);
          float lanes[W];
          vstore(lanes, vmn);
          for (int q = 0; q < W; ++q) pmin = std::min(pmin, lanes[q]);
          uint32_t lo = fbits(pmin), hi = fbits(pmax);
          std::copy(p, p + V, work.data());
          float* w = work.data();
          float* hbuf = work2.data();
          int64_t n = V;
          double below = 0.0;
          while (lo < hi && n > 0) {
            const uint32_t mid = lo + (hi - lo) / 2;
            int64_t nl, nh;
            const double s = split_at(w, n, bfloat(mid), w, &nl, hbuf, &nh);
            if (below + s >= need) {
              hi = mid;
              n = nl;  // entries in [lo, mid], already at the front of w
            } else {
              lo = mid + 1;
              below += s;
              std::swap(w, hbuf);  // entries in (mid, hi]
              n = nh;
            }
          }
          tau = bfloat(lo);  // lo == hi: the smallest value whose mass at or below it reaches `need` (a p value)
        }
      }
      // kept mass per block of BLK entries, then the block and the entry where the running sum passes u * kept
      const int64_t nb = (V + BLK - 1) / BLK;
      std::vector<double> bs(nb);
      double kept = 0.0;
      for (int64_t b = 0; b < nb; ++b) {
        bs[b] = mass_at_least(p + b * BLK, std::min(V, (b + 1) * BLK) - b * BLK, tau);
        kept += bs[b];
      }
      const double target = up[r] * kept;
      double run = 0.0;
      int64_t pick = -1, last = -1;
      for (int64_t b = 0; b < nb && pick < 0; ++b) {
        if (bs[b] <= 0.0) continue;
        if (run + bs[b] <= target && b + 1 < nb) { run += bs[b]; for (int64_t j = std::min(V, (b + 1) * BLK) - 1; j >= b * BLK; --j) if (p[j] >= tau && p[j] > 0.f) { last = j; break; } continue; }
        for (int64_t j = b * BLK; j < std::min(V, (b + 1) * BLK); ++j) {
          if (p[j] < tau || p[j] == 0.f) continue;
          last = j;
          run += (double)p[j];
          if (run > target) { pick = j; break; }
        }
      }
      if (pick < 0) pick = last;  // rounding at the very end of the kept mass
      tp[r] = pick;
      op[r] = std::log(p[pick]);
    }
  });
  return {tok, logp};
}


// ---------------- one decode step over all (dense SwiGLU) layers ----------------
// The layer loop of `Transformer.decode_step` for one new token per row, with no Python between the ops: per layer
//   h = rmsnorm(x) w1; qkv = h Wqkv^T (+ b); q, k = rope(rmsnorm_head(q|k) wqk) (norm optional), v; k, v written to
//   the cache slot `start`; a = attention(q, cache[:start + 1]); x += a Wo^T (+ b); h = rmsnorm(x) w2;
//   g, u = h Wgu^T; x += (silu(g) u) Wdown^T;   and at the end rmsnorm(x) w_final.
// Linear weights come in the layout their FusedPack chose: 0 plain (N, K) -> at::linear, 1 transposed (K, N) -> at::mm,
// 2 oneDNN prepacked -> mkldnn::_linear_pointwise, 3 tiles -> tiled_linear (bias then padded to the tiles).
static torch::Tensor run_linear(const torch::Tensor& x, const torch::Tensor& w, const torch::Tensor& b, int64_t layout, int64_t n_out) {
  const bool has_b = b.defined() && b.numel() > 0;
  switch (layout) {
    case 0: return has_b ? at::linear(x, w, b) : at::linear(x, w);
    case 1: return has_b ? at::addmm(b, x, w) : at::mm(x, w);
    case 2: {
      static auto op = c10::Dispatcher::singleton().findSchemaOrThrow("mkldnn::_linear_pointwise", "")
          .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&, c10::string_view,
                            c10::List<std::optional<at::Scalar>>, std::optional<c10::string_view>)>();
      return op.call(x, w, has_b ? std::optional<at::Tensor>(b) : std::nullopt, "none", c10::List<std::optional<at::Scalar>>(), std::nullopt);
    }
    default: return tiled_linear(x, w, has_b ? c10::optional<torch::Tensor>(b) : c10::nullopt, n_out);
  }
}

torch::Tensor decode_layers(torch::Tensor x, std::vector<torch::Tensor> params, std::vector<int64_t> layouts, std::vector<int64_t> n_outs,
                            std::vector<torch::Tensor> kc, std::vector<torch::Tensor> vc, int64_t start, torch::Tensor cos, torch::Tensor ssin,
                            c10::optional<torch::Tensor> valid, int64_t hq, int64_t hkv, double eps, double qk_eps, torch::Tensor final_w) {
  const int64_t P = 11, L = (int64_t)kc.size();
  TORCH_CHECK((int64_t)params.size() == P * L && (int64_t)layouts.size() == 4 * L && (int64_t)n_outs.size() == 4 * L, "decode_layers: bad plan sizes");
  TORCH_CHECK(x.dim() == 2 && x.is_contiguous() && x.scalar_type() == at::kFloat, "x must be (B, C) contiguous fp32");
  const int64_t B = x.size(0), C = x.size(1), D = kc[0].size(3), H = hq + 2 * hkv;
  TORCH_CHECK(cos.dim() == 2 && cos.size(0) == B && cos.size(1) == D && cos.is_contiguous() && ssin.is_contiguous(), "cos/ssin must be (B, D)");
  const float* cp = cos.data_ptr<float>();
  const float* sp = ssin.data_ptr<float>();
  const double scale = 1.0 / std::sqrt((double)D);
  std::vector<float> u(D);
  for (int64_t l = 0; l < L; ++l) {
    const torch::Tensor* pr = params.data() + l * P;  // n1, qkv_w, qkv_b, qk_w, o_w, o_b, n2, gu_w, gu_b, down_w, down_b
    torch::Tensor h = rms_norm(x, pr[0], eps, c10::nullopt)[0];
    torch::Tensor qkv = run_linear(h, pr[1], pr[2], layouts[4 * l], n_outs[4 * l]);  // (B, H D)
    TORCH_CHECK(qkv.size(1) == H * D && qkv.is_contiguous(), "decode_layers: q/k/v width");
    auto q = torch::empty({B, hq, 1, D}, x.options());
    const torch::Tensor& K = kc[l];
    const torch::Tensor& V = vc[l];
    float* kp = K.data_ptr<float>();
    float* vp = V.data_ptr<float>();
    const float* qkw = pr[3].defined() && pr[3].numel() > 0 ? pr[3].data_ptr<float>() : nullptr;
    const float* xq = qkv.data_ptr<float>();
    for (int64_t b = 0; b < B; ++b) {
      const float* c = cp + b * D;
      const float* s = sp + b * D;
      for (int64_t hh = 0; hh < hq + hkv; ++hh) {
        float* o = hh < hq ? q.data_ptr<float>() + (b * hq + hh) * D
                           : kp + b * K.stride(0) + (hh - hq) * K.stride(1) + start * K.stride(2);
        norm_rope_row(xq + (b * H + hh) * D, qkw ? qkw + hh * D : nullptr, (float)qk_eps, c, s, u.data(), o, D);
      }
      for (int64_t hh = 0; hh < hkv; ++hh) {
        const float* xr = xq + (b * H + hq + hkv + hh) * D;
        std::copy(xr, xr + D, vp + b * V.stride(0) + hh * V.stride(1) + start * V.stride(2));
      }
    }
    torch::Tensor a = decode_attention(q, K.narrow(2, 0, start + 1), V.narrow(2, 0, start + 1), valid, scale).view({B, hq * D});
    torch::Tensor y = run_linear(a, pr[4], pr[5], layouts[4 * l + 1], n_outs[4 * l + 1]);
    auto r = rms_norm(x, pr[6], eps, y);  // x + y, and its norm
    x = r[0];
    torch::Tensor gu = run_linear(r[1], pr[7], pr[8], layouts[4 * l + 2], n_outs[4 * l + 2]);  // (B, 2 F)
    const int64_t F = gu.size(1) / 2;
    // silu(g) * u by ATen's own silu (so the step equals the Python loop bit for bit), g, u = the halves of gu
    torch::Tensor act = at::silu(gu.narrow(1, 0, F)).mul_(gu.narrow(1, F, F));
    y = run_linear(act, pr[9], pr[10], layouts[4 * l + 3], n_outs[4 * l + 3]);
    x = x.add(y);
  }
  return rms_norm(x, final_w, eps, c10::nullopt)[0];
}


// ---------------- SwiGLU activation, forward and backward (training) ----------------
// gu (N, 2F) = [g | u] rows (contiguous last dim, any row stride): act = silu(g) u with silu(g) = g / (1 + exp(-g)).
// Backward, given d = dL/dact (N, F) contiguous: with s = sigmoid(g), dg = d u s (1 + g (1 - s)), du = d g s, written
// straight into one (N, 2F) gradient (the layout of the fused gate/up GEMM's output), in one pass over the rows.
static inline vf vsub_(vf a, vf b) { return vadd(a, vmul(b, vset(-1.f))); }

static inline vf vdiv_(vf a, vf b) {
#if defined(__AVX512F__)
  return _mm512_div_ps(a, b);
#elif defined(__AVX2__) && defined(__FMA__)
  return _mm256_div_ps(a, b);
#else
  return a / b;
#endif
}

torch::Tensor swiglu_fwd(torch::Tensor gu) {
  TORCH_CHECK(gu.dim() == 2 && gu.stride(1) == 1 && gu.size(1) % 2 == 0 && gu.scalar_type() == at::kFloat, "gu must be (N, 2F) fp32, contiguous rows");
  const int64_t N = gu.size(0), F = gu.size(1) / 2, ld = gu.stride(0);
  auto act = torch::empty({N, F}, gu.options());
  const float* gp = gu.data_ptr<float>();
  float* ap = act.data_ptr<float>();
  at::parallel_for(0, N, std::max<int64_t>(1, 4096 / std::max<int64_t>(1, F)), [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const float* g = gp + r * ld;
      const float* u = g + F;
      float* a = ap + r * F;
      int64_t i = 0;
      for (; i + W <= F; i += W) {
        const vf x = vload(g + i);
        vstore(a + i, vmul(vdiv_(x, vadd(vset(1.f), vexp(vmul(x, vset(-1.f))))), vload(u + i)));
      }
      for (; i < F; ++i) a[i] = g[i] / (1.f + std::exp(-g[i])) * u[i];
    }
  });
  return act;
}

torch::Tensor swiglu_bwd(torch::Tensor d, torch::Tensor gu) {
  TORCH_CHECK(gu.dim() == 2 && gu.stride(1) == 1 && gu.scalar_type() == at::kFloat, "gu must be (N, 2F) fp32, contiguous rows");
  const int64_t N = gu.size(0), F = gu.size(1) / 2, ld = gu.stride(0);
  TORCH_CHECK(d.dim() == 2 && d.size(0) == N && d.size(1) == F && d.stride(1) == 1 && d.scalar_type() == at::kFloat, "d must be (N, F) fp32");
  auto dgu = torch::empty({N, 2 * F}, gu.options());
  const float* gp = gu.data_ptr<float>();
  const float* dp = d.data_ptr<float>();
  float* op = dgu.data_ptr<float>();
  const int64_t ldd = d.stride(0);
  at::parallel_for(0, N, std::max<int64_t>(1, 4096 / std::max<int64_t>(1, F)), [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const float* g = gp + r * ld;
      const float* u = g + F;
      const float* dr = dp + r * ldd;
      float* dg = op + r * 2 * F;
      float* du = dg + F;
      int64_t i = 0;
      const vf one = vset(1.f);
      for (; i + W <= F; i += W) {
        const vf x = vload(g + i), dv = vload(dr + i);
        const vf sg = vdiv_(one, vadd(one, vexp(vmul(x, vset(-1.f)))));  // sigmoid(g)
        const vf xs = vmul(x, sg);                                       // silu(g)
        vstore(du + i, vmul(dv, xs));
        const vf ds = vmul(sg, vfma(x, vadd(one, vmul(sg, vset(-1.f))), one));  // s (1 + g (1 - s))
        vstore(dg + i, vmul(vmul(dv, vload(u + i)), ds));
      }
      for (; i < F; ++i) {
        const float sg = 1.f / (1.f + std::exp(-g[i])), xs = g[i] * sg;
        du[i] = dr[i] * xs;
        dg[i] = dr[i] * u[i] * (sg * (1.f + g[i] * (1.f - sg)));
      }
    }
  });
  return dgu;
}


// ---------------- RMSNorm forward / backward (training) ----------------
// Forward: x (N, C) contiguous rows, w (C) -> y = x r w and r (N,) = rsqrt(mean(x^2) + eps).
// Backward: dx = r (g w - x_hat mean(g w x_hat)), x_hat = x r; dw = sum_rows g x_hat (rows accumulated in fp32 per
// thread, then summed).
std::vector<torch::Tensor> rms_norm_train_fwd(torch::Tensor x, torch::Tensor w, double eps) {
  TORCH_CHECK(x.dim() == 2 && x.is_contiguous() && x.scalar_type() == at::kFloat && w.is_contiguous() && w.numel() == x.size(1), "x (N, C), w (C) contiguous fp32");
  const int64_t N = x.size(0), C = x.size(1);
  auto y = torch::empty_like(x);
  auto r = torch::empty({N}, x.options());
  const float* xp = x.data_ptr<float>();
  const float* wp = w.data_ptr<float>();
  float* yp = y.data_ptr<float>();
  float* rp = r.data_ptr<float>();
  at::parallel_for(0, N, std::max<int64_t>(1, 8192 / std::max<int64_t>(1, C)), [&](int64_t r0, int64_t r1) {
    for (int64_t n = r0; n < r1; ++n) {
      rp[n] = norm_row(xp + n * C, wp, (float)eps, yp + n * C, C);
    }
  });
  return {y, r};
}

std::vector<torch::Tensor> rms_norm_train_bwd(torch::Tensor g, torch::Tensor x, torch::Tensor r, torch::Tensor w) {
  TORCH_CHECK(g.is_contiguous() && x.is_contiguous() && g.sizes() == x.sizes() && x.dim() == 2, "g, x (N, C) contiguous");
  const int64_t N = x.size(0), C = x.size(1);
  auto dx = torch::empty_like(x);
  const int nt = std::max(1, at::get_num_threads());
  auto dw_parts = torch::zeros({nt, C}, x.options());
  const float* gp = g.data_ptr<float>();
  const float* xp = x.data_ptr<float>();
  const float* rp = r.data_ptr<float>();
  const float* wp = w.data_ptr<float>();
  float* dxp = dx.data_ptr<float>();
  float* dwp = dw_parts.data_ptr<float>();
  at::parallel_for(0, N, std::max<int64_t>(1, 8192 / std::max<int64_t>(1, C)), [&](int64_t r0, int64_t r1) {
    float* dw = dwp + (int64_t)at::get_thread_num() * C;
    for (int64_t n = r0; n < r1; ++n) {
      const float* gr = gp + n * C;
      const float* xr = xp + n * C;
      const float rr = rp[n];
      const vf vr = vset(rr);
      vf acc = vset(0.f);
      int64_t i = 0;
      for (; i + W <= C; i += W) {  // mean(g w x_hat)
        const vf xh = vmul(vload(xr + i), vr);
        acc = vfma(vmul(vload(gr + i), vload(wp + i)), xh, acc);
        vstore(dw + i, vfma(vload(gr + i), xh, vload(dw + i)));
      }
      float dot_ = vsum(acc);
      for (; i < C; ++i) { const float xh = xr[i] * rr; dot_ += gr[i] * wp[i] * xh; dw[i] += gr[i] * xh; }
      const float m = dot_ / (float)C;
      const vf vm = vset(m);
      float* dxr = dxp + n * C;
      for (i = 0; i + W <= C; i += W) {
        const vf xh = vmul(vload(xr + i), vr);
        vstore(dxr + i, vmul(vsub_(vmul(vload(gr + i), vload(wp + i)), vmul(xh, vm)), vr));
      }
      for (; i < C; ++i) dxr[i] = (gr[i] * wp[i] - xr[i] * rr * m) * rr;
    }
  });
  return {dx, dw_parts.sum(0)};
}

int64_t simd_width() { return W; }

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  // every kernel runs without the GIL (tensors and numbers only, no Python objects inside), so other Python
  // threads (a server's event loop beside its decode worker) run while a decode step computes
  auto nogil = py::call_guard<py::gil_scoped_release>();
  m.def("tiled_linear", &tiled_linear, nogil); m.def("rms_norm", &rms_norm, nogil); m.def("qk_norm_rope", &qk_norm_rope, nogil);
  m.def("decode_attention", &decode_attention, nogil); m.def("simd_width", &simd_width);
  m.def("sample_top_p", &sample_top_p, nogil); m.def("decode_layers", &decode_layers, nogil);
  m.def("swiglu_fwd", &swiglu_fwd, nogil); m.def("swiglu_bwd", &swiglu_bwd, nogil);
  m.def("rms_norm_train_fwd", &rms_norm_train_fwd, nogil); m.def("rms_norm_train_bwd", &rms_norm_train_bwd, nogil);
}
"""

_EXT = None
_FAILED: str | None = None
_LOCK = threading.Lock()
_LOCAL = threading.local()


def build(name: str = "sherman_cpu_decode_v13", arch_flags: tuple[str, ...] = ("-march=native",)):
    """Compile (or load from torch's build cache) the extension; `arch_flags` pick the SIMD layer (`core/simd.py`)."""
    from torch.utils.cpp_extension import load_inline

    return load_inline(name=name, cpp_sources=[_SRC], extra_cflags=["-O3", *arch_flags], verbose=False)


def enabled_by_env() -> bool:
    """False when SHERMAN_CPP=0 (pure PyTorch everywhere)."""
    return os.environ.get("SHERMAN_CPP", "auto") != "0"


def ext():
    """The compiled extension, or None (disabled by SHERMAN_CPP=0, or it does not build here: the reason is in
    `failure()`). The first call in a process compiles or loads it."""
    global _EXT, _FAILED
    if _EXT is None and _FAILED is None and enabled_by_env():
        with _LOCK:
            if _EXT is None and _FAILED is None:
                try:
                    print("sherman: loading the C++ decode kernels (core/cpu_decode.py; SHERMAN_CPP=0 disables them); "
                          "the first use on a machine compiles them, ~15-20 s ...", file=sys.stderr, flush=True)
                    _EXT = build()
                except Exception as e:  # no compiler or headers: the PyTorch ops are used
                    _FAILED = f"{type(e).__name__}: {e}"
    return _EXT if enabled_by_env() else None


def failure() -> str | None:
    return _FAILED


@contextlib.contextmanager
def inference(enable: bool = True):
    """Within this context (per thread; re-entrant) the kernels serve fp32 CPU no-grad ops, when the extension is
    available (loading it on first use) and SHERMAN_CPP is not 0 at entry. `packed_weights` enters it (with
    enable=False for a model whose weights are not fp32 on the CPU: nothing is compiled then)."""
    prev = getattr(_LOCAL, "on", False)
    _LOCAL.on = enable and ext() is not None
    try:
        yield
    finally:
        _LOCAL.on = prev


def active(x: torch.Tensor) -> bool:
    """True when a kernel may serve an op on x: inside `inference()` with the extension on, fp32 CPU, no gradient."""
    return getattr(_LOCAL, "on", False) and x.dtype == torch.float32 and x.device.type == "cpu" and not torch.is_grad_enabled()


def tile_width() -> int:
    """Columns per packed tile (4 SIMD widths of the compiled extension)."""
    return 4 * ext().simd_width()


def pack_tiles(w: torch.Tensor, bias: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """w (N, K) -> (tiles, K, NT) column tiles of W^T, N zero-padded to tiles * NT; bias (N,) -> (tiles * NT,)."""
    nt = tile_width()
    n, k = w.shape
    tiles = -(-n // nt)
    wt = w.new_zeros(tiles * nt, k)
    wt[:n] = w
    wp = wt.t().reshape(k, tiles, nt).permute(1, 0, 2).contiguous()  # (tiles, K, NT)
    bp = None
    if bias is not None:
        bp = bias.new_zeros(tiles * nt)
        bp[:n] = bias
    return wp, bp


def tiled_linear(x: torch.Tensor, wp: torch.Tensor, bp: torch.Tensor | None, n_out: int) -> torch.Tensor:
    """x (..., K) -> (..., n_out) = x W^T + b on weights packed by `pack_tiles`."""
    x2 = x.reshape(-1, x.shape[-1])
    if x2.stride(-1) != 1:
        x2 = x2.contiguous()
    return _EXT.tiled_linear(x2, wp, bp, n_out).view(*x.shape[:-1], n_out)


def rms_norm(x: torch.Tensor, w: torch.Tensor, eps: float, residual: torch.Tensor | None = None):
    """x (..., C) -> rmsnorm(x) * w; with `residual`: (x + residual, rmsnorm(x + residual) * w)."""
    shape = x.shape
    x2 = x.reshape(-1, shape[-1])
    if x2.stride(-1) != 1:
        x2 = x2.contiguous()
    if residual is None:
        return _EXT.rms_norm(x2, w, eps, None)[0].view(shape)
    r2 = residual.reshape(-1, shape[-1])
    if r2.stride(-1) != 1:
        r2 = r2.contiguous()
    s, out = _EXT.rms_norm(x2, w, eps, r2)
    return s.view(shape), out.view(shape)


def qk_norm_rope(qkv: torch.Tensor, hq: int, hkv: int, w: torch.Tensor | None, eps: float, cos: torch.Tensor, ssin: torch.Tensor):
    """qkv (B, T, H_q + 2 H_kv, D); cos, ssin (B|1, 1, T, D) -> q (B, H_q, T, D), k, v (B, H_kv, T, D)."""
    c, s = cos[:, 0], ssin[:, 0]  # (B|1, T, D)
    b, t, _, d = qkv.shape
    if c.shape[1] != t:  # a broadcast table (one position row for every query)
        c, s = c.expand(c.shape[0], t, d), s.expand(s.shape[0], t, d)
    return _EXT.qk_norm_rope(qkv, hq, hkv, w, eps, c, s)


def decode_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_valid: torch.Tensor | None, scale: float) -> torch.Tensor:
    """q (B, H_q, 1, D), k/v (B, H_kv, T_k, D) cache views, key_valid (B, >= T_k) -> (B, H_q, 1, D)."""
    if not q.is_contiguous():
        q = q.contiguous()
    if key_valid is not None and key_valid.stride(-1) != 1:
        key_valid = key_valid.contiguous()
    return _EXT.decode_attention(q, k, v, key_valid, scale)


def sample_top_p(logits: torch.Tensor, temperature: float, top_p: float, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """logits (B, V), u (B,) uniforms -> (token (B,), log p(token) (B,)): `generate.sample_next`'s draw for T > 0 in
    one pass per row plus a bisection for the top-p threshold (no sort)."""
    x = logits if logits.stride(-1) == 1 else logits.contiguous()
    return tuple(_EXT.sample_top_p(x, float(temperature), float(top_p), u.double().contiguous()))


def _pack_parts(pack) -> tuple[int, torch.Tensor, torch.Tensor, int]:
    """A `FusedPack` -> (layout code, weight in that layout, bias (empty if none; padded for tiles), output width)."""
    n = sum(pack.splits)
    empty = torch.empty(0)
    if pack.tiles is not None:
        return 3, pack.tiles[0], pack.tiles[1] if pack.tiles[1] is not None else empty, n
    bias = pack.bias if pack.bias is not None else empty
    if pack.packed is not None:
        return 2, pack.packed, bias, n
    if pack.wt is not None:
        return 1, pack.wt, bias, n
    return 0, pack.plain, bias, n


class LayerPlan:
    """What `decode_layers` needs of a model: per layer the RMSNorm weights, the q/k norm weights (concatenated), and
    the q/k/v, o, gate/up and down weights in their `FusedPack` layouts. Valid while every pack is fresh."""

    PER_LAYER = 11

    def __init__(self, params, layouts, n_outs, packs, hq, hkv, eps, qk_eps, final_w):
        self.params, self.layouts, self.n_outs, self.packs = params, layouts, n_outs, packs
        self.hq, self.hkv, self.eps, self.qk_eps, self.final_w = hq, hkv, eps, qk_eps, final_w

    @classmethod
    def build(cls, model) -> LayerPlan | None:
        from sherman.core.moe import SwiGLU

        cfg = model.cfg
        norms = [model.norm] + [n for layer in model.layers for n in (layer.input_layernorm, layer.post_attention_layernorm)]
        if any(n.eps != model.norm.eps for n in norms):
            return None
        params, layouts, n_outs, packs = [], [], [], []
        qk_eps = 0.0
        empty = torch.empty(0)
        for layer in model.layers:
            at, mlp = layer.self_attn, layer.mlp
            if not isinstance(mlp, SwiGLU):
                return None
            lp = [at.__dict__.get("_qkv_pack"), at.o_proj._pack, mlp.__dict__.get("_gate_up_pack"), mlp.down_proj._pack]
            if any(p is None for p in lp):
                return None
            parts = [_pack_parts(p) for p in lp]
            qk = empty
            if at.q_norm is not None:
                qk = torch.cat([at.q_norm.weight.detach().expand(cfg.n_heads, cfg.head_dim), at.k_norm.weight.detach().expand(cfg.n_kv_heads, cfg.head_dim)]).contiguous()
                qk_eps = at.q_norm.eps
            params += [layer.input_layernorm.weight.detach(), parts[0][1], parts[0][2], qk, parts[1][1], parts[1][2],
                       layer.post_attention_layernorm.weight.detach(), parts[2][1], parts[2][2], parts[3][1], parts[3][2]]
            layouts += [p[0] for p in parts]
            n_outs += [p[3] for p in parts]
            packs += lp
        return cls(params, layouts, n_outs, packs, cfg.n_heads, cfg.n_kv_heads, model.norm.eps, qk_eps, model.norm.weight.detach())

    def fresh(self) -> bool:
        return all(p.fresh() for p in self.packs)


def decode_layers(x: torch.Tensor, plan: LayerPlan, cache, start: int, cos: torch.Tensor, ssin: torch.Tensor, key_valid: torch.Tensor | None) -> torch.Tensor:
    """`Transformer.decode_step`'s layer loop in one C++ call: x (B, C) embeddings of the new tokens, written into
    `cache` at slot `start`; cos, ssin (B, D) -> the final normed hidden state (B, C)."""
    if key_valid is not None and key_valid.stride(-1) != 1:
        key_valid = key_valid.contiguous()
    return _EXT.decode_layers(x.contiguous(), plan.params, plan.layouts, plan.n_outs, cache.k, cache.v, start, cos.contiguous(), ssin.contiguous(),
                              key_valid, plan.hq, plan.hkv, plan.eps, plan.qk_eps, plan.final_w)


class SwiGLUFn(torch.autograd.Function):
    """act = silu(g) * u for gu = [g | u] (N, 2F), forward and backward each one C++ pass (training: about a third of
    the memory traffic of silu, mul and their backward ops, and the gradient comes out already in the fused
    gate/up layout, so autograd does not `cat` dg and du)."""

    @staticmethod
    def forward(ctx, gu: torch.Tensor) -> torch.Tensor:
        gu2 = gu.reshape(-1, gu.shape[-1])
        if gu2.stride(-1) != 1:
            gu2 = gu2.contiguous()
        ctx.save_for_backward(gu2)
        ctx.shape = gu.shape
        return _EXT.swiglu_fwd(gu2).view(*gu.shape[:-1], gu.shape[-1] // 2)

    @staticmethod
    def backward(ctx, d: torch.Tensor):
        (gu2,) = ctx.saved_tensors
        d2 = d.reshape(-1, d.shape[-1])
        if d2.stride(-1) != 1:
            d2 = d2.contiguous()
        return _EXT.swiglu_bwd(d2, gu2).view(ctx.shape)


def training_kernels(x: torch.Tensor) -> bool:
    """True when the training-side kernels (`SwiGLUFn`) may run on x: fp32 CPU, recording a gradient, extension built
    (loaded on first use; SHERMAN_CPP=0 disables)."""
    return x.dtype == torch.float32 and x.device.type == "cpu" and torch.is_grad_enabled() and ext() is not None


class RMSNormFn(torch.autograd.Function):
    """y = x r w, r = rsqrt(mean(x^2) + eps), forward and the closed-form backward (`core.model._RMSNormFn`'s formula)
    each one C++ pass over the rows (training)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, w: torch.Tensor, eps: float) -> torch.Tensor:
        x2 = x.reshape(-1, x.shape[-1]).contiguous()
        y, r = _EXT.rms_norm_train_fwd(x2, w.contiguous(), eps)
        ctx.save_for_backward(x2, r, w)
        ctx.shape = x.shape
        return y.view(x.shape)

    @staticmethod
    def backward(ctx, g: torch.Tensor):
        x2, r, w = ctx.saved_tensors
        dx, dw = _EXT.rms_norm_train_bwd(g.reshape(-1, g.shape[-1]).contiguous(), x2, r, w.contiguous())
        return (dx.view(ctx.shape) if ctx.needs_input_grad[0] else None), (dw if ctx.needs_input_grad[1] else None), None
