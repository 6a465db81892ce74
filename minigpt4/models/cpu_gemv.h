#pragma once
// Matrix-vector products for decoding on the CPU: y[M, N] = x[M, K] W[N, K]^T for a few rows
// M (one per sequence of a decode step), reading every weight once, with float32 sums.
//
// Why our own: a decode step streams every weight from memory once, and ATen's kernels for
// these shapes read far below the memory's speed: oneDNN's bf16 GEMV and the fused
// _weight_int8pack_mm about half of it, MKL's float32 GEMV on an AMD EPYC 54-88 %; ATen's
// fused int8 kernel also takes K in multiples of 16 only; and for small weights, which sit in
// cache, ATen's per-call dispatch is most of a product's time (the fused decode step,
// cpu_decode.h, calls linear_row without any). benchmarks/README.md has the figures per CPU.
//
// Which kernels run is chosen per weight dtype, once per process, from the CPU's features by
// the rules in cpu_gemv.cpp (`minigpt4 info --kernels` prints the choice and the reason;
// `--measure` times every candidate on this machine). MINIGPT4_CPU_KERNELS forces a choice:
//   aten | avx2 | avx512                 every dtype
//   f32=avx2,bf16=aten,int8=avx512       per dtype (the others stay automatic)
//   grouped=avx2|aten                    group-wise 4/8-bit weights (no AVX-512 form yet)
//   bf16_prompt=float32|aten             how a bf16 prompt is multiplied (below)
//   int8_prompt=llm_int8|float32         how a prompt meets per-channel int8 weights (quantize.h)
//   gemm=avx2|aten                       who multiplies a prompt in float32 (prompt_mm below)
// (MINIGPT4_CPU_GEMV=0, the older switch, means aten.) Cases the kernels do not handle
// return an undefined tensor and the caller takes ATen's path. No autograd: inference only.
#include <ATen/core/Tensor.h>

#include <cstdint>
#include <string>
#include <vector>

namespace minigpt4::cpu_gemv {

// Rows of x handled here; more rows are a GEMM, ATen's job.
inline constexpr int64_t kMaxRows = 8;

// A family of kernels: ATen's own products, or ours for one instruction set.
enum class Kernels { aten, avx2, avx512 };
const char* name(Kernels kernels);

// What runs the products of each weight dtype (float32, bf16, int8).
// bf16_prompt_float32: products of more rows with bf16 weights (a prompt) through float32
// blocks (float32_blocks_mm) rather than ATen's bf16 GEMM.
// grouped: group-wise 4- and 8-bit weights (quantize.h); aten there means dequantising.
// int8_prompt_llm_int8: products of more rows with per-channel int8 weights through
// LLM.int8() (quantize.h, int8_linear) rather than float32 blocks.
// gemm: who multiplies a prompt's rows in float32 (every weight dtype that gets there): our
// GEMM (avx2, prompt_mm) or MKL (aten).
struct Choice {
  Kernels f32 = Kernels::aten, bf16 = Kernels::aten, int8 = Kernels::aten;
  bool bf16_prompt_float32 = false;
  Kernels grouped = Kernels::aten;
  bool int8_prompt_llm_int8 = false;
  Kernels gemm = Kernels::aten;
  bool operator==(const Choice& o) const {
    return f32 == o.f32 && bf16 == o.bf16 && int8 == o.int8 && bf16_prompt_float32 == o.bf16_prompt_float32 &&
           grouped == o.grouped && int8_prompt_llm_int8 == o.int8_prompt_llm_int8 && gemm == o.gemm;
  }
};

// This process's choice (computed on first use; std::runtime_error naming the problem when
// MINIGPT4_CPU_KERNELS is malformed or asks for kernels this CPU cannot run).
Choice chosen();
// Tests and benchmarks: run with another choice from now on (std::invalid_argument when this
// CPU cannot run one of its kernels). chosen() then returns it.
void set_choice(const Choice& choice);
// The families this CPU (and build) runs for a weight dtype (kFloat, kBFloat16, kChar; kByte
// stands for the group-wise formats), ATen first.
std::vector<Kernels> runnable(at::ScalarType weight_dtype);
// `minigpt4 info --kernels`: the CPU, its features, each dtype's choice and why.
std::string describe();

// x [..., K] on the CPU, weight [N, K] of x's dtype (float32 or bf16), bias [N] or undefined
// -> [..., N] in x's dtype. Undefined when not handled (more than kMaxRows rows, other dtypes
// or devices, or the dtype's choice is ATen).
at::Tensor linear_f32(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias);
at::Tensor linear_bf16(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias);

// x [..., K] bf16 or float32 on the CPU, values [N, K] int8, scales [N] float32 ->
// (x W^T) * scales, [..., N] in x's dtype, without bias. Undefined when not handled.
at::Tensor linear_int8(const at::Tensor& x, const at::Tensor& values, const at::Tensor& scales);

// x [..., K] bf16 or float32 on the CPU, a group-wise weight (quantize.h: values int8
// [N, Kp] or q4_0-packed uint8 [N, Kp / 2], scales float16 [N, Kp / G]) -> x W^T, [..., N]
// in x's dtype, without bias. The activations are quantised to int8 per 32 inputs first.
// Undefined when not handled (more than kMaxRows rows, or the choice is ATen).
at::Tensor linear_grouped(const at::Tensor& x, const at::Tensor& values, const at::Tensor& scales);
// A prompt's product with a group-wise weight: x2 [M, K] float32 -> [M, N] float32, the weight
// dequantised by our kernel a block of output rows at a time (in cache) and multiplied by MKL.
// Undefined where the group-wise choice is ATen (quantize.cpp then dequantises with ATen ops).
at::Tensor grouped_blocks_mm(const at::Tensor& x2, const at::Tensor& values, const at::Tensor& scales);

// A prompt's product through our GEMM (Choice::gemm avx2): x2 [M, K] float32 or bf16 (more
// than kMaxRows rows), weight [N, K] float32, bf16, per-channel int8 with float32 scales [N],
// or group-wise (quantize.h; K may be below its padded width) -> [M, N] float32 = x2 W^T,
// scaled, float32 sums. The weight is read in place (float32) or converted a block at a time
// while the block is in cache. Undefined where the choice is MKL or the arguments are not a
// contiguous CPU weight of these kinds. No autograd.
at::Tensor prompt_mm(const at::Tensor& x2, const at::Tensor& weight, const at::Tensor& scales);
// A float32 Linear's prompt product through prompt_mm, in x's shape with the bias added;
// undefined where prompt_mm does not apply or x has at most kMaxRows rows.
at::Tensor linear_f32_prompt(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias);

// Products of more rows (a prompt) on a CPU without a bf16 or int8 matrix unit (AMX): the
// weight is converted to float32 a block of output rows at a time, while the block is in
// cache, and multiplied by MKL's float32 GEMM. ATen's bf16 GEMM (oneDNN) without AMX ran a
// 64-token prompt of a 1.1B model 1.4x slower than float32 on an Intel Xeon with
// AVX512-BF16 and 3.9x slower on an AMD EPYC (Zen 3); exact conversions, float32 sums.
// x2 [M, K] float32, weight [N, K] bf16 or int8 (int8: the product of the integer values,
// unscaled) -> [M, N] float32.
at::Tensor float32_blocks_mm(const at::Tensor& x2, const at::Tensor& weight);
// A bf16 Linear's prompt product (more than kMaxRows rows) through float32_blocks_mm, in x's
// dtype with the bias added; undefined where ATen's bf16 GEMM was chosen (AMX, or
// bf16_prompt=aten) or where it does not apply (fewer rows, CUDA; autograd is the caller's
// check).
at::Tensor linear_bf16_prompt(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias);

// The same products on raw memory for one activation row, for a caller that keeps its own
// buffers (the fused decode step, cpu_decode.h): y[N] = W[N, K] x[K] (times the per-row
// scales for int8 weights), float32 x (for bf16 weights, values a bf16 holds), float32 sums,
// no bias. Call only where row_available(weight dtype) holds and the weight is a contiguous
// [N, K] CPU tensor. float32 weights whose choice is ATen still run here, on the int8
// choice's kernels: ATen's per-call dispatch costs more than a small product (the fused step
// sends large float32 weights to ATen then, see cpu_decode.cpp).
bool row_available(at::ScalarType weight_dtype);
// The same for a Linear's weight and scales as stored (tells group-wise weights apart).
bool row_available(const at::Tensor& weight, const at::Tensor& scales);
// K: x's width (a group-wise weight may be stored padded beyond it).
void linear_row(const at::Tensor& weight, const at::Tensor& scales, const float* x, int64_t K, float* y);
// Several such products of the same x in one parallel region (a layer's q, k and v; gate and
// up), so that the threads meet once instead of once per weight. Weights of one dtype and
// width; otherwise one linear_row each.
struct RowProduct {
  const at::Tensor& weight;
  const at::Tensor& scales;
  float* y;
};
void linear_rows(const std::vector<RowProduct>& products, const float* x, int64_t K);

}  // namespace minigpt4::cpu_gemv
