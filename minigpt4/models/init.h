#pragma once
// Fresh weights for models built from scratch, where no pretrained file exists (the
// quickstart's tiny model; tests). The rules are the originals' initialisers: every matrix,
// embedding and learned token from N(0, 0.02) truncated at two standard deviations (EVA's
// trunc_normal_, BERT's and LLaMA's initializer_range 0.02), norm weights 1, biases 0.
// Each tensor's values depend only on the seed and its name, so the order modules are
// built in never changes them.
#include "minigpt4/models/minigpt4.h"

#include <nlohmann/json_fwd.hpp>

namespace minigpt4 {

void init_fresh_weights(torch::nn::Module& module, uint64_t seed, double std = 0.02);

// The same with matrices at std 1/sqrt(fan_in) (PyTorch's default scale) and learned tokens
// (cls_token, pos_embed, query_tokens) at 0.5. For a vision tower trained from scratch in
// a few hundred steps: at 0.02 the Q-Former's cross-attention starts uniform and its
// output nearly independent of the image, so the image signal the LLM first sees, and
// the gradient that could grow it, are a hundredth of the rest.
void init_fresh_weights_fan_in(torch::nn::Module& module, uint64_t seed);

// A Hugging Face LLaMA config.json for `config` (model_type llama, float32).
nlohmann::json llama_config_json(const LlamaConfig& config);
// A Hugging Face Phi config.json for `config` (model_type phi, transformers' key names,
// float32, no dropout), which transformers' PhiForCausalLM and load_causal_lm read.
nlohmann::json phi_config_json(const PhiConfig& config);

// Where save_model_parts put the model: the four-file layout a run config names.
struct ModelPartFiles {
  std::string vit_model;       // <dir>/eva_vit.safetensors: EVA names (cls_token, blocks.N...)
  std::string q_former_model;  // <dir>/blip2.safetensors: Qformer.*, query_tokens, ln_vision.*
  std::string llama_model;     // <dir>/llm/: config.json + model.safetensors (HF names)
};

// Writes the model's ViT, BLIP-2 part and LLM in the layouts of the real files (the LLM
// directory gets no tokenizer: copy one in). The projector is not written: a fresh run
// creates it, and training checkpoints carry it.
ModelPartFiles save_model_parts(const MiniGPT4& model, const std::string& dir);

}  // namespace minigpt4
