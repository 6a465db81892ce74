#pragma once
// The LLM families a MiniGPT-4-style model is built on, chosen by the Hugging Face
// config.json's model_type: LLaMA / Vicuna (MiniGPT-4) and Phi (TinyGPT-V).
#include "minigpt4/common/state_dict.h"
#include "minigpt4/models/llama.h"
#include "minigpt4/models/phi.h"

#include <nlohmann/json_fwd.hpp>

#include <memory>
#include <string>
#include <variant>

namespace minigpt4 {

using LLMConfig = std::variant<LlamaConfig, PhiConfig>;

// model_type "phi" or "phi-msft" is Phi; anything else is read as LLaMA (whose from_json
// refuses what it cannot run). `weights`, the checkpoint's tensors, settle what config.json
// does not record (Phi's fused or split q/k/v; TinyGPT-V's extra norms). `source` names the
// file in errors.
LLMConfig llm_config_from_hf(const nlohmann::json& config, const std::string& source, const StateDict& weights = {});

std::shared_ptr<CausalLM> make_causal_lm(const LLMConfig& config, const torch::TensorOptions& options,
                                         WeightFormat linear_format = WeightFormat::Dense,
                                         WeightFormat head_format = WeightFormat::Dense);

// A Hugging Face directory's LLM on its own: config.json, then every weight by name. A
// parameter the files lack is an error naming it, unless the family starts it at default.
// A `.gguf` file (llama.cpp's, LLaMA family) loads as well (gguf_llama.h).
std::shared_ptr<CausalLM> load_causal_lm(const std::string& dir, const torch::TensorOptions& options,
                                         WeightFormat linear_format = WeightFormat::Dense,
                                         WeightFormat head_format = WeightFormat::Dense);

}  // namespace minigpt4
