#pragma once
// Internals shared by generate.cpp (greedy / sampling) and beam_search.cpp.
#include "minigpt4/generate/generate.h"
#include "minigpt4/models/causal_lm.h"

#include <optional>

namespace minigpt4::detail {

// The model side of generation: the prompt once, then one token per row at a time through
// the KV cache, with HF's attention mask (one column of ones per step) and position ids
// (cumsum(mask) - 1, padding at 1). Without padding both are the defaults the model computes
// itself, so they are not built at all (a decode step then needs no mask).
class Decoder {
 public:
  // With `cache` (its positions precede the prompt; the mask covers them too) the decoder
  // continues it and writes into it, so the caller keeps what was computed. `new_tokens`:
  // how many steps will follow at most, to size the cache once.
  Decoder(const CausalLM& llm, const torch::Tensor& attention_mask, KVCache* cache = nullptr, int64_t new_tokens = 0);
  Decoder(const Decoder&) = delete;
  Decoder& operator=(const Decoder&) = delete;
  // Runs the prompt [N, T, H]; returns the next-token logits [N, V] (float32).
  torch::Tensor start(const torch::Tensor& inputs_embeds);
  // Feeds one token id per row ([N], int64); returns the next logits.
  torch::Tensor step(const torch::Tensor& tokens);
  // Keeps the rows `index` [N] of the cache and mask (beam reordering).
  void reorder(const torch::Tensor& index);

 private:
  const CausalLM& llm_;
  KVCache own_cache_;
  KVCache* cache_;                      // own_cache_ or the caller's
  torch::Tensor mask_;                  // [N, T_past], int64; kept up to date only when padded_
  bool padded_;                         // whether the mask has a zero anywhere
  torch::Device device_ = torch::kCPU;  // the prompt's
};

// HF's input_ids as a tensor [N, L] on `device`.
torch::Tensor ids_tensor(const std::vector<std::vector<int64_t>>& rows, torch::Device device);

// Whether `ids` ends with one of the stop sequences (StoppingCriteriaSub).
bool ends_with_stop_sequence(const std::vector<int64_t>& ids, const std::vector<std::vector<int64_t>>& stops);

// A CPU generator seeded with config.seed, for sampling.
at::Generator sampling_generator(uint64_t seed);

void check_config(const GenerationConfig& config, int64_t vocab_size);

GenerationOutput beam_search(const CausalLM& llm, const torch::Tensor& inputs_embeds, const GenerationConfig& config,
                             const std::function<void(int64_t)>& on_token);

}  // namespace minigpt4::detail
