// cpu_gemv's AVX2 kernels (cpu_gemv_kernels.h), for x86-64 CPUs without AVX-512 (AMD Zen 2/3,
// Intel client and E-core parts) and as a candidate on those with it: every weight dtype is
// widened to float32 in registers and multiplied with float32 FMAs (bf16: a 16-bit shift,
// the form llama.cpp uses where there is no bf16 dot product; int8: sign-extended and
// converted, then scaled per output row).
//
// No software prefetches: on an AMD EPYC (Zen 3, 2 threads, weights out of cache) they only
// cost (prefetching 256-1024 bytes ahead: 2-30 % slower); the hardware prefetcher keeps four
// row streams going on its own. benchmarks/README.md has the figures.
#include "minigpt4/models/cpu_gemv.h"
#include "minigpt4/models/cpu_gemv_kernels.h"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>

namespace minigpt4::cpu_gemv::kernels {

namespace {

#define MINIGPT4_AVX2 __attribute__((target("avx2,fma")))

// Eight weights as float32, and one for the ragged tail, per weight dtype; kFourRows: which
// one-row form reads it fastest (one_row).
struct F32 {
  using T = float;
  static constexpr bool kFourRows = true;
  MINIGPT4_AVX2 static __m256 load8(const float* p) { return _mm256_loadu_ps(p); }
  static float at(const float* p) { return *p; }
};
struct BF16 {
  using T = uint16_t;
  static constexpr bool kFourRows = true;
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
struct Int8 {
  using T = int8_t;
  static constexpr bool kFourRows = false;  // see row_dot
  MINIGPT4_AVX2 static __m256 load8(const int8_t* p) {
    return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i*)p)));
  }
  static float at(const int8_t* p) { return static_cast<float>(*p); }
};

MINIGPT4_AVX2 inline float horizontal_sum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

// One activation row, one output row at a time with four accumulators over 32 weights per
// step: int8 weights, whose widening (a shuffle and a conversion per 8) is the bottleneck
// there, not the memory; on a Zen 3 EPYC this form read 23.7 GB/s, four rows at once 19.7.
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

// One activation row, four output rows at a time (four weight streams in flight), two
// accumulators each over 16 weights per step: float32 and bf16 weights. The last K % 16
// weights of a row are summed one by one (a masked AVX2 load exists for 32-bit elements only).
template <typename W>
MINIGPT4_AVX2 void four_rows(const float* x, int64_t K, const typename W::T* w, float* y, int64_t n0, int64_t n1) {
  const int64_t K16 = K & ~int64_t{15};
  int64_t n = n0;
  for (; n + 4 <= n1; n += 4) {
    const typename W::T* r[4] = {w + n * K, w + (n + 1) * K, w + (n + 2) * K, w + (n + 3) * K};
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
      y[n + i] = s;
    }
  }
  for (; n < n1; ++n) y[n] = row_dot<W>(x, K, w + n * K);
}

template <typename W>
MINIGPT4_AVX2 void one_row(const float* x, int64_t K, const typename W::T* w, float* y, int64_t n0, int64_t n1) {
  if constexpr (W::kFourRows) {
    four_rows<W>(x, K, w, y, n0, n1);
  } else {
    for (int64_t n = n0; n < n1; ++n) y[n] = row_dot<W>(x, K, w + n * K);
  }
}

// M activation rows (2..kMaxRows): one output row at a time, each weight vector widened once
// and multiplied into all M rows, so the weights are read once per call.
template <typename W, int M>
MINIGPT4_AVX2 void m_rows(const float* x, int64_t K, const typename W::T* w, float* y, int64_t N, int64_t n0,
                          int64_t n1) {
  const int64_t K16 = K & ~int64_t{15};
  for (int64_t n = n0; n < n1; ++n) {
    const typename W::T* r = w + n * K;
    __m256 a0[M], a1[M];
    for (int m = 0; m < M; ++m) a0[m] = a1[m] = _mm256_setzero_ps();
    for (int64_t k = 0; k < K16; k += 16) {
      const __m256 w0 = W::load8(r + k), w1 = W::load8(r + k + 8);
      for (int m = 0; m < M; ++m) {
        a0[m] = _mm256_fmadd_ps(_mm256_loadu_ps(x + m * K + k), w0, a0[m]);
        a1[m] = _mm256_fmadd_ps(_mm256_loadu_ps(x + m * K + k + 8), w1, a1[m]);
      }
    }
    for (int m = 0; m < M; ++m) {
      float s = horizontal_sum(_mm256_add_ps(a0[m], a1[m]));
      for (int64_t k = K16; k < K; ++k) s += x[m * K + k] * W::at(r + k);
      y[m * N + n] = s;
    }
  }
}

static_assert(kMaxRows == 4, "m_rows is instantiated for 2..4 rows below");

template <typename W>
void rows(const float* x, int64_t M, int64_t K, const typename W::T* w, float* y, int64_t N, int64_t n0, int64_t n1) {
  switch (M) {
    case 1: one_row<W>(x, K, w, y, n0, n1); return;
    case 2: m_rows<W, 2>(x, K, w, y, N, n0, n1); return;
    case 3: m_rows<W, 3>(x, K, w, y, N, n0, n1); return;
    default: m_rows<W, 4>(x, K, w, y, N, n0, n1); return;
  }
}

void f32(const float* x, int64_t M, int64_t K, const float* w, float* y, int64_t N, int64_t n0, int64_t n1) {
  rows<F32>(x, M, K, w, y, N, n0, n1);
}

void bf16(const float* x32, const uint16_t*, int64_t M, int64_t K, const uint16_t* w, float* y, int64_t N, int64_t n0,
          int64_t n1) {
  rows<BF16>(x32, M, K, w, y, N, n0, n1);
}

void int8(const float* x, int64_t M, int64_t K, const int8_t* q, const float* scales, float* y, int64_t N, int64_t n0,
          int64_t n1) {
  rows<Int8>(x, M, K, q, y, N, n0, n1);
  for (int64_t m = 0; m < M; ++m)
    for (int64_t n = n0; n < n1; ++n) y[m * N + n] *= scales[n];
}

const Table kTable{"avx2", f32, bf16, /*bf16_reads_bits=*/false, int8};

}  // namespace

const Table* avx2() { return &kTable; }

}  // namespace minigpt4::cpu_gemv::kernels

#else

namespace minigpt4::cpu_gemv::kernels {
const Table* avx2() { return nullptr; }
}  // namespace minigpt4::cpu_gemv::kernels

#endif
