// `minigpt4 info --memory`: what a MiniGPT-4 holds in memory at the LLaMA 1.1B, 7B and 13B
// shapes in each LLM weight format, computed from the layout: the model is built with its real
// modules (EVA ViT-g in 16 bits, or with its linear layers in int8 as model.vit_weight_bits: 8
// stores them; the Q-Former and projection in float32 as the original keeps them; the LLM in
// 16 bits apart from its quantised decoder projections) on uninitialised storage, which the
// system does not commit until written, and its tensors' bytes are summed.
#include "apps/commands.h"
#include "minigpt4/models/memory.h"
#include "minigpt4/models/minigpt4.h"

#include <fmt/format.h>

namespace minigpt4::apps {

namespace {

struct Shape {
  const char* name;
  int64_t hidden, intermediate, layers, heads, kv_heads;
};

double gb(int64_t bytes) { return static_cast<double>(bytes) / 1e9; }

}  // namespace

void print_memory_layout() {
  const Shape shapes[] = {{"1.1B (TinyLlama)", 2048, 5632, 22, 32, 4},
                          {"7B (Vicuna-7B)", 4096, 11008, 32, 32, 32},
                          {"13B (Vicuna-13B)", 5120, 13824, 40, 40, 40}};
  struct Format {
    const char* name;
    WeightFormat format;
  };
  const Format formats[] = {{"16-bit", WeightFormat::Dense},    {"int8/channel", WeightFormat::Int8},
                            {"8-bit g32", WeightFormat{8, 32}}, {"4-bit g32", WeightFormat{4, 32}},
                            {"4-bit g64", WeightFormat{4, 64}}, {"4-bit g128", WeightFormat{4, 128}}};
  fmt::print(
      "bytes held by a MiniGPT-4 (GB = 1e9 bytes), computed from the layout; ViT-g + Q-Former + projection "
      "are the same in every column of a row\n");
  fmt::print("{:<18} {:>9} {:>10}", "LLM", "ViT bits", "vision");
  for (const auto& f : formats) fmt::print(" {:>13}", f.name);
  fmt::print("\n");
  for (const auto& s : shapes)
    for (const int vit_bits : {16, 8}) {
      LlamaConfig llm;
      llm.hidden_size = s.hidden, llm.intermediate_size = s.intermediate, llm.num_hidden_layers = s.layers;
      llm.num_attention_heads = s.heads, llm.num_key_value_heads = s.kv_heads, llm.vocab_size = 32000;
      int64_t vision = 0;
      std::vector<int64_t> totals;
      for (const auto& f : formats) {
        MiniGPT4Config c;  // EVA ViT-g/14 at 224 pixels, BLIP-2's Q-Former, one projection
        c.vit_precision = "bf16", c.llm_precision = "bf16";  // the bytes of fp16 (which the CPU would upcast)
        c.vit_weight_bits = vit_bits;
        c.low_resource = f.format == WeightFormat::Int8;
        if (f.format.quantized() && !c.low_resource)
          c.llm_weight_bits = f.format.bits, c.llm_weight_group_size = f.format.group_size;
        const MiniGPT4 model(c, llm, torch::kCPU);
        const auto all = tensor_bytes(model).total;
        vision = all - tensor_bytes(*model.llama_model).total;
        totals.push_back(all);
      }
      fmt::print("{:<18} {:>9} {:>8.2f}GB", s.name, vit_bits, gb(vision));
      for (const auto total : totals) fmt::print(" {:>11.2f}GB", gb(total));
      fmt::print("\n");
    }
  fmt::print(
      "(embeddings and norms stay 16-bit, lm_head too except in the g32/g64/g128 columns, where it is 8-bit g32 "
      "(model.llm_head_bits); a process also holds LibTorch, activations and the KV cache)\n");
}

}  // namespace minigpt4::apps
