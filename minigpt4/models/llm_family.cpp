#include "minigpt4/models/llm_family.h"

#include "minigpt4/common/error.h"
#include "minigpt4/io/checkpoint.h"
#include "minigpt4/models/gguf_llama.h"
#include "minigpt4/models/memory.h"
#include "minigpt4/models/weights.h"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <filesystem>

namespace minigpt4 {

LLMConfig llm_config_from_hf(const nlohmann::json& config, const std::string& source, const StateDict& weights) {
  const auto model_type = config.contains("model_type") && config["model_type"].is_string()
                              ? config["model_type"].get<std::string>()
                              : std::string();
  if (model_type == "phi" || model_type == "phi-msft") {
    auto phi = PhiConfig::from_json(config, source);
    phi.detect_layout(weights, source);
    return phi;
  }
  return LlamaConfig::from_json(config, source);
}

std::shared_ptr<CausalLM> make_causal_lm(const LLMConfig& config, const torch::TensorOptions& options,
                                         WeightFormat linear_format, WeightFormat head_format) {
  if (const auto* phi = std::get_if<PhiConfig>(&config))
    return std::make_shared<PhiForCausalLM>(*phi, options, linear_format, head_format);
  return std::make_shared<LlamaForCausalLM>(std::get<LlamaConfig>(config), options, linear_format, head_format);
}

std::shared_ptr<CausalLM> load_causal_lm(const std::string& dir, const torch::TensorOptions& options,
                                         WeightFormat linear_format, WeightFormat head_format) {
  if (is_gguf_path(dir)) {
    const auto gguf = io::read_gguf(dir);
    const auto config = llama_config_from_gguf(gguf);
    auto model = make_causal_lm(config, options, linear_format, head_format);
    std::set<std::string> filled;
    load_gguf_llama(*model, gguf, config, "", filled);
    const auto missing = unfilled_parameters(*model, filled);
    if (!missing.empty()) fail("{}: {} weights missing: {}", dir, missing.size(), summarize_names(missing));
    model->eval();
    if (options.device().is_cpu()) move_to_huge_pages(*model);
    return model;
  }
  const auto config_path = (std::filesystem::path(dir) / "config.json").string();
  const auto weights = io::load_state_dict(dir);
  auto model = make_causal_lm(llm_config_from_hf(io::read_json_file(config_path), config_path, weights), options,
                              linear_format, head_format);
  LoadSpec spec;
  spec.source = dir;
  spec.is_ignorable = [](const std::string& key) { return key.find("rotary_emb.inv_freq") != std::string::npos; };
  std::set<std::string> filled;
  const auto result = load_into(*model, weights, spec, filled);
  if (!result.unexpected.empty())
    fail("{}: {} tensors the {} model has no place for: {}", dir, result.unexpected.size(), model->family(),
         summarize_names(result.unexpected));
  auto missing = unfilled_parameters(*model, filled);
  missing.erase(std::remove_if(missing.begin(), missing.end(),
                               [&](const std::string& name) { return model->starts_at_default(name); }),
                missing.end());
  if (!missing.empty()) fail("{}: {} weights missing: {}", dir, missing.size(), summarize_names(missing));
  model->eval();
  if (options.device().is_cpu()) move_to_huge_pages(*model);  // memory.h
  return model;
}

}  // namespace minigpt4
