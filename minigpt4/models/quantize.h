#pragma once
// Weight-only int8 for the LLM's linear layers (`low_resource: True`; the original loads
// the LLM with bitsandbytes' load_in_8bit for GPUs too small for fp16). Each output
// channel (row of a [N, K] weight) gets one float32 scale, absmax/127, and the weight is
// stored as round(w / scale) in int8: a quarter of fp32's memory, half of fp16's.
// Activations stay in the compute dtype (W8A16): unlike bitsandbytes' LLM.int8(), which
// also quantises activations outside its outlier columns, nothing but the weights loses
// precision, so no outlier threshold is needed.
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

// x W^T + bias for W = values * scales[:, None]; the result has x's dtype. CPU: ATen's
// fused int8-weight kernel for bf16/fp16 with up to 32 rows (decoding), else the weight
// converted block by block in cache; CUDA: the weight dequantised to x's dtype, then the
// ordinary GEMM. Measurements and reasons in quantize.cpp.
at::Tensor int8_linear(const at::Tensor& x, const at::Tensor& values, const at::Tensor& scales, const at::Tensor& bias);

}  // namespace minigpt4
