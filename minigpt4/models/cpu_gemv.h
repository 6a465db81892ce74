#pragma once
// Matrix-vector products for decoding on the CPU: y[M, N] = x[M, K] W[N, K]^T for a few rows
// M (one per sequence of a decode step), reading every weight once, with float32 sums.
//
// Why our own: a decode step streams every weight from memory once, and these kernels read
// bf16 and int8 weights about twice as fast as ATen's (2 threads, weights out of cache,
// 2048x5632: bf16 0.8-0.9 ms against oneDNN's 1.5-1.7, int8 0.55 against the fused
// _weight_int8pack_mm's 1.0; benchmarks/README.md); ATen's fused int8 kernel also takes K in
// multiples of 16 only and has no float32 path; and for small weights, which sit in cache,
// ATen's per-call dispatch is most of a product's time (the fused decode step, cpu_decode.h,
// calls the raw row kernels below without any). float32 weights are MKL's as fast, so
// Linear leaves them to ATen. These kernels use AVX-512 (BF16's dot product for bf16; int8
// widened to float32 in registers and scaled per output channel), chosen at run time from
// what the CPU offers; every other case returns an undefined tensor and the caller takes
// ATen's path. No autograd: inference only.
#include <ATen/core/Tensor.h>

#include <cstdint>

namespace minigpt4::cpu_gemv {

// Rows of x handled here; more rows are a GEMM, ATen's job.
inline constexpr int64_t kMaxRows = 4;

// Whether this CPU runs the kernels (x86-64 with AVX-512 F/BW/VL; bf16 also needs AVX512-BF16).
bool bf16_available();
bool int8_available();

// x [..., K] bf16 on the CPU, weight [N, K] bf16, bias [N] bf16 or undefined -> [..., N]
// bf16. Undefined when not handled (more than kMaxRows rows, other dtypes or devices, a CPU
// without the instructions, or MINIGPT4_CPU_GEMV=0 in the environment).
at::Tensor linear_bf16(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias);

// x [..., K] bf16 or float32 on the CPU, values [N, K] int8, scales [N] float32 ->
// (x W^T) * scales, [..., N] in x's dtype, without bias. Undefined when not handled.
at::Tensor linear_int8(const at::Tensor& x, const at::Tensor& values, const at::Tensor& scales);

// The same kernels on raw memory for one activation row, for a caller that keeps its own
// buffers (the fused decode step, cpu_decode.h): y[N] = W[N, K] x[K] (times the per-row
// scales for int8 weights), float32 sums, no bias. x is float32 for float32 and int8
// weights, bf16 bits for bf16 weights. Call only where row_available(weight dtype) holds and
// the weight is a contiguous [N, K] CPU tensor.
bool row_available(at::ScalarType weight_dtype);
void linear_row(const at::Tensor& weight, const at::Tensor& scales, const void* x, float* y);

}  // namespace minigpt4::cpu_gemv
