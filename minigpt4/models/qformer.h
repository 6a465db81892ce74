#pragma once
// The BLIP-2 Q-Former as MiniGPT-4 runs it (LAVIS `Qformer.py`): a post-LN BERT whose only
// inputs are learned query tokens. Every layer lets the queries attend to each other; every
// `cross_attention_freq`-th layer also lets them attend to the image features; then the
// query feed-forward path. MiniGPT-4 deletes the text branch (word/position embeddings, the
// text FFN, the LM head), so those modules do not exist here.
#include "minigpt4/models/layers.h"

namespace minigpt4 {

struct QFormerConfig {
  int64_t hidden_size = 768;  // BERT-base
  int64_t num_layers = 12;
  int64_t num_heads = 12;
  int64_t intermediate_size = 3072;
  int64_t encoder_width = 1408;  // the vision encoder's width
  int64_t cross_attention_freq = 2;
  int64_t num_query_tokens = 32;
  double layer_norm_eps = 1e-12;
};

// BertSelfAttention: queries from `hidden`, keys/values from `context` (itself or the image).
struct BertAttentionCore : torch::nn::Module {
  BertAttentionCore(int64_t hidden, int64_t context_width, int64_t heads, const torch::TensorOptions& options);
  torch::Tensor forward(const torch::Tensor& hidden, const torch::Tensor& context) const;
  int64_t num_heads;
  std::shared_ptr<Linear> query, key, value;
};

// A dense projection followed by a residual post-LayerNorm (BertSelfOutput / BertOutput).
struct BertResidualOutput : torch::nn::Module {
  BertResidualOutput(int64_t in, int64_t hidden, double eps, const torch::TensorOptions& options);
  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& residual) const;
  std::shared_ptr<Linear> dense;
  std::shared_ptr<LayerNorm> LayerNorm_;
};

// `attention` / `crossattention` in the checkpoint: `self` (the core) + `output`.
struct BertAttentionBlock : torch::nn::Module {
  BertAttentionBlock(int64_t hidden, int64_t context_width, const QFormerConfig& c,
                     const torch::TensorOptions& options);
  torch::Tensor forward(const torch::Tensor& hidden, const torch::Tensor& context) const;
  std::shared_ptr<BertAttentionCore> self;
  std::shared_ptr<BertResidualOutput> output;
};

struct QFormerLayer : torch::nn::Module {
  QFormerLayer(const QFormerConfig& c, bool has_cross_attention, const torch::TensorOptions& options);
  torch::Tensor forward(const torch::Tensor& queries, const torch::Tensor& image_embeds) const;
  std::shared_ptr<BertAttentionBlock> attention, crossattention;  // crossattention may be null
  std::shared_ptr<Linear> intermediate_dense;                     // intermediate_query.dense
  std::shared_ptr<BertResidualOutput> output_query;
};

// `Qformer` in MiniGPT-4's state dict; its parameters live under `bert.`.
struct QFormer : torch::nn::Module {
  QFormer(const QFormerConfig& config, const torch::TensorOptions& options);

  // query_tokens [B,NQ,QH] (already expanded), image_embeds [B,N,encoder_width] -> [B,NQ,QH].
  // `hidden_states`, when given, receives the embeddings output and every layer's output.
  torch::Tensor forward(const torch::Tensor& query_tokens, const torch::Tensor& image_embeds,
                        std::vector<torch::Tensor>* hidden_states = nullptr) const;

  QFormerConfig config;
  std::shared_ptr<LayerNorm> embeddings_norm;  // bert.embeddings.LayerNorm
  torch::nn::ModuleList layers;                // bert.encoder.layer
};

}  // namespace minigpt4
