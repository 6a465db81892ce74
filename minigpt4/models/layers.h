#pragma once
// The few building blocks every model file shares. Unlike torch::nn's modules they allocate
// UNINITIALISED storage in the target dtype/device: every weight of a frozen model comes
// from a checkpoint (the loader refuses to run with one missing), so random-initialising a
// 13B model in fp32 only to overwrite it would cost minutes and 52 GB. Parameter names
// follow PyTorch (`weight`, `bias`) so state dicts map by name.
#include <torch/torch.h>

namespace minigpt4 {

// How a Linear stores its weight (quantize.h, docs/weights.md): dense in the options' dtype
// (bits 16); int8 with one float32 scale per output channel (bits 8, group_size 0: what
// `low_resource` means); or 8 or 4 bits with one float16 scale per group_size inputs
// (`model.llm_weight_bits`, `model.llm_weight_group_size`). Quantised formats are for
// inference: such a Linear is built empty and filled by load_weight, which quantises one
// checkpoint tensor at a time, so a full-precision copy of the model never exists.
struct WeightFormat {
  int bits = 16;
  int64_t group_size = 0;
  bool quantized() const { return bits != 16; }
  bool operator==(const WeightFormat& o) const { return bits == o.bits && group_size == o.group_size; }
  bool operator!=(const WeightFormat& o) const { return !(*this == o); }
  std::string describe() const;  // "unquantised", "int8 per channel", "4-bit, groups of 32"
  static const WeightFormat Dense, Int8;
};
inline const WeightFormat WeightFormat::Dense{16, 0};
inline const WeightFormat WeightFormat::Int8{8, 0};

namespace lora {
class LoraLayer;
}

struct Linear : torch::nn::Module {
  Linear(int64_t in_features, int64_t out_features, bool bias, const torch::TensorOptions& options,
         WeightFormat format = WeightFormat::Dense);
  // Quantised: computed in x's dtype (the bias, if any, has the options' dtype).
  torch::Tensor forward(const torch::Tensor& x) const;
  // nn.Linear's default init (kaiming_uniform(a=sqrt(5)), bias U(+-1/sqrt(fan_in))), for
  // the freshly created trainable projector.
  void reset_parameters();
  // Stores a checkpoint's floating [out, in] weight: copied (dense) or quantised on the
  // weight's device (quantised). `source` names the file in errors.
  void load_weight(const torch::Tensor& value, const std::string& source = "");
  bool is_quantized() const { return weight_scale.defined(); }
  bool is_int8() const { return is_quantized() && weight.scalar_type() == torch::kInt8; }
  bool is_grouped() const { return is_quantized() && weight_scale.dim() == 2; }
  WeightFormat format() const;
  // The floating [out, in] weight the layer stands for (dequantised where it is quantised).
  torch::Tensor dense_weight(torch::Dtype dtype) const;
  // y, the base product for x (computed here or by a caller that adds its own bias), plus
  // the updates of the active LoRA adapters (lora.h); y itself when none is attached.
  torch::Tensor add_adapters(const torch::Tensor& x, torch::Tensor y) const;
  // `weight` keeps its name in every format so state dicts map by name. Quantised, it has
  // requires_grad false: int8 [out, in] with `weight_scale` a float32 [out] buffer, or the
  // group-wise storage of quantize.h (int8 [out, in padded], 4-bit uint8 [out, in padded / 2],
  // `weight_scale` float16 [out, groups]).
  torch::Tensor weight, bias, weight_scale;
  int64_t in_features, out_features;

  // Rows of a fused output that LoRA may target under a name of their own, as if they were
  // a separate linear beside this one (EVA's qkv: query, key, value).
  struct OutputPart {
    std::string name;
    int64_t row_begin, rows;
  };
  std::vector<OutputPart> parts;
  // The LoRA adapters on this layer's output (whole or one part each); empty by default.
  std::vector<std::shared_ptr<lora::LoraLayer>> lora;
};

// LayerNorm and RMSNorm whose weights have another dtype than the input (TinyGPT-V's float32
// norms in a half model) compute in the weights' dtype and return the input's.
struct LayerNorm : torch::nn::Module {
  LayerNorm(int64_t dim, double eps, const torch::TensorOptions& options);
  torch::Tensor forward(const torch::Tensor& x) const;
  void reset_parameters();  // weight 1, bias 0 (PyTorch's default)
  torch::Tensor weight, bias;
  double eps;
};

// LLaMA's RMSNorm as Hugging Face computes it: the variance in float32, the normalised
// activations cast back to the weight dtype only for half weights.
struct RMSNorm : torch::nn::Module {
  RMSNorm(int64_t dim, double eps, const torch::TensorOptions& options);
  torch::Tensor forward(const torch::Tensor& x) const;
  torch::Tensor weight;
  double eps;
};

struct Embedding : torch::nn::Module {
  Embedding(int64_t num, int64_t dim, const torch::TensorOptions& options);
  torch::Tensor forward(const torch::Tensor& ids) const;
  torch::Tensor weight;
};

// Scaled dot-product attention over [B, heads, T, D] tensors. `additive_mask` (optional)
// broadcasts to [B, heads, Tq, Tk] and holds 0 or a large negative number.
torch::Tensor attention(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                        const torch::Tensor& additive_mask, double scale);

// dtype names used in configs: fp32 / fp16 / bf16 (also float32, float16, bfloat16).
torch::Dtype parse_dtype(const std::string& name);
std::string dtype_name(torch::Dtype dtype);

}  // namespace minigpt4
