#include "minigpt4/models/tinygptv.h"

#include "minigpt4/common/error.h"
#include "minigpt4/common/strings.h"
#include "minigpt4/models/minigpt4.h"
#include "minigpt4/models/minigpt4_lora.h"
#include "minigpt4/models/phi.h"

#include <fmt/format.h>

#include <algorithm>
#include <map>
#include <regex>

namespace minigpt4::tinygptv {

namespace {

bool names_some_parameter(const torch::nn::Module& module, const std::string& entry) {
  for (const auto& item : module.named_parameters())
    if (("." + item.key() + ".").find("." + entry + ".") != std::string::npos) return true;
  return false;
}

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
  static const std::vector<std::string> names = {
      "llama_proj",         "llama_proj2",           "input_layernorm.weight", "q_layernorm.weight",
      "k_layernorm.weight", "post_layernorm.weight", "final_layernorm.weight"};
  return names;
}

// ---- loading (models/minigpt4_loading.cpp calls these)

// model.llm_variant: tinygptv. TinyGPT-V's modeling_phi.py always has the fused
// query_key_value, the q/k LayerNorm and the post-attention RMSNorm; today's Phi-2 files
// have split q/k/v (fused here, an exact rearrangement) and none of the norms (they start
// at their defaults, as in TinyGPT-V's stage 1).
void use_tinygptv_phi(LLMConfig& llm, StateDict& weights, const std::string& dir, LoadReport& report) {
  auto* phi = std::get_if<PhiConfig>(&llm);
  if (!phi)
    fail(
        "model.llm_variant: {} builds TinyGPT-V's Phi, but {} is not a Phi model (its config.json's model_type is not "
        "phi)",
        kLlmVariant, dir);
  if (phi->num_key_value_heads != phi->num_attention_heads)
    fail(
        "model.llm_variant: {}: {} has grouped key/value heads ({} for {} query heads), which a fused "
        "query_key_value cannot hold",
        kLlmVariant, dir, phi->num_key_value_heads, phi->num_attention_heads);
  static const std::regex split_query(R"(.*\bself_attn\.q_proj\.weight$)");
  const bool split = std::any_of(weights.begin(), weights.end(),
                                 [](const auto& item) { return std::regex_match(item.first, split_query); });
  if (split) {
    weights = fuse_phi_qkv(weights, phi->num_attention_heads, dir);
    report.notes.push_back("llm_variant tinygptv: the split q_proj/k_proj/v_proj of " + dir +
                           " were fused into query_key_value (TinyGPT-V's layout)");
  }
  phi->fused_qkv = phi->qk_layernorm = phi->post_layernorm = phi->norms_fp32 = true;
  report.notes.push_back(
      "llm_variant tinygptv: Phi as TinyGPT-V's modeling_phi.py builds it (fused query_key_value, "
      "q/k LayerNorm, post-attention RMSNorm, norm weights in float32)");
}

// A TinyGPT-V checkpoint (tinygptv.h) holds the LLM's LoRA under PEFT's adapter name
// "default". Without model.lora.llm the adapter is created as TinyGPT-V creates it (its
// class defaults: every stage has it), so the checkpoint has somewhere to go.
void prepare_for_checkpoint(MiniGPT4& model, const StateDict& state, const std::string& path, LoadReport& report) {
  const int64_t rank = lora_rank(state, kTrainedAdapter, path);
  if (rank == 0) return;
  auto& c = model.config;
  if (c.lora.count("llm")) {
    if (c.lora.at("llm").r != rank)
      fail("{}: its LoRA adapters have rank {} but model.lora.llm.r is {} (TinyGPT-V uses 64)", path, rank,
           c.lora.at("llm").r);
    return;
  }
  auto settings = lora_config(rank);
  settings.validate("TinyGPT-V's LoRA");
  c.lora["llm"] = settings;
  if (c.lora_trainable.empty())
    for (const auto& entry : trainable())
      if (names_some_parameter(model, entry)) c.lora_trainable.push_back(entry);
  report.notes.push_back(fmt::format(
      "{} holds TinyGPT-V's LoRA (rank {}) and model.lora.llm is not set: the adapter '{}' is created with TinyGPT-V's "
      "settings (alpha 16, dropout 0.05, on query_key_value and dense)",
      path, rank, kTrainedAdapter));
}

// Why keys of a TinyGPT-V checkpoint found no parameter: the switches a TinyGPT-V model needs.
std::string missing_switches(const std::vector<std::string>& unexpected, const MiniGPT4& model) {
  auto any = [&](auto pred) { return std::any_of(unexpected.begin(), unexpected.end(), pred); };
  std::vector<std::string> hints;
  if (any([](const std::string& k) {
        return k.find("_layernorm.") != std::string::npos && k.find("input_layernorm.") == std::string::npos &&
               k.find("final_layernorm.") == std::string::npos;
      }) ||
      any([](const std::string& k) { return k.find(".query_key_value.") != std::string::npos; })) {
    if (model.config.llm_variant != kLlmVariant)
      hints.push_back(
          fmt::format("set model.llm_variant: {} (TinyGPT-V's Phi: fused query_key_value, q/k LayerNorm, "
                      "post-attention RMSNorm)",
                      kLlmVariant));
  }
  if (!model.llama_proj2 && any([](const std::string& k) { return starts_with(k, "llama_proj2."); }))
    hints.push_back(fmt::format("set model.proj_hidden: {} (TinyGPT-V's second projection, llama_proj2)", kProjHidden));
  if (any([](const std::string& k) { return lora::is_adapter_parameter(k); }))
    hints.push_back(
        "LoRA weights need the adapter 'default' on the layers they name: model.lora.llm with "
        "target_modules [query_key_value, dense] as TinyGPT-V, or no model.lora.llm (then it is created "
        "from the checkpoint)");
  std::string out;
  for (const auto& h : hints) out += "; " + h;
  return out;
}

}  // namespace minigpt4::tinygptv
