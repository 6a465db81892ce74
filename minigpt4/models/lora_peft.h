#pragma once
// LoRA adapters on disk in Hugging Face PEFT's layout, so that adapters trained with PEFT
// load here and ours load in PEFT. An adapter folder holds
//   adapter_config.json        {"peft_type": "LORA", "r", "lora_alpha", "lora_dropout",
//                               "target_modules" (a list of names, or one regex string),
//                               "layers_to_transform", "layers_pattern", "bias": "none",
//                               "base_model_name_or_path", "task_type", ...}
//   adapter_model.safetensors  (or adapter_model.bin, a torch.save file: older PEFT)
// with tensors named base_model.model.<module>.lora_A.weight / .lora_B.weight: <module> is
// the name inside the model PEFT wrapped (here: the root passed in, e.g. the LLM, where
// names start with "model.layers."), and the adapter's own name is left out.
//
// Loading attaches the adapter at exactly the modules the tensors name (the rank from
// their shapes, alpha from the config and its alpha_pattern), rather than re-matching
// target_modules: older PEFT versions matched names by other rules (ConLoRA's
// target_modules ['.query', '.value'] relied on a plain suffix test), and the tensor names
// are what the file really holds. What this code cannot apply is refused by name: another
// peft_type, DoRA, trained biases, fan_in_fan_out, modules_to_save, embedding adapters.
#include "minigpt4/models/lora.h"

#include <nlohmann/json_fwd.hpp>

#include <string>
#include <vector>

namespace minigpt4::lora {

inline constexpr const char* kPeftConfigFile = "adapter_config.json";
inline constexpr const char* kPeftWeightsFile = "adapter_model.safetensors";
inline constexpr const char* kPeftLegacyWeightsFile = "adapter_model.bin";
inline constexpr const char* kPeftKeyPrefix = "base_model.model.";

// Writes adapter `adapter` of `root` to `dir` (created; files replaced). Float32 tensors.
void save_peft_adapter(torch::nn::Module& root, const std::string& adapter, const std::string& dir);

// Attaches the adapter stored in `dir` to `root` under the name `adapter` and returns its
// config. Every error names the folder and, where one is at fault, the tensor.
LoraConfig load_peft_adapter(torch::nn::Module& root, const std::string& adapter, const std::string& dir);

// Whether `dir` holds a PEFT adapter (its adapter_config.json).
bool is_peft_adapter_dir(const std::string& dir);
LoraConfig read_peft_config(const std::string& dir);
// The module names the folder's weights adapt (relative to the wrapped model).
std::vector<std::string> peft_adapter_modules(const std::string& dir);

nlohmann::json peft_config_json(const LoraConfig& config);
LoraConfig lora_config_from_peft_json(const nlohmann::json& json, const std::string& source);

}  // namespace minigpt4::lora
