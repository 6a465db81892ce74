#pragma once
// Phi-1.5 / Phi-2 (TinyGPT-V's LLM) as Hugging Face's `PhiForCausalLM` computes it. Each
// layer has ONE LayerNorm whose output feeds attention and the MLP in parallel:
//   h = input_layernorm(x);  x = x + dense(attn(h)) + fc2(gelu_tanh(fc1(h)))
// Attention has biases on q/k/v and `dense`; RoPE turns only the first rotary_ndims =
// head_dim * partial_rotary_factor channels of each head (rotate_half over those), the rest
// pass unrotated; scores and softmax run in float32 (Phi-2 overflows fp16 otherwise). Then
// `final_layernorm` and an `lm_head` with a bias.
//
// Two weight layouts, told apart by the checkpoint's names (PhiConfig::detect_layout):
//  - split: self_attn.{q_proj,k_proj,v_proj,dense} (transformers >= 4.37; microsoft/phi-2
//    since January 2024);
//  - fused: self_attn.{query_key_value,dense}, the transformers 4.36 port TinyGPT-V builds
//    on: one Linear(h, 3h) whose output is read Bloom-style as [B, T, heads, 3, head_dim],
//    so each head's q, k and v rows sit next to each other in the weight.
// (The `phi-msft` remote-code layout, transformer.h.N.mixer.Wqkv, is refused by name.)
//
// TinyGPT-V's own modeling_phi.py adds two things, here switches (and a third, norms_fp32:
// the norms' weights stay float32 in a half-precision model, as TinyGPT-V trains them):
//  - qk_layernorm: LayerNorm over head_dim (eps layer_norm_eps, affine) on the queries and
//    keys after the head split, before RoPE (`self_attn.q_layernorm`, `self_attn.k_layernorm`;
//    also Hugging Face's `qk_layernorm` config key, applied at the same place);
//  - post_layernorm: RMSNorm(hidden, eps 1e-6) on the attention branch only:
//    x = x + post_layernorm(dense(attn(h))) + mlp(h)   (`post_layernorm`).
// Phi-2 checkpoints hold no weights for them: the norms are built at their defaults
// (weight 1, bias 0), which TinyGPT-V then trains, and starts_at_default() lets loaders
// accept their absence.
// Dropout in training mode (Module::train; the trainer puts the LLM there when LoRA trains
// in it, as PEFT leaves it): embd_pdrop on the input embeddings, resid_pdrop on the
// attention and MLP branches (after TinyGPT-V's post_layernorm), as transformers applies
// them. attention_dropout (0 in Phi-2) is not applied.
#include "minigpt4/common/state_dict.h"
#include "minigpt4/models/causal_lm.h"
#include "minigpt4/models/layers.h"

#include <nlohmann/json_fwd.hpp>

namespace minigpt4 {

struct PhiConfig {
  int64_t vocab_size = 51200;
  int64_t hidden_size = 2560;
  int64_t intermediate_size = 10240;
  int64_t num_hidden_layers = 32;
  int64_t num_attention_heads = 32;
  int64_t num_key_value_heads = 32;  // < num_attention_heads: grouped-query attention (split layout only)
  double partial_rotary_factor = 0.4;
  int64_t rotary_dim = 0;  // phi-msft's absolute rotary_dim; 0: head_dim * partial_rotary_factor
  double layer_norm_eps = 1e-5;
  double rope_theta = 10000.0;
  int64_t max_position_embeddings = 2048;
  int64_t bos_token_id = 50256, eos_token_id = 50256, pad_token_id = -1;
  bool tie_word_embeddings = false;
  bool fused_qkv = false;                      // query_key_value instead of q_proj/k_proj/v_proj
  bool qk_layernorm = false;                   // TinyGPT-V (and HF's config key)
  bool post_layernorm = false;                 // TinyGPT-V
  double resid_pdrop = 0.0, embd_pdrop = 0.0;  // in training mode only (Phi-2: 0.1 and 0.0)
  // TinyGPT-V: every norm's weights in float32 (where they train) inside an fp16/bf16 model;
  // a norm then computes in float32 and hands back the activations' dtype.
  bool norms_fp32 = false;
  torch::TensorOptions norm_options(const torch::TensorOptions& options) const {
    return norms_fp32 ? options.dtype(torch::kFloat32) : options;
  }
  static constexpr double kPostLayerNormEps = 1e-6;  // TinyGPT-V's RMSNorm default

  int64_t head_dim() const { return hidden_size / num_attention_heads; }
  // int(head_dim * partial_rotary_factor), as Python truncates it.
  int64_t rotary_ndims() const;

  // From a Hugging Face `config.json`: model_type "phi" (transformers' key names, also
  // rope_parameters of transformers >= 5) or the early "phi-msft" (n_embd, n_layer, n_head,
  // n_inner, rotary_dim, ...). `source` names the file in errors.
  static PhiConfig from_json(const nlohmann::json& json, const std::string& source);

  // Settles from a checkpoint's tensor names what config.json does not record: the fused or
  // split q/k/v layout, and qk_layernorm / post_layernorm when their weights are present
  // (never switched off: TinyGPT-V's norms may come from another file or start at default).
  // Names may carry a prefix. No Phi attention weight at all leaves the config as it is.
  void detect_layout(const StateDict& weights, const std::string& source);
};

struct PhiAttention : torch::nn::Module {
  PhiAttention(const PhiConfig& config, const torch::TensorOptions& options, WeightFormat linear_format);
  torch::Tensor forward(const torch::Tensor& x, const decoder::Rotary& rotary, const torch::Tensor& additive_mask,
                        KVCache* cache, size_t layer_index) const;
  int64_t num_heads, num_kv_heads, head_dim;
  std::shared_ptr<Linear> q_proj, k_proj, v_proj;  // split layout
  std::shared_ptr<Linear> query_key_value;         // fused layout
  std::shared_ptr<Linear> dense;
  std::shared_ptr<LayerNorm> q_layernorm, k_layernorm;  // qk_layernorm only
};

struct PhiMlp : torch::nn::Module {
  PhiMlp(const PhiConfig& config, const torch::TensorOptions& options, WeightFormat linear_format);
  torch::Tensor forward(const torch::Tensor& x) const;  // fc2(gelu_tanh(fc1(x)))
  std::shared_ptr<Linear> fc1, fc2;
};

struct PhiDecoderLayer : torch::nn::Module {
  PhiDecoderLayer(const PhiConfig& config, const torch::TensorOptions& options, WeightFormat linear_format);
  torch::Tensor forward(const torch::Tensor& x, const decoder::Rotary& rotary, const torch::Tensor& additive_mask,
                        KVCache* cache, size_t layer_index) const;
  std::shared_ptr<LayerNorm> input_layernorm;
  std::shared_ptr<PhiAttention> self_attn;
  std::shared_ptr<PhiMlp> mlp;
  std::shared_ptr<RMSNorm> post_layernorm;  // post_layernorm only
  double resid_pdrop = 0.0;
};

// `model.*` + `lm_head` with Hugging Face's names. `linear_format` applies to the decoder
// layers' linears, `head_format` to an untied lm_head; embeddings and norms stay in the
// options' dtype, as for LLaMA.
struct PhiForCausalLM : CausalLM {
  PhiForCausalLM(const PhiConfig& config, const torch::TensorOptions& options,
                 WeightFormat linear_format = WeightFormat::Dense, WeightFormat head_format = WeightFormat::Dense);

  torch::Tensor embed(const torch::Tensor& ids) const override;
  CausalLMOutput forward(const torch::Tensor& inputs_embeds, const CausalLMOptions& options = {}) const override;
  int64_t vocab_size() const override { return config.vocab_size; }
  int64_t hidden_size() const override { return config.hidden_size; }
  torch::Dtype dtype() const override { return embed_tokens->weight.scalar_type(); }
  std::string family() const override { return "phi"; }
  bool starts_at_default(const std::string& name) const override;

  PhiConfig config;
  std::shared_ptr<Embedding> embed_tokens;
  torch::nn::ModuleList layers;
  std::shared_ptr<LayerNorm> final_layernorm;
  std::shared_ptr<Linear> lm_head;
  torch::Tensor inv_freq;  // over rotary_ndims channels, computed
};

// The split q_proj/k_proj/v_proj weights and biases of a checkpoint rearranged into the
// fused query_key_value of the transformers 4.36 port (per head, its q, k and v rows one
// after another, which is what the Bloom-style [B, T, heads, 3, head_dim] read expects), for
// a model built with fused_qkv (TinyGPT-V's modeling_phi.py) from today's split Phi-2 files.
// The product is unchanged. Names may carry a prefix; other tensors pass through. A layer
// with some but not all of q/k/v, or grouped key/value heads, is an error naming `source`.
StateDict fuse_phi_qkv(const StateDict& weights, int64_t num_heads, const std::string& source);

}  // namespace minigpt4
