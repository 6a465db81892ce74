// The prompt GEMM's AVX2 kernels (cpu_gemv_kernels.h, PromptGemm): a prompt's rows times a
// weight, as BLIS-style register tiles. Why our own: on an AMD EPYC (Zen 3, 2 threads) MKL's
// sgemm runs these shapes (64-128 rows of a 1.1B LLaMA's layers) at about half the FMA
// units' peak, its generic path on a CPU that is not Intel; benchmarks/README.md has the
// figures.
//
// The tile: 6 weight rows times 16 activation rows in 12 accumulators. Per input k it loads
// 16 activations (two vectors, from the packed panel, in L1) and broadcasts 6 weights (read
// straight from the weight's rows), then 12 FMAs: each loaded element feeds 2 or 6 FMAs, so
// the loads stay below the FMA units' rate and the weight block is read from L2, not L1.
// Sums are float32 in k order within a block of the input, the blocks added in order.
#include "minigpt4/models/cpu_gemv_kernels.h"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>

namespace minigpt4::cpu_gemv::kernels {

namespace {

#define MINIGPT4_AVX2 __attribute__((target("avx2,fma,f16c")))

// ct[i * ldc + m] += sum_k w[i * ldw + k] * xp[k * 8V + m] for i < R, m < 8V. The 12
// accumulators are named variables, not an array: GCC keeps an array of __m256 in memory
// (stored on every iteration) in a function compiled for AVX2 by a target attribute alone.
#define MINIGPT4_TILE_ROWS(F) F(0) F(1) F(2) F(3) F(4) F(5)
template <int R, int V>
MINIGPT4_AVX2 void tile(const float* w, int64_t ldw, const float* xp, int64_t kc, float* ct, int64_t ldc) {
  static_assert(R >= 1 && R <= 6 && (V == 1 || V == 2), "a tile is at most 6 rows x 16");
#define MINIGPT4_ZERO(i) __m256 c##i##0 = _mm256_setzero_ps(), c##i##1 = _mm256_setzero_ps();
  MINIGPT4_TILE_ROWS(MINIGPT4_ZERO)
  for (int64_t k = 0; k < kc; ++k) {
    const __m256 b0 = _mm256_loadu_ps(xp + k * 8 * V), b1 = V == 2 ? _mm256_loadu_ps(xp + k * 8 * V + 8) : b0;
#define MINIGPT4_FMA(i)                                              \
  if constexpr (R > i) {                                             \
    const __m256 a = _mm256_broadcast_ss(w + i * ldw + k);           \
    c##i##0 = _mm256_fmadd_ps(a, b0, c##i##0);                       \
    if constexpr (V == 2) c##i##1 = _mm256_fmadd_ps(a, b1, c##i##1); \
  }
    MINIGPT4_TILE_ROWS(MINIGPT4_FMA)
  }
#define MINIGPT4_STORE(i)                                                                          \
  if constexpr (R > i) {                                                                           \
    float* c = ct + i * ldc;                                                                       \
    _mm256_storeu_ps(c, _mm256_add_ps(_mm256_loadu_ps(c), c##i##0));                               \
    if constexpr (V == 2) _mm256_storeu_ps(c + 8, _mm256_add_ps(_mm256_loadu_ps(c + 8), c##i##1)); \
  }
  MINIGPT4_TILE_ROWS(MINIGPT4_STORE)
#undef MINIGPT4_ZERO
#undef MINIGPT4_FMA
#undef MINIGPT4_STORE
}
#undef MINIGPT4_TILE_ROWS

// Every weight row of the block against one panel of 8V activation rows.
template <int V>
MINIGPT4_AVX2 void panel(const float* w, int64_t ldw, int64_t nb, const float* xp, int64_t kc, float* ct, int64_t ldc) {
  int64_t i = 0;
  for (; i + 6 <= nb; i += 6) tile<6, V>(w + i * ldw, ldw, xp, kc, ct + i * ldc, ldc);
  const float* wr = w + i * ldw;
  float* cr = ct + i * ldc;
  switch (nb - i) {
    case 1: tile<1, V>(wr, ldw, xp, kc, cr, ldc); break;
    case 2: tile<2, V>(wr, ldw, xp, kc, cr, ldc); break;
    case 3: tile<3, V>(wr, ldw, xp, kc, cr, ldc); break;
    case 4: tile<4, V>(wr, ldw, xp, kc, cr, ldc); break;
    case 5: tile<5, V>(wr, ldw, xp, kc, cr, ldc); break;
    default: break;
  }
}

MINIGPT4_AVX2 void block(const float* w, int64_t ldw, int64_t nb, const float* xp, int64_t K, int64_t k0, int64_t kc,
                         int64_t Mp, float* ct) {
  for (int64_t m0 = 0; m0 < Mp;) {
    const int64_t width = prompt_panel_width(Mp - m0);
    const float* x = xp + m0 * K + k0 * width;
    if (width == 16)
      panel<2>(w, ldw, nb, x, kc, ct + m0, Mp);
    else
      panel<1>(w, ldw, nb, x, kc, ct + m0, Mp);
    m0 += width;
  }
}

MINIGPT4_AVX2 void widen_bf16(const uint16_t* w, int64_t ldw, int64_t nb, int64_t kc, float* out) {
  for (int64_t n = 0; n < nb; ++n) {
    const uint16_t* r = w + n * ldw;
    float* o = out + n * kc;
    int64_t k = 0;
    for (; k + 8 <= kc; k += 8)
      _mm256_storeu_ps(o + k,
                       _mm256_castsi256_ps(_mm256_slli_epi32(
                           _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(r + k))), 16)));
    for (; k < kc; ++k) {
      const uint32_t bits = uint32_t{r[k]} << 16;
      __builtin_memcpy(o + k, &bits, sizeof(float));
    }
  }
}

MINIGPT4_AVX2 void widen_int8(const int8_t* w, int64_t ldw, int64_t nb, int64_t kc, const float* scales, float* out) {
  for (int64_t n = 0; n < nb; ++n) {
    const int8_t* r = w + n * ldw;
    float* o = out + n * kc;
    const __m256 s = _mm256_set1_ps(scales[n]);
    int64_t k = 0;
    for (; k + 8 <= kc; k += 8)
      _mm256_storeu_ps(
          o + k,
          _mm256_mul_ps(
              _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(r + k)))), s));
    for (; k < kc; ++k) o[k] = static_cast<float>(r[k]) * scales[n];
  }
}

const PromptGemm kGemm{"avx2", block, widen_bf16, widen_int8};

}  // namespace

const PromptGemm* prompt_gemm_avx2() { return &kGemm; }

}  // namespace minigpt4::cpu_gemv::kernels

#else

namespace minigpt4::cpu_gemv::kernels {
const PromptGemm* prompt_gemm_avx2() { return nullptr; }
}  // namespace minigpt4::cpu_gemv::kernels

#endif
