#include "minigpt4/models/causal_lm.h"

#include "minigpt4/common/error.h"

#include <limits>

namespace minigpt4 {

namespace {

// Whether `valid` is a prefix (along positions) of `buffer`, so that writing past its end is
// writing into the buffer's spare room.
bool is_prefix_of(const torch::Tensor& valid, const torch::Tensor& buffer) {
  return valid.data_ptr() == buffer.data_ptr() && valid.strides() == buffer.strides() &&
         valid.size(0) == buffer.size(0) && valid.size(1) == buffer.size(1) && valid.size(3) == buffer.size(3);
}

// `buffer` with room for `total` positions of [batch, heads, *, dim], holding `valid`'s
// positions first: kept when it already does, else a new one (the reserve, or twice what is
// needed so that growing one position at a time copies rarely).
void ensure_room(torch::Tensor& buffer, torch::Tensor& valid, int64_t batch, int64_t heads, int64_t dim,
                 const torch::TensorOptions& options, int64_t total, int64_t reserve) {
  const bool fits = buffer.defined() && buffer.size(0) == batch && buffer.size(1) == heads && buffer.size(3) == dim &&
                    buffer.size(2) >= total && buffer.scalar_type() == options.dtype().toScalarType() &&
                    buffer.device() == options.device() && (!valid.defined() || is_prefix_of(valid, buffer));
  if (fits) return;
  const int64_t capacity = reserve >= total ? reserve : 2 * total;
  auto fresh = torch::empty({batch, heads, capacity, dim}, options);
  if (valid.defined() && valid.size(2) > 0) fresh.narrow(2, 0, valid.size(2)).copy_(valid);
  buffer = fresh;
  if (valid.defined()) valid = buffer.narrow(2, 0, valid.size(2));
}

}  // namespace

void KVCache::prepare(size_t layer, int64_t batch, int64_t heads, int64_t dim, const torch::TensorOptions& options,
                      int64_t total) {
  if (keys.size() <= layer)
    keys.resize(layer + 1), values.resize(layer + 1), key_buffers.resize(layer + 1), value_buffers.resize(layer + 1);
  ensure_room(key_buffers[layer], keys[layer], batch, heads, dim, options, total, reserve);
  ensure_room(value_buffers[layer], values[layer], batch, heads, dim, options, total, reserve);
}

void KVCache::commit(size_t layer, int64_t total) {
  keys[layer] = key_buffers[layer].narrow(2, 0, total);
  values[layer] = value_buffers[layer].narrow(2, 0, total);
}

void KVCache::append(size_t layer, torch::Tensor& k, torch::Tensor& v) {
  const int64_t past = layer < keys.size() && keys[layer].defined() ? keys[layer].size(2) : 0;
  const int64_t total = past + k.size(2);
  prepare(layer, k.size(0), k.size(1), k.size(3), k.options(), total);
  key_buffers[layer].narrow(2, past, k.size(2)).copy_(k);
  value_buffers[layer].narrow(2, past, v.size(2)).copy_(v);
  commit(layer, total);
  k = keys[layer];
  v = values[layer];
}

void KVCache::truncate(int64_t length) {
  for (auto& k : keys) k = k.narrow(2, 0, length);
  for (auto& v : values) v = v.narrow(2, 0, length);
}

KVCache KVCache::copy(int64_t length) const {
  if (length < 0 || length > this->length())
    fail("KVCache::copy: {} positions asked of a cache holding {}", length, this->length());
  KVCache out;
  out.reserve = reserve;
  for (size_t i = 0; i < keys.size(); ++i) {
    out.key_buffers.push_back(keys[i].narrow(2, 0, length).clone());
    out.value_buffers.push_back(values[i].narrow(2, 0, length).clone());
    out.keys.push_back(out.key_buffers.back());
    out.values.push_back(out.value_buffers.back());
  }
  return out;
}

size_t KVCache::bytes() const {
  size_t n = 0;
  for (const auto* buffers : {&key_buffers, &value_buffers})
    for (const auto& b : *buffers)
      if (b.defined()) n += b.nbytes();
  return n;
}

torch::Tensor CausalLM::step_sequences(const torch::Tensor& inputs_embeds, const std::vector<KVCache*>& caches) const {
  const int64_t n = inputs_embeds.size(0);
  if (inputs_embeds.dim() != 3 || inputs_embeds.size(1) != 1 || static_cast<size_t>(n) != caches.size())
    fail("step_sequences: inputs_embeds [{}] must be [N, 1, H] with one cache per row ({} given)",
         fmt::join(inputs_embeds.sizes(), ", "), caches.size());
  std::vector<torch::Tensor> logits;
  for (int64_t i = 0; i < n; ++i) {
    CausalLMOptions options;
    options.cache = caches[static_cast<size_t>(i)];
    logits.push_back(forward(inputs_embeds.slice(0, i, i + 1), options).logits.select(1, -1));
  }
  return torch::cat(logits, 0);
}

torch::Tensor causal_lm_loss(const torch::Tensor& logits, const torch::Tensor& labels) {
  const int64_t V = logits.size(-1);
  const auto shift_logits = logits.slice(1, 0, -1).reshape({-1, V}).to(torch::kFloat32);
  const auto shift_labels = labels.slice(1, 1).reshape({-1}).to(logits.device());
  return torch::nn::functional::cross_entropy(shift_logits, shift_labels,
                                              torch::nn::functional::CrossEntropyFuncOptions().ignore_index(-100));
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
  // One query at the end of an unpadded sequence may look at every position: no mask.
  if (!attention_mask.defined() && length == 1) return {};
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
