#include "minigpt4/models/gguf_llama.h"

#include "minigpt4/common/error.h"
#include "minigpt4/common/strings.h"
#include "minigpt4/common/untrusted.h"
#include "minigpt4/models/layers.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <map>

namespace minigpt4 {

namespace {

int64_t metadata_int(const io::GgufFile& g, const std::string& key, int64_t fallback, bool required) {
  const auto it = g.metadata.find(key);
  if (it == g.metadata.end()) {
    if (required) fail("{}: the GGUF metadata has no '{}' (needed for a LLaMA model)", g.path, key);
    return fallback;
  }
  if (!it->is_number_integer() || it->get<int64_t>() <= 0 || it->get<int64_t>() > (int64_t{1} << 31))
    fail("{}: GGUF metadata '{}' must be a positive integer, got {}", g.path, key, excerpt(it->dump(), 40));
  return it->get<int64_t>();
}

double metadata_float(const io::GgufFile& g, const std::string& key, double fallback) {
  const auto it = g.metadata.find(key);
  if (it == g.metadata.end()) return fallback;
  if (!it->is_number() || !(it->get<double>() > 0))
    fail("{}: GGUF metadata '{}' must be a positive number, got {}", g.path, key, excerpt(it->dump(), 40));
  return it->get<double>();
}

// llama.cpp's tensor names -> Hugging Face's ("" for a name this model has no place for).
std::string hf_name(const std::string& name) {
  static const std::map<std::string, std::string> global = {{"token_embd.weight", "model.embed_tokens.weight"},
                                                            {"output_norm.weight", "model.norm.weight"},
                                                            {"output.weight", "lm_head.weight"}};
  if (const auto it = global.find(name); it != global.end()) return it->second;
  static const std::map<std::string, std::string> per_layer = {
      {"attn_norm.weight", "input_layernorm.weight"}, {"ffn_norm.weight", "post_attention_layernorm.weight"},
      {"attn_q.weight", "self_attn.q_proj.weight"},   {"attn_k.weight", "self_attn.k_proj.weight"},
      {"attn_v.weight", "self_attn.v_proj.weight"},   {"attn_output.weight", "self_attn.o_proj.weight"},
      {"ffn_gate.weight", "mlp.gate_proj.weight"},    {"ffn_up.weight", "mlp.up_proj.weight"},
      {"ffn_down.weight", "mlp.down_proj.weight"}};
  if (!starts_with(name, "blk.")) return "";
  const auto dot = name.find('.', 4);
  if (dot == std::string::npos || dot == 4 || dot - 4 > 6) return "";
  const auto layer = name.substr(4, dot - 4);
  if (layer.find_first_not_of("0123456789") != std::string::npos) return "";
  const auto it = per_layer.find(name.substr(dot + 1));
  if (it == per_layer.end()) return "";
  return "model.layers." + std::to_string(std::stoll(layer)) + "." + it->second;
}

// The rows of a q or k projection in Hugging Face's order. llama.cpp's converter stores each
// head's rows as (pair index, half) where Hugging Face has (half, pair index), so that the
// rotation acts on neighbouring rows (ggml's rope) instead of rotate_half's two halves.
at::Tensor hf_row_order(const at::Tensor& rows, int64_t heads) {
  const int64_t n = rows.size(0);
  const auto gguf_row = at::arange(n, at::TensorOptions().dtype(at::kLong)).view({heads, n / heads / 2, 2});
  return rows.index_select(0, gguf_row.transpose(1, 2).reshape({-1}));
}

// The group-wise format whose storage holds a ggml type's blocks unchanged (Dense: none).
WeightFormat block_format(uint32_t type) {
  if (type == static_cast<uint32_t>(io::GgmlType::Q8_0)) return {8, 32};
  if (type == static_cast<uint32_t>(io::GgmlType::Q4_0)) return {4, 32};
  return WeightFormat::Dense;
}

}  // namespace

bool is_gguf_path(const std::string& path) { return ends_with(path, ".gguf"); }

LlamaConfig llama_config_from_gguf(const io::GgufFile& g) {
  const auto& arch = g.at("general.architecture");
  if (!arch.is_string() || arch.get<std::string>() != "llama")
    fail("{}: general.architecture is {}; only LLaMA-family GGUF files (\"llama\") load as the LLM", g.path,
         excerpt(arch.dump(), 40));
  if (const auto it = g.metadata.find("llama.rope.scaling.type");
      it != g.metadata.end() && !(it->is_string() && it->get<std::string>() == "none"))
    fail("{}: llama.rope.scaling.type is {}; RoPE scaling is not implemented", g.path, excerpt(it->dump(), 40));
  LlamaConfig c;
  c.num_hidden_layers = metadata_int(g, "llama.block_count", 0, true);
  c.hidden_size = metadata_int(g, "llama.embedding_length", 0, true);
  c.intermediate_size = metadata_int(g, "llama.feed_forward_length", 0, true);
  c.num_attention_heads = metadata_int(g, "llama.attention.head_count", 0, true);
  c.num_key_value_heads = metadata_int(g, "llama.attention.head_count_kv", c.num_attention_heads, false);
  c.max_position_embeddings = metadata_int(g, "llama.context_length", c.max_position_embeddings, false);
  c.rms_norm_eps = metadata_float(g, "llama.attention.layer_norm_rms_epsilon", c.rms_norm_eps);
  c.rope_theta = metadata_float(g, "llama.rope.freq_base", c.rope_theta);
  c.head_dim = metadata_int(g, "llama.attention.key_length", c.hidden_size / c.num_attention_heads, false);
  if (c.num_attention_heads % c.num_key_value_heads != 0 || c.head_dim % 2 != 0)
    fail("{}: {} attention heads, {} key/value heads and head width {} do not fit together", g.path,
         c.num_attention_heads, c.num_key_value_heads, c.head_dim);
  const auto* embedding = g.find("token_embd.weight");
  if (!embedding || embedding->shape.size() != 2 || embedding->shape[1] != c.hidden_size)
    fail("{}: token_embd.weight is missing or not [vocabulary, {}]", g.path, c.hidden_size);
  c.vocab_size = embedding->shape[0];
  c.bos_token_id = metadata_int(g, "tokenizer.ggml.bos_token_id", c.bos_token_id, false);
  c.eos_token_id = metadata_int(g, "tokenizer.ggml.eos_token_id", c.eos_token_id, false);
  c.tie_word_embeddings = g.find("output.weight") == nullptr;
  return c;
}

WeightFormat gguf_projection_format(const io::GgufFile& g) {
  // The type most of the decoder's 2-D weights have: converters store a few in another one
  // (llama.cpp's keeps rows that are no whole number of blocks in f16).
  std::map<uint32_t, int64_t> count;
  for (const auto& t : g.tensors)
    if (starts_with(t.name, "blk.") && t.shape.size() == 2) ++count[t.type];
  if (count.empty()) return WeightFormat::Dense;
  const auto most =
      std::max_element(count.begin(), count.end(), [](const auto& a, const auto& b) { return a.second < b.second; });
  return block_format(most->first);
}

LoadResult load_gguf_llama(torch::nn::Module& model, const io::GgufFile& g, const LlamaConfig& config,
                           const std::string& prefix, std::set<std::string>& filled) {
  std::map<std::string, const Linear*> linears;  // by weight name
  for (const auto& item : model.named_modules("", /*include_self=*/false))
    if (const auto* linear = item.value()->as<Linear>()) linears[item.key() + ".weight"] = linear;
  LoadSpec spec;
  spec.source = g.path;
  LoadResult result;
  result.source = g.path;
  at::NoGradGuard no_grad;
  for (const auto& t : g.tensors) {
    const auto name = hf_name(t.name);
    if (name.empty()) {
      result.unexpected.push_back(t.name);
      continue;
    }
    const int64_t heads = ends_with(name, "q_proj.weight")   ? config.num_attention_heads
                          : ends_with(name, "k_proj.weight") ? config.num_key_value_heads
                                                             : 0;
    if (heads > 0 && (t.shape.size() != 2 || t.shape[0] != heads * config.dim_per_head()))
      fail("{}: '{}' is [{}], not {} heads of {} rows", g.path, t.name, fmt::join(t.shape, ", "), heads,
           config.dim_per_head());
    const auto reorder = [heads](at::Tensor rows) { return heads > 0 ? hf_row_order(rows, heads) : rows; };
    StateDict state;
    const auto linear = linears.find(prefix + name);
    const bool native = linear != linears.end() && linear->second->is_grouped() &&
                        linear->second->format() == block_format(t.type) && t.shape.size() == 2 &&
                        t.shape[1] == linear->second->in_features;
    if (native) {  // the file's blocks as they are (gguf.h: gguf_grouped)
      const auto grouped = io::gguf_grouped(g, t);
      state[name] = reorder(grouped.values);
      state[name + "_scale"] = reorder(grouped.scales);
    } else {
      state[name] = reorder(io::gguf_dequantize(g, t));
      if (name == "model.embed_tokens.weight" && config.tie_word_embeddings) state["lm_head.weight"] = state[name];
    }
    spec.add_prefix = prefix;
    const auto one = load_into(model, state, spec, filled);
    result.loaded.insert(result.loaded.end(), one.loaded.begin(), one.loaded.end());
    result.unexpected.insert(result.unexpected.end(), one.unexpected.begin(), one.unexpected.end());
  }
  if (!result.unexpected.empty())
    fail("{}: {} tensors a LLaMA model has no place for: {}", g.path, result.unexpected.size(),
         summarize_names(result.unexpected));
  return result;
}

}  // namespace minigpt4
