#include "minigpt4/models/llama.h"

#include "minigpt4/common/error.h"
#include "minigpt4/common/untrusted.h"
#include "minigpt4/models/cpu_decode.h"

#include <nlohmann/json.hpp>

#include <cmath>

namespace minigpt4 {

LlamaConfig LlamaConfig::from_json(const nlohmann::json& j, const std::string& source) {
  LlamaConfig c;
  if (!j.is_object()) fail("{}: a model config must be a JSON object, got {}", source, describe_json(j));
  auto get_int = [&](const char* key, int64_t& out, bool required) {
    if (!j.contains(key) || j[key].is_null()) {
      if (required) fail("{}: missing required key '{}'", source, key);
      return;
    }
    if (!j[key].is_number_integer() || (j[key].is_number_unsigned() && j[key].get<uint64_t>() > INT64_MAX))
      fail("{}: '{}' must be an integer, got {}", source, key, describe_json(j[key]));
    out = j[key].get<int64_t>();
  };
  auto get_float = [&](const char* key, double& out) {
    if (!j.contains(key) || j[key].is_null()) return;
    if (!j[key].is_number()) fail("{}: '{}' must be a number, got {}", source, key, describe_json(j[key]));
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
    if (!rope.is_object()) fail("{}: {} must be an object, got {}", source, key, describe_json(rope));
    std::string type = "default";
    for (const char* type_key : {"type", "rope_type"}) {  // rope_type wins, as in transformers
      if (!rope.contains(type_key) || rope[type_key].is_null()) continue;
      if (!rope[type_key].is_string())
        fail("{}: {}.{} must be a string, got {}", source, key, type_key, describe_json(rope[type_key]));
      type = rope[type_key].get<std::string>();
    }
    if (type != "default") fail("{}: {} of type \"{}\" is not supported (plain RoPE only)", source, key, excerpt(type));
    if (rope.contains("rope_theta")) {
      if (!rope["rope_theta"].is_number())
        fail("{}: {}.rope_theta must be a number, got {}", source, key, describe_json(rope["rope_theta"]));
      c.rope_theta = rope["rope_theta"].get<double>();
    }
  }
  for (const char* key : {"attention_bias", "mlp_bias"})
    if (j.contains(key) && j[key].is_boolean() && j[key].get<bool>())
      fail("{}: {} = true is not supported (LLaMA has no biases)", source, key);
  if (j.contains("hidden_act") && j["hidden_act"] != "silu")
    fail("{}: hidden_act {} is not supported (LLaMA uses silu)", source, describe_json(j["hidden_act"]));
  // Sizes a stranger's config.json could get wrong in ways that would divide by zero or
  // overflow later: each model size is a positive int32, as in transformers' configs.
  for (const auto& [key, value] : {std::pair<const char*, int64_t>{"vocab_size", c.vocab_size},
                                   {"hidden_size", c.hidden_size},
                                   {"intermediate_size", c.intermediate_size},
                                   {"num_hidden_layers", c.num_hidden_layers},
                                   {"num_attention_heads", c.num_attention_heads},
                                   {"num_key_value_heads", c.num_key_value_heads},
                                   {"max_position_embeddings", c.max_position_embeddings}})
    if (value < 1 || value > INT32_MAX) fail("{}: '{}' must be from 1 to {}, got {}", source, key, INT32_MAX, value);
  if (c.head_dim < 0 || c.head_dim > INT32_MAX)
    fail("{}: 'head_dim' must be from 0 to {}, got {}", source, INT32_MAX, c.head_dim);
  if (c.dim_per_head() < 1 || (c.head_dim == 0 && c.hidden_size % c.num_attention_heads != 0))
    fail("{}: hidden_size {} is not a multiple of the {} attention heads (and no head_dim is given)", source,
         c.hidden_size, c.num_attention_heads);
  if (c.dim_per_head() % 2 != 0)
    fail("{}: a head of {} channels cannot be rotated by RoPE (it needs an even number)", source, c.dim_per_head());
  if (!(c.rms_norm_eps > 0) || !std::isfinite(c.rms_norm_eps))
    fail("{}: 'rms_norm_eps' must be a positive number, got {}", source, c.rms_norm_eps);
  if (!(c.rope_theta > 0) || !std::isfinite(c.rope_theta))
    fail("{}: 'rope_theta' must be a positive number, got {}", source, c.rope_theta);
  if (c.num_attention_heads % c.num_key_value_heads != 0)
    fail("{}: num_attention_heads {} is not a multiple of num_key_value_heads {}", source, c.num_attention_heads,
         c.num_key_value_heads);
  return c;
}

LlamaAttention::LlamaAttention(const LlamaConfig& c, const torch::TensorOptions& options, WeightFormat format)
    : num_heads(c.num_attention_heads), num_kv_heads(c.num_key_value_heads), head_dim(c.dim_per_head()) {
  auto linear = [&](int64_t in, int64_t out) { return std::make_shared<Linear>(in, out, false, options, format); };
  q_proj = register_module("q_proj", linear(c.hidden_size, num_heads * head_dim));
  k_proj = register_module("k_proj", linear(c.hidden_size, num_kv_heads * head_dim));
  v_proj = register_module("v_proj", linear(c.hidden_size, num_kv_heads * head_dim));
  o_proj = register_module("o_proj", linear(num_heads * head_dim, c.hidden_size));
}

torch::Tensor LlamaAttention::forward(const torch::Tensor& x, const decoder::Rotary& rotary,
                                      const torch::Tensor& additive_mask, KVCache* cache, size_t layer) const {
  const int64_t B = x.size(0), T = x.size(1);
  auto q = q_proj->forward(x).view({B, T, num_heads, head_dim}).transpose(1, 2);
  auto k = k_proj->forward(x).view({B, T, num_kv_heads, head_dim}).transpose(1, 2);
  auto v = v_proj->forward(x).view({B, T, num_kv_heads, head_dim}).transpose(1, 2);
  q = decoder::apply_rope(q, rotary);
  k = decoder::apply_rope(k, rotary);
  if (cache) cache->append(layer, k, v);
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
  input_layernorm =
      register_module("input_layernorm", std::make_shared<RMSNorm>(c.hidden_size, c.rms_norm_eps, options));
  post_attention_layernorm =
      register_module("post_attention_layernorm", std::make_shared<RMSNorm>(c.hidden_size, c.rms_norm_eps, options));
}

torch::Tensor LlamaDecoderLayer::forward(const torch::Tensor& x, const decoder::Rotary& rotary,
                                         const torch::Tensor& additive_mask, KVCache* cache, size_t layer) const {
  const auto h = x + self_attn->forward(input_layernorm->forward(x), rotary, additive_mask, cache, layer);
  return h + mlp->forward(post_attention_layernorm->forward(h));
}

LlamaForCausalLM::LlamaForCausalLM(const LlamaConfig& c, const torch::TensorOptions& options, WeightFormat format,
                                   WeightFormat head_format)
    : config(c) {
  auto model = register_module("model", std::make_shared<torch::nn::Module>());
  embed_tokens =
      model->register_module("embed_tokens", std::make_shared<Embedding>(c.vocab_size, c.hidden_size, options));
  layers = model->register_module("layers", torch::nn::ModuleList());
  for (int64_t i = 0; i < c.num_hidden_layers; ++i)
    layers->push_back(std::make_shared<LlamaDecoderLayer>(c, options, format));
  norm = model->register_module("norm", std::make_shared<RMSNorm>(c.hidden_size, c.rms_norm_eps, options));
  const auto head = c.tie_word_embeddings ? WeightFormat::Dense : head_format;
  lm_head = register_module("lm_head", std::make_shared<Linear>(c.hidden_size, c.vocab_size, false, options, head));
  if (c.tie_word_embeddings) lm_head->weight = embed_tokens->weight;
  inv_freq = register_buffer("inv_freq", decoder::rope_inv_freq(c.dim_per_head(), c.rope_theta, options.device()));
}

torch::Tensor LlamaForCausalLM::embed(const torch::Tensor& ids) const { return embed_tokens->forward(ids); }

CausalLMOutput LlamaForCausalLM::forward(const torch::Tensor& inputs_embeds, const CausalLMOptions& opt) const {
  // A decode step of one unpadded sequence on the CPU: the fused loops of cpu_decode.h.
  if (opt.cache && !opt.attention_mask.defined() && !opt.position_ids.defined() && !opt.output_hidden_states)
    if (auto logits = cpu_decode::llama_step(*this, inputs_embeds, *opt.cache); logits.defined()) return {logits, {}};
  const int64_t B = inputs_embeds.size(0), T = inputs_embeds.size(1);
  const int64_t past = opt.cache ? opt.cache->length() : 0;
  const auto device = inputs_embeds.device();
  auto x = inputs_embeds.to(embed_tokens->weight.scalar_type());
  const auto position_ids =
      opt.position_ids.defined() ? opt.position_ids.to(device) : decoder::default_position_ids(B, T, past, device);
  const auto rotary = decoder::rope(position_ids, inv_freq, x.scalar_type());
  const auto mask = decoder::additive_mask(opt.attention_mask, B, T, past, x.scalar_type(), device);

  CausalLMOutput out;
  if (opt.output_hidden_states) out.hidden_states.push_back(x);
  for (size_t i = 0; i < layers->size(); ++i) {
    x = layers->ptr(i)->as<LlamaDecoderLayer>()->forward(x, rotary, mask, opt.cache, i);
    if (opt.output_hidden_states && i + 1 < layers->size()) out.hidden_states.push_back(x);
  }
  x = norm->forward(x);
  if (opt.output_hidden_states) out.hidden_states.push_back(x);
  out.logits = lm_head->forward(decoder::keep_last(x, opt.logits_to_keep)).to(torch::kFloat32);
  return out;
}

torch::Tensor LlamaForCausalLM::step_sequences(const torch::Tensor& inputs_embeds,
                                               const std::vector<KVCache*>& caches) const {
  if (auto logits = cpu_decode::llama_steps(*this, inputs_embeds, caches); logits.defined()) return logits;
  return CausalLM::step_sequences(inputs_embeds, caches);
}

}  // namespace minigpt4
