#pragma once
// Weight-only int8 for the LLM's linear layers (`low_resource: True`; the original loads
// the LLM with bitsandbytes' load_in_8bit for GPUs too small for fp16). Each output
// channel (row of a [N, K] weight) gets one float32 scale, absmax/127, and the weight is
// stored as round(w / scale) in int8: a quarter of fp32's memory, half of fp16's.
// Decode steps (up to cpu_gemv::kMaxRows rows) keep the activations in their dtype and widen
// the weights in registers (W8A16). Prompts, on a CPU with int8 dot products (VNNI), take
// LLM.int8() as bitsandbytes does for the original: int8 activations per row, an int8 GEMM,
// and the outliers (magnitude >= 6) in float32 (quantize.cpp, llm_int8_mm); elsewhere, and on
// CUDA, they are W8A16 too.
#include <ATen/core/Tensor.h>

namespace minigpt4 {

struct Int8Weight {
  at::Tensor values;  // int8 [N, K], in [-127, 127]
  at::Tensor scales;  // float32 [N]; weight ~= values * scales[:, None]
};

// Symmetric per-output-channel quantisation of a floating [N, K] weight, on its device.
// Every element's error is at most scale/2. An all-zero row gets scale 1.
Int8Weight quantize_int8(const at::Tensor& weight);

// The same into existing int8 [N, K] `values` and float32 [N] `scales`, on their device,
// a block of rows at a time: the float32 temporaries stay a few MiB however large the
// layer (what loading a low_resource model uses).
void quantize_int8_into(const at::Tensor& weight, at::Tensor& values, at::Tensor& scales);

// values * scales[:, None] in `dtype`.
at::Tensor dequantize_int8(const at::Tensor& values, const at::Tensor& scales, c10::ScalarType dtype);

// x W^T + bias for W = values * scales[:, None]; the result has x's dtype. CPU: our decode
// kernels for a few rows, LLM.int8() for more where cpu_gemv chose it, else ATen's fused
// int8-weight kernel for bf16/fp16 with up to 32 rows or the weight converted block by
// block in cache; CUDA: the weight dequantised to x's dtype, then the ordinary GEMM.
// Measurements and reasons in quantize.cpp.
at::Tensor int8_linear(const at::Tensor& x, const at::Tensor& values, const at::Tensor& scales, const at::Tensor& bias);

// ---------------------------------------------------------------- group-wise formats
// One scale per `group_size` consecutive inputs of an output row (32, 64 or 128), as
// llama.cpp's q8_0 and q4_0 have per 32 (docs/weights.md says why these two):
//   8 bits: values int8 [N, Kp], q = round(w / d) in [-127, 127], d = absmax / 127.
//   4 bits: values uint8 [N, Kp / 2], nibbles q in [0, 15], w ~= (q - 8) d, where d = m / -8
//           for the group's value m of largest magnitude: m itself is exact and all 16
//           levels are used. Packed as q4_0 packs a block: in each run of 32 inputs, byte j
//           holds input j in its low nibble and input j + 16 in its high one.
//   scales: float16 [N, Kp / group_size] (half a bit per weight at 32, as in q4_0).
// Kp is K rounded up to a whole group; the padding holds zeros (a layer of any width
// quantises, and the padded inputs multiply zeros).
struct GroupedWeight {
  at::Tensor values, scales;
};

// The weight's storage, uninitialised, for an [N, K] layer.
GroupedWeight empty_grouped(int64_t N, int64_t K, int bits, int64_t group_size, const at::TensorOptions& options);
// Which format a (values, scales) pair holds: 4 or 8, and the group size. Errors name what
// does not fit.
int grouped_bits(const at::Tensor& values);
int64_t grouped_group_size(const at::Tensor& values, const at::Tensor& scales);
// Quantises a floating [N, K] weight into existing storage, a block of rows at a time (the
// float32 temporaries stay a few MiB, as in quantize_int8_into). Each element's error is at
// most d/2, and at most d for the one 4-bit level clamped at the top (+|m| maps to 8 -> 7).
void quantize_grouped_into(const at::Tensor& weight, at::Tensor& values, at::Tensor& scales);
GroupedWeight quantize_grouped(const at::Tensor& weight, int bits, int64_t group_size);
// The floating [N, K] weight the storage stands for (K: the layer's width, <= Kp).
at::Tensor dequantize_grouped(const at::Tensor& values, const at::Tensor& scales, int64_t K, c10::ScalarType dtype);
// x W^T + bias in x's dtype. CPU decode rows (1-4): cpu_gemv's kernels, which quantise the
// activations to int8 per 32 inputs as llama.cpp does (W4A8 / W8A8); more rows: the weight
// dequantised to float32 a block of rows at a time and multiplied by MKL; CUDA and autograd:
// dequantised to x's dtype, then the ordinary product.
at::Tensor grouped_linear(const at::Tensor& x, const at::Tensor& values, const at::Tensor& scales,
                          const at::Tensor& bias);

}  // namespace minigpt4
