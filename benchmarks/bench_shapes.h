#pragma once
// The benchmark shapes shared by bench_modules and bench_train_step (benchmarks/*_hf.py
// build the same sizes in Python), and the random weights both sides use.
#include "minigpt4/models/eva_vit.h"
#include "minigpt4/models/layers.h"
#include "minigpt4/models/llama.h"
#include "minigpt4/models/qformer.h"

#include <torch/torch.h>

#include <string>

namespace bench {

using minigpt4::EvaVitConfig;
using minigpt4::LlamaConfig;
using minigpt4::QFormerConfig;

struct Shape {
  std::string name;
  EvaVitConfig vit;
  double ln_vision_eps = 1e-5;
  QFormerConfig qformer;
  int64_t projector_out = 0;  // the LLM hidden size
  LlamaConfig llama;
  int64_t batch = 1;
  int64_t text_tokens = 64;  // prompt tokens after the image queries
  int default_repeats = 5, default_warmup = 1;

  int64_t llm_tokens() const { return qformer.num_query_tokens + text_tokens; }
};

// The tiny_vicuna0 fixture (configs/tiny_vicuna0.yaml, tests/data/parity/tiny_vicuna0).
inline Shape tiny_shape() {
  Shape s;
  s.name = "tiny";
  s.vit.image_size = 56;
  s.vit.patch_size = 14;
  s.vit.width = 64;
  s.vit.depth = 3;
  s.vit.num_heads = 4;
  s.vit.mlp_ratio = 4.3637;  // 279 hidden
  s.qformer.hidden_size = 48;
  s.qformer.num_layers = 2;
  s.qformer.num_heads = 4;
  s.qformer.intermediate_size = 96;
  s.qformer.encoder_width = 64;
  s.qformer.cross_attention_freq = 2;
  s.qformer.num_query_tokens = 8;
  s.projector_out = 64;
  s.llama.vocab_size = 1000;
  s.llama.hidden_size = 64;
  s.llama.intermediate_size = 176;
  s.llama.num_hidden_layers = 2;
  s.llama.num_attention_heads = 4;
  s.llama.num_key_value_heads = 4;
  s.batch = 2;
  s.text_tokens = 64;
  s.default_repeats = 30;
  s.default_warmup = 5;
  return s;
}

// ViT-B/14-sized vision encoder, BERT-base Q-Former, TinyLlama-1.1B-shaped LLM.
inline Shape mid_shape() {
  Shape s;
  s.name = "mid";
  s.vit.image_size = 224;
  s.vit.patch_size = 14;
  s.vit.width = 768;
  s.vit.depth = 12;
  s.vit.num_heads = 12;
  s.vit.mlp_ratio = 4.0;  // 3072 hidden
  s.qformer.hidden_size = 768;
  s.qformer.num_layers = 12;
  s.qformer.num_heads = 12;
  s.qformer.intermediate_size = 3072;
  s.qformer.encoder_width = 768;
  s.qformer.cross_attention_freq = 2;
  s.qformer.num_query_tokens = 32;
  s.projector_out = 2048;
  s.llama.vocab_size = 32000;
  s.llama.hidden_size = 2048;
  s.llama.intermediate_size = 5632;
  s.llama.num_hidden_layers = 22;
  s.llama.num_attention_heads = 32;
  s.llama.num_key_value_heads = 4;
  s.llama.rms_norm_eps = 1e-5;
  s.batch = 1;
  s.text_tokens = 64;
  s.default_repeats = 3;
  s.default_warmup = 1;
  return s;
}

// Parameters are allocated uninitialised: N(0, 0.02) everywhere, norms at weight 1, bias 0.
inline void randomise(torch::nn::Module& module) {
  torch::NoGradGuard no_grad;
  for (auto& p : module.parameters()) p.normal_(0.0, 0.02);
  for (const auto& sub : module.modules(/*include_self=*/false)) {
    if (auto ln = std::dynamic_pointer_cast<minigpt4::LayerNorm>(sub)) {
      ln->reset_parameters();
    } else if (auto rms = std::dynamic_pointer_cast<minigpt4::RMSNorm>(sub)) {
      rms->weight.fill_(1.0);
    }
  }
}

}  // namespace bench
