#include "minigpt4/models/tinygptv.h"

#include "minigpt4/common/error.h"

#include <map>

namespace minigpt4::tinygptv {

namespace {

bool starts_with(const std::string& s, const std::string& prefix) { return s.rfind(prefix, 0) == 0; }

}  // namespace

bool is_peft_wrapped(const StateDict& state) {
  const auto it = state.lower_bound(kPeftWrappedPrefix);
  return it != state.end() && starts_with(it->first, kPeftWrappedPrefix);
}

StateDict unwrap_peft_names(const StateDict& state, const std::string& source) {
  static const std::string wrapped = kPeftWrappedPrefix, plain = "llama_model.";
  StateDict out;
  std::map<std::string, std::string> origin;
  for (const auto& [key, value] : state) {
    const std::string name = starts_with(key, wrapped) ? plain + key.substr(wrapped.size()) : key;
    if (const auto seen = origin.find(name); seen != origin.end())
      fail("{}: '{}' and '{}' are the same parameter ({}) with and without PEFT's base_model.model. wrapper", source,
           seen->second, key, name);
    origin[name] = key;
    out.emplace(name, value);
  }
  return out;
}

int64_t lora_rank(const StateDict& state, const std::string& adapter, const std::string& source) {
  const std::string marker = ".lora_A." + adapter + ".weight";
  int64_t rank = 0;
  std::string first;
  for (const auto& [key, value] : state) {
    if (key.size() < marker.size() || key.compare(key.size() - marker.size(), marker.size(), marker) != 0) continue;
    if (value.dim() != 2) fail("{}: '{}' is not a matrix (shape [{}])", source, key, fmt::join(value.sizes(), ", "));
    if (rank == 0) rank = value.size(0), first = key;
    if (value.size(0) != rank)
      fail("{}: LoRA weights of different ranks: '{}' has {}, '{}' has {}", source, first, rank, key, value.size(0));
  }
  return rank;
}

lora::LoraConfig lora_config(int64_t r) {
  lora::LoraConfig c;
  c.r = r;
  c.lora_alpha = 16;
  c.lora_dropout = 0.05;
  c.target_modules = lora_targets();
  c.task_type = "CAUSAL_LM";
  return c;
}

const std::vector<std::string>& lora_targets() {
  static const std::vector<std::string> targets = {"query_key_value", "dense"};
  return targets;
}

const std::vector<std::string>& trainable() {
  static const std::vector<std::string> names = {"llama_proj",           "llama_proj2",          "input_layernorm.weight",
                                                 "q_layernorm.weight",   "k_layernorm.weight",   "post_layernorm.weight",
                                                 "final_layernorm.weight"};
  return names;
}

}  // namespace minigpt4::tinygptv
