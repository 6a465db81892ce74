#include "minigpt4/models/llama.h"

#include "minigpt4/common/error.h"

#include <nlohmann/json.hpp>

#include <cmath>
#include <limits>

namespace minigpt4 {

LlamaConfig LlamaConfig::from_json(const nlohmann::json& j, const std::string& source) {
  LlamaConfig c;
  auto get_int = [&](const char* key, int64_t& out, bool required) {
    if (!j.contains(key) || j[key].is_null()) {
      if (required) fail("{}: missing required key '{}'", source, key);
      return;
    }
    if (!j[key].is_number_integer()) fail("{}: '{}' must be an integer, got {}", source, key, j[key].dump());
    out = j[key].get<int64_t>();
  };
  auto get_float = [&](const char* key, double& out) {
    if (!j.contains(key) || j[key].is_null()) return;
    if (!j[key].is_number()) fail("{}: '{}' must be a number, got {}", source, key, j[key].dump());
    out = j[key].get<double>();
  };
  get_int("vocab_size", c.vocab_size, true);
  get_int("hidden_size", c.hidden_size, true);
  get_int("intermediate_size", c.intermediate_size, true);
  get_int("num_hidden_layers", c.num_hidden_layers, true);
  get_int("num_attention_heads", c.num_attention_heads, true);
  c.num_key_value_heads = c.num_attention_heads;
  get_int("num_key_value_heads", c.num_key_value_heads, false);
  get_int("head_dim", c.head_dim, false);
  get_float("rms_norm_eps", c.rms_norm_eps);
  get_float("rope_theta", c.rope_theta);
  get_int("max_position_embeddings", c.max_position_embeddings, false);
  get_int("bos_token_id", c.bos_token_id, false);
  get_int("eos_token_id", c.eos_token_id, false);
  get_int("pad_token_id", c.pad_token_id, false);
  if (j.contains("tie_word_embeddings") && j["tie_word_embeddings"].is_boolean())
    c.tie_word_embeddings = j["tie_word_embeddings"].get<bool>();
  // transformers >= 5 writes rope_theta inside rope_parameters; older files at the top level.
  for (const char* key : {"rope_parameters", "rope_scaling"}) {
    if (!j.contains(key) || j[key].is_null()) continue;
    const auto& rope = j[key];
    const std::string type = rope.value("rope_type", rope.value("type", std::string("default")));
    if (!rope.is_object() || type != "default")
      fail("{}: {} {} is not supported (plain RoPE only)", source, key, rope.dump());
    if (rope.contains("rope_theta")) {
      if (!rope["rope_theta"].is_number()) fail("{}: {}.rope_theta must be a number", source, key);
      c.rope_theta = rope["rope_theta"].get<double>();
    }
  }
  for (const char* key : {"attention_bias", "mlp_bias"})
    if (j.contains(key) && j[key].is_boolean() && j[key].get<bool>())
      fail("{}: {} = true is not supported (LLaMA has no biases)", source, key);
  if (j.contains("hidden_act") && j["hidden_act"] != "silu")
    fail("{}: hidden_act {} is not supported (LLaMA uses silu)", source, j["hidden_act"].dump());
  if (c.num_attention_heads % c.num_key_value_heads != 0)
    fail("{}: num_attention_heads {} is not a multiple of num_key_value_heads {}", source, c.num_attention_heads,
         c.num_key_value_heads);
  return c;
}

// rotate_half(x) = cat(-x2, x1) over the two halves of the head dimension.
static torch::Tensor rotate_half(const torch::Tensor& x) {
  const int64_t half = x.size(-1) / 2;
  return torch::cat({-x.slice(-1, half), x.slice(-1, 0, half)}, -1);
}

static torch::Tensor apply_rotary(const torch::Tensor& x, const torch::Tensor& cos, const torch::Tensor& sin) {
  return x * cos + rotate_half(x) * sin;
}

LlamaAttention::LlamaAttention(const LlamaConfig& c, const torch::TensorOptions& options, WeightFormat format)
    : num_heads(c.num_attention_heads), num_kv_heads(c.num_key_value_heads), head_dim(c.dim_per_head()) {
  auto linear = [&](int64_t in, int64_t out) { return std::make_shared<Linear>(in, out, false, options, format); };
  q_proj = register_module("q_proj", linear(c.hidden_size, num_heads * head_dim));
  k_proj = register_module("k_proj", linear(c.hidden_size, num_kv_heads * head_dim));
  v_proj = register_module("v_proj", linear(c.hidden_size, num_kv_heads * head_dim));
  o_proj = register_module("o_proj", linear(num_heads * head_dim, c.hidden_size));
}

torch::Tensor LlamaAttention::forward(const torch::Tensor& x, const torch::Tensor& cos, const torch::Tensor& sin,
                                      const torch::Tensor& additive_mask, KVCache* cache, size_t layer) const {
  const int64_t B = x.size(0), T = x.size(1);
  auto q = q_proj->forward(x).view({B, T, num_heads, head_dim}).transpose(1, 2);
  auto k = k_proj->forward(x).view({B, T, num_kv_heads, head_dim}).transpose(1, 2);
  auto v = v_proj->forward(x).view({B, T, num_kv_heads, head_dim}).transpose(1, 2);
  q = apply_rotary(q, cos, sin);
  k = apply_rotary(k, cos, sin);
  if (cache) {
    if (cache->keys.size() <= layer) cache->keys.resize(layer + 1), cache->values.resize(layer + 1);
    if (cache->keys[layer].defined()) {
      k = torch::cat({cache->keys[layer], k}, 2);
      v = torch::cat({cache->values[layer], v}, 2);
    }
    cache->keys[layer] = k;
    cache->values[layer] = v;
  }
  // Grouped-query attention: query head j reads kv head j / (num_heads / num_kv_heads).
  if (num_kv_heads != num_heads) {
    k = k.repeat_interleave(num_heads / num_kv_heads, 1);
    v = v.repeat_interleave(num_heads / num_kv_heads, 1);
  }
  const auto out = attention(q, k, v, additive_mask, 1.0 / std::sqrt(static_cast<double>(head_dim)));
  return o_proj->forward(out.transpose(1, 2).reshape({B, T, num_heads * head_dim}));
}

LlamaMlp::LlamaMlp(const LlamaConfig& c, const torch::TensorOptions& options, WeightFormat format) {
  auto linear = [&](int64_t in, int64_t out) { return std::make_shared<Linear>(in, out, false, options, format); };
  gate_proj = register_module("gate_proj", linear(c.hidden_size, c.intermediate_size));
  up_proj = register_module("up_proj", linear(c.hidden_size, c.intermediate_size));
  down_proj = register_module("down_proj", linear(c.intermediate_size, c.hidden_size));
}

torch::Tensor LlamaMlp::forward(const torch::Tensor& x) const {
  return down_proj->forward(torch::silu(gate_proj->forward(x)) * up_proj->forward(x));
}

LlamaDecoderLayer::LlamaDecoderLayer(const LlamaConfig& c, const torch::TensorOptions& options, WeightFormat format) {
  self_attn = register_module("self_attn", std::make_shared<LlamaAttention>(c, options, format));
  mlp = register_module("mlp", std::make_shared<LlamaMlp>(c, options, format));
  input_layernorm = register_module("input_layernorm", std::make_shared<RMSNorm>(c.hidden_size, c.rms_norm_eps, options));
  post_attention_layernorm =
      register_module("post_attention_layernorm", std::make_shared<RMSNorm>(c.hidden_size, c.rms_norm_eps, options));
}

torch::Tensor LlamaDecoderLayer::forward(const torch::Tensor& x, const torch::Tensor& cos, const torch::Tensor& sin,
                                         const torch::Tensor& additive_mask, KVCache* cache, size_t layer) const {
  const auto h = x + self_attn->forward(input_layernorm->forward(x), cos, sin, additive_mask, cache, layer);
  return h + mlp->forward(post_attention_layernorm->forward(h));
}

LlamaForCausalLM::LlamaForCausalLM(const LlamaConfig& c, const torch::TensorOptions& options, WeightFormat format)
    : config(c) {
  auto model = register_module("model", std::make_shared<torch::nn::Module>());
  embed_tokens = model->register_module("embed_tokens", std::make_shared<Embedding>(c.vocab_size, c.hidden_size, options));
  layers = model->register_module("layers", torch::nn::ModuleList());
  for (int64_t i = 0; i < c.num_hidden_layers; ++i)
    layers->push_back(std::make_shared<LlamaDecoderLayer>(c, options, format));
  norm = model->register_module("norm", std::make_shared<RMSNorm>(c.hidden_size, c.rms_norm_eps, options));
  lm_head = register_module("lm_head", std::make_shared<Linear>(c.hidden_size, c.vocab_size, false, options));
  if (c.tie_word_embeddings) lm_head->weight = embed_tokens->weight;
  // inv_freq = 1 / theta^(2i/d), in float32 exactly as transformers computes it.
  const int64_t d = c.dim_per_head();
  const auto exponents = torch::arange(0, d, 2, torch::TensorOptions().dtype(torch::kLong)).to(torch::kFloat32) / d;
  inv_freq = register_buffer("inv_freq", 1.0 / torch::pow(c.rope_theta, exponents).to(options.device()));
}

torch::Tensor LlamaForCausalLM::embed(const torch::Tensor& ids) const { return embed_tokens->forward(ids); }

LlamaOutput LlamaForCausalLM::forward(const torch::Tensor& inputs_embeds, const LlamaForwardOptions& opt) const {
  const int64_t B = inputs_embeds.size(0), T = inputs_embeds.size(1);
  const int64_t past = opt.cache ? opt.cache->length() : 0;
  const auto device = inputs_embeds.device();
  auto x = inputs_embeds.to(embed_tokens->weight.scalar_type());

  auto position_ids = opt.position_ids;
  if (!position_ids.defined())
    position_ids = torch::arange(past, past + T, torch::TensorOptions().dtype(torch::kLong).device(device)).unsqueeze(0).expand({B, T});
  // cos/sin in float32, [B, 1, T, D] to broadcast over heads; cast to the activations' dtype.
  const auto freqs = position_ids.to(torch::kFloat32).unsqueeze(-1) * inv_freq.to(device);
  const auto emb = torch::cat({freqs, freqs}, -1).unsqueeze(1);
  const auto cos = emb.cos().to(x.scalar_type()), sin = emb.sin().to(x.scalar_type());

  // Causal + padding mask: 0 where a query may look, the dtype's lowest value elsewhere. A
  // fully masked row (a left-padding query) then attends uniformly, as in transformers.
  const int64_t total = past + T;
  const auto options = torch::TensorOptions().dtype(torch::kBool).device(device);
  auto allowed = torch::ones({T, total}, options).tril(past).view({1, 1, T, total});
  if (opt.attention_mask.defined()) {
    if (opt.attention_mask.size(0) != B || opt.attention_mask.size(1) != total)
      fail("attention_mask has shape [{}], expected [{}, {}]", fmt::join(opt.attention_mask.sizes(), ", "), B, total);
    allowed = allowed & opt.attention_mask.to(device).to(torch::kBool).view({B, 1, 1, total});
  }
  // The lowest value of the compute dtype itself: float32's lowest would become -inf in
  // fp16 and turn a fully masked row into NaNs.
  const auto dtype = x.scalar_type();
  const double lowest = dtype == torch::kHalf       ? static_cast<double>(std::numeric_limits<c10::Half>::lowest())
                        : dtype == torch::kBFloat16 ? static_cast<double>(std::numeric_limits<c10::BFloat16>::lowest())
                                                    : static_cast<double>(std::numeric_limits<float>::lowest());
  const auto additive_mask = torch::zeros(allowed.sizes(), torch::TensorOptions().dtype(dtype).device(device))
                                 .masked_fill(allowed.logical_not(), lowest);

  LlamaOutput out;
  if (opt.output_hidden_states) out.hidden_states.push_back(x);
  for (size_t i = 0; i < layers->size(); ++i) {
    x = layers->ptr(i)->as<LlamaDecoderLayer>()->forward(x, cos, sin, additive_mask, opt.cache, i);
    if (opt.output_hidden_states && i + 1 < layers->size()) out.hidden_states.push_back(x);
  }
  x = norm->forward(x);
  if (opt.output_hidden_states) out.hidden_states.push_back(x);
  out.logits = lm_head->forward(x).to(torch::kFloat32);
  return out;
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

}  // namespace minigpt4
