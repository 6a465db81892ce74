// cpu_gemv's AVX2 kernels (cpu_gemv_kernels.h), for x86-64 CPUs without AVX-512 (AMD Zen 2/3,
// Intel client and E-core parts) and as a candidate on those with it: float32 and bf16
// weights are widened to float32 in registers and multiplied with float32 FMAs (bf16: a
// 16-bit shift, the form llama.cpp uses where there is no bf16 dot product). Quantised
// weights multiply integer activations with integer dot products: per-channel int8 against
// int16 activations, group-wise 4 and 8 bits against int8 ones (both below).
//
// No software prefetches: on an AMD EPYC (Zen 3, 2 threads, weights out of cache) they only
// cost (prefetching 256-1024 bytes ahead: 2-30 % slower). What does help there is reading
// several distant rows side by side (kStreams below), which the hardware prefetcher follows as
// separate streams. benchmarks/README.md has the figures.
#include "minigpt4/models/cpu_gemv.h"
#include "minigpt4/models/cpu_gemv_kernels.h"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <type_traits>
#include <vector>

namespace minigpt4::cpu_gemv::kernels {

namespace {

#define MINIGPT4_AVX2 __attribute__((target("avx2,fma,f16c")))

// One activation row is bound by memory, and one stream of consecutive rows keeps too few
// reads in flight per core. So a thread's rows [n0, n1) are cut into kStreams equal parts read
// side by side: rows n, n + part, n + 2 part, n + 3 part in one pass. Linear layers of the
// 1.1B LLaMA per token on a Zen 3 EPYC (2 threads, weights in 2 MiB pages): int8 1.18x, bf16
// 1.24x, 8-bit groups 1.28x faster than reading one stream (4-bit groups, bound by unpacking,
// were 0.91x and keep one). Each row's sums are the same either way.
constexpr int64_t kStreams = 4;

// Runs pass(n0, n0 + part, part) over `ways` distant parts of [n0, n1), where each part is at
// least two rows long (parts of one row would be neighbours), and returns where the rows left
// for a one-stream pass begin.
template <typename Pass>
int64_t in_distant_parts(int64_t n0, int64_t n1, int64_t ways, Pass pass) {
  const int64_t part = (n1 - n0) / ways;
  if (ways < 2 || part < 2) return n0;
  pass(n0, n0 + part, part);
  return n0 + ways * part;
}

// Eight weights as float32, and one for the ragged tail, per weight dtype.
struct F32 {
  using T = float;
  MINIGPT4_AVX2 static __m256 load8(const float* p) { return _mm256_loadu_ps(p); }
  static float at(const float* p) { return *p; }
};
struct BF16 {
  using T = uint16_t;
  MINIGPT4_AVX2 static __m256 load8(const uint16_t* p) {
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i*)p)), 16));
  }
  static float at(const uint16_t* p) {
    const uint32_t bits = uint32_t{*p} << 16;
    float v;
    __builtin_memcpy(&v, &bits, sizeof v);
    return v;
  }
};

MINIGPT4_AVX2 inline float horizontal_sum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

// One activation row, one output row with four accumulators over 32 weights per step (the
// rows four_rows leaves).
template <typename W>
MINIGPT4_AVX2 float row_dot(const float* x, int64_t K, const typename W::T* r) {
  const int64_t K32 = K & ~int64_t{31};
  __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps(), a2 = _mm256_setzero_ps(), a3 = _mm256_setzero_ps();
  for (int64_t k = 0; k < K32; k += 32) {
    a0 = _mm256_fmadd_ps(_mm256_loadu_ps(x + k), W::load8(r + k), a0);
    a1 = _mm256_fmadd_ps(_mm256_loadu_ps(x + k + 8), W::load8(r + k + 8), a1);
    a2 = _mm256_fmadd_ps(_mm256_loadu_ps(x + k + 16), W::load8(r + k + 16), a2);
    a3 = _mm256_fmadd_ps(_mm256_loadu_ps(x + k + 24), W::load8(r + k + 24), a3);
  }
  int64_t k = K32;
  for (; k + 8 <= K; k += 8) a0 = _mm256_fmadd_ps(_mm256_loadu_ps(x + k), W::load8(r + k), a0);
  float s = horizontal_sum(_mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)));
  for (; k < K; ++k) s += x[k] * W::at(r + k);
  return s;
}

// One activation row, four output rows at a time, n + i step for i < 4 (see kStreams), two
// accumulators each over 16 weights per step: float32 and bf16 weights. The last K % 16
// weights of a row are summed one by one (a masked AVX2 load exists for 32-bit elements only).
template <typename W>
MINIGPT4_AVX2 void four_rows(const float* x, int64_t K, const typename W::T* w, float* y, int64_t n0, int64_t n1,
                             int64_t step) {
  const int64_t K16 = K & ~int64_t{15};
  const int64_t advance = step == 1 ? 4 : 1;
  int64_t n = n0;
  for (; n + advance <= n1; n += advance) {
    const typename W::T* r[4] = {w + n * K, w + (n + step) * K, w + (n + 2 * step) * K, w + (n + 3 * step) * K};
    __m256 a0[4], a1[4];
    for (int i = 0; i < 4; ++i) a0[i] = a1[i] = _mm256_setzero_ps();
    for (int64_t k = 0; k < K16; k += 16) {
      const __m256 x0 = _mm256_loadu_ps(x + k), x1 = _mm256_loadu_ps(x + k + 8);
      for (int i = 0; i < 4; ++i) {
        a0[i] = _mm256_fmadd_ps(x0, W::load8(r[i] + k), a0[i]);
        a1[i] = _mm256_fmadd_ps(x1, W::load8(r[i] + k + 8), a1[i]);
      }
    }
    for (int i = 0; i < 4; ++i) {
      float s = horizontal_sum(_mm256_add_ps(a0[i], a1[i]));
      for (int64_t k = K16; k < K; ++k) s += x[k] * W::at(r[i] + k);
      y[n + i * step] = s;
    }
  }
  if (step == 1)
    for (; n < n1; ++n) y[n] = row_dot<W>(x, K, w + n * K);
}

// M activation rows (2..kMaxRows), R output rows at a time: each weight vector widened once
// for all M rows, each activation vector loaded once for all R outputs, one accumulator per
// pair (R x M of AVX2's 16 registers); the weights are read once per call, in R streams.
template <typename W, int M, int R>
MINIGPT4_AVX2 void m_rows(const float* x, int64_t K, const typename W::T* w, float* y, int64_t N, int64_t n0,
                          int64_t n1, int64_t step = 1) {
  const int64_t K8 = K & ~int64_t{7};
  const int64_t advance = step == 1 ? R : 1;
  int64_t n = n0;
  for (; n + advance <= n1; n += advance) {
    const typename W::T* r[R];
#pragma GCC unroll 8
    for (int i = 0; i < R; ++i) r[i] = w + (n + i * step) * K;
    __m256 acc[R][M];
#pragma GCC unroll 8
    for (int i = 0; i < R; ++i)
#pragma GCC unroll 8
      for (int m = 0; m < M; ++m) acc[i][m] = _mm256_setzero_ps();
    for (int64_t k = 0; k < K8; k += 8) {
      __m256 wv[R];
#pragma GCC unroll 8
      for (int i = 0; i < R; ++i) wv[i] = W::load8(r[i] + k);
#pragma GCC unroll 8
      for (int m = 0; m < M; ++m) {
        const __m256 xv = _mm256_loadu_ps(x + m * K + k);
#pragma GCC unroll 8
        for (int i = 0; i < R; ++i) acc[i][m] = _mm256_fmadd_ps(xv, wv[i], acc[i][m]);
      }
    }
#pragma GCC unroll 8
    for (int i = 0; i < R; ++i)
#pragma GCC unroll 8
      for (int m = 0; m < M; ++m) {
        float s = horizontal_sum(acc[i][m]);
        for (int64_t k = K8; k < K; ++k) s += x[m * K + k] * W::at(r[i] + k);
        y[m * N + n + i * step] = s;
      }
  }
  if constexpr (R > 1) {
    if (step == 1 && n < n1) m_rows<W, M, 1>(x, K, w, y, N, n, n1);
  }
}

// Output rows per block for M activation rows: R x M accumulators within 12 registers.
template <int M>
constexpr int kBlockOutputs = M <= 2   ? 4
                              : M <= 4 ? 2
                                       : 1;

template <typename W>
void rows(const float* x, int64_t M, int64_t K, const typename W::T* w, float* y, int64_t N, int64_t n0, int64_t n1) {
  if (M == 1) {
    static_assert(kStreams == 4, "four_rows reads four streams");
    n0 = in_distant_parts(n0, n1, kStreams,
                          [&](int64_t a, int64_t b, int64_t step) { four_rows<W>(x, K, w, y, a, b, step); });
    return four_rows<W>(x, K, w, y, n0, n1, 1);
  }
  with_rows(M, [&](auto rows) {
    constexpr int kRows = decltype(rows)::value;
    constexpr int kOutputs = kBlockOutputs<kRows>;
    // The block's output rows from distant parts too, where it has several (as at one row):
    // 2048 -> 5632, 2-4 activation rows, bf16 1.08-1.20x, float32 1.04-1.10x.
    n0 = in_distant_parts(n0, n1, kOutputs, [&](int64_t a, int64_t b, int64_t step) {
      m_rows<W, kRows, kOutputs>(x, K, w, y, N, a, b, step);
    });
    m_rows<W, kRows, kOutputs>(x, K, w, y, N, n0, n1);
  });
}

void f32(const float* x, int64_t M, int64_t K, const float* w, float* y, int64_t N, int64_t n0, int64_t n1) {
  rows<F32>(x, M, K, w, y, N, n0, n1);
}

void bf16(const float* x32, const uint16_t*, int64_t M, int64_t K, const uint16_t* w, float* y, int64_t N, int64_t n0,
          int64_t n1) {
  rows<BF16>(x32, M, K, w, y, N, n0, n1);
}

// ------------------------------------------------------------ per-channel int8 weights
// Widening every int8 weight to float32 (a shuffle and a conversion per 8, then an FMA) bound
// this kernel on a Zen 3 EPYC at 16 GB/s where a plain read does 24. So the activations are
// quantised to int16 per 256 inputs (x ~= x16 * d, d = absmax / 32767: a relative error of at
// most 1.5e-5 of the block's largest value, far below a bf16 activation's 4e-3), and 16
// weights cost one sign extension to int16 and one vpmaddwd per activation row, summed in
// int32 over the block (at most 16 x 2 x 127 x 32767 per lane: no overflow), then one float
// multiply-add by d. 22 GB/s there.

// M rows of K floats -> xq [M, K], xd [M, blocks] (cpu_gemv_kernels.h).
MINIGPT4_AVX2 void quantize_x16(const float* x, int64_t M, int64_t K, int16_t* xq, float* xd) {
  const int64_t blocks = (K + kInt16Block - 1) / kInt16Block;
  const __m256 sign = _mm256_set1_ps(-0.0f);
  for (int64_t m = 0; m < M; ++m)
    for (int64_t b = 0; b < blocks; ++b) {
      const float* xb = x + m * K + b * kInt16Block;
      int16_t* qb = xq + m * K + b * kInt16Block;
      const int64_t len = std::min(kInt16Block, K - b * kInt16Block), len8 = len & ~int64_t{7};
      __m256 vmax = _mm256_setzero_ps();
      for (int64_t k = 0; k < len8; k += 8) vmax = _mm256_max_ps(vmax, _mm256_andnot_ps(sign, _mm256_loadu_ps(xb + k)));
      __m128 m4 = _mm_max_ps(_mm256_castps256_ps128(vmax), _mm256_extractf128_ps(vmax, 1));
      m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
      float amax = _mm_cvtss_f32(_mm_max_ss(m4, _mm_movehdup_ps(m4)));
      for (int64_t k = len8; k < len; ++k) amax = std::max(amax, std::fabs(xb[k]));
      const float scale = amax > 0.0f ? amax / 32767.0f : 1.0f, inv = 1.0f / scale;
      xd[m * blocks + b] = scale;
      const __m256 vinv = _mm256_set1_ps(inv);
      // Round to nearest (the default rounding mode); |x * inv| <= 32767 up to rounding, and
      // the pack saturates.
      for (int64_t k = 0; k < len8; k += 8) {
        const __m256i i32 = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(xb + k), vinv));
        _mm_storeu_si128(reinterpret_cast<__m128i*>(qb + k),
                         _mm_packs_epi32(_mm256_castsi256_si128(i32), _mm256_extracti128_si256(i32, 1)));
      }
      for (int64_t k = len8; k < len; ++k)
        qb[k] = static_cast<int16_t>(std::clamp(std::nearbyint(xb[k] * inv), -32767.0f, 32767.0f));
    }
}

// R output rows x M activation rows: R x M int32 sums within a block, float32 across blocks.
// The R rows of a pass are n, n + step, ..., n + (R - 1) step: step 1 reads neighbours (one
// stream through memory), a larger step reads R separate streams; either way n runs over
// [n0, n1) and the rows of the pass must lie below N.
template <int M, int R>
MINIGPT4_AVX2 void int8_rows(const int16_t* xq, const float* xd, int64_t K, const int8_t* w, const float* scales,
                             float* y, int64_t N, int64_t n0, int64_t n1, int64_t step = 1) {
  const int64_t blocks = (K + kInt16Block - 1) / kInt16Block;
  const int64_t advance = step == 1 ? R : 1;
  int64_t n = n0;
  for (; n + advance <= n1; n += advance) {
    const int8_t* r[R];
#pragma GCC unroll 8
    for (int i = 0; i < R; ++i) r[i] = w + (n + i * step) * K;
    __m256 f[R][M];
    float tail[R][M] = {};
#pragma GCC unroll 8
    for (int i = 0; i < R; ++i)
#pragma GCC unroll 8
      for (int m = 0; m < M; ++m) f[i][m] = _mm256_setzero_ps();
    for (int64_t b = 0; b < blocks; ++b) {
      const int64_t k0 = b * kInt16Block, k1 = std::min(K, k0 + kInt16Block), k16 = k0 + ((k1 - k0) & ~int64_t{15});
      __m256i acc[R][M];
#pragma GCC unroll 8
      for (int i = 0; i < R; ++i)
#pragma GCC unroll 8
        for (int m = 0; m < M; ++m) acc[i][m] = _mm256_setzero_si256();
      for (int64_t k = k0; k < k16; k += 16) {
        __m256i wv[R];
#pragma GCC unroll 8
        for (int i = 0; i < R; ++i)
          wv[i] = _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(r[i] + k)));
#pragma GCC unroll 8
        for (int m = 0; m < M; ++m) {
          const __m256i xv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xq + m * K + k));
#pragma GCC unroll 8
          for (int i = 0; i < R; ++i) acc[i][m] = _mm256_add_epi32(acc[i][m], _mm256_madd_epi16(wv[i], xv));
        }
      }
#pragma GCC unroll 8
      for (int m = 0; m < M; ++m) {
        const float d = xd[m * blocks + b];
        const __m256 dv = _mm256_set1_ps(d);
#pragma GCC unroll 8
        for (int i = 0; i < R; ++i) {
          f[i][m] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(acc[i][m]), dv, f[i][m]);
          int32_t rest = 0;
          for (int64_t k = k16; k < k1; ++k) rest += int32_t{r[i][k]} * xq[m * K + k];
          tail[i][m] += static_cast<float>(rest) * d;
        }
      }
    }
#pragma GCC unroll 8
    for (int i = 0; i < R; ++i)
#pragma GCC unroll 8
      for (int m = 0; m < M; ++m) {
        const int64_t row = n + i * step;
        y[m * N + row] = (horizontal_sum(f[i][m]) + tail[i][m]) * scales[row];
      }
  }
  if constexpr (R > 1) {
    if (step == 1 && n < n1) int8_rows<M, 1>(xq, xd, K, w, scales, y, N, n, n1);
  }
}

void int8_x16(const int16_t* xq, const float* xd, int64_t M, int64_t K, const int8_t* q, const float* scales, float* y,
              int64_t N, int64_t n0, int64_t n1) {
  with_rows(M, [&](auto rows) {
    constexpr int kRows = decltype(rows)::value;
    // R x M int32 accumulators and R weight vectors within AVX2's 16 registers (the float32
    // sums, touched once per block, may spill). The R rows of a pass are distant ones (as
    // kStreams at one activation row): 2048 -> 5632 with bf16 activations, 2 and 3-4 rows,
    // 1.7x and 1.07x faster than neighbours (2 rows) or one row at a time (3-4). The few rows
    // left over go as neighbours.
    constexpr int kOutputs = kRows >= 2 && kRows <= 4 ? 2 : 1;
    constexpr int kWays = kRows == 1 ? static_cast<int>(kStreams) : kOutputs;
    n0 = in_distant_parts(n0, n1, kWays, [&](int64_t a, int64_t b, int64_t step) {
      int8_rows<kRows, kWays>(xq, xd, K, q, scales, y, N, a, b, step);
    });
    int8_rows<kRows, kOutputs>(xq, xd, K, q, scales, y, N, n0, n1);
  });
}

// The float32-activation entry (Table::int8), for callers that do not quantise first.
void int8(const float* x, int64_t M, int64_t K, const int8_t* q, const float* scales, float* y, int64_t N, int64_t n0,
          int64_t n1) {
  std::vector<int16_t> xq(static_cast<size_t>(M * K));
  std::vector<float> xd(static_cast<size_t>(M * ((K + kInt16Block - 1) / kInt16Block)));
  quantize_x16(x, M, K, xq.data(), xd.data());
  int8_x16(xq.data(), xd.data(), M, K, q, scales, y, N, n0, n1);
}

// ------------------------------------------------------------ group-wise weights
// Activations are quantised to int8 per 32 inputs (quantize_x), so a run of 32 weights costs
// one byte-wise multiply-add (vpmaddubsw: unsigned x signed bytes into 16-bit pairs), one
// widening add into eight int32 lanes and one float multiply-add by the two scales, where
// widening every weight to float32 takes 4 conversions and 4 FMAs per 32 (the int8 kernel
// above, which is bound by exactly that on a Zen 3).

constexpr int64_t kRun = 32;  // inputs per activation scale (and per q4_0-packed run)

MINIGPT4_AVX2 inline float half_to_float(uint16_t h) { return _cvtsh_ss(h); }

// The sum of 32 products of unsigned bytes u and signed bytes s, in eight int32 lanes. Pairs
// stay within int16: 4-bit 2 * 15 * 127, 8-bit (|w| as u, sign moved onto s) 2 * 127 * 127.
MINIGPT4_AVX2 inline __m256 dot32(__m256i u, __m256i s) {
  return _mm256_cvtepi32_ps(_mm256_madd_epi16(_mm256_maddubs_epi16(u, s), _mm256_set1_epi16(1)));
}

// 32 weights of a q4_0-packed run (16 bytes) as bytes 0..15: inputs 0-15 are the low
// nibbles, inputs 16-31 the high ones.
MINIGPT4_AVX2 inline __m256i nibbles32(const uint8_t* p) {
  const __m128i b = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  return _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16(b, 4), b), _mm256_set1_epi8(0x0F));
}

// One run of 32 activations: xq = round(x * 127 / absmax), d = absmax / 127, sum of xq.
// Round half to even (vroundps and std::nearbyint agree), as llama.cpp's quantize_row_q8_0.
MINIGPT4_AVX2 void quantize_run(const float* x, int8_t* q, float* d, int32_t* sum) {
  __m256 v[4];
  __m256 amax = _mm256_setzero_ps();
  const __m256 sign = _mm256_set1_ps(-0.0f);
  for (int i = 0; i < 4; ++i) {
    v[i] = _mm256_loadu_ps(x + 8 * i);
    amax = _mm256_max_ps(amax, _mm256_andnot_ps(sign, v[i]));
  }
  __m128 m = _mm_max_ps(_mm256_castps256_ps128(amax), _mm256_extractf128_ps(amax, 1));
  m = _mm_max_ps(m, _mm_movehl_ps(m, m));
  m = _mm_max_ss(m, _mm_movehdup_ps(m));
  const float absmax = _mm_cvtss_f32(m);
  *d = absmax / 127.0f;
  const __m256 scale = _mm256_set1_ps(absmax > 0 ? 127.0f / absmax : 0.0f);
  __m256i i32[4];
  __m256 total = _mm256_setzero_ps();
  for (int i = 0; i < 4; ++i) {
    const __m256 r = _mm256_round_ps(_mm256_mul_ps(v[i], scale), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    total = _mm256_add_ps(total, r);  // integers below 2^24: exact
    i32[i] = _mm256_cvtps_epi32(r);
  }
  *sum = static_cast<int32_t>(horizontal_sum(total));
  // packs work within 128-bit lanes; the permutation puts the 32 bytes back in order.
  const __m256i i16a = _mm256_packs_epi32(i32[0], i32[1]), i16b = _mm256_packs_epi32(i32[2], i32[3]);
  const __m256i i8 =
      _mm256_permutevar8x32_epi32(_mm256_packs_epi16(i16a, i16b), _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(q), i8);
}

MINIGPT4_AVX2 void quantize_x(const float* x, int64_t M, int64_t K, int64_t Kp, int8_t* xq, float* xd, int32_t* xs) {
  const int64_t runs = Kp / kRun;
  for (int64_t m = 0; m < M; ++m) {
    const float* row = x + m * K;
    for (int64_t b = 0; b < runs; ++b) {
      const int64_t k0 = b * kRun;
      float padded[kRun];
      const float* src = row + k0;
      if (k0 + kRun > K) {  // the last, partial run: zeros beyond the layer's width
        for (int64_t i = 0; i < kRun; ++i) padded[i] = k0 + i < K ? row[k0 + i] : 0.0f;
        src = padded;
      }
      quantize_run(src, xq + m * Kp + k0, xd + m * runs + b, xs + m * runs + b);
    }
  }
}

// Output rows [n0, n1) for M activation rows: each run of weights is unpacked once and
// multiplied into every row. Weights::run(r, b) gives run b of a row as the unsigned operand
// and Weights::signs(w, x) the signed one.
struct Q4 {
  using T = uint8_t;
  static constexpr int64_t kBytesPerRun = 16;
  MINIGPT4_AVX2 static __m256i load(const uint8_t* p) { return nibbles32(p); }
  MINIGPT4_AVX2 static __m256i unsigned_part(__m256i w) { return w; }
  MINIGPT4_AVX2 static __m256i signed_part(__m256i, __m256i x) { return x; }
};
struct Q8 {
  using T = int8_t;
  static constexpr int64_t kBytesPerRun = 32;
  MINIGPT4_AVX2 static __m256i load(const int8_t* p) { return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)); }
  MINIGPT4_AVX2 static __m256i unsigned_part(__m256i w) { return _mm256_sign_epi8(w, w); }           // |w|
  MINIGPT4_AVX2 static __m256i signed_part(__m256i w, __m256i x) { return _mm256_sign_epi8(x, w); }  // x sign(w)
};

// 4-bit nibbles q stand for q - 8: sum((q - 8) x) = sum(q x) - 8 sum(x). The second term of
// a row is sum over groups g of d_w[g] * c[g], with c[g] = 8 * sum over the group's runs of
// d_x * sum(x_q) (group_offsets, once per call): one short dot product per row after its main
// loop instead of scalar work in every run.
MINIGPT4_AVX2 float offset_dot(const uint16_t* dw, const float* c, int64_t groups) {
  __m256 acc = _mm256_setzero_ps();
  int64_t g = 0;
  for (; g + 8 <= groups; g += 8)
    acc = _mm256_fmadd_ps(_mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(dw + g))),
                          _mm256_loadu_ps(c + g), acc);
  float sum = horizontal_sum(acc);
  for (; g < groups; ++g) sum += half_to_float(dw[g]) * c[g];
  return sum;
}

// The scale of every run of one weight row times each activation row's scale, d[m * runs + b] =
// d_w[b / (G / 32)] * d_x[m][b], made eight runs at a time (one float16 conversion and one
// multiply per activation row) before the row's main loop, which then takes each as one
// broadcast load: the scalar conversion, multiply and broadcast per run and row cost as much
// as the dot product itself.
template <int M>
MINIGPT4_AVX2 void run_scales(const uint16_t* s, int shift, const float* xd, int64_t runs, float* d) {
  const __m256i spread = _mm256_srlv_epi32(_mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7), _mm256_set1_epi32(shift));
  int64_t b = 0;
  for (; b + 8 <= runs; b += 8) {
    // The 8, 4 or 2 float16 scales of these eight runs, read without passing the row's end.
    const uint16_t* h = s + (b >> shift);
    __m128i halves;
    if (shift == 0) {
      halves = _mm_loadu_si128(reinterpret_cast<const __m128i*>(h));
    } else if (shift == 1) {
      halves = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(h));
    } else {
      int32_t pair;
      __builtin_memcpy(&pair, h, sizeof pair);
      halves = _mm_cvtsi32_si128(pair);
    }
    const __m256 dw = _mm256_permutevar8x32_ps(_mm256_cvtph_ps(halves), spread);
    for (int m = 0; m < M; ++m)
      _mm256_storeu_ps(d + m * runs + b, _mm256_mul_ps(dw, _mm256_loadu_ps(xd + m * runs + b)));
  }
  for (; b < runs; ++b)
    for (int m = 0; m < M; ++m) d[m * runs + b] = half_to_float(s[b >> shift]) * xd[m * runs + b];
}

// Runs go in pairs into two accumulators per row (named, so that they stay in registers), so
// that a row's chain of multiply-adds does not wait on the previous one's latency.
template <typename W, int M>
MINIGPT4_AVX2 inline void grouped_run(const typename W::T* r, int64_t b, const int8_t* xq, const float* d, int64_t Kp,
                                      int64_t runs, __m256* acc) {
  const __m256i wv = W::load(r + b * W::kBytesPerRun);
  const __m256i u = W::unsigned_part(wv);
  for (int m = 0; m < M; ++m) {
    const __m256i xv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xq + m * Kp + b * kRun));
    acc[m] = _mm256_fmadd_ps(dot32(u, W::signed_part(wv, xv)), _mm256_broadcast_ss(d + m * runs + b), acc[m]);
  }
}

// c: Q4's group offsets [M, groups] (group_offsets), unused for Q8.
template <typename W, int M>
MINIGPT4_AVX2 void grouped_rows(const int8_t* xq, const float* xd, const float* c, int64_t Kp, const typename W::T* w,
                                const uint16_t* scales, int64_t G, float* y, int64_t N, int64_t n0, int64_t n1) {
  const int64_t runs = Kp / kRun, groups = Kp / G;
  const int shift = __builtin_ctzll(static_cast<unsigned long long>(G / kRun));  // run -> group (G / 32 is 1, 2, 4)
  const int64_t row_bytes = runs * W::kBytesPerRun;
  thread_local std::vector<float> d;
  d.resize(static_cast<size_t>(M * runs));
  float* const dp = d.data();
  for (int64_t n = n0; n < n1; ++n) {
    const typename W::T* r = w + n * row_bytes;
    const uint16_t* s = scales + n * groups;
    run_scales<M>(s, shift, xd, runs, dp);
    __m256 acc0[M], acc1[M];
    for (int m = 0; m < M; ++m) acc0[m] = acc1[m] = _mm256_setzero_ps();
    int64_t b = 0;
    for (; b + 2 <= runs; b += 2) {
      grouped_run<W, M>(r, b, xq, dp, Kp, runs, acc0);
      grouped_run<W, M>(r, b + 1, xq, dp, Kp, runs, acc1);
    }
    if (b < runs) grouped_run<W, M>(r, b, xq, dp, Kp, runs, acc0);
    for (int m = 0; m < M; ++m) {
      const float offset = std::is_same_v<W, Q4> ? offset_dot(s, c + m * groups, groups) : 0.0f;
      y[m * N + n] = horizontal_sum(_mm256_add_ps(acc0[m], acc1[m])) - offset;
    }
  }
}

// One activation row, four output rows n + i step side by side (kStreams; 8-bit groups only).
template <typename W>
MINIGPT4_AVX2 void grouped_four(const int8_t* xq, const float* xd, const float* c, int64_t Kp, const typename W::T* w,
                                const uint16_t* scales, int64_t G, float* y, int64_t n0, int64_t n1, int64_t step) {
  const int64_t runs = Kp / kRun, groups = Kp / G;
  const int shift = __builtin_ctzll(static_cast<unsigned long long>(G / kRun));
  const int64_t row_bytes = runs * W::kBytesPerRun;
  thread_local std::vector<float> d;
  d.resize(static_cast<size_t>(4 * runs));
  float* const dp = d.data();
  for (int64_t n = n0; n < n1; ++n) {
    const typename W::T* r[4];
    const uint16_t* s[4];
    for (int i = 0; i < 4; ++i) {
      r[i] = w + (n + i * step) * row_bytes;
      s[i] = scales + (n + i * step) * groups;
      run_scales<1>(s[i], shift, xd, runs, dp + i * runs);
    }
    __m256 acc0[4], acc1[4];
    for (int i = 0; i < 4; ++i) acc0[i] = acc1[i] = _mm256_setzero_ps();
    int64_t b = 0;
    for (; b + 2 <= runs; b += 2)
      for (int i = 0; i < 4; ++i) {
        grouped_run<W, 1>(r[i], b, xq, dp + i * runs, Kp, runs, &acc0[i]);
        grouped_run<W, 1>(r[i], b + 1, xq, dp + i * runs, Kp, runs, &acc1[i]);
      }
    if (b < runs)
      for (int i = 0; i < 4; ++i) grouped_run<W, 1>(r[i], b, xq, dp + i * runs, Kp, runs, &acc0[i]);
    for (int i = 0; i < 4; ++i) {
      const float offset = std::is_same_v<W, Q4> ? offset_dot(s[i], c, groups) : 0.0f;
      y[n + i * step] = horizontal_sum(_mm256_add_ps(acc0[i], acc1[i])) - offset;
    }
  }
}

template <typename W>
void grouped(const int8_t* xq, const float* xd, const int32_t* xs, int64_t M, int64_t Kp, const typename W::T* w,
             const uint16_t* scales, int64_t G, float* y, int64_t N, int64_t n0, int64_t n1) {
  const int64_t runs = Kp / kRun, groups = Kp / G, per_group = G / kRun;
  thread_local std::vector<float> c;
  if constexpr (std::is_same_v<W, Q4>) {
    c.assign(static_cast<size_t>(M * groups), 0.0f);
    for (int64_t m = 0; m < M; ++m)
      for (int64_t b = 0; b < runs; ++b)
        c[static_cast<size_t>(m * groups + b / per_group)] +=
            8.0f * xd[m * runs + b] * static_cast<float>(xs[m * runs + b]);
  }
  static_assert(kStreams == 4, "grouped_four reads four streams");
  if (std::is_same_v<W, Q8> && M == 1)
    n0 = in_distant_parts(n0, n1, kStreams, [&](int64_t a, int64_t b, int64_t step) {
      grouped_four<W>(xq, xd, c.data(), Kp, w, scales, G, y, a, b, step);
    });
  with_rows(
      M, [&](auto rows) { grouped_rows<W, decltype(rows)::value>(xq, xd, c.data(), Kp, w, scales, G, y, N, n0, n1); });
}

// Group-wise weights as float32 (a prompt's blocks): 32 levels at a time, widened, offset
// (4 bits) and scaled.
MINIGPT4_AVX2 void dequantize(const void* w, int bits, const uint16_t* scales, int64_t G, int64_t Kp, int64_t k0,
                              int64_t k1, float* out, int64_t ld, int64_t n0, int64_t n1) {
  const int64_t groups = Kp / G, row_bytes = bits == 8 ? Kp : Kp / 2;
  const __m256 offset = _mm256_set1_ps(bits == 8 ? 0.0f : 8.0f);
  for (int64_t n = n0; n < n1; ++n) {
    const uint8_t* r = static_cast<const uint8_t*>(w) + n * row_bytes;
    float* o = out + (n - n0) * ld - k0;
    for (int64_t b = k0 / kRun; b < k1 / kRun; ++b) {
      const __m256 d = _mm256_set1_ps(half_to_float(scales[n * groups + b * kRun / G]));
      const __m256i levels =
          bits == 8 ? _mm256_loadu_si256(reinterpret_cast<const __m256i*>(r + b * kRun)) : nibbles32(r + b * 16);
      const __m128i lo = _mm256_castsi256_si128(levels), hi = _mm256_extracti128_si256(levels, 1);
      const __m128i parts[4] = {lo, _mm_srli_si128(lo, 8), hi, _mm_srli_si128(hi, 8)};
      for (int i = 0; i < 4; ++i) {
        const __m256i wide = bits == 8 ? _mm256_cvtepi8_epi32(parts[i]) : _mm256_cvtepu8_epi32(parts[i]);
        _mm256_storeu_ps(o + b * kRun + 8 * i, _mm256_mul_ps(_mm256_sub_ps(_mm256_cvtepi32_ps(wide), offset), d));
      }
    }
  }
}

const Table kTable{"avx2",     f32,          bf16,        /*bf16_reads_bits=*/false,
                   int8,       quantize_x,   grouped<Q8>, grouped<Q4>,
                   dequantize, quantize_x16, int8_x16};

}  // namespace

const Table* avx2() { return &kTable; }

}  // namespace minigpt4::cpu_gemv::kernels

#else

namespace minigpt4::cpu_gemv::kernels {
const Table* avx2() { return nullptr; }
}  // namespace minigpt4::cpu_gemv::kernels

#endif
