#include "minigpt4/models/phi.h"

#include "minigpt4/common/error.h"
#include "minigpt4/common/strings.h"
#include "minigpt4/common/untrusted.h"

#include <nlohmann/json.hpp>

#include <cmath>

namespace minigpt4 {

namespace {

// Typed reads of config.json keys; a null value counts as absent (HF writes e.g.
// "num_key_value_heads": null).
struct JsonReader {
  const nlohmann::json& j;
  const std::string& source;

  bool has(const char* key) const { return j.contains(key) && !j[key].is_null(); }
  void integer(const char* key, int64_t& out, bool required = false) const {
    if (!has(key)) {
      if (required) fail("{}: missing required key '{}'", source, key);
      return;
    }
    if (!j[key].is_number_integer() || (j[key].is_number_unsigned() && j[key].get<uint64_t>() > INT64_MAX))
      fail("{}: '{}' must be an integer, got {}", source, key, describe_json(j[key]));
    out = j[key].get<int64_t>();
  }
  void number(const char* key, double& out) const {
    if (!has(key)) return;
    if (!j[key].is_number()) fail("{}: '{}' must be a number, got {}", source, key, describe_json(j[key]));
    out = j[key].get<double>();
  }
  void text(const char* key, std::string& out) const {
    if (!has(key)) return;
    if (!j[key].is_string()) fail("{}: '{}' must be a string, got {}", source, key, describe_json(j[key]));
    out = j[key].get<std::string>();
  }
  void boolean(const char* key, bool& out) const {
    if (!has(key)) return;
    if (!j[key].is_boolean()) fail("{}: '{}' must be true or false, got {}", source, key, describe_json(j[key]));
    out = j[key].get<bool>();
  }
};

}  // namespace

int64_t PhiConfig::rotary_ndims() const {
  if (rotary_dim > 0) return std::min(rotary_dim, head_dim());
  return static_cast<int64_t>(static_cast<double>(head_dim()) * partial_rotary_factor);
}

PhiConfig PhiConfig::from_json(const nlohmann::json& j, const std::string& source) {
  PhiConfig c;
  if (!j.is_object()) fail("{}: a model config must be a JSON object, got {}", source, describe_json(j));
  const JsonReader read{j, source};
  std::string activation = "gelu_new";
  read.integer("vocab_size", c.vocab_size, true);
  if (j.contains("n_embd")) {
    // The phi-msft remote-code config (microsoft/phi-2 before January 2024).
    read.integer("n_embd", c.hidden_size, true);
    read.integer("n_layer", c.num_hidden_layers, true);
    read.integer("n_head", c.num_attention_heads, true);
    c.num_key_value_heads = c.num_attention_heads;
    read.integer("n_head_kv", c.num_key_value_heads);
    c.intermediate_size = 4 * c.hidden_size;  // n_inner: null
    read.integer("n_inner", c.intermediate_size);
    c.rotary_dim = 32;  // its config class's default
    read.integer("rotary_dim", c.rotary_dim);
    read.integer("n_positions", c.max_position_embeddings);
    read.number("layer_norm_epsilon", c.layer_norm_eps);
    read.text("activation_function", activation);
    read.number("resid_pdrop", c.resid_pdrop);
    read.number("embd_pdrop", c.embd_pdrop);
  } else {
    read.integer("hidden_size", c.hidden_size, true);
    read.integer("intermediate_size", c.intermediate_size, true);
    read.integer("num_hidden_layers", c.num_hidden_layers, true);
    read.integer("num_attention_heads", c.num_attention_heads, true);
    c.num_key_value_heads = c.num_attention_heads;
    read.integer("num_key_value_heads", c.num_key_value_heads);
    c.partial_rotary_factor = 0.5;  // PhiConfig's default; Phi-2 says 0.4
    read.number("partial_rotary_factor", c.partial_rotary_factor);
    read.number("layer_norm_eps", c.layer_norm_eps);
    read.number("rope_theta", c.rope_theta);
    read.integer("max_position_embeddings", c.max_position_embeddings);
    read.boolean("qk_layernorm", c.qk_layernorm);
    read.number("resid_pdrop", c.resid_pdrop);
    read.number("embd_pdrop", c.embd_pdrop);
    read.text("hidden_act", activation);
    // transformers >= 5 writes rope_theta and partial_rotary_factor inside rope_parameters.
    for (const char* key : {"rope_parameters", "rope_scaling"}) {
      if (!read.has(key)) continue;
      const auto& rope = j[key];
      if (!rope.is_object()) fail("{}: {} must be an object, got {}", source, key, describe_json(rope));
      std::string type = "default";
      const JsonReader inner{rope, source};
      inner.text("type", type);
      inner.text("rope_type", type);  // wins over "type", as in transformers
      if (type != "default")
        fail("{}: {} of type \"{}\" is not supported (plain RoPE only)", source, key, excerpt(type));
      inner.number("rope_theta", c.rope_theta);
      inner.number("partial_rotary_factor", c.partial_rotary_factor);
    }
  }
  read.integer("bos_token_id", c.bos_token_id);
  read.integer("eos_token_id", c.eos_token_id);
  read.integer("pad_token_id", c.pad_token_id);
  read.boolean("tie_word_embeddings", c.tie_word_embeddings);
  // gelu_new and gelu_pytorch_tanh are the same function (the tanh approximation).
  if (activation != "gelu_new" && activation != "gelu_pytorch_tanh")
    fail("{}: activation {} is not supported (Phi uses gelu_new)", source, excerpt(activation));
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
  if (c.rotary_dim < 0 || c.rotary_dim > INT32_MAX)
    fail("{}: 'rotary_dim' must be from 0 to {}, got {}", source, INT32_MAX, c.rotary_dim);
  if (!(c.partial_rotary_factor > 0 && c.partial_rotary_factor <= 1))
    fail("{}: 'partial_rotary_factor' must be in (0, 1], got {}", source, c.partial_rotary_factor);
  if (!(c.layer_norm_eps > 0) || !std::isfinite(c.layer_norm_eps))
    fail("{}: the layer norm epsilon must be a positive number, got {}", source, c.layer_norm_eps);
  if (!(c.rope_theta > 0) || !std::isfinite(c.rope_theta))
    fail("{}: 'rope_theta' must be a positive number, got {}", source, c.rope_theta);
  if (c.hidden_size % c.num_attention_heads != 0)
    fail("{}: hidden size {} is not a multiple of the {} attention heads", source, c.hidden_size,
         c.num_attention_heads);
  if (c.num_attention_heads % c.num_key_value_heads != 0)
    fail("{}: num_attention_heads {} is not a multiple of num_key_value_heads {}", source, c.num_attention_heads,
         c.num_key_value_heads);
  for (const double p : {c.resid_pdrop, c.embd_pdrop})
    if (!(p >= 0.0 && p < 1.0)) fail("{}: a dropout probability must be in [0, 1), got {}", source, p);
  if (c.rotary_ndims() < 2 || c.rotary_ndims() % 2 != 0)
    fail("{}: {} rotary channels per head (head_dim {} x partial_rotary_factor {}): RoPE needs an even number >= 2",
         source, c.rotary_ndims(), c.head_dim(), c.partial_rotary_factor);
  return c;
}

void PhiConfig::detect_layout(const StateDict& weights, const std::string& source) {
  bool fused = false, split = false;
  for (const auto& item : weights) {
    const auto& name = item.first;
    if (name.find("mixer.Wqkv.") != std::string::npos)
      fail(
          "{}: '{}' is the phi-msft remote-code layout, which this code does not read; convert the checkpoint to "
          "Hugging Face's Phi names (transformers' convert_phi_weights_to_hf.py)",
          source, name);
    fused = fused || ends_with(name, "self_attn.query_key_value.weight");
    split = split || ends_with(name, "self_attn.q_proj.weight");
    qk_layernorm = qk_layernorm || ends_with(name, "self_attn.q_layernorm.weight");
    post_layernorm = post_layernorm || ends_with(name, ".post_layernorm.weight");
  }
  if (fused && split) fail("{}: holds both fused query_key_value and split q_proj weights", source);
  if (fused || split) fused_qkv = fused;
  if (fused_qkv && num_key_value_heads != num_attention_heads)
    fail("{}: a fused query_key_value needs as many key/value heads as query heads ({} vs {})", source,
         num_key_value_heads, num_attention_heads);
}

PhiAttention::PhiAttention(const PhiConfig& c, const torch::TensorOptions& options, WeightFormat format)
    : num_heads(c.num_attention_heads), num_kv_heads(c.num_key_value_heads), head_dim(c.head_dim()) {
  auto linear = [&](int64_t in, int64_t out) { return std::make_shared<Linear>(in, out, true, options, format); };
  if (c.fused_qkv) {
    if (num_kv_heads != num_heads) fail("a fused query_key_value needs num_key_value_heads == num_attention_heads");
    query_key_value = register_module("query_key_value", linear(c.hidden_size, 3 * num_heads * head_dim));
  } else {
    q_proj = register_module("q_proj", linear(c.hidden_size, num_heads * head_dim));
    k_proj = register_module("k_proj", linear(c.hidden_size, num_kv_heads * head_dim));
    v_proj = register_module("v_proj", linear(c.hidden_size, num_kv_heads * head_dim));
  }
  dense = register_module("dense", linear(num_heads * head_dim, c.hidden_size));
  if (c.qk_layernorm) {
    q_layernorm = register_module("q_layernorm",
                                  std::make_shared<LayerNorm>(head_dim, c.layer_norm_eps, c.norm_options(options)));
    k_layernorm = register_module("k_layernorm",
                                  std::make_shared<LayerNorm>(head_dim, c.layer_norm_eps, c.norm_options(options)));
    q_layernorm->reset_parameters();
    k_layernorm->reset_parameters();
  }
}

torch::Tensor PhiAttention::forward(const torch::Tensor& x, const decoder::Rotary& rotary,
                                    const torch::Tensor& additive_mask, KVCache* cache, size_t layer) const {
  const int64_t B = x.size(0), T = x.size(1);
  torch::Tensor q, k, v;  // [B, T, heads, D]
  if (query_key_value) {
    const auto qkv = query_key_value->forward(x).view({B, T, num_heads, 3, head_dim});
    q = qkv.select(3, 0), k = qkv.select(3, 1), v = qkv.select(3, 2);
  } else {
    q = q_proj->forward(x).view({B, T, num_heads, head_dim});
    k = k_proj->forward(x).view({B, T, num_kv_heads, head_dim});
    v = v_proj->forward(x).view({B, T, num_kv_heads, head_dim});
  }
  if (q_layernorm) q = q_layernorm->forward(q), k = k_layernorm->forward(k);
  q = decoder::apply_rope(q.transpose(1, 2), rotary);
  k = decoder::apply_rope(k.transpose(1, 2), rotary);
  v = v.transpose(1, 2);
  if (cache) cache->append(layer, k, v);
  if (num_kv_heads != num_heads) {
    k = k.repeat_interleave(num_heads / num_kv_heads, 1);
    v = v.repeat_interleave(num_heads / num_kv_heads, 1);
  }
  // In float32 whatever the weights: Phi-2's q.k products overflow fp16 (transformers
  // upcasts them too).
  const auto f32 = torch::kFloat32;
  const auto out =
      attention(q.to(f32), k.to(f32), v.to(f32), additive_mask, 1.0 / std::sqrt(static_cast<double>(head_dim)))
          .to(x.scalar_type());
  return dense->forward(out.transpose(1, 2).reshape({B, T, num_heads * head_dim}));
}

PhiMlp::PhiMlp(const PhiConfig& c, const torch::TensorOptions& options, WeightFormat format) {
  fc1 = register_module("fc1", std::make_shared<Linear>(c.hidden_size, c.intermediate_size, true, options, format));
  fc2 = register_module("fc2", std::make_shared<Linear>(c.intermediate_size, c.hidden_size, true, options, format));
}

torch::Tensor PhiMlp::forward(const torch::Tensor& x) const {
  return fc2->forward(torch::gelu(fc1->forward(x), "tanh"));  // gelu_new
}

PhiDecoderLayer::PhiDecoderLayer(const PhiConfig& c, const torch::TensorOptions& options, WeightFormat format) {
  self_attn = register_module("self_attn", std::make_shared<PhiAttention>(c, options, format));
  mlp = register_module("mlp", std::make_shared<PhiMlp>(c, options, format));
  resid_pdrop = c.resid_pdrop;
  input_layernorm = register_module(
      "input_layernorm", std::make_shared<LayerNorm>(c.hidden_size, c.layer_norm_eps, c.norm_options(options)));
  if (c.post_layernorm) {
    post_layernorm = register_module(
        "post_layernorm",
        std::make_shared<RMSNorm>(c.hidden_size, PhiConfig::kPostLayerNormEps, c.norm_options(options)));
    torch::NoGradGuard no_grad;
    post_layernorm->weight.fill_(1.0);
  }
}

torch::Tensor PhiDecoderLayer::forward(const torch::Tensor& x, const decoder::Rotary& rotary,
                                       const torch::Tensor& additive_mask, KVCache* cache, size_t layer) const {
  const auto h = input_layernorm->forward(x);
  auto attended = self_attn->forward(h, rotary, additive_mask, cache, layer);
  if (post_layernorm) attended = post_layernorm->forward(attended);
  auto fed_forward = mlp->forward(h);
  if (is_training() && resid_pdrop > 0) {
    attended = torch::dropout(attended, resid_pdrop, /*train=*/true);
    fed_forward = torch::dropout(fed_forward, resid_pdrop, /*train=*/true);
  }
  // transformers' order of the sum: attention + MLP, then the residual.
  return attended + fed_forward + x;
}

PhiForCausalLM::PhiForCausalLM(const PhiConfig& c, const torch::TensorOptions& options, WeightFormat format,
                               WeightFormat head_format)
    : config(c) {
  auto model = register_module("model", std::make_shared<torch::nn::Module>());
  embed_tokens =
      model->register_module("embed_tokens", std::make_shared<Embedding>(c.vocab_size, c.hidden_size, options));
  layers = model->register_module("layers", torch::nn::ModuleList());
  for (int64_t i = 0; i < c.num_hidden_layers; ++i)
    layers->push_back(std::make_shared<PhiDecoderLayer>(c, options, format));
  final_layernorm = model->register_module(
      "final_layernorm", std::make_shared<LayerNorm>(c.hidden_size, c.layer_norm_eps, c.norm_options(options)));
  const auto head = c.tie_word_embeddings ? WeightFormat::Dense : head_format;  // tied: the embedding table
  lm_head = register_module("lm_head", std::make_shared<Linear>(c.hidden_size, c.vocab_size, true, options, head));
  if (c.tie_word_embeddings) lm_head->weight = embed_tokens->weight;
  inv_freq = register_buffer("inv_freq", decoder::rope_inv_freq(c.rotary_ndims(), c.rope_theta, options.device()));
}

bool PhiForCausalLM::starts_at_default(const std::string& name) const {
  for (const char* part : {".self_attn.q_layernorm.", ".self_attn.k_layernorm.", ".post_layernorm."})
    if (name.find(part) != std::string::npos) return true;
  return false;
}

torch::Tensor PhiForCausalLM::embed(const torch::Tensor& ids) const { return embed_tokens->forward(ids); }

CausalLMOutput PhiForCausalLM::forward(const torch::Tensor& inputs_embeds, const CausalLMOptions& opt) const {
  const int64_t B = inputs_embeds.size(0), T = inputs_embeds.size(1);
  const int64_t past = opt.cache ? opt.cache->length() : 0;
  const auto device = inputs_embeds.device();
  auto x = inputs_embeds.to(embed_tokens->weight.scalar_type());
  if (is_training() && config.embd_pdrop > 0) x = torch::dropout(x, config.embd_pdrop, /*train=*/true);
  const auto position_ids =
      opt.position_ids.defined() ? opt.position_ids.to(device) : decoder::default_position_ids(B, T, past, device);
  const auto rotary = decoder::rope(position_ids, inv_freq, x.scalar_type());
  const auto mask = decoder::additive_mask(opt.attention_mask, B, T, past, x.scalar_type(), device);

  CausalLMOutput out;
  if (opt.output_hidden_states) out.hidden_states.push_back(x);
  for (size_t i = 0; i < layers->size(); ++i) {
    x = layers->ptr(i)->as<PhiDecoderLayer>()->forward(x, rotary, mask, opt.cache, i);
    if (opt.output_hidden_states && i + 1 < layers->size()) out.hidden_states.push_back(x);
  }
  x = final_layernorm->forward(x);
  if (opt.output_hidden_states) out.hidden_states.push_back(x);
  out.logits = lm_head->forward(decoder::keep_last(x, opt.logits_to_keep)).to(torch::kFloat32);
  return out;
}

StateDict fuse_phi_qkv(const StateDict& weights, int64_t num_heads, const std::string& source) {
  StateDict out = weights;
  for (const auto& [name, q] : weights) {
    for (const std::string kind : {"weight", "bias"}) {
      const std::string q_suffix = "self_attn.q_proj." + kind;
      if (!ends_with(name, q_suffix)) continue;
      const auto stem = name.substr(0, name.size() - q_suffix.size()) + "self_attn.";
      const auto k = weights.find(stem + "k_proj." + kind), v = weights.find(stem + "v_proj." + kind);
      if (k == weights.end() || v == weights.end())
        fail("{}: '{}' has no matching {}k_proj.{} and {}v_proj.{} to fuse into query_key_value", source, name, stem,
             kind, stem, kind);
      if (k->second.sizes() != q.sizes() || v->second.sizes() != q.sizes())
        fail(
            "{}: {}q_proj/k_proj/v_proj.{} have different shapes ([{}], [{}], [{}]); a fused query_key_value needs "
            "as many key/value heads as query heads",
            source, stem, kind, fmt::join(q.sizes(), ", "), fmt::join(k->second.sizes(), ", "),
            fmt::join(v->second.sizes(), ", "));
      if (q.size(0) % num_heads != 0)
        fail("{}: '{}' has {} rows, not a multiple of the {} heads", source, name, q.size(0), num_heads);
      auto per_head = [num_heads](const at::Tensor& t) { return t.reshape({num_heads, t.size(0) / num_heads, -1}); };
      const auto fused = torch::stack({per_head(q), per_head(k->second), per_head(v->second)}, 1);  // [H, 3, D, in]
      out[stem + "query_key_value." + kind] = q.dim() == 1 ? fused.reshape({-1}) : fused.reshape({-1, q.size(1)});
      for (const char* proj : {"q_proj.", "k_proj.", "v_proj."}) out.erase(stem + proj + kind);
    }
  }
  for (const auto& [name, t] : out)
    if (ends_with(name, "self_attn.k_proj.weight") || ends_with(name, "self_attn.v_proj.weight"))
      fail("{}: '{}' has no matching q_proj weight to fuse into query_key_value", source, name);
  return out;
}

}  // namespace minigpt4
