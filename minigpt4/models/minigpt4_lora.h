#pragma once
// LoRA on MiniGPT-4's three components, driven by the run config (docs/lora.md):
//   model.lora: {llm: {...}, vit: {...}, qformer: {...}}   an adapter created fresh on each
//                                                          named component, called "default"
//                                                          (PEFT's name); this run trains it
//   model.lora_path: {name: folder, ...}                   adapters loaded by name
//   model.lora_active: name | original                     which applies after loading
//   model.lora_trainable: [llama_proj, ...]                what trains along with "default"
// Each component is a separate PEFT model, as in ConLoRA: adapter names inside one are
// relative to it (the LLM's start with "model.layers.", the ViT's with "blocks.", the
// Q-Former's with "bert.encoder."). On disk a task's adapter is one PEFT folder per
// component, named as ConLoRA names them: llm/, ve/ (vit/ is read too), qformer/; a PEFT
// folder on its own is loaded onto the component whose layers its weights name.
//
// The mechanism itself is lora.h; the file format lora_peft.h.
#include "minigpt4/models/lora.h"

#include <string>
#include <vector>

namespace minigpt4 {

class Config;
struct MiniGPT4;
struct MiniGPT4Config;

// The adapter model.lora creates, and which training trains.
inline constexpr const char* kTrainedAdapter = "default";

// "llm", "vit", "qformer": the keys of model.lora.
const std::vector<std::string>& lora_components();
// The module a component names, or null when the model lacks it (no Q-Former).
torch::nn::Module* lora_component(MiniGPT4& model, const std::string& component);

// model.lora.*, model.lora_path, model.lora_active, model.lora_trainable, and MiniGPT-v2's
// model.lora_r / lora_alpha / lora_dropout / lora_target_modules (an LLM adapter; the
// projector keeps training, as MiniGPT-v2 does) into `c`. With model.llm_variant: tinygptv
// an LLM adapter defaults to TinyGPT-V's targets (query_key_value, dense), and the v2 keys
// also train Phi's norm weights (tinygptv.h). Reads c.proj_hidden and c.llm_variant, so
// call it after them. Errors name the config file.
void read_lora_settings(const Config& config, MiniGPT4Config& c);

// Creates "default" on every component model.lora configures (A random, B zero). Called
// by load_minigpt4 before model.ckpt is read, so a training checkpoint restores it.
void attach_configured_adapters(MiniGPT4& model);
// Loads every model.lora_path folder under its name, then activates model.lora_active
// (default: "default" when created, else the only loaded adapter, else original).
void load_configured_adapters(MiniGPT4& model);
// One adapter folder (a PEFT folder, or llm/ ve/ qformer/ PEFT folders) under `name`.
void load_adapter_folder(MiniGPT4& model, const std::string& name, const std::string& dir);

// Switches every component to adapter `name` ("original": the base model) without
// reloading anything; with merge, the adapter is folded into the base weights (faster per
// token, slower to switch; refused for int8 weights). A chat session's KV cache and image
// embeddings were computed with the previous adapter: recompute them after switching. Not
// thread-safe: call it where the model's forwards run (the server's model thread).
void set_active_adapter(MiniGPT4& model, const std::string& name, bool merge = false);
std::string active_adapter(MiniGPT4& model);
// Every adapter name held, sorted (without "original").
std::vector<std::string> adapter_names(MiniGPT4& model);

// The requires_grad rules once adapters exist, applied by MiniGPT4::apply_freezing after
// the freeze flags: only "default"'s weights among the adapters; with model.lora set, the
// projector (llama_proj, and llama_proj2 if present) is frozen (ConLoRA) unless
// model.lora_trainable names it, and every parameter
// whose name contains a model.lora_trainable entry as whole dotted segments trains.
void apply_lora_freezing(MiniGPT4& model);

// Writes `adapter` as one PEFT folder per component holding it: dir/{llm,ve,qformer}.
// Returns the folders written (none when no component holds it).
std::vector<std::string> save_adapter_folders(MiniGPT4& model, const std::string& adapter, const std::string& dir);

}  // namespace minigpt4
