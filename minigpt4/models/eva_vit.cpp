#include "minigpt4/models/eva_vit.h"

#include "minigpt4/common/error.h"

#include <cmath>

namespace minigpt4 {

EvaAttention::EvaAttention(const EvaVitConfig& c, const torch::TensorOptions& options, WeightFormat format)
    : num_heads(c.num_heads) {
  qkv = register_module("qkv", std::make_shared<Linear>(c.width, 3 * c.width, /*bias=*/false, options, format));
  // LoRA may target the three projections by the names they have when the fused layer is
  // split into separate linears (ConLoRA): the result is the same as on the split layers.
  qkv->parts = {{"query", 0, c.width}, {"key", c.width, c.width}, {"value", 2 * c.width, c.width}};
  q_bias = register_parameter("q_bias", torch::empty({c.width}, options));
  v_bias = register_parameter("v_bias", torch::empty({c.width}, options));
  proj = register_module("proj", std::make_shared<Linear>(c.width, c.width, /*bias=*/true, options, format));
}

torch::Tensor EvaAttention::forward(const torch::Tensor& x) const {
  const int64_t B = x.size(0), N = x.size(1), C = x.size(2), head_dim = C / num_heads;
  // The key has no bias: EVA concatenates (q_bias, 0, v_bias) into one qkv bias.
  const auto bias = torch::cat({q_bias, torch::zeros_like(v_bias), v_bias});
  // A quantised qkv (vit_weight_bits) has no dense weight for torch::linear: its own product,
  // then the bias.
  const auto projected =
      qkv->is_quantized() ? qkv->forward(x) + bias : qkv->add_adapters(x, torch::linear(x, qkv->weight, bias));
  const auto qkv_out = projected.reshape({B, N, 3, num_heads, head_dim}).permute({2, 0, 3, 1, 4});
  const auto out = attention(qkv_out[0], qkv_out[1], qkv_out[2], {}, 1.0 / std::sqrt(static_cast<double>(head_dim)));
  return proj->forward(out.transpose(1, 2).reshape({B, N, C}));
}

EvaMlp::EvaMlp(const EvaVitConfig& c, const torch::TensorOptions& options, WeightFormat format) {
  fc1 = register_module("fc1", std::make_shared<Linear>(c.width, c.mlp_hidden(), true, options, format));
  fc2 = register_module("fc2", std::make_shared<Linear>(c.mlp_hidden(), c.width, true, options, format));
}

torch::Tensor EvaMlp::forward(const torch::Tensor& x) const { return fc2->forward(torch::gelu(fc1->forward(x))); }

EvaBlock::EvaBlock(const EvaVitConfig& c, const torch::TensorOptions& options, WeightFormat format) {
  norm1 = register_module("norm1", std::make_shared<LayerNorm>(c.width, c.layer_norm_eps, options));
  attn = register_module("attn", std::make_shared<EvaAttention>(c, options, format));
  norm2 = register_module("norm2", std::make_shared<LayerNorm>(c.width, c.layer_norm_eps, options));
  mlp = register_module("mlp", std::make_shared<EvaMlp>(c, options, format));
}

torch::Tensor EvaBlock::forward(const torch::Tensor& x) const {
  const auto h = x + attn->forward(norm1->forward(x));
  return h + mlp->forward(norm2->forward(h));
}

EvaVit::EvaVit(const EvaVitConfig& c, const torch::TensorOptions& options, WeightFormat format) : config(c) {
  if (c.image_size % c.patch_size != 0)
    fail("vision encoder: image_size {} is not a multiple of patch_size {}", c.image_size, c.patch_size);
  if (c.width % c.num_heads != 0) fail("vision encoder: width {} is not divisible by {} heads", c.width, c.num_heads);
  cls_token = register_parameter("cls_token", torch::empty({1, 1, c.width}, options));
  pos_embed = register_parameter("pos_embed", torch::empty({1, c.num_patches() + 1, c.width}, options));
  patch_embed = register_module("patch_embed", std::make_shared<torch::nn::Module>());
  auto proj = patch_embed->register_module("proj", std::make_shared<torch::nn::Module>());
  patch_weight = proj->register_parameter("weight", torch::empty({c.width, 3, c.patch_size, c.patch_size}, options));
  patch_bias = proj->register_parameter("bias", torch::empty({c.width}, options));
  blocks = register_module("blocks", torch::nn::ModuleList());
  for (int64_t i = 0; i < c.depth; ++i) blocks->push_back(std::make_shared<EvaBlock>(c, options, format));
}

torch::Tensor EvaVit::embed(const torch::Tensor& images) const {
  const auto x = images.to(patch_weight.scalar_type());
  const int64_t B = x.size(0);
  if (x.size(2) != config.image_size || x.size(3) != config.image_size)
    fail("vision encoder: expected {}x{} images, got {}x{}", config.image_size, config.image_size, x.size(2),
         x.size(3));
  auto patches = torch::conv2d(x, patch_weight, patch_bias, {config.patch_size, config.patch_size});
  patches = patches.flatten(2).transpose(1, 2);  // [B, P, W]
  return torch::cat({cls_token.expand({B, -1, -1}), patches}, 1) + pos_embed;
}

torch::Tensor EvaVit::forward(const torch::Tensor& images, std::vector<torch::Tensor>* block_outputs) const {
  auto x = embed(images);
  for (const auto& block : *blocks) {
    x = block->as<EvaBlock>()->forward(x);
    if (block_outputs) block_outputs->push_back(x);
  }
  return x;
}

torch::Tensor interpolate_pos_embed(const torch::Tensor& pos_embed, int64_t new_grid) {
  const int64_t width = pos_embed.size(-1);
  const int64_t old_tokens = pos_embed.size(-2) - 1;
  const auto old_grid = static_cast<int64_t>(std::lround(std::sqrt(static_cast<double>(old_tokens))));
  if (old_grid * old_grid != old_tokens)
    fail("pos_embed has {} patch positions, which is not a square grid", old_tokens);
  if (old_grid == new_grid) return pos_embed;
  const auto cls = pos_embed.slice(1, 0, 1);
  auto grid = pos_embed.slice(1, 1).reshape({-1, old_grid, old_grid, width}).permute({0, 3, 1, 2});
  const auto dtype = grid.scalar_type();
  grid =
      torch::nn::functional::interpolate(grid.to(torch::kFloat32), torch::nn::functional::InterpolateFuncOptions()
                                                                       .size(std::vector<int64_t>{new_grid, new_grid})
                                                                       .mode(torch::kBicubic)
                                                                       .align_corners(false));
  grid = grid.to(dtype).permute({0, 2, 3, 1}).flatten(1, 2);
  return torch::cat({cls, grid}, 1);
}

}  // namespace minigpt4
