#include "minigpt4/models/cpu_gemv.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

// at::parallel_for, inlined from the headers, splits work across threads only when this file
// is compiled with OpenMP (CMakeLists.txt links OpenMP::OpenMP_CXX); without it every kernel
// below would run on one thread and stream weights at half the speed.
#if AT_PARALLEL_OPENMP && !defined(_OPENMP)
#error "compile with OpenMP: at::parallel_for would run serially"
#endif

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <stdexcept>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define MINIGPT4_GEMV_X86 1
#include <immintrin.h>
#endif

namespace minigpt4::cpu_gemv {

namespace {

// Output rows per parallel task: enough weight bytes (~256 KiB) that scheduling is noise.
int64_t grain_rows(int64_t K, int64_t element_bytes) {
  return std::max<int64_t>(16, (int64_t{256} << 10) / std::max<int64_t>(1, K * element_bytes));
}

bool enabled_by_environment() {
  static const bool enabled = [] {
    const char* v = std::getenv("MINIGPT4_CPU_GEMV");
    return v == nullptr || std::strcmp(v, "0") != 0;
  }();
  return enabled;
}

#ifdef MINIGPT4_GEMV_X86

// Every kernel below is compiled for AVX-512 through the target attribute only, so the rest
// of this file (and of the program) runs on any x86-64; callers check the CPU first.
#define MINIGPT4_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl")))
#define MINIGPT4_AVX512_BF16 __attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16")))

// Rows [n0, n1) of y32[M, N] = x[M, K] . w[N, K]^T (+ bias32), bf16 inputs as raw bits.
// Two accumulators per x row over 64 weights at a time keep two dot-product chains in
// flight; the tail is a masked load (zeros add nothing).
MINIGPT4_AVX512_BF16 void bf16_rows(const uint16_t* x, int64_t M, int64_t K, const uint16_t* w,
                                    const float* bias32, float* y32, int64_t N, int64_t n0, int64_t n1) {
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
    const float b = bias32 ? bias32[n] : 0.0f;
    for (int64_t m = 0; m < M; ++m) y32[m * N + n] = _mm512_reduce_add_ps(_mm512_add_ps(acc0[m], acc1[m])) + b;
  }
}

// Rows [n0, n1) of y32[M, N] = (x32[M, K] . float(q[N, K])^T) * scales[N]: 16 int8 weights
// widened to float32 per step, two chains in flight.
MINIGPT4_AVX512 void int8_rows(const float* x, int64_t M, int64_t K, const int8_t* q, const float* scales,
                               float* y32, int64_t N, int64_t n0, int64_t n1) {
  for (int64_t n = n0; n < n1; ++n) {
    const int8_t* qr = q + n * K;
    __m512 acc0[kMaxRows], acc1[kMaxRows];
    for (int64_t m = 0; m < M; ++m) acc0[m] = acc1[m] = _mm512_setzero_ps();
    int64_t k = 0;
    for (; k + 32 <= K; k += 32) {
      const __m512 w0 = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i*)(qr + k))));
      const __m512 w1 = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i*)(qr + k + 16))));
      for (int64_t m = 0; m < M; ++m) {
        acc0[m] = _mm512_fmadd_ps(_mm512_loadu_ps(x + m * K + k), w0, acc0[m]);
        acc1[m] = _mm512_fmadd_ps(_mm512_loadu_ps(x + m * K + k + 16), w1, acc1[m]);
      }
    }
    for (; k < K; k += 16) {
      const int64_t left = std::min<int64_t>(16, K - k);
      const __mmask16 mask = left == 16 ? __mmask16(0xFFFF) : __mmask16((1u << left) - 1);
      const __m512 wv = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_maskz_loadu_epi8(mask, qr + k)));
      for (int64_t m = 0; m < M; ++m) acc0[m] = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(mask, x + m * K + k), wv, acc0[m]);
    }
    for (int64_t m = 0; m < M; ++m)
      y32[m * N + n] = _mm512_reduce_add_ps(_mm512_add_ps(acc0[m], acc1[m])) * scales[n];
  }
}

// Rows [n0, n1) of y[N] = x[K] . w[N, K]^T for one float32 row, four chains in flight.
MINIGPT4_AVX512 void f32_rows(const float* x, int64_t K, const float* w, float* y, int64_t n0, int64_t n1) {
  for (int64_t n = n0; n < n1; ++n) {
    const float* wr = w + n * K;
    __m512 acc0 = _mm512_setzero_ps(), acc1 = _mm512_setzero_ps(), acc2 = _mm512_setzero_ps(),
           acc3 = _mm512_setzero_ps();
    int64_t k = 0;
    for (; k + 64 <= K; k += 64) {
      acc0 = _mm512_fmadd_ps(_mm512_loadu_ps(x + k), _mm512_loadu_ps(wr + k), acc0);
      acc1 = _mm512_fmadd_ps(_mm512_loadu_ps(x + k + 16), _mm512_loadu_ps(wr + k + 16), acc1);
      acc2 = _mm512_fmadd_ps(_mm512_loadu_ps(x + k + 32), _mm512_loadu_ps(wr + k + 32), acc2);
      acc3 = _mm512_fmadd_ps(_mm512_loadu_ps(x + k + 48), _mm512_loadu_ps(wr + k + 48), acc3);
    }
    for (; k < K; k += 16) {
      const int64_t left = std::min<int64_t>(16, K - k);
      const __mmask16 mask = left == 16 ? __mmask16(0xFFFF) : __mmask16((1u << left) - 1);
      acc0 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(mask, x + k), _mm512_maskz_loadu_ps(mask, wr + k), acc0);
    }
    y[n] = _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(acc0, acc1), _mm512_add_ps(acc2, acc3)));
  }
}

// One activation row (a decode step of one sequence) is bound by how fast the weights stream
// in from memory. The kernels below take four output rows at a time, so four weight streams
// are in flight, and while reading a line of each row they prefetch the same line of the
// next block's rows: the hardware prefetcher follows a row but stops at the 4 KiB page
// boundary (a bf16 row of 2048), so each new row would otherwise start with misses. Reading
// bf16 weights out of cache with 2 threads, one row at a time without prefetches reached
// 15-19 GB/s, this layout 23-28, MKL's float32 GEMV 27-29.
template <typename T>
inline void prefetch_next_block(const T* row, int64_t K, int64_t k) {
  _mm_prefetch(reinterpret_cast<const char*>(row + 4 * K + k), _MM_HINT_T0);
}

MINIGPT4_AVX512_BF16 void bf16_one_row(const uint16_t* x, int64_t K, const uint16_t* w, const float* bias32, float* y,
                                       int64_t N, int64_t n0, int64_t n1) {
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
      for (int i = 0; i < 4; ++i) acc[i] = _mm512_dpbf16_ps(acc[i], xv, (__m512bh)_mm512_maskz_loadu_epi16(mask, r[i] + k));
    }
    for (int i = 0; i < 4; ++i) y[n + i] = _mm512_reduce_add_ps(acc[i]) + (bias32 ? bias32[n + i] : 0.0f);
  }
  if (n < n1) bf16_rows(x, 1, K, w, bias32, y, N, n, n1);
}

MINIGPT4_AVX512 void int8_one_row(const float* x, int64_t K, const int8_t* q, const float* scales, float* y,
                                  int64_t N, int64_t n0, int64_t n1) {
  int64_t n = n0;
  for (; n + 4 <= n1; n += 4) {
    const int8_t* r[4] = {q + n * K, q + (n + 1) * K, q + (n + 2) * K, q + (n + 3) * K};
    __m512 acc[4] = {_mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps()};
    int64_t k = 0;
    for (; k + 64 <= K; k += 64) {
      for (int i = 0; i < 4; ++i) prefetch_next_block(r[i], K, k);
      for (int64_t j = 0; j < 64; j += 16) {
        const __m512 xv = _mm512_loadu_ps(x + k + j);
        for (int i = 0; i < 4; ++i) {
          const __m512 wv = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i*)(r[i] + k + j))));
          acc[i] = _mm512_fmadd_ps(xv, wv, acc[i]);
        }
      }
    }
    for (; k < K; k += 16) {
      const int64_t left = std::min<int64_t>(16, K - k);
      const __mmask16 mask = left == 16 ? __mmask16(0xFFFF) : __mmask16((1u << left) - 1);
      const __m512 xv = _mm512_maskz_loadu_ps(mask, x + k);
      for (int i = 0; i < 4; ++i)
        acc[i] = _mm512_fmadd_ps(xv, _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_maskz_loadu_epi8(mask, r[i] + k))), acc[i]);
    }
    for (int i = 0; i < 4; ++i) y[n + i] = _mm512_reduce_add_ps(acc[i]) * scales[n + i];
  }
  if (n < n1) int8_rows(x, 1, K, q, scales, y, N, n, n1);
}

MINIGPT4_AVX512 void f32_one_row(const float* x, int64_t K, const float* w, float* y, int64_t n0, int64_t n1) {
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
  if (n < n1) f32_rows(x, K, w, y, n, n1);
}

bool cpu_has(bool bf16) {
  __builtin_cpu_init();
  const bool base = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                    __builtin_cpu_supports("avx512vl");
  return base && (!bf16 || __builtin_cpu_supports("avx512bf16"));
}

#endif  // MINIGPT4_GEMV_X86

// The rows of x, or 0 when x is not a small CPU batch this file handles.
int64_t small_rows(const at::Tensor& x, const at::Tensor& weight) {
  if (!x.is_cpu() || !weight.is_cpu() || weight.dim() != 2 || !weight.is_contiguous() || x.dim() < 1) return 0;
  const int64_t K = weight.size(1);
  if (K == 0 || x.size(-1) != K) return 0;
  const int64_t M = x.numel() / K;
  return M >= 1 && M <= kMaxRows ? M : 0;
}

at::Tensor output_like(const at::Tensor& x, int64_t N, const at::Tensor& y32) {
  auto shape = x.sizes().vec();
  shape.back() = N;
  return y32.to(x.scalar_type()).view(shape);
}

}  // namespace

bool bf16_available() {
#ifdef MINIGPT4_GEMV_X86
  static const bool available = cpu_has(/*bf16=*/true);
  return available && enabled_by_environment();
#else
  return false;
#endif
}

bool int8_available() {
#ifdef MINIGPT4_GEMV_X86
  static const bool available = cpu_has(/*bf16=*/false);
  return available && enabled_by_environment();
#else
  return false;
#endif
}

at::Tensor linear_bf16(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias) {
#ifdef MINIGPT4_GEMV_X86
  if (x.scalar_type() != at::kBFloat16 || weight.scalar_type() != at::kBFloat16) return {};
  const int64_t M = small_rows(x, weight);
  if (M == 0 || !bf16_available()) return {};
  const int64_t N = weight.size(0), K = weight.size(1);
  if (bias.defined() && (bias.numel() != N || !bias.is_cpu())) return {};
  const auto x2 = x.reshape({M, K}).contiguous();
  const auto bias32 = bias.defined() ? bias.to(at::kFloat).contiguous() : at::Tensor();
  auto y32 = at::empty({M, N}, x.options().dtype(at::kFloat));
  const auto* xp = reinterpret_cast<const uint16_t*>(x2.data_ptr<at::BFloat16>());
  const auto* wp = reinterpret_cast<const uint16_t*>(weight.data_ptr<at::BFloat16>());
  const float* bp = bias32.defined() ? bias32.data_ptr<float>() : nullptr;
  float* yp = y32.data_ptr<float>();
  at::parallel_for(0, N, grain_rows(K, 2),
                   [&](int64_t n0, int64_t n1) {
                     if (M == 1) bf16_one_row(xp, K, wp, bp, yp, N, n0, n1);
                     else bf16_rows(xp, M, K, wp, bp, yp, N, n0, n1);
                   });
  return output_like(x, N, y32);
#else
  return {};
#endif
}

at::Tensor linear_int8(const at::Tensor& x, const at::Tensor& values, const at::Tensor& scales) {
#ifdef MINIGPT4_GEMV_X86
  if (values.scalar_type() != at::kChar || scales.scalar_type() != at::kFloat || !scales.is_contiguous()) return {};
  if (x.scalar_type() != at::kBFloat16 && x.scalar_type() != at::kFloat) return {};
  const int64_t M = small_rows(x, values);
  if (M == 0 || !int8_available()) return {};
  const int64_t N = values.size(0), K = values.size(1);
  if (scales.numel() != N || !scales.is_cpu()) return {};
  const auto x32 = x.reshape({M, K}).to(at::kFloat).contiguous();
  auto y32 = at::empty({M, N}, x.options().dtype(at::kFloat));
  const float* xp = x32.data_ptr<float>();
  const int8_t* qp = values.data_ptr<int8_t>();
  const float* sp = scales.data_ptr<float>();
  float* yp = y32.data_ptr<float>();
  at::parallel_for(0, N, grain_rows(K, 1),
                   [&](int64_t n0, int64_t n1) {
                     if (M == 1) int8_one_row(xp, K, qp, sp, yp, N, n0, n1);
                     else int8_rows(xp, M, K, qp, sp, yp, N, n0, n1);
                   });
  return output_like(x, N, y32);
#else
  return {};
#endif
}

bool row_available(at::ScalarType weight_dtype) {
  if (weight_dtype == at::kBFloat16) return bf16_available();
  return (weight_dtype == at::kFloat || weight_dtype == at::kChar) && int8_available();
}

void linear_row(const at::Tensor& weight, const at::Tensor& scales, const void* x, float* y) {
#ifdef MINIGPT4_GEMV_X86
  const int64_t N = weight.size(0), K = weight.size(1);
  switch (weight.scalar_type()) {
    case at::kFloat: {
      const float* xp = static_cast<const float*>(x);
      const float* wp = weight.data_ptr<float>();
      at::parallel_for(0, N, grain_rows(K, 4), [&](int64_t n0, int64_t n1) { f32_one_row(xp, K, wp, y, n0, n1); });
      return;
    }
    case at::kBFloat16: {
      const auto* xp = static_cast<const uint16_t*>(x);
      const auto* wp = reinterpret_cast<const uint16_t*>(weight.data_ptr<at::BFloat16>());
      at::parallel_for(0, N, grain_rows(K, 2),
                       [&](int64_t n0, int64_t n1) { bf16_one_row(xp, K, wp, nullptr, y, N, n0, n1); });
      return;
    }
    case at::kChar: {
      const float* xp = static_cast<const float*>(x);
      const int8_t* qp = weight.data_ptr<int8_t>();
      const float* sp = scales.data_ptr<float>();
      at::parallel_for(0, N, grain_rows(K, 1),
                       [&](int64_t n0, int64_t n1) { int8_one_row(xp, K, qp, sp, y, N, n0, n1); });
      return;
    }
    default: break;
  }
#endif
  (void)weight, (void)scales, (void)x, (void)y;
  throw std::logic_error("cpu_gemv::linear_row called for a weight it does not handle (check row_available first)");
}

}  // namespace minigpt4::cpu_gemv
