#pragma once
// The row kernels behind cpu_gemv.h, one table per instruction set. Internal: only
// cpu_gemv.cpp (which picks a table per weight dtype and splits the rows across threads) and
// the kernel files include it.
//
// Every kernel computes output rows [n0, n1) of y[M, N] = x[M, K] . W[N, K]^T with float32
// sums, for 1 <= M <= cpu_gemv::kMaxRows activation rows; int8 kernels also multiply row n by
// scales[n]. No bias (the caller adds it). Each file compiles its kernels for its instruction
// set through target attributes only, so the program itself runs on any x86-64: a table is
// used only after the CPU was checked for what it needs.
#include "minigpt4/models/cpu_gemv.h"

#include <cstdint>
#include <type_traits>

namespace minigpt4::cpu_gemv::kernels {

// Calls f(std::integral_constant<int, M>{}) for the row count M in 1..8 (cpu_gemv::kMaxRows),
// so that each kernel is compiled for a fixed M and keeps its accumulators in registers.
template <typename F>
inline void with_rows(int64_t M, F&& f) {
  static_assert(kMaxRows == 8, "with_rows instantiates 1..8 rows");
  switch (M) {
    case 1: f(std::integral_constant<int, 1>{}); return;
    case 2: f(std::integral_constant<int, 2>{}); return;
    case 3: f(std::integral_constant<int, 3>{}); return;
    case 4: f(std::integral_constant<int, 4>{}); return;
    case 5: f(std::integral_constant<int, 5>{}); return;
    case 6: f(std::integral_constant<int, 6>{}); return;
    case 7: f(std::integral_constant<int, 7>{}); return;
    default: f(std::integral_constant<int, 8>{}); return;
  }
}

struct Table {
  const char* name;  // "avx2", "avx512": what MINIGPT4_CPU_KERNELS calls it
  void (*f32)(const float* x, int64_t M, int64_t K, const float* w, float* y, int64_t N, int64_t n0, int64_t n1);
  // x32: the activations as float32; x16: the same values as bf16 bits. A table reads the one
  // it multiplies with (bf16_reads_bits): AVX512-BF16's dot product takes bf16 pairs, the
  // widening form float32.
  void (*bf16)(const float* x32, const uint16_t* x16, int64_t M, int64_t K, const uint16_t* w, float* y, int64_t N,
               int64_t n0, int64_t n1);
  bool bf16_reads_bits;
  void (*int8)(const float* x, int64_t M, int64_t K, const int8_t* q, const float* scales, float* y, int64_t N,
               int64_t n0, int64_t n1);

  // Group-wise weights (quantize.h: 8 bits int8 [N, Kp], 4 bits q4_0-packed uint8 [N, Kp / 2],
  // float16 scales [N, Kp / G]) multiply activations quantised to int8 per 32 inputs, as
  // llama.cpp's q8_0/q4_0 dot products do: integer sums per 32, one float multiply-add per 32.
  // quantize_x: M rows of K floats -> xq int8 [M, Kp] (zeros beyond K), xd float [M, Kp / 32]
  // (x ~= xq * xd, xd = absmax / 127 per 32), xs int32 [M, Kp / 32] (the sum of each 32 xq,
  // which q4's offset of 8 needs). nullptr where this table has none.
  void (*quantize_x)(const float* x, int64_t M, int64_t K, int64_t Kp, int8_t* xq, float* xd, int32_t* xs) = nullptr;
  void (*q8)(const int8_t* xq, const float* xd, const int32_t* xs, int64_t M, int64_t Kp, const int8_t* w,
             const uint16_t* scales, int64_t G, float* y, int64_t N, int64_t n0, int64_t n1) = nullptr;
  void (*q4)(const int8_t* xq, const float* xd, const int32_t* xs, int64_t M, int64_t Kp, const uint8_t* w,
             const uint16_t* scales, int64_t G, float* y, int64_t N, int64_t n0, int64_t n1) = nullptr;
  // Rows [n0, n1), inputs [k0, k1) of a group-wise weight as float32 into
  // out[(n - n0) * ld + k - k0] (a prompt's blocks). bits: 8 (int8 values) or 4 (q4_0-packed);
  // k0 and k1 multiples of 32.
  void (*dequantize)(const void* w, int bits, const uint16_t* scales, int64_t G, int64_t Kp, int64_t k0, int64_t k1,
                     float* out, int64_t ld, int64_t n0, int64_t n1) = nullptr;

  // Per-channel int8 weights against int16 activations, where a table multiplies those
  // (AVX2; nullptr elsewhere, and int8 above takes float32 ones): quantize_x16 once per
  // product, M rows of K floats -> xq int16 [M, K] and xd float [M, ceil(K / 256)] (x ~= xq *
  // xd per 256 inputs, xd = absmax / 32767), then int8_x16 for each range of output rows.
  void (*quantize_x16)(const float* x, int64_t M, int64_t K, int16_t* xq, float* xd) = nullptr;
  void (*int8_x16)(const int16_t* xq, const float* xd, int64_t M, int64_t K, const int8_t* q, const float* scales,
                   float* y, int64_t N, int64_t n0, int64_t n1) = nullptr;
};
inline constexpr int64_t kInt16Block = 256;  // inputs per int16 activation scale

// A prompt's product (more than kMaxRows rows, cpu_gemv.cpp's prompt_mm): y[M, N] = x[M, K] .
// W[N, K]^T with the weight as float32 blocks of nb rows x kc inputs (read in place for
// float32 weights, converted into a buffer for the others). The activations are packed once
// into panels of 16 rows (the last one 8 or 16, zero-padded; Mp = M rounded up to 8): the
// panel of rows [m0, m0 + width) is stored at xp + m0 * K as [K][width].
inline int64_t prompt_panel_width(int64_t rows_left) { return rows_left >= 16 ? 16 : 8; }
struct PromptGemm {
  const char* name;
  // ct[n * Mp + m] += sum_{k < kc} w[n * ldw + k] * x[m][k0 + k] for n < nb, m < Mp.
  void (*block)(const float* w, int64_t ldw, int64_t nb, const float* xp, int64_t K, int64_t k0, int64_t kc, int64_t Mp,
                float* ct);
  // nb rows of kc weights (row stride ldw) as float32 into out[n * kc + k]; int8 times scales[n].
  void (*widen_bf16)(const uint16_t* w, int64_t ldw, int64_t nb, int64_t kc, float* out);
  void (*widen_int8)(const int8_t* w, int64_t ldw, int64_t nb, int64_t kc, const float* scales, float* out);
};
const PromptGemm* prompt_gemm_avx2();  // nullptr where this build has none

// nullptr where this build has no such kernels (not x86-64, or a compiler without the
// intrinsics). Whether the CPU runs them is cpu_gemv.cpp's question.
const Table* avx2();    // AVX2 + FMA (+ F16C): bf16 and int8 widened to float32 in registers; group-wise
const Table* avx512();  // AVX-512 F/BW/VL; bf16 by vdpbf16ps where the CPU has AVX512-BF16, else widened

}  // namespace minigpt4::cpu_gemv::kernels
