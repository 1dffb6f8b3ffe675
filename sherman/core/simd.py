"""The C++ SIMD layer shared by Sherman's CPU kernels (`attention/fused.py`, `core/cpu_decode.py`).

`SIMD_SRC` is C++ source text that each extension puts at the top of its own `load_inline` source: the includes, a
float-vector type `vf` of W lanes chosen at compile time (AVX-512: 16, AVX2 + FMA: 8, otherwise scalar: 1) with
load/store/fma/add/mul/max/min/horizontal sum and max, `vsum4` (four horizontal sums by one transpose tree), a
vectorised exp (Cephes' range reduction and degree-7 polynomial, relative error ~1e-7, exactly 0 below -87.3), and
the small row helpers `dot`, `dot4` (four query rows against one key row), `axpy`, `scale_by` and `prefetch_row`. The arch flags given to the compiler
(-march=native, or -mno-avx512f / -mno-avx2 in the tests) pick the branch.
"""

from __future__ import annotations

SIMD_SRC = r"""
#include <torch/extension.h>
#include <algorithm>
#include <atomic>
#include <cmath>
#include <limits>
#include <thread>
#include <vector>
#if defined(__AVX512F__) || defined(__AVX2__)
#include <immintrin.h>
#endif

// ---- a small SIMD layer: W float lanes (AVX-512: 16, AVX2 + FMA: 8, otherwise scalar: 1) ----
#if defined(__AVX512F__)
constexpr int64_t W = 16;
using vf = __m512;
using vi = __m512i;
static inline vf vload(const float* p) { return _mm512_loadu_ps(p); }
static inline void vstore(float* p, vf x) { _mm512_storeu_ps(p, x); }
static inline vf vset(float a) { return _mm512_set1_ps(a); }
static inline vf vfma(vf a, vf b, vf c) { return _mm512_fmadd_ps(a, b, c); }
static inline vf vadd(vf a, vf b) { return _mm512_add_ps(a, b); }
static inline vf vmul(vf a, vf b) { return _mm512_mul_ps(a, b); }
static inline vf vmax(vf a, vf b) { return _mm512_max_ps(a, b); }
static inline vf vmin(vf a, vf b) { return _mm512_min_ps(a, b); }
static inline float vsum(vf x) { return _mm512_reduce_add_ps(x); }
static inline float vhmax(vf x) { return _mm512_reduce_max_ps(x); }
static inline vf vround(vf x) { return _mm512_roundscale_ps(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }
static inline vf vpow2i(vf n) {  // 2^n for integral n in [-126, 127], built in the exponent field
  vi e = _mm512_add_epi32(_mm512_cvtps_epi32(n), _mm512_set1_epi32(127));
  return _mm512_castsi512_ps(_mm512_slli_epi32(e, 23));
}
static inline vf vzero_below(vf y, vf x, float lo) {  // y where x >= lo, else 0
  return _mm512_maskz_mov_ps(_mm512_cmp_ps_mask(x, _mm512_set1_ps(lo), _CMP_GE_OQ), y);
}
static inline void vsum4(vf a, vf b, vf c, vf d, float* out) {  // out[0..3] = sums of a, b, c, d (one transpose tree)
  vf t0 = _mm512_add_ps(_mm512_unpacklo_ps(a, b), _mm512_unpackhi_ps(a, b));  // per 128-bit lane [a02 b02 a13 b13]
  vf t1 = _mm512_add_ps(_mm512_unpacklo_ps(c, d), _mm512_unpackhi_ps(c, d));
  vf u = _mm512_add_ps(_mm512_shuffle_ps(t0, t1, 0x44), _mm512_shuffle_ps(t0, t1, 0xEE));  // per lane [a b c d]
  __m256 h = _mm256_add_ps(_mm512_castps512_ps256(u), _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(u), 1)));
  _mm_storeu_ps(out, _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1)));
}
#elif defined(__AVX2__) && defined(__FMA__)
constexpr int64_t W = 8;
using vf = __m256;
static inline vf vload(const float* p) { return _mm256_loadu_ps(p); }
static inline void vstore(float* p, vf x) { _mm256_storeu_ps(p, x); }
static inline vf vset(float a) { return _mm256_set1_ps(a); }
static inline vf vfma(vf a, vf b, vf c) { return _mm256_fmadd_ps(a, b, c); }
static inline vf vadd(vf a, vf b) { return _mm256_add_ps(a, b); }
static inline vf vmul(vf a, vf b) { return _mm256_mul_ps(a, b); }
static inline vf vmax(vf a, vf b) { return _mm256_max_ps(a, b); }
static inline vf vmin(vf a, vf b) { return _mm256_min_ps(a, b); }
static inline float vsum(vf x) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(x), _mm256_extractf128_ps(x, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
  return _mm_cvtss_f32(s);
}
static inline float vhmax(vf x) {
  __m128 s = _mm_max_ps(_mm256_castps256_ps128(x), _mm256_extractf128_ps(x, 1));
  s = _mm_max_ps(s, _mm_movehl_ps(s, s));
  s = _mm_max_ss(s, _mm_shuffle_ps(s, s, 1));
  return _mm_cvtss_f32(s);
}
static inline vf vround(vf x) { return _mm256_round_ps(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }
static inline vf vpow2i(vf n) {
  __m256i e = _mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127));
  return _mm256_castsi256_ps(_mm256_slli_epi32(e, 23));
}
static inline vf vzero_below(vf y, vf x, float lo) {
  return _mm256_and_ps(y, _mm256_cmp_ps(x, _mm256_set1_ps(lo), _CMP_GE_OQ));
}
static inline void vsum4(vf a, vf b, vf c, vf d, float* out) {
  vf u = _mm256_hadd_ps(_mm256_hadd_ps(a, b), _mm256_hadd_ps(c, d));  // per 128-bit half [a b c d]
  _mm_storeu_ps(out, _mm_add_ps(_mm256_castps256_ps128(u), _mm256_extractf128_ps(u, 1)));
}
#else
constexpr int64_t W = 1;
using vf = float;
static inline vf vload(const float* p) { return *p; }
static inline void vstore(float* p, vf x) { *p = x; }
static inline vf vset(float a) { return a; }
static inline vf vfma(vf a, vf b, vf c) { return a * b + c; }
static inline vf vadd(vf a, vf b) { return a + b; }
static inline vf vmul(vf a, vf b) { return a * b; }
static inline vf vmax(vf a, vf b) { return std::max(a, b); }
static inline vf vmin(vf a, vf b) { return std::min(a, b); }
static inline float vsum(vf x) { return x; }
static inline float vhmax(vf x) { return x; }
static inline vf vround(vf x) { return std::nearbyint(x); }
static inline vf vpow2i(vf n) { return std::ldexp(1.f, (int)n); }
static inline vf vzero_below(vf y, vf x, float lo) { return x >= lo ? y : 0.f; }
static inline void vsum4(vf a, vf b, vf c, vf d, float* out) { out[0] = a; out[1] = b; out[2] = c; out[3] = d; }
#endif

// exp(x) on W lanes: x = n ln2 + r with |r| <= ln2 / 2 (ln2 in two parts, so r is exact to float precision), then
// e^r by the degree-7 Taylor-like minimax polynomial of Cephes' expf (relative error ~1e-7) and 2^n from the exponent
// bits. Inputs below -87.3 (including -inf, a padded slot) give exactly 0; inputs are <= 0 here (scores minus
// their running max), so no overflow branch is needed beyond the clamp.
static inline vf vexp(vf x) {
  const float LO = -87.3f;
  vf xc = vmax(vmin(x, vset(88.3f)), vset(LO));
  vf n = vround(vmul(xc, vset(1.44269504088896341f)));
  vf r = vfma(n, vset(-0.693359375f), xc);
  r = vfma(n, vset(2.12194440e-4f), r);
  vf p = vset(1.9875691500e-4f);
  p = vfma(p, r, vset(1.3981999507e-3f));
  p = vfma(p, r, vset(8.3334519073e-3f));
  p = vfma(p, r, vset(4.1665795894e-2f));
  p = vfma(p, r, vset(1.6666665459e-1f));
  p = vfma(p, r, vset(5.0000001201e-1f));
  p = vfma(p, vmul(r, r), vadd(r, vset(1.f)));
  return vzero_below(vmul(p, vpow2i(n)), x, LO);
}

static inline void prefetch_row(const float* p, int64_t n) {  // ask for the cache lines of p[0, n) (a hint only)
  for (int64_t i = 0; i < n; i += 16) __builtin_prefetch(p + i, 0, 2);
}

static inline float dot(const float* a, const float* b, int64_t n) {
  vf s0 = vset(0.f), s1 = vset(0.f);
  int64_t i = 0;
  for (; i + 2 * W <= n; i += 2 * W) {
    s0 = vfma(vload(a + i), vload(b + i), s0);
    s1 = vfma(vload(a + i + W), vload(b + i + W), s1);
  }
  for (; i + W <= n; i += W) s0 = vfma(vload(a + i), vload(b + i), s0);
  float s = vsum(vadd(s0, s1));
  for (; i < n; ++i) s += a[i] * b[i];
  return s;
}

static inline void axpy(float* y, float a, const float* x, int64_t n) {  // y += a x
  const vf va = vset(a);
  int64_t i = 0;
  for (; i + W <= n; i += W) vstore(y + i, vfma(va, vload(x + i), vload(y + i)));
  for (; i < n; ++i) y[i] += a * x[i];
}

static inline void scale_by(float* y, float a, int64_t n) {  // y *= a
  const vf va = vset(a);
  int64_t i = 0;
  for (; i + W <= n; i += W) vstore(y + i, vmul(va, vload(y + i)));
  for (; i < n; ++i) y[i] *= a;
}

// out[i] = q_i . k for the four query rows q_i = q + i * D (one key row read once for four heads), D % W == 0
static inline void dot4(const float* q, const float* k, int64_t D, float* out) {
  vf a0 = vset(0.f), a1 = vset(0.f), a2 = vset(0.f), a3 = vset(0.f);
  for (int64_t i = 0; i < D; i += W) {
    const vf x = vload(k + i);
    a0 = vfma(vload(q + i), x, a0);
    a1 = vfma(vload(q + D + i), x, a1);
    a2 = vfma(vload(q + 2 * D + i), x, a2);
    a3 = vfma(vload(q + 3 * D + i), x, a3);
  }
  vsum4(a0, a1, a2, a3, out);
}
"""
