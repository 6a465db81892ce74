#pragma once
// EVA ViT-g/14, the frozen vision encoder of BLIP-2 and MiniGPT-4 (LAVIS `eva_vit.py`).
// Pre-LN transformer over [cls] + 14x14 patches with absolute position embeddings; the
// qkv projection has a query and a value bias but no key bias; exact (erf) GELU; no final
// norm (MiniGPT-4 applies its own `ln_vision`).
#include "minigpt4/models/layers.h"

namespace minigpt4 {

struct EvaVitConfig {
  int64_t image_size = 224;
  int64_t patch_size = 14;
  int64_t width = 1408;
  int64_t depth = 39;  // EVA-CLIP-g has 40 blocks; BLIP-2 drops the last one
  int64_t num_heads = 16;
  double mlp_ratio = 4.3637;  // -> 6144 hidden for width 1408
  double layer_norm_eps = 1e-6;

  int64_t grid() const { return image_size / patch_size; }
  int64_t num_patches() const { return grid() * grid(); }
  int64_t mlp_hidden() const { return static_cast<int64_t>(static_cast<double>(width) * mlp_ratio); }
};

// qkv offers its query, key and value rows to LoRA under those names (Linear::parts, lora.h).
struct EvaAttention : torch::nn::Module {
  // format: how the linear layers store their weights (layers.h); quantised ones are filled by
  // load_weight and serve inference only.
  EvaAttention(const EvaVitConfig& config, const torch::TensorOptions& options,
               WeightFormat format = WeightFormat::Dense);
  torch::Tensor forward(const torch::Tensor& x) const;
  int64_t num_heads;
  std::shared_ptr<Linear> qkv, proj;
  torch::Tensor q_bias, v_bias;
};

struct EvaMlp : torch::nn::Module {
  EvaMlp(const EvaVitConfig& config, const torch::TensorOptions& options, WeightFormat format = WeightFormat::Dense);
  torch::Tensor forward(const torch::Tensor& x) const;
  std::shared_ptr<Linear> fc1, fc2;
};

struct EvaBlock : torch::nn::Module {
  EvaBlock(const EvaVitConfig& config, const torch::TensorOptions& options, WeightFormat format = WeightFormat::Dense);
  torch::Tensor forward(const torch::Tensor& x) const;
  std::shared_ptr<LayerNorm> norm1, norm2;
  std::shared_ptr<EvaAttention> attn;
  std::shared_ptr<EvaMlp> mlp;
};

struct EvaVit : torch::nn::Module {
  EvaVit(const EvaVitConfig& config, const torch::TensorOptions& options, WeightFormat format = WeightFormat::Dense);

  // [B,3,S,S] images -> [B, 1+P, W] tokens. `block_outputs`, when given, receives the
  // output of every block (for parity tests and feature extraction).
  torch::Tensor forward(const torch::Tensor& images, std::vector<torch::Tensor>* block_outputs = nullptr) const;
  // cat(cls, patch_embed(images)) + pos_embed: the tokens entering block 0.
  torch::Tensor embed(const torch::Tensor& images) const;

  EvaVitConfig config;
  torch::Tensor cls_token, pos_embed;
  std::shared_ptr<torch::nn::Module> patch_embed;  // holds `proj` (Conv2d weight/bias)
  torch::Tensor patch_weight, patch_bias;
  torch::nn::ModuleList blocks;
};

// LAVIS `interpolate_pos_embed`: resize the patch part of a [1, 1+G0*G0, W] position
// embedding to a G x G grid (bicubic, align_corners=False), keeping the cls entry. Used when
// a checkpoint was trained at another image size (e.g. TinyGPT-V's 448 px stage).
torch::Tensor interpolate_pos_embed(const torch::Tensor& pos_embed, int64_t new_grid);

}  // namespace minigpt4
