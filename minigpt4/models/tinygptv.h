#pragma once
// TinyGPT-V (Yuan et al. 2023, github.com/DLYuanGod/TinyGPT-V): MiniGPT-4's vision side (EVA
// ViT-g, ln_vision, the BLIP-2 Q-Former, all frozen) on Phi-2, with
//  - two projections one after the other, no activation between: llama_proj (Q-Former
//    width -> 4096) then llama_proj2 (4096 -> the LLM's width), both trained
//    (model.proj_hidden: 4096);
//  - Phi as its own modeling_phi.py builds it: fused query_key_value, q/k LayerNorm and a
//    post-attention RMSNorm (model.llm_variant: tinygptv; phi.h);
//  - LoRA r 64, alpha 16, dropout 0.05 on query_key_value and dense, and the weights of
//    input_layernorm, q_layernorm, k_layernorm, post_layernorm and final_layernorm trained,
//    in every stage.
//
// Its checkpoints (the released TinyGPT-V_for_Stage{1..4}.pth, the original code's
// checkpoint_N.pth) are LAVIS checkpoints: {"model": the model's state_dict without the
// parameters that did not require grad}. Buffers stay; the only persistent one is the
// Q-Former's position_ids. The LLM is wrapped by PEFT's get_peft_model, which puts
// "base_model.model." in front of its names, so a checkpoint holds
//   llama_proj.{weight,bias}, llama_proj2.{weight,bias}
//   llama_model.base_model.model.model.layers.N.self_attn.{query_key_value,dense}.lora_{A,B}.default.weight
//   llama_model.base_model.model.model.layers.N.self_attn.{q,k}_layernorm.weight
//   llama_model.base_model.model.model.layers.N.{input,post}_layernorm.weight
//   llama_model.base_model.model.model.final_layernorm.weight
//   Qformer.bert.embeddings.position_ids
// (only the norms' weights trained: their biases come from Phi-2 or keep their defaults).
// Our parameter names are these without PEFT's wrapper.
#include "minigpt4/common/state_dict.h"
#include "minigpt4/models/llm_family.h"
#include "minigpt4/models/lora.h"

#include <string>
#include <vector>

namespace minigpt4::tinygptv {

// The value of model.llm_variant that selects TinyGPT-V's Phi.
inline constexpr const char* kLlmVariant = "tinygptv";
// The width between TinyGPT-V's two projections (hard-coded in its MiniGPT4 class).
inline constexpr int64_t kProjHidden = 4096;
// PEFT's wrapper of the LLM's names in TinyGPT-V's checkpoints.
inline constexpr const char* kPeftWrappedPrefix = "llama_model.base_model.model.";

// Whether any key carries PEFT's wrapper under llama_model (the checkpoint is TinyGPT-V's).
bool is_peft_wrapped(const StateDict& state);

// llama_model.base_model.model.X -> llama_model.X; every other key unchanged. Two keys that
// end up with one name are an error naming `source`.
StateDict unwrap_peft_names(const StateDict& state, const std::string& source);

// The rank of the LoRA weights of `adapter` that `state` holds (lora_A's rows); 0 when it
// holds none. Adapters of different ranks are an error naming `source`.
int64_t lora_rank(const StateDict& state, const std::string& adapter, const std::string& source);

// TinyGPT-V's LLM adapter: rank r (64), alpha 16, dropout 0.05 on query_key_value and dense.
lora::LoraConfig lora_config(int64_t r = 64);

// The LoRA targets TinyGPT-V uses.
const std::vector<std::string>& lora_targets();

// What TinyGPT-V trains besides its adapter, as model.lora_trainable entries: both
// projections and the weights (not the biases) of Phi's norms.
const std::vector<std::string>& trainable();

// ---- Loading a TinyGPT-V model (load_minigpt4 calls these)

}  // namespace minigpt4::tinygptv
namespace minigpt4 {
struct LoadReport;
struct MiniGPT4;
}  // namespace minigpt4
namespace minigpt4::tinygptv {

// model.llm_variant: tinygptv: the Phi LLM as TinyGPT-V's modeling_phi.py builds it; split
// q/k/v weight files are fused into query_key_value. `dir` names the LLM in messages.
void use_tinygptv_phi(LLMConfig& llm, StateDict& weights, const std::string& dir, LoadReport& report);
// Creates the LLM adapter a TinyGPT-V checkpoint's LoRA weights load into, when model.lora.llm
// does not (with TinyGPT-V's settings); checks its rank when it does.
void prepare_for_checkpoint(MiniGPT4& model, const StateDict& state, const std::string& path, LoadReport& report);
// For checkpoint keys that found no parameter: the settings a TinyGPT-V model needs ("" if none).
std::string missing_switches(const std::vector<std::string>& unexpected, const MiniGPT4& model);

}  // namespace minigpt4::tinygptv
