// cpu_gemv's AVX-512 kernels (cpu_gemv_kernels.h): bf16 through AVX512-BF16's vdpbf16ps
// (pairs of bf16 products summed into float32), int8 and float32 through float32 FMAs, the
// int8 weights widened in registers.
#include "minigpt4/models/cpu_gemv.h"
#include "minigpt4/models/cpu_gemv_kernels.h"

#include <algorithm>

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
// per row keep two dependency chains in flight. Tails are masked loads (zeros add nothing).

MINIGPT4_AVX512_BF16 void bf16_rows(const uint16_t* x, int64_t M, int64_t K, const uint16_t* w, float* y, int64_t N,
                                    int64_t n0, int64_t n1) {
  for (int64_t n = n0; n < n1; ++n) {
    const uint16_t* wr = w + n * K;
    __m512 acc0[kMaxRows], acc1[kMaxRows];
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

MINIGPT4_AVX512 void int8_rows(const float* x, int64_t M, int64_t K, const int8_t* q, const float* scales, float* y,
                               int64_t N, int64_t n0, int64_t n1) {
  for (int64_t n = n0; n < n1; ++n) {
    const int8_t* qr = q + n * K;
    __m512 acc0[kMaxRows], acc1[kMaxRows];
    for (int64_t m = 0; m < M; ++m) acc0[m] = acc1[m] = _mm512_setzero_ps();
    int64_t k = 0;
    for (; k + 32 <= K; k += 32) {
      const __m512 w0 = widen_int8(qr + k), w1 = widen_int8(qr + k + 16);
      for (int64_t m = 0; m < M; ++m) {
        acc0[m] = _mm512_fmadd_ps(_mm512_loadu_ps(x + m * K + k), w0, acc0[m]);
        acc1[m] = _mm512_fmadd_ps(_mm512_loadu_ps(x + m * K + k + 16), w1, acc1[m]);
      }
    }
    for (; k < K; k += 16) {
      const int64_t left = std::min<int64_t>(16, K - k);
      const __mmask16 mask = left == 16 ? __mmask16(0xFFFF) : __mmask16((1u << left) - 1);
      const __m512 wv = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_maskz_loadu_epi8(mask, qr + k)));
      for (int64_t m = 0; m < M; ++m)
        acc0[m] = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(mask, x + m * K + k), wv, acc0[m]);
    }
    for (int64_t m = 0; m < M; ++m) y[m * N + n] = _mm512_reduce_add_ps(_mm512_add_ps(acc0[m], acc1[m])) * scales[n];
  }
}

MINIGPT4_AVX512 void f32_rows(const float* x, int64_t M, int64_t K, const float* w, float* y, int64_t N, int64_t n0,
                              int64_t n1) {
  for (int64_t n = n0; n < n1; ++n) {
    const float* wr = w + n * K;
    __m512 acc0[kMaxRows], acc1[kMaxRows];
    for (int64_t m = 0; m < M; ++m) acc0[m] = acc1[m] = _mm512_setzero_ps();
    int64_t k = 0;
    for (; k + 32 <= K; k += 32) {
      const __m512 w0 = _mm512_loadu_ps(wr + k), w1 = _mm512_loadu_ps(wr + k + 16);
      for (int64_t m = 0; m < M; ++m) {
        acc0[m] = _mm512_fmadd_ps(_mm512_loadu_ps(x + m * K + k), w0, acc0[m]);
        acc1[m] = _mm512_fmadd_ps(_mm512_loadu_ps(x + m * K + k + 16), w1, acc1[m]);
      }
    }
    for (; k < K; k += 16) {
      const int64_t left = std::min<int64_t>(16, K - k);
      const __mmask16 mask = left == 16 ? __mmask16(0xFFFF) : __mmask16((1u << left) - 1);
      const __m512 wv = _mm512_maskz_loadu_ps(mask, wr + k);
      for (int64_t m = 0; m < M; ++m)
        acc0[m] = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(mask, x + m * K + k), wv, acc0[m]);
    }
    for (int64_t m = 0; m < M; ++m) y[m * N + n] = _mm512_reduce_add_ps(_mm512_add_ps(acc0[m], acc1[m]));
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
  if (n < n1) bf16_rows(x, 1, K, w, y, N, n, n1);
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
  if (n < n1) int8_rows(x, 1, K, q, scales, y, N, n, n1);
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
  if (n < n1) f32_rows(x, 1, K, w, y, N, n, n1);
}

// ---------------------------------------------------------------- the table's entries

void f32(const float* x, int64_t M, int64_t K, const float* w, float* y, int64_t N, int64_t n0, int64_t n1) {
  if (M == 1)
    f32_one_row(x, K, w, y, N, n0, n1);
  else
    f32_rows(x, M, K, w, y, N, n0, n1);
}

void bf16(const float*, const uint16_t* x16, int64_t M, int64_t K, const uint16_t* w, float* y, int64_t N, int64_t n0,
          int64_t n1) {
  if (M == 1)
    bf16_one_row(x16, K, w, y, N, n0, n1);
  else
    bf16_rows(x16, M, K, w, y, N, n0, n1);
}

void int8(const float* x, int64_t M, int64_t K, const int8_t* q, const float* scales, float* y, int64_t N, int64_t n0,
          int64_t n1) {
  if (M == 1)
    int8_one_row(x, K, q, scales, y, N, n0, n1);
  else
    int8_rows(x, M, K, q, scales, y, N, n0, n1);
}

// No group-wise kernels of its own yet: on AVX-512 CPUs those run the AVX2 table's.
const Table kTable{"avx512", f32, bf16, /*bf16_reads_bits=*/true, int8, nullptr, nullptr, nullptr, nullptr};

}  // namespace

const Table* avx512() { return &kTable; }

}  // namespace minigpt4::cpu_gemv::kernels

#else

namespace minigpt4::cpu_gemv::kernels {
const Table* avx512() { return nullptr; }
}  // namespace minigpt4::cpu_gemv::kernels

#endif
