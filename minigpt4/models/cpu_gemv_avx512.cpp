// cpu_gemv's AVX-512 kernels (cpu_gemv_kernels.h): bf16 through AVX512-BF16's vdpbf16ps
// (pairs of bf16 products summed into float32), int8 and float32 through float32 FMAs, the
// int8 weights widened in registers.
#include "minigpt4/models/cpu_gemv.h"
#include "minigpt4/models/cpu_gemv_kernels.h"

#include <algorithm>
#include <vector>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
// GCC 12's own AVX-512 intrinsics start from _mm512_undefined_*(), which its
// -Wmaybe-uninitialized reports once inlined (GCC bug 105593); nothing here is uninitialised.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
#include <immintrin.h>

namespace minigpt4::cpu_gemv::kernels {

namespace {

#define MINIGPT4_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl")))
#define MINIGPT4_AVX512_BF16 __attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16")))

// ---------------------------------------------------------------- several activation rows
// One output row at a time, each weight vector loaded once for all M rows; two accumulators
// per row keep two dependency chains in flight. M is fixed at compile time, so the 2M
// accumulators stay in registers. Tails are masked loads (zeros add nothing).

template <int M>
MINIGPT4_AVX512_BF16 void bf16_rows(const uint16_t* x, int64_t K, const uint16_t* w, float* y, int64_t N, int64_t n0,
                                    int64_t n1) {
  for (int64_t n = n0; n < n1; ++n) {
    const uint16_t* wr = w + n * K;
    __m512 acc0[M], acc1[M];
    for (int64_t m = 0; m < M; ++m) acc0[m] = acc1[m] = _mm512_setzero_ps();
    int64_t k = 0;
    for (; k + 64 <= K; k += 64) {
      const __m512bh w0 = (__m512bh)_mm512_loadu_si512(wr + k);
      const __m512bh w1 = (__m512bh)_mm512_loadu_si512(wr + k + 32);
      for (int64_t m = 0; m < M; ++m) {
        acc0[m] = _mm512_dpbf16_ps(acc0[m], (__m512bh)_mm512_loadu_si512(x + m * K + k), w0);
        acc1[m] = _mm512_dpbf16_ps(acc1[m], (__m512bh)_mm512_loadu_si512(x + m * K + k + 32), w1);
      }
    }
    for (; k < K; k += 32) {
      const int64_t left = std::min<int64_t>(32, K - k);
      const __mmask32 mask = left == 32 ? ~__mmask32{0} : (__mmask32{1} << left) - 1;
      const __m512bh wv = (__m512bh)_mm512_maskz_loadu_epi16(mask, wr + k);
      for (int64_t m = 0; m < M; ++m)
        acc0[m] = _mm512_dpbf16_ps(acc0[m], (__m512bh)_mm512_maskz_loadu_epi16(mask, x + m * K + k), wv);
    }
    for (int64_t m = 0; m < M; ++m) y[m * N + n] = _mm512_reduce_add_ps(_mm512_add_ps(acc0[m], acc1[m]));
  }
}

MINIGPT4_AVX512 inline __m512 widen_int8(const int8_t* p) {
  return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i*)p)));
}

// Several activation rows, R output rows at a time: R weight streams in flight, each with
// its next block's lines prefetched (as the one-row kernels below do: the hardware prefetcher
// stops at page boundaries), each weight vector widened once for all M rows and each
// activation vector loaded once for all R outputs; the R x M accumulators stay in registers.
// A 2048 -> 5632 int8 layer on an Ice Lake Xeon (2 threads, weights from memory): 2 / 4 rows
// cost 1.9 / 2.2x one row when each output row was read alone, 1.07 / 1.3x this way
// (benchmarks/README.md).
struct F32Weights {
  using T = float;
  MINIGPT4_AVX512 static __m512 load16(const float* p) { return _mm512_loadu_ps(p); }
  MINIGPT4_AVX512 static __m512 load_masked(__mmask16 mask, const float* p) { return _mm512_maskz_loadu_ps(mask, p); }
};
// bf16 widened to float32 (a 16-bit shift), for CPUs with AVX-512 but without AVX512-BF16.
struct BF16Weights {
  using T = uint16_t;
  MINIGPT4_AVX512 static __m512 load16(const uint16_t* p) {
    return _mm512_castsi512_ps(
        _mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p))), 16));
  }
  MINIGPT4_AVX512 static __m512 load_masked(__mmask16 mask, const uint16_t* p) {
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(mask, p)), 16));
  }
};
struct Int8Weights {
  using T = int8_t;
  MINIGPT4_AVX512 static __m512 load16(const int8_t* p) { return widen_int8(p); }
  MINIGPT4_AVX512 static __m512 load_masked(__mmask16 mask, const int8_t* p) {
    return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_maskz_loadu_epi8(mask, p)));
  }
};

// Columns [0, width) of rows with stride ld (a tile of K); add: y += the tile's sums.
template <typename W, int M, int R>
MINIGPT4_AVX512 void block_rows(const float* x, int64_t ld, int64_t width, const typename W::T* w, float* y, int64_t N,
                                int64_t n0, int64_t n1, bool add) {
  constexpr int64_t kLine = 64 / sizeof(typename W::T);  // weights per cache line
  int64_t n = n0;
  for (; n + R <= n1; n += R) {
    const typename W::T* r[R];
    for (int i = 0; i < R; ++i) r[i] = w + (n + i) * ld;
    __m512 acc[R][M];
    for (int i = 0; i < R; ++i)
      for (int m = 0; m < M; ++m) acc[i][m] = _mm512_setzero_ps();
    int64_t k = 0;
    for (; k + 16 <= width; k += 16) {
      if (k % kLine == 0) {
        for (int i = 0; i < R; ++i) _mm_prefetch(reinterpret_cast<const char*>(r[i] + R * ld + k), _MM_HINT_T0);
      }
      __m512 wv[R];
      for (int i = 0; i < R; ++i) wv[i] = W::load16(r[i] + k);
      for (int m = 0; m < M; ++m) {
        const __m512 xv = _mm512_loadu_ps(x + m * ld + k);
        for (int i = 0; i < R; ++i) acc[i][m] = _mm512_fmadd_ps(xv, wv[i], acc[i][m]);
      }
    }
    if (k < width) {
      const __mmask16 mask = __mmask16((1u << (width - k)) - 1);
      __m512 wv[R];
      for (int i = 0; i < R; ++i) wv[i] = W::load_masked(mask, r[i] + k);
      for (int m = 0; m < M; ++m) {
        const __m512 xv = _mm512_maskz_loadu_ps(mask, x + m * ld + k);
        for (int i = 0; i < R; ++i) acc[i][m] = _mm512_fmadd_ps(xv, wv[i], acc[i][m]);
      }
    }
    for (int i = 0; i < R; ++i)
      for (int m = 0; m < M; ++m) {
        const float sum = _mm512_reduce_add_ps(acc[i][m]);
        y[m * N + n + i] = add ? y[m * N + n + i] + sum : sum;
      }
  }
  if constexpr (R > 1) {
    if (n < n1) block_rows<W, M, 1>(x, ld, width, w, y, N, n, n1, add);
  }
}

// More than four activation rows go in two passes over the weights (rows 0-3, then the rest):
// with widened weights every row costs its multiply-adds, and this Ice Lake Xeon issues about
// one 512-bit FMA per cycle, so 8 rows in one pass took 1.44 ms on a 2048 -> 5632 int8 layer
// against 0.6 for 4 (tiling the inputs to stay in L1 did not help: it is not the loads),
// while two passes of 4 take 1.2. Output rows per block: 4 (16 accumulators).
template <typename W, int M>
MINIGPT4_AVX512 void rows_in_passes(const float* x, int64_t K, const typename W::T* w, float* y, int64_t N, int64_t n0,
                                    int64_t n1) {
  if constexpr (M <= 4) {
    block_rows<W, M, 4>(x, K, K, w, y, N, n0, n1, false);
  } else {
    block_rows<W, 4, 4>(x, K, K, w, y, N, n0, n1, false);
    block_rows<W, M - 4, 4>(x + 4 * K, K, K, w, y + 4 * N, N, n0, n1, false);
  }
}

// ---------------------------------------------------------------- one activation row
// A decode step of one sequence is bound by how fast the weights stream in from memory. These
// take four output rows at a time, so four weight streams are in flight, and while reading a
// line of each row they prefetch the same line of the next block's rows: Intel's hardware
// prefetcher follows a row but stops at the 4 KiB page boundary (a bf16 row of 2048), so each
// new row would otherwise start with misses. On an Intel Xeon, bf16 out of cache with 2
// threads: 15-19 GB/s one row at a time without prefetches, 23-28 this way.
template <typename T>
MINIGPT4_AVX512 inline void prefetch_next_block(const T* row, int64_t K, int64_t k) {
  _mm_prefetch(reinterpret_cast<const char*>(row + 4 * K + k), _MM_HINT_T0);
}

MINIGPT4_AVX512_BF16 void bf16_one_row(const uint16_t* x, int64_t K, const uint16_t* w, float* y, int64_t N, int64_t n0,
                                       int64_t n1) {
  int64_t n = n0;
  for (; n + 4 <= n1; n += 4) {
    const uint16_t* r[4] = {w + n * K, w + (n + 1) * K, w + (n + 2) * K, w + (n + 3) * K};
    __m512 acc[4] = {_mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps()};
    int64_t k = 0;
    for (; k + 32 <= K; k += 32) {
      const __m512bh xv = (__m512bh)_mm512_loadu_si512(x + k);
      for (int i = 0; i < 4; ++i) {
        prefetch_next_block(r[i], K, k);
        acc[i] = _mm512_dpbf16_ps(acc[i], xv, (__m512bh)_mm512_loadu_si512(r[i] + k));
      }
    }
    if (k < K) {
      const __mmask32 mask = (__mmask32{1} << (K - k)) - 1;
      const __m512bh xv = (__m512bh)_mm512_maskz_loadu_epi16(mask, x + k);
      for (int i = 0; i < 4; ++i)
        acc[i] = _mm512_dpbf16_ps(acc[i], xv, (__m512bh)_mm512_maskz_loadu_epi16(mask, r[i] + k));
    }
    for (int i = 0; i < 4; ++i) y[n + i] = _mm512_reduce_add_ps(acc[i]);
  }
  if (n < n1) bf16_rows<1>(x, K, w, y, N, n, n1);
}

MINIGPT4_AVX512 void int8_one_row(const float* x, int64_t K, const int8_t* q, const float* scales, float* y, int64_t N,
                                  int64_t n0, int64_t n1) {
  int64_t n = n0;
  for (; n + 4 <= n1; n += 4) {
    const int8_t* r[4] = {q + n * K, q + (n + 1) * K, q + (n + 2) * K, q + (n + 3) * K};
    __m512 acc[4] = {_mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps()};
    int64_t k = 0;
    for (; k + 64 <= K; k += 64) {
      for (int i = 0; i < 4; ++i) prefetch_next_block(r[i], K, k);
      for (int64_t j = 0; j < 64; j += 16) {
        const __m512 xv = _mm512_loadu_ps(x + k + j);
        for (int i = 0; i < 4; ++i) acc[i] = _mm512_fmadd_ps(xv, widen_int8(r[i] + k + j), acc[i]);
      }
    }
    for (; k < K; k += 16) {
      const int64_t left = std::min<int64_t>(16, K - k);
      const __mmask16 mask = left == 16 ? __mmask16(0xFFFF) : __mmask16((1u << left) - 1);
      const __m512 xv = _mm512_maskz_loadu_ps(mask, x + k);
      for (int i = 0; i < 4; ++i)
        acc[i] =
            _mm512_fmadd_ps(xv, _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_maskz_loadu_epi8(mask, r[i] + k))), acc[i]);
    }
    for (int i = 0; i < 4; ++i) y[n + i] = _mm512_reduce_add_ps(acc[i]) * scales[n + i];
  }
  if (n < n1) {
    block_rows<Int8Weights, 1, 1>(x, K, K, q, y, N, n, n1, false);
    for (; n < n1; ++n) y[n] *= scales[n];
  }
}

MINIGPT4_AVX512 void f32_one_row(const float* x, int64_t K, const float* w, float* y, int64_t N, int64_t n0,
                                 int64_t n1) {
  int64_t n = n0;
  for (; n + 4 <= n1; n += 4) {
    const float* r[4] = {w + n * K, w + (n + 1) * K, w + (n + 2) * K, w + (n + 3) * K};
    __m512 acc[4] = {_mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps()};
    int64_t k = 0;
    for (; k + 16 <= K; k += 16) {
      const __m512 xv = _mm512_loadu_ps(x + k);
      for (int i = 0; i < 4; ++i) {
        prefetch_next_block(r[i], K, k);
        acc[i] = _mm512_fmadd_ps(xv, _mm512_loadu_ps(r[i] + k), acc[i]);
      }
    }
    if (k < K) {
      const __mmask16 mask = __mmask16((1u << (K - k)) - 1);
      const __m512 xv = _mm512_maskz_loadu_ps(mask, x + k);
      for (int i = 0; i < 4; ++i) acc[i] = _mm512_fmadd_ps(xv, _mm512_maskz_loadu_ps(mask, r[i] + k), acc[i]);
    }
    for (int i = 0; i < 4; ++i) y[n + i] = _mm512_reduce_add_ps(acc[i]);
  }
  if (n < n1) block_rows<F32Weights, 1, 1>(x, K, K, w, y, N, n, n1, false);
}

// ---------------------------------------------------------------- the table's entries

void f32(const float* x, int64_t M, int64_t K, const float* w, float* y, int64_t N, int64_t n0, int64_t n1) {
  if (M == 1) return f32_one_row(x, K, w, y, N, n0, n1);
  with_rows(M, [&](auto rows) {
    constexpr int kRows = decltype(rows)::value;
    rows_in_passes<F32Weights, kRows>(x, K, w, y, N, n0, n1);
  });
}

void bf16(const float*, const uint16_t* x16, int64_t M, int64_t K, const uint16_t* w, float* y, int64_t N, int64_t n0,
          int64_t n1) {
  if (M == 1) return bf16_one_row(x16, K, w, y, N, n0, n1);
  with_rows(M, [&](auto rows) { bf16_rows<decltype(rows)::value>(x16, K, w, y, N, n0, n1); });
}

// Without AVX512-BF16: the weights widened in registers, float32 activations.
void bf16_widened(const float* x32, const uint16_t*, int64_t M, int64_t K, const uint16_t* w, float* y, int64_t N,
                  int64_t n0, int64_t n1) {
  if (M == 1) return block_rows<BF16Weights, 1, 4>(x32, K, K, w, y, N, n0, n1, false);
  with_rows(M, [&](auto rows) { rows_in_passes<BF16Weights, decltype(rows)::value>(x32, K, w, y, N, n0, n1); });
}

void int8(const float* x, int64_t M, int64_t K, const int8_t* q, const float* scales, float* y, int64_t N, int64_t n0,
          int64_t n1) {
  if (M == 1) return int8_one_row(x, K, q, scales, y, N, n0, n1);
  with_rows(M, [&](auto rows) {
    constexpr int kRows = decltype(rows)::value;
    rows_in_passes<Int8Weights, kRows>(x, K, q, y, N, n0, n1);
  });
  for (int64_t m = 0; m < M; ++m)
    for (int64_t n = n0; n < n1; ++n) y[m * N + n] *= scales[n];
}

// ---------------------------------------------------------------- group-wise weights
// With AVX512-VNNI: vpdpbusd multiplies 64 unsigned by 64 signed bytes and sums each four
// into 16 int32 lanes in one instruction, two runs of 32 inputs at a time (lanes 0-7 the
// first run, 8-15 the second). The activations are quantised as the AVX2 table does (the
// same format, its function). The weights become unsigned: 4-bit nibbles q stand for q - 8,
// 8-bit values w are stored as w + 128 (a sign flip of the top bit); the offsets come back as
// one dot product per row of the weights' scales with c[g] = offset * sum over the group's
// runs of d_x * sum(x_q).

#define MINIGPT4_AVX512_VNNI __attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni,f16c")))

constexpr int64_t kRun = 32;

// Two runs of weights as 64 unsigned bytes in input order.
template <bool kFourBit>
MINIGPT4_AVX512_VNNI inline __m512i two_runs(const uint8_t* p) {
  if constexpr (kFourBit) {  // 32 bytes: run a's 16 then run b's; low nibbles inputs 0-15, high 16-31
    const __m256i bytes = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
    const __m256i mask = _mm256_set1_epi8(0x0F);
    const __m512i v = _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_and_si256(bytes, mask)),
                                         _mm256_and_si256(_mm256_srli_epi16(bytes, 4), mask), 1);
    return _mm512_shuffle_i64x2(v, v, _MM_SHUFFLE(3, 1, 2, 0));  // [a lo, b lo, a hi, b hi] -> [a lo, a hi, b lo, b hi]
  } else {
    return _mm512_xor_si512(_mm512_loadu_si512(p), _mm512_set1_epi8(static_cast<char>(0x80)));
  }
}

// One run (the last of an odd count) as 32 unsigned bytes.
template <bool kFourBit>
MINIGPT4_AVX512_VNNI inline __m256i one_run(const uint8_t* p) {
  if constexpr (kFourBit) {
    const __m128i b = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
    return _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16(b, 4), b), _mm256_set1_epi8(0x0F));
  } else {
    return _mm256_xor_si256(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)),
                            _mm256_set1_epi8(static_cast<char>(0x80)));
  }
}

MINIGPT4_AVX512_VNNI float scale_dot(const uint16_t* dw, const float* c, int64_t groups) {
  __m512 acc = _mm512_setzero_ps();
  int64_t g = 0;
  for (; g + 16 <= groups; g += 16)
    acc = _mm512_fmadd_ps(_mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(dw + g))),
                          _mm512_loadu_ps(c + g), acc);
  float sum = _mm512_reduce_add_ps(acc);
  for (; g < groups; ++g) sum += _cvtsh_ss(dw[g]) * c[g];
  return sum;
}

// Runs b and b + 1 (pair p) of one weight row into acc[M].
template <bool kFourBit, int M>
MINIGPT4_AVX512_VNNI inline void vnni_pair(const uint8_t* r, const uint16_t* s, int shift, int64_t p, const int8_t* xq,
                                           const float* xdv, int64_t Kp, int64_t pairs, __m512* acc) {
  const int64_t b = 2 * p, run_bytes = kFourBit ? 16 : 32;
  const __m512i u = two_runs<kFourBit>(r + b * run_bytes);
  const uint32_t both = uint32_t{s[b >> shift]} | uint32_t{s[(b + 1) >> shift]} << 16;
  const __m512i pick = _mm512_set_epi32(1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0);
  const __m512 dw =
      _mm512_permutexvar_ps(pick, _mm512_castps128_ps512(_mm_cvtph_ps(_mm_cvtsi32_si128(static_cast<int>(both)))));
  for (int m = 0; m < M; ++m) {
    const __m512i x = _mm512_loadu_si512(xq + m * Kp + b * kRun);
    const __m512 d = _mm512_mul_ps(dw, _mm512_loadu_ps(xdv + (m * pairs + p) * 16));
    acc[m] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_dpbusd_epi32(_mm512_setzero_si512(), u, x)), d, acc[m]);
  }
}

// Sixteen runs b0..b0+15 of one weight row into acc0 / acc1 (alternating pairs). Their 16
// scales are converted at once and multiplied by the activations' (one vector per row); each
// pair then picks its two lanes (eight times each) with one permutation.
template <bool kFourBit, int M>
MINIGPT4_AVX512_VNNI inline void vnni_sixteen(const uint8_t* r, const uint16_t* s, int shift, int64_t b0,
                                              const int8_t* xq, const float* xd, int64_t Kp, int64_t runs, __m512* acc0,
                                              __m512* acc1) {
  const int64_t run_bytes = kFourBit ? 16 : 32;
  __m512 dw;
  if (shift == 0) {
    dw = _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(s + b0)));
  } else {  // groups of 64 or 128: 8 or 4 scales, each for 2 or 4 runs (b0 is a multiple of 16)
    // Only those scales are read: the row's last ones may end the tensor.
    const auto* at = reinterpret_cast<const __m128i*>(s + (b0 >> shift));
    const __m128i halves = shift == 1 ? _mm_loadu_si128(at) : _mm_loadl_epi64(at);
    const __m512 groups = _mm512_cvtph_ps(_mm256_castsi128_si256(halves));
    const __m512i run = _mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0);
    dw = _mm512_permutexvar_ps(_mm512_srli_epi32(run, static_cast<unsigned>(shift)), groups);
  }
  __m512 d[M];
  for (int m = 0; m < M; ++m) d[m] = _mm512_mul_ps(dw, _mm512_loadu_ps(xd + m * runs + b0));
  for (int j = 0; j < 8; ++j) {
    const int64_t b = b0 + 2 * j;
    const __m512i u = two_runs<kFourBit>(r + b * run_bytes);
    const __m512i pick = _mm512_set_epi32(2 * j + 1, 2 * j + 1, 2 * j + 1, 2 * j + 1, 2 * j + 1, 2 * j + 1, 2 * j + 1,
                                          2 * j + 1, 2 * j, 2 * j, 2 * j, 2 * j, 2 * j, 2 * j, 2 * j, 2 * j);
    __m512* acc = (j & 1) ? acc1 : acc0;
    for (int m = 0; m < M; ++m) {
      const __m512i x = _mm512_loadu_si512(xq + m * Kp + b * kRun);
      acc[m] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_dpbusd_epi32(_mm512_setzero_si512(), u, x)),
                               _mm512_permutexvar_ps(pick, d[m]), acc[m]);
    }
  }
}

// xdv: per activation row and pair of runs, 16 floats: the first run's d_x eight times, then
// the second's (grouped_vnni fills it once per call).
template <bool kFourBit, int M>
MINIGPT4_AVX512_VNNI void grouped_vnni_rows(const int8_t* xq, const float* xd, const float* xdv, const float* c,
                                            int64_t Kp, const uint8_t* w, const uint16_t* scales, int64_t G, float* y,
                                            int64_t N, int64_t n0, int64_t n1) {
  const int64_t runs = Kp / kRun, pairs = runs / 2, groups = Kp / G;
  const int shift = __builtin_ctzll(static_cast<unsigned long long>(G / kRun));
  const int64_t run_bytes = kFourBit ? 16 : 32;
  for (int64_t n = n0; n < n1; ++n) {
    const uint8_t* r = w + n * runs * run_bytes;
    const uint16_t* s = scales + n * groups;
    __m512 acc0[M], acc1[M];
    for (int m = 0; m < M; ++m) acc0[m] = acc1[m] = _mm512_setzero_ps();
    int64_t p = 0;
    for (; 2 * p + 16 <= runs; p += 8) vnni_sixteen<kFourBit, M>(r, s, shift, 2 * p, xq, xd, Kp, runs, acc0, acc1);
    for (; p + 2 <= pairs; p += 2) {
      vnni_pair<kFourBit, M>(r, s, shift, p, xq, xdv, Kp, pairs, acc0);
      vnni_pair<kFourBit, M>(r, s, shift, p + 1, xq, xdv, Kp, pairs, acc1);
    }
    if (p < pairs) vnni_pair<kFourBit, M>(r, s, shift, p, xq, xdv, Kp, pairs, acc0);
    float tail[M] = {};
    if (runs % 2 == 1) {  // the last run alone
      const int64_t b = runs - 1;
      const __m256i u = one_run<kFourBit>(r + b * run_bytes);
      const float dw = _cvtsh_ss(s[b >> shift]);
      for (int m = 0; m < M; ++m) {
        const __m256i x = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xq + m * Kp + b * kRun));
        const __m256 dot = _mm256_cvtepi32_ps(_mm256_dpbusd_epi32(_mm256_setzero_si256(), u, x));
        __m128 h = _mm_add_ps(_mm256_castps256_ps128(dot), _mm256_extractf128_ps(dot, 1));
        h = _mm_add_ps(h, _mm_movehl_ps(h, h));
        h = _mm_add_ss(h, _mm_movehdup_ps(h));
        tail[m] = _mm_cvtss_f32(h) * dw * xd[m * runs + b];
      }
    }
    for (int m = 0; m < M; ++m)
      y[m * N + n] =
          _mm512_reduce_add_ps(_mm512_add_ps(acc0[m], acc1[m])) + tail[m] - scale_dot(s, c + m * groups, groups);
  }
}

template <bool kFourBit>
void grouped_vnni(const int8_t* xq, const float* xd, const int32_t* xs, int64_t M, int64_t Kp, const uint8_t* w,
                  const uint16_t* scales, int64_t G, float* y, int64_t N, int64_t n0, int64_t n1) {
  const int64_t runs = Kp / kRun, pairs = runs / 2, groups = Kp / G, per_group = G / kRun;
  const float offset = kFourBit ? 8.0f : 128.0f;
  thread_local std::vector<float> c, xdv;
  c.assign(static_cast<size_t>(M * groups), 0.0f);
  xdv.resize(static_cast<size_t>(M * pairs * 16));
  for (int64_t m = 0; m < M; ++m) {
    for (int64_t b = 0; b < runs; ++b)
      c[static_cast<size_t>(m * groups + b / per_group)] +=
          offset * xd[m * runs + b] * static_cast<float>(xs[m * runs + b]);
    for (int64_t p = 0; p < pairs; ++p)
      for (int i = 0; i < 16; ++i) xdv[static_cast<size_t>((m * pairs + p) * 16 + i)] = xd[m * runs + 2 * p + i / 8];
  }
  with_rows(M, [&](auto rows) {
    grouped_vnni_rows<kFourBit, decltype(rows)::value>(xq, xd, xdv.data(), c.data(), Kp, w, scales, G, y, N, n0, n1);
  });
}

void q8(const int8_t* xq, const float* xd, const int32_t* xs, int64_t M, int64_t Kp, const int8_t* w,
        const uint16_t* scales, int64_t G, float* y, int64_t N, int64_t n0, int64_t n1) {
  grouped_vnni<false>(xq, xd, xs, M, Kp, reinterpret_cast<const uint8_t*>(w), scales, G, y, N, n0, n1);
}

// The activations' format is the AVX2 table's: its quantiser (every AVX-512 CPU has AVX2).
void quantize_x(const float* x, int64_t M, int64_t K, int64_t Kp, int8_t* xq, float* xd, int32_t* xs) {
  avx2()->quantize_x(x, M, K, Kp, xq, xd, xs);
}
void dequantize(const void* w, int bits, const uint16_t* scales, int64_t G, int64_t Kp, int64_t k0, int64_t k1,
                float* out, int64_t ld, int64_t n0, int64_t n1) {
  avx2()->dequantize(w, bits, scales, G, Kp, k0, k1, out, ld, n0, n1);
}

// Group-wise weights need AVX512-VNNI as well (cpu_gemv.cpp checks).
const Table kTable{"avx512", f32, bf16, /*bf16_reads_bits=*/true, int8, quantize_x, q8, grouped_vnni<true>, dequantize};
const Table kTableWidening{"avx512",           f32,       bf16_widened, /*bf16_reads_bits=*/false, int8, quantize_x, q8,
                           grouped_vnni<true>, dequantize};

}  // namespace

// The bf16 form by the CPU: vdpbf16ps where it has AVX512-BF16, widening elsewhere.
const Table* avx512() {
  static const bool dot_products = [] {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512bf16") != 0;
  }();
  return dot_products ? &kTable : &kTableWidening;
}

}  // namespace minigpt4::cpu_gemv::kernels

#else

namespace minigpt4::cpu_gemv::kernels {
const Table* avx512() { return nullptr; }
}  // namespace minigpt4::cpu_gemv::kernels

#endif
