#include "minigpt4/server/caches.h"

#include <algorithm>
#include <functional>

namespace minigpt4::server {

namespace {

size_t key_hash(const std::string& adapter, const std::string& bytes) {
  const size_t a = std::hash<std::string>{}(adapter), b = std::hash<std::string>{}(bytes);
  return a ^ (b + 0x9e3779b97f4a7c15ull + (a << 6) + (a >> 2));
}

size_t common_prefix(const std::vector<int64_t>& a, const std::vector<int64_t>& b) {
  const size_t n = std::min(a.size(), b.size());
  return static_cast<size_t>(std::mismatch(a.begin(), a.begin() + static_cast<std::ptrdiff_t>(n), b.begin()).first -
                             a.begin());
}

}  // namespace

std::optional<ImageCache::Entry> ImageCache::find(const std::string& adapter, const std::string& bytes) {
  std::lock_guard<std::mutex> lock(mutex_);
  const auto range = index_.equal_range(key_hash(adapter, bytes));
  for (auto it = range.first; it != range.second; ++it) {
    auto item = it->second;
    if (item->adapter != adapter || item->bytes != bytes) continue;  // a hash collision: not this image
    items_.splice(items_.begin(), items_, item);
    ++stats_.hits;
    return item->entry;
  }
  ++stats_.misses;
  return std::nullopt;
}

ImageCache::Entry ImageCache::add(const std::string& adapter, const std::string& bytes, const at::Tensor& embeds) {
  std::lock_guard<std::mutex> lock(mutex_);
  Entry entry{embeds, next_identity_++};
  const size_t cost = bytes.size() + adapter.size() + embeds.nbytes();
  if (cost > budget_) return entry;
  items_.push_front({adapter, bytes, entry, cost});
  index_.emplace(key_hash(adapter, bytes), items_.begin());
  stats_.bytes += cost;
  evict_locked();
  return entry;
}

void ImageCache::evict_locked() {
  while (stats_.bytes > budget_ && !items_.empty()) {
    auto last = std::prev(items_.end());
    const auto range = index_.equal_range(key_hash(last->adapter, last->bytes));
    for (auto it = range.first; it != range.second; ++it)
      if (it->second == last) {
        index_.erase(it);
        break;
      }
    stats_.bytes -= last->cost;
    items_.erase(last);
  }
}

CacheStats ImageCache::stats() const {
  std::lock_guard<std::mutex> lock(mutex_);
  auto s = stats_;
  s.entries = items_.size();
  s.budget = budget_;
  return s;
}

std::optional<PrefixCache::Prefix> PrefixCache::find(const std::string& adapter, const std::vector<int64_t>& keys,
                                                     int64_t min_positions, bool counted) {
  std::lock_guard<std::mutex> lock(mutex_);
  auto best = items_.end();
  size_t best_length = 0;
  for (auto it = items_.begin(); it != items_.end(); ++it) {
    if (it->adapter != adapter) continue;
    const size_t n = common_prefix(it->prefix.keys, keys);
    if (n > best_length) best = it, best_length = n;
  }
  if (best == items_.end() || static_cast<int64_t>(best_length) < std::max<int64_t>(min_positions, 1)) {
    if (counted) ++stats_.misses;
    return std::nullopt;
  }
  items_.splice(items_.begin(), items_, best);
  if (counted) ++stats_.hits, stats_.reused += best_length;
  const auto& held = items_.front().prefix;
  return Prefix{{held.keys.begin(), held.keys.begin() + static_cast<std::ptrdiff_t>(best_length)},
                held.cache.copy(static_cast<int64_t>(best_length))};
}

void PrefixCache::add(const std::string& adapter, std::vector<int64_t> keys, const KVCache& cache) {
  const int64_t length = std::min<int64_t>(static_cast<int64_t>(keys.size()), cache.length());
  if (length <= 0) return;
  keys.resize(static_cast<size_t>(length));
  Item item{adapter, {std::move(keys), cache.copy(length)}, 0};
  item.cost = item.prefix.cache.bytes() + item.prefix.keys.size() * sizeof(int64_t);
  std::lock_guard<std::mutex> lock(mutex_);
  if (item.cost > budget_) return;
  // An entry this one extends (or repeats) holds nothing this one does not.
  for (auto it = items_.begin(); it != items_.end();) {
    if (it->adapter == adapter && common_prefix(it->prefix.keys, item.prefix.keys) == it->prefix.keys.size()) {
      stats_.bytes -= it->cost;
      it = items_.erase(it);
    } else {
      ++it;
    }
  }
  stats_.bytes += item.cost;
  items_.push_front(std::move(item));
  while (stats_.bytes > budget_ && !items_.empty()) {
    stats_.bytes -= items_.back().cost;
    items_.pop_back();
  }
}

CacheStats PrefixCache::stats() const {
  std::lock_guard<std::mutex> lock(mutex_);
  auto s = stats_;
  s.entries = items_.size();
  s.budget = budget_;
  return s;
}

}  // namespace minigpt4::server
