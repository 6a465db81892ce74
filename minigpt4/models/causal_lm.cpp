#include "minigpt4/models/causal_lm.h"

#include "minigpt4/common/error.h"

#include <limits>

namespace minigpt4 {

void KVCache::append(size_t layer, torch::Tensor& k, torch::Tensor& v) {
  if (keys.size() <= layer) keys.resize(layer + 1), values.resize(layer + 1);
  if (keys[layer].defined()) {
    k = torch::cat({keys[layer], k}, 2);
    v = torch::cat({values[layer], v}, 2);
  }
  keys[layer] = k;
  values[layer] = v;
}

torch::Tensor causal_lm_loss(const torch::Tensor& logits, const torch::Tensor& labels) {
  const int64_t V = logits.size(-1);
  const auto shift_logits = logits.slice(1, 0, -1).reshape({-1, V}).to(torch::kFloat32);
  const auto shift_labels = labels.slice(1, 1).reshape({-1}).to(logits.device());
  return torch::nn::functional::cross_entropy(
      shift_logits, shift_labels, torch::nn::functional::CrossEntropyFuncOptions().ignore_index(-100));
}

torch::Tensor position_ids_from_mask(const torch::Tensor& attention_mask) {
  auto pos = attention_mask.to(torch::kLong).cumsum(-1) - 1;
  return pos.masked_fill(attention_mask == 0, 1);
}

namespace decoder {

torch::Tensor default_position_ids(int64_t batch, int64_t length, int64_t past, torch::Device device) {
  return torch::arange(past, past + length, torch::TensorOptions().dtype(torch::kLong).device(device))
      .unsqueeze(0)
      .expand({batch, length});
}

torch::Tensor additive_mask(const torch::Tensor& attention_mask, int64_t batch, int64_t length, int64_t past,
                            torch::Dtype dtype, torch::Device device) {
  const int64_t total = past + length;
  auto allowed = torch::ones({length, total}, torch::TensorOptions().dtype(torch::kBool).device(device))
                     .tril(past)
                     .view({1, 1, length, total});
  if (attention_mask.defined()) {
    if (attention_mask.size(0) != batch || attention_mask.size(1) != total)
      fail("attention_mask has shape [{}], expected [{}, {}]", fmt::join(attention_mask.sizes(), ", "), batch, total);
    allowed = allowed & attention_mask.to(device).to(torch::kBool).view({batch, 1, 1, total});
  }
  // The lowest value of the compute dtype itself: float32's lowest would become -inf in
  // fp16 and turn a fully masked row into NaNs.
  const double lowest = dtype == torch::kHalf       ? static_cast<double>(std::numeric_limits<c10::Half>::lowest())
                        : dtype == torch::kBFloat16 ? static_cast<double>(std::numeric_limits<c10::BFloat16>::lowest())
                                                    : static_cast<double>(std::numeric_limits<float>::lowest());
  return torch::zeros(allowed.sizes(), torch::TensorOptions().dtype(dtype).device(device))
      .masked_fill(allowed.logical_not(), lowest);
}

torch::Tensor keep_last(const torch::Tensor& hidden, int64_t keep) {
  const int64_t T = hidden.size(1);
  return keep <= 0 || keep >= T ? hidden : hidden.narrow(1, T - keep, keep);
}

torch::Tensor rope_inv_freq(int64_t dim, double theta, torch::Device device) {
  const auto exponents = torch::arange(0, dim, 2, torch::TensorOptions().dtype(torch::kLong)).to(torch::kFloat32) / dim;
  return (1.0 / torch::pow(theta, exponents)).to(device);
}

Rotary rope(const torch::Tensor& position_ids, const torch::Tensor& inv_freq, torch::Dtype dtype) {
  const auto freqs = position_ids.to(torch::kFloat32).unsqueeze(-1) * inv_freq.to(position_ids.device());
  const auto emb = torch::cat({freqs, freqs}, -1).unsqueeze(1);
  return {emb.cos().to(dtype), emb.sin().to(dtype)};
}

torch::Tensor apply_rope(const torch::Tensor& x, const Rotary& rotary) {
  const int64_t dim = rotary.cos.size(-1), half = dim / 2;
  const auto rot = dim == x.size(-1) ? x : x.slice(-1, 0, dim);
  const auto rotated = torch::cat({-rot.slice(-1, half), rot.slice(-1, 0, half)}, -1);
  const auto out = rot * rotary.cos + rotated * rotary.sin;
  return dim == x.size(-1) ? out : torch::cat({out, x.slice(-1, dim)}, -1);
}

}  // namespace decoder

}  // namespace minigpt4
