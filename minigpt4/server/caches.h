#pragma once
// What the server keeps so that nothing already computed is computed again, as llama.cpp's
// prompt cache and vLLM's prefix and multimodal caches do, each within a byte budget and
// dropping the least recently used entry first:
//  - ImageCache: an image's projected embeddings by its bytes (compared whole, not by a hash
//    alone) and the LoRA adapter it was encoded under; a hit skips the ViT and the Q-Former.
//    Each entry has an identity, which keys the image's positions in KV caches.
//  - PrefixCache: the KV caches of finished API conversations, with what sits at each
//    position. The OpenAI API is stateless, so a client replays the whole conversation every
//    round; a request starts from a copy of the longest matching prefix and computes only the
//    rest.
// Both are used on the model thread; their counters are read by /metrics from any thread.
#include "minigpt4/models/causal_lm.h"

#include <cstdint>
#include <list>
#include <mutex>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

namespace minigpt4::server {

struct CacheStats {
  uint64_t hits = 0, misses = 0;
  uint64_t reused = 0;  // PrefixCache: positions handed out
  size_t entries = 0, bytes = 0, budget = 0;
};

class ImageCache {
 public:
  explicit ImageCache(size_t budget_bytes) : budget_(budget_bytes) {}

  struct Entry {
    at::Tensor embeds;  // [1, NQ, H]
    uint64_t identity = 0;
  };
  // The entry of these bytes under this adapter (a hit), or none (a miss).
  std::optional<Entry> find(const std::string& adapter, const std::string& bytes);
  // Stores what was computed for a miss and returns it with its new identity (entries over
  // the whole budget are not kept, but still get an identity).
  Entry add(const std::string& adapter, const std::string& bytes, const at::Tensor& embeds);
  CacheStats stats() const;

 private:
  struct Item {
    std::string adapter, bytes;
    Entry entry;
    size_t cost = 0;
  };
  using List = std::list<Item>;
  void evict_locked();

  const size_t budget_;
  mutable std::mutex mutex_;
  List items_;                                             // most recently used first
  std::unordered_multimap<size_t, List::iterator> index_;  // hash of adapter and bytes
  uint64_t next_identity_ = 1;
  CacheStats stats_;
};

class PrefixCache {
 public:
  explicit PrefixCache(size_t budget_bytes) : budget_(budget_bytes) {}

  struct Prefix {
    std::vector<int64_t> keys;  // ChatSession::prompt_keys() and the answer's tokens
    KVCache cache;              // one sequence, keys.size() positions
  };
  // A copy of the longest prefix of `keys` held for this adapter (at least `min_positions`
  // long), or none. `counted`: a request's lookup, which the hit and miss counters count.
  std::optional<Prefix> find(const std::string& adapter, const std::vector<int64_t>& keys, int64_t min_positions = 1,
                             bool counted = true);
  // Keeps a finished conversation's cache (its buffers cut to size); entries it extends are
  // dropped.
  void add(const std::string& adapter, std::vector<int64_t> keys, const KVCache& cache);
  CacheStats stats() const;

 private:
  struct Item {
    std::string adapter;
    Prefix prefix;
    size_t cost = 0;
  };
  const size_t budget_;
  mutable std::mutex mutex_;
  std::list<Item> items_;  // most recently used first
  CacheStats stats_;
};

}  // namespace minigpt4::server
