#pragma once
// LLaMA / Vicuna as Hugging Face's `LlamaForCausalLM` computes it: pre-RMSNorm decoder
// layers with rotary position embeddings (rotate_half layout), grouped-query attention,
// a SiLU-gated MLP, no biases, an untied LM head.
#include "minigpt4/models/causal_lm.h"
#include "minigpt4/models/layers.h"

#include <nlohmann/json_fwd.hpp>

namespace minigpt4 {

struct LlamaConfig {
  int64_t vocab_size = 32000;
  int64_t hidden_size = 4096;
  int64_t intermediate_size = 11008;
  int64_t num_hidden_layers = 32;
  int64_t num_attention_heads = 32;
  int64_t num_key_value_heads = 32;  // < num_attention_heads: grouped-query attention
  int64_t head_dim = 0;              // 0: hidden_size / num_attention_heads
  double rms_norm_eps = 1e-6;
  double rope_theta = 10000.0;
  int64_t max_position_embeddings = 2048;
  int64_t bos_token_id = 1, eos_token_id = 2, pad_token_id = -1;
  bool tie_word_embeddings = false;

  int64_t dim_per_head() const { return head_dim > 0 ? head_dim : hidden_size / num_attention_heads; }
  // From a Hugging Face `config.json`; `source` names the file in errors.
  static LlamaConfig from_json(const nlohmann::json& json, const std::string& source);
};

struct LlamaAttention : torch::nn::Module {
  LlamaAttention(const LlamaConfig& config, const torch::TensorOptions& options,
                 WeightFormat linear_format = WeightFormat::Dense);
  torch::Tensor forward(const torch::Tensor& x, const decoder::Rotary& rotary, const torch::Tensor& additive_mask,
                        KVCache* cache, size_t layer_index) const;
  int64_t num_heads, num_kv_heads, head_dim;
  std::shared_ptr<Linear> q_proj, k_proj, v_proj, o_proj;
};

struct LlamaMlp : torch::nn::Module {
  LlamaMlp(const LlamaConfig& config, const torch::TensorOptions& options,
           WeightFormat linear_format = WeightFormat::Dense);
  torch::Tensor forward(const torch::Tensor& x) const;
  std::shared_ptr<Linear> gate_proj, up_proj, down_proj;
};

struct LlamaDecoderLayer : torch::nn::Module {
  LlamaDecoderLayer(const LlamaConfig& config, const torch::TensorOptions& options,
                    WeightFormat linear_format = WeightFormat::Dense);
  torch::Tensor forward(const torch::Tensor& x, const decoder::Rotary& rotary, const torch::Tensor& additive_mask,
                        KVCache* cache, size_t layer_index) const;
  std::shared_ptr<RMSNorm> input_layernorm, post_attention_layernorm;
  std::shared_ptr<LlamaAttention> self_attn;
  std::shared_ptr<LlamaMlp> mlp;
};

// `llama_model` in MiniGPT-4's state dict: `model.*` + `lm_head`. `linear_format` applies
// to the decoder layers' projections, `head_format` to lm_head; embeddings and norms stay in
// the options' dtype. bitsandbytes' load_in_8bit (low_resource) skips the output layer, the
// most sensitive product; llama.cpp's quantised files keep it in more bits than the layers.
// A tied lm_head is the embedding matrix and stays dense whatever head_format says.
struct LlamaForCausalLM : CausalLM {
  LlamaForCausalLM(const LlamaConfig& config, const torch::TensorOptions& options,
                   WeightFormat linear_format = WeightFormat::Dense, WeightFormat head_format = WeightFormat::Dense);

  torch::Tensor embed(const torch::Tensor& ids) const override;
  CausalLMOutput forward(const torch::Tensor& inputs_embeds, const CausalLMOptions& options = {}) const override;
  // On the CPU the fused step of cpu_decode.h for all sequences at once; elsewhere CausalLM's.
  torch::Tensor step_sequences(const torch::Tensor& inputs_embeds, const std::vector<KVCache*>& caches) const override;
  int64_t vocab_size() const override { return config.vocab_size; }
  int64_t hidden_size() const override { return config.hidden_size; }
  torch::Dtype dtype() const override { return embed_tokens->weight.scalar_type(); }
  std::string family() const override { return "llama"; }

  LlamaConfig config;
  std::shared_ptr<Embedding> embed_tokens;
  torch::nn::ModuleList layers;
  std::shared_ptr<RMSNorm> norm;
  std::shared_ptr<Linear> lm_head;
  torch::Tensor inv_freq;  // rotary frequencies, computed (checkpoints' inv_freq buffers are ignored)
};

}  // namespace minigpt4
