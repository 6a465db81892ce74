#pragma once
// What generation, chat and the multimodal model need from a decoder-only LLM, whatever its
// family (llama.h, phi.h): embed ids, run input embeddings (with a mask, position ids and a
// KV cache) to logits. Also the pieces every family computes the same way, as Hugging
// Face does: the causal + padding mask, generation's position ids, RoPE, the LM loss.
#include <torch/torch.h>

#include <string>
#include <vector>

namespace minigpt4 {

// Keys and values of every layer so far, [B, kv_heads, T, D] each: generation feeds one new
// token at a time and reuses them. Each layer's keys/values are views of a buffer with room
// for more positions, so a step writes its own position instead of copying the whole cache
// (a `cat` per step made decoding quadratic in the length). Not copyable: two copies would
// write into the same buffers.
struct KVCache {
  std::vector<torch::Tensor> keys, values;                // the valid positions: prefixes of the buffers below
  std::vector<torch::Tensor> key_buffers, value_buffers;  // [B, kv_heads, capacity, D]
  int64_t reserve = 0;  // positions a new buffer makes room for (generation: prompt + new tokens)

  KVCache() = default;
  KVCache(const KVCache&) = delete;
  KVCache& operator=(const KVCache&) = delete;
  KVCache(KVCache&&) = default;
  KVCache& operator=(KVCache&&) = default;

  int64_t length() const { return keys.empty() || !keys[0].defined() ? 0 : keys[0].size(2); }
  void clear() { keys.clear(), values.clear(), key_buffers.clear(), value_buffers.clear(); }
  void truncate(int64_t length);  // keeps the first `length` positions
  // A cache of its own holding the first `length` positions (buffers of exactly that size):
  // the server's prefix cache keeps and hands out such copies.
  KVCache copy(int64_t length) const;
  size_t bytes() const;  // of the buffers
  // Appends this step's keys and values of `layer` and replaces k, v by everything cached.
  void append(size_t layer, torch::Tensor& k, torch::Tensor& v);
  // Makes layer's buffers hold `total` positions of [batch, heads, *, dim] in `options`
  // (keeping what is cached), for a caller that writes the new positions itself and then
  // calls commit(layer, total).
  void prepare(size_t layer, int64_t batch, int64_t heads, int64_t dim, const torch::TensorOptions& options,
               int64_t total);
  void commit(size_t layer, int64_t total);
};

struct CausalLMOptions {
  torch::Tensor attention_mask;  // [B, T_past + T] of 1/0; undefined = all ones
  torch::Tensor position_ids;    // [B, T]; undefined = T_past .. T_past+T-1
  KVCache* cache = nullptr;      // appended to when given
  bool output_hidden_states = false;
  // > 0: logits for the last this-many positions only (transformers' `logits_to_keep`):
  // generation's prefill needs the last one, and the LM head over a whole prompt is wasted.
  int64_t logits_to_keep = 0;
};

struct CausalLMOutput {
  torch::Tensor logits;                      // [B, T, V], float32
  std::vector<torch::Tensor> hidden_states;  // embeddings, after each layer; the last after the final norm
};

// A `*ForCausalLM` of one family. Parameter names are the Hugging Face checkpoint's, so a
// state dict maps by name (the multimodal model registers it as `llama_model`).
struct CausalLM : torch::nn::Module {
  virtual torch::Tensor embed(const torch::Tensor& ids) const = 0;  // model.embed_tokens
  virtual CausalLMOutput forward(const torch::Tensor& inputs_embeds, const CausalLMOptions& options = {}) const = 0;
  // One decode step of N independent sequences, each with its own cache (continuous
  // batching: their lengths differ and nothing is padded): inputs_embeds [N, 1, H], the
  // token fed to each; returns the next-token logits [N, V] (float32), each cache one
  // position longer. A cache given for several consecutive rows takes them as consecutive
  // positions of its sequence (a joining prompt's chunk in the same step; each row's logits
  // as if it were fed alone). Here: each row through forward() on its own, in order.
  // Families with a batched step override it (LLaMA on the CPU: one pass over the weights
  // for all rows).
  virtual torch::Tensor step_sequences(const torch::Tensor& inputs_embeds, const std::vector<KVCache*>& caches) const;
  virtual int64_t vocab_size() const = 0;
  virtual int64_t hidden_size() const = 0;
  virtual torch::Dtype dtype() const = 0;  // of the embeddings, the activations' dtype
  virtual std::string family() const = 0;  // "llama", "phi": for messages
  // Whether a parameter (name relative to this module) may be missing from a checkpoint and
  // then keeps the default value it was built with (TinyGPT-V's norms added to Phi-2).
  virtual bool starts_at_default(const std::string& name) const { return false; }
};

// Hugging Face's causal-LM loss: logits at t predict labels at t+1; mean over labels != -100.
torch::Tensor causal_lm_loss(const torch::Tensor& logits, const torch::Tensor& labels);

// Generation's position ids from a left-padded mask: cumsum(mask) - 1, padding set to 1.
torch::Tensor position_ids_from_mask(const torch::Tensor& attention_mask);

namespace decoder {

// T_past .. T_past+T-1 for every row when the caller gives none.
torch::Tensor default_position_ids(int64_t batch, int64_t length, int64_t past, torch::Device device);

// Causal + padding mask [B|1, 1, T, T_past+T] in `dtype`: 0 where a query may look, the
// dtype's lowest value elsewhere. A fully masked row (a left-padding query) then attends
// uniformly, as in transformers. `attention_mask` [B, T_past+T] may be undefined; then
// one new position (a decode step) needs no mask, and the result is undefined.
torch::Tensor additive_mask(const torch::Tensor& attention_mask, int64_t batch, int64_t length, int64_t past,
                            torch::Dtype dtype, torch::Device device);

// The last `keep` positions of [B, T, H] hidden states (all of them for keep <= 0 or >= T).
torch::Tensor keep_last(const torch::Tensor& hidden, int64_t keep);

// RoPE over `dim` channels: inv_freq = 1 / theta^(2i/dim) in float32, as transformers computes it.
torch::Tensor rope_inv_freq(int64_t dim, double theta, torch::Device device);

struct Rotary {
  torch::Tensor cos, sin;  // [B, 1, T, dim], to broadcast over heads
};
// cos/sin of position_ids * inv_freq (computed in float32, cast to `dtype`), the frequencies
// repeated over both halves (emb = cat(freqs, freqs)).
Rotary rope(const torch::Tensor& position_ids, const torch::Tensor& inv_freq, torch::Dtype dtype);

// x * cos + rotate_half(x) * sin over the first cos.size(-1) channels of x (all of them for
// LLaMA; Phi's partial rotary leaves the rest as they are). rotate_half(x) = cat(-x2, x1)
// over the two halves, not interleaved pairs.
torch::Tensor apply_rope(const torch::Tensor& x, const Rotary& rotary);

}  // namespace decoder

}  // namespace minigpt4
