#include "minigpt4/models/layers.h"

#include "minigpt4/common/error.h"
#include "minigpt4/models/cpu_gemv.h"
#include "minigpt4/models/lora.h"
#include "minigpt4/models/quantize.h"

#include <cmath>

namespace minigpt4 {

std::string WeightFormat::describe() const {
  if (!quantized()) return "unquantised";
  if (group_size == 0) return fmt::format("int{} per channel", bits);
  return fmt::format("{}-bit, groups of {}", bits, group_size);
}

Linear::Linear(int64_t in, int64_t out, bool has_bias, const torch::TensorOptions& options, WeightFormat format)
    : in_features(in), out_features(out) {
  if (format == WeightFormat::Int8) {
    weight = register_parameter("weight", torch::empty({out, in}, options.dtype(torch::kInt8)),
                                /*requires_grad=*/false);
    weight_scale = register_buffer("weight_scale", torch::empty({out}, options.dtype(torch::kFloat32)));
  } else if (format.quantized()) {
    auto storage = empty_grouped(out, in, format.bits, format.group_size, options);
    weight = register_parameter("weight", storage.values, /*requires_grad=*/false);
    weight_scale = register_buffer("weight_scale", storage.scales);
  } else {
    weight = register_parameter("weight", torch::empty({out, in}, options));
  }
  if (has_bias) bias = register_parameter("bias", torch::empty({out}, options));
}

WeightFormat Linear::format() const {
  if (!is_quantized()) return WeightFormat::Dense;
  if (!is_grouped()) return WeightFormat::Int8;
  return {weight.scalar_type() == torch::kInt8 ? 8 : 4, grouped_group_size(weight, weight_scale)};
}

torch::Tensor Linear::dense_weight(torch::Dtype dtype) const {
  if (is_grouped()) return dequantize_grouped(weight, weight_scale, in_features, dtype);
  if (is_int8()) return dequantize_int8(weight, weight_scale, dtype);
  return weight.to(dtype);
}

torch::Tensor Linear::forward(const torch::Tensor& x) const {
  torch::Tensor y;
  if (is_grouped()) {
    y = grouped_linear(x, weight, weight_scale, bias);
  } else if (is_int8()) {
    y = int8_linear(x, weight, weight_scale, bias);
  } else {
    // A decode step's few rows on the CPU: our GEMV (cpu_gemv.h) where it was chosen for the
    // weight's dtype; it has no backward, so only where autograd will not need one.
    const bool needs_grad = torch::GradMode::is_enabled() &&
                            (x.requires_grad() || weight.requires_grad() || (bias.defined() && bias.requires_grad()));
    // A prompt's rows in bf16: float32 blocks where the CPU has no bf16 matrix unit.
    if (!needs_grad && x.scalar_type() == torch::kBFloat16) y = cpu_gemv::linear_bf16(x, weight, bias);
    if (!needs_grad && x.scalar_type() == torch::kBFloat16 && !y.defined())
      y = cpu_gemv::linear_bf16_prompt(x, weight, bias);
    if (!needs_grad && x.scalar_type() == torch::kFloat) y = cpu_gemv::linear_f32(x, weight, bias);
    // A prompt's rows in float32: our GEMM where it was chosen (MKL's generic path elsewhere).
    if (!needs_grad && x.scalar_type() == torch::kFloat && !y.defined())
      y = cpu_gemv::linear_f32_prompt(x, weight, bias);
    if (!y.defined()) y = torch::linear(x, weight, bias);
  }
  return lora.empty() ? y : add_adapters(x, std::move(y));
}

torch::Tensor Linear::add_adapters(const torch::Tensor& x, torch::Tensor y) const {
  for (const auto& layer : lora) y = layer->apply(x, std::move(y));
  return y;
}

void Linear::load_weight(const torch::Tensor& value, const std::string& source) {
  if (value.dim() != 2 || value.size(0) != out_features || value.size(1) != in_features)
    fail("{}: a linear weight has shape [{}] but the layer expects [{}, {}]", source.empty() ? "load_weight" : source,
         fmt::join(value.sizes(), ", "), out_features, in_features);
  torch::NoGradGuard no_grad;
  if (is_grouped())
    quantize_grouped_into(value, weight, weight_scale);  // block by block, on the weight's device
  else if (is_int8())
    quantize_int8_into(value, weight, weight_scale);
  else
    weight.copy_(value);
}

void Linear::reset_parameters() {
  if (is_quantized())
    fail("a quantised Linear ({}) holds loaded weights only and cannot be initialised fresh", format().describe());
  torch::NoGradGuard no_grad;
  torch::nn::init::kaiming_uniform_(weight, std::sqrt(5.0));
  if (bias.defined()) {
    const double bound = 1.0 / std::sqrt(static_cast<double>(weight.size(1)));
    bias.uniform_(-bound, bound);
  }
}

LayerNorm::LayerNorm(int64_t dim, double eps_, const torch::TensorOptions& options) : eps(eps_) {
  weight = register_parameter("weight", torch::empty({dim}, options));
  bias = register_parameter("bias", torch::empty({dim}, options));
}

torch::Tensor LayerNorm::forward(const torch::Tensor& x) const {
  if (x.scalar_type() != weight.scalar_type())  // float32 norms in a half model (TinyGPT-V)
    return torch::layer_norm(x.to(weight.scalar_type()), {weight.size(0)}, weight, bias, eps).to(x.scalar_type());
  return torch::layer_norm(x, {weight.size(0)}, weight, bias, eps);
}

void LayerNorm::reset_parameters() {
  torch::NoGradGuard no_grad;
  weight.fill_(1.0);
  bias.zero_();
}

RMSNorm::RMSNorm(int64_t dim, double eps_, const torch::TensorOptions& options) : eps(eps_) {
  weight = register_parameter("weight", torch::empty({dim}, options));
}

torch::Tensor RMSNorm::forward(const torch::Tensor& x) const {
  const auto variance = x.to(torch::kFloat32).pow(2).mean(-1, /*keepdim=*/true);
  auto normed = x * torch::rsqrt(variance + eps);
  if (weight.scalar_type() == torch::kHalf || weight.scalar_type() == torch::kBFloat16)
    normed = normed.to(weight.scalar_type());
  if (weight.scalar_type() != x.scalar_type()) return (weight * normed).to(x.scalar_type());  // float32 norms, half x
  return weight * normed;
}

Embedding::Embedding(int64_t num, int64_t dim, const torch::TensorOptions& options) {
  weight = register_parameter("weight", torch::empty({num, dim}, options));
}

torch::Tensor Embedding::forward(const torch::Tensor& ids) const { return torch::embedding(weight, ids); }

torch::Tensor attention(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                        const torch::Tensor& additive_mask, double scale) {
  // Fused kernels (flash / memory-efficient) on CUDA; on the CPU the math path of
  // PyTorch's SDPA, which agrees with the explicit softmax(q k^T * scale + mask) v to ~1e-7.
  std::optional<torch::Tensor> mask;
  if (additive_mask.defined()) mask = additive_mask.to(q.scalar_type());
  return at::scaled_dot_product_attention(q, k, v, mask, /*dropout_p=*/0.0, /*is_causal=*/false, scale);
}

torch::Dtype parse_dtype(const std::string& name) {
  if (name == "fp32" || name == "float32" || name == "float") return torch::kFloat32;
  if (name == "fp16" || name == "float16" || name == "half") return torch::kFloat16;
  if (name == "bf16" || name == "bfloat16") return torch::kBFloat16;
  fail("unknown precision '{}' (expected fp32, fp16 or bf16)", name);
}

std::string dtype_name(torch::Dtype dtype) {
  switch (dtype) {
    case torch::kFloat32: return "fp32";
    case torch::kFloat16: return "fp16";
    case torch::kBFloat16: return "bf16";
    case torch::kInt8: return "int8";
    case torch::kUInt8: return "uint8";  // packed 4-bit weights (quantize.h)
    default: return std::string(c10::toString(dtype));
  }
}

}  // namespace minigpt4
