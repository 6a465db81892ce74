#include "minigpt4/models/qformer.h"

#include "minigpt4/common/error.h"

#include <cmath>

namespace minigpt4 {

BertAttentionCore::BertAttentionCore(int64_t hidden, int64_t context_width, int64_t heads,
                                     const torch::TensorOptions& options)
    : num_heads(heads) {
  query = register_module("query", std::make_shared<Linear>(hidden, hidden, true, options));
  key = register_module("key", std::make_shared<Linear>(context_width, hidden, true, options));
  value = register_module("value", std::make_shared<Linear>(context_width, hidden, true, options));
}

torch::Tensor BertAttentionCore::forward(const torch::Tensor& hidden, const torch::Tensor& context) const {
  const int64_t B = hidden.size(0), Tq = hidden.size(1), Tk = context.size(1);
  const int64_t H = query->weight.size(0), D = H / num_heads;
  auto split = [&](const torch::Tensor& t, int64_t T) { return t.view({B, T, num_heads, D}).transpose(1, 2); };
  const auto q = split(query->forward(hidden), Tq);
  const auto k = split(key->forward(context), Tk);
  const auto v = split(value->forward(context), Tk);
  // The query path of MiniGPT-4 runs with all-ones masks: no mask to add.
  const auto out = attention(q, k, v, {}, 1.0 / std::sqrt(static_cast<double>(D)));
  return out.transpose(1, 2).reshape({B, Tq, H});
}

BertResidualOutput::BertResidualOutput(int64_t in, int64_t hidden, double eps, const torch::TensorOptions& options) {
  dense = register_module("dense", std::make_shared<Linear>(in, hidden, true, options));
  LayerNorm_ = register_module("LayerNorm", std::make_shared<LayerNorm>(hidden, eps, options));
}

torch::Tensor BertResidualOutput::forward(const torch::Tensor& x, const torch::Tensor& residual) const {
  return LayerNorm_->forward(dense->forward(x) + residual);
}

BertAttentionBlock::BertAttentionBlock(int64_t hidden, int64_t context_width, const QFormerConfig& c,
                                       const torch::TensorOptions& options) {
  self = register_module("self", std::make_shared<BertAttentionCore>(hidden, context_width, c.num_heads, options));
  output = register_module("output", std::make_shared<BertResidualOutput>(hidden, hidden, c.layer_norm_eps, options));
}

torch::Tensor BertAttentionBlock::forward(const torch::Tensor& hidden, const torch::Tensor& context) const {
  return output->forward(self->forward(hidden, context), hidden);
}

QFormerLayer::QFormerLayer(const QFormerConfig& c, bool has_cross_attention, const torch::TensorOptions& options) {
  attention =
      register_module("attention", std::make_shared<BertAttentionBlock>(c.hidden_size, c.hidden_size, c, options));
  if (has_cross_attention)
    crossattention = register_module("crossattention",
                                     std::make_shared<BertAttentionBlock>(c.hidden_size, c.encoder_width, c, options));
  auto intermediate = register_module("intermediate_query", std::make_shared<torch::nn::Module>());
  intermediate_dense = intermediate->register_module(
      "dense", std::make_shared<Linear>(c.hidden_size, c.intermediate_size, true, options));
  output_query = register_module("output_query", std::make_shared<BertResidualOutput>(
                                                     c.intermediate_size, c.hidden_size, c.layer_norm_eps, options));
}

torch::Tensor QFormerLayer::forward(const torch::Tensor& queries, const torch::Tensor& image_embeds) const {
  auto h = attention->forward(queries, queries);
  if (crossattention) h = crossattention->forward(h, image_embeds);
  return output_query->forward(torch::gelu(intermediate_dense->forward(h)), h);
}

QFormer::QFormer(const QFormerConfig& c, const torch::TensorOptions& options) : config(c) {
  if (c.hidden_size % c.num_heads != 0)
    fail("Q-Former: hidden_size {} is not divisible by {} heads", c.hidden_size, c.num_heads);
  if (c.cross_attention_freq < 1) fail("Q-Former: cross_attention_freq must be >= 1, got {}", c.cross_attention_freq);
  auto bert = register_module("bert", std::make_shared<torch::nn::Module>());
  auto embeddings = bert->register_module("embeddings", std::make_shared<torch::nn::Module>());
  embeddings_norm =
      embeddings->register_module("LayerNorm", std::make_shared<LayerNorm>(c.hidden_size, c.layer_norm_eps, options));
  auto encoder = bert->register_module("encoder", std::make_shared<torch::nn::Module>());
  layers = encoder->register_module("layer", torch::nn::ModuleList());
  for (int64_t i = 0; i < c.num_layers; ++i)
    layers->push_back(std::make_shared<QFormerLayer>(c, i % c.cross_attention_freq == 0, options));
}

torch::Tensor QFormer::forward(const torch::Tensor& query_tokens, const torch::Tensor& image_embeds,
                               std::vector<torch::Tensor>* hidden_states) const {
  const auto dtype = embeddings_norm->weight.scalar_type();
  // Queries get no position embedding: the embeddings output is LayerNorm(query_tokens).
  auto h = embeddings_norm->forward(query_tokens.to(dtype));
  const auto context = image_embeds.to(dtype);
  if (hidden_states) hidden_states->push_back(h);
  for (const auto& layer : *layers) {
    h = layer->as<QFormerLayer>()->forward(h, context);
    if (hidden_states) hidden_states->push_back(h);
  }
  return h;
}

}  // namespace minigpt4
