#include "minigpt4/datasets/stream.h"
#include "minigpt4/common/error.h"

#include <numeric>

namespace minigpt4::datasets {

const char* skip_reason_name(SkipReason reason) {
  switch (reason) {
    case SkipReason::CorruptImage: return "corrupt image";
    case SkipReason::MissingImage: return "missing image";
    case SkipReason::NoImage: return "no image";
    case SkipReason::NoCaption: return "no caption";
    case SkipReason::BadShard: return "unreadable shard";
    case SkipReason::BadBox: return "box outside the image";
    case SkipReason::TooLarge: return "too large";
  }
  return "?";
}

uint64_t mix_seed(uint64_t a, uint64_t b, uint64_t c, uint64_t d) {
  uint64_t state = 0;
  for (uint64_t part : {a, b, c, d}) {
    state += part + 0x9E3779B97F4A7C15ULL;
    uint64_t z = state;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    state = z ^ (z >> 31);
  }
  return state;
}

uint64_t name_seed(const std::string& name) {
  uint64_t h = 0xCBF29CE484222325ULL;
  for (unsigned char c : name) h = (h ^ c) * 0x100000001B3ULL;
  return h;
}

std::vector<size_t> rank_pass_order(size_t n, uint64_t seed, uint64_t pass, int rank, int world_size,
                                    const char* what) {
  if (world_size < 1 || rank < 0 || rank >= world_size)
    fail("{}: rank {} is not in [0, world_size {})", what, rank, world_size);
  std::vector<size_t> all(n);
  std::iota(all.begin(), all.end(), size_t{0});
  std::mt19937_64 rng(seed + pass);
  portable_shuffle(all, rng);
  std::vector<size_t> mine;
  for (size_t i = static_cast<size_t>(rank); i < all.size(); i += static_cast<size_t>(world_size))
    mine.push_back(all[i]);
  return mine;
}

PassCursor::PassCursor(size_t n, uint64_t seed, int rank, int world_size, std::string what)
    : n_(n), seed_(seed), rank_(rank), world_size_(world_size), what_(std::move(what)) {
  order_ = rank_pass_order(n_, seed_, pass_, rank_, world_size_, what_.c_str());  // checks the rank
  if (n_ < static_cast<size_t>(world_size_)) fail("{}: {} items cannot be split over {} ranks", what_, n_, world_size_);
}

size_t PassCursor::next() {
  if (position_ == order_.size()) {
    ++pass_;
    order_ = rank_pass_order(n_, seed_, pass_, rank_, world_size_, what_.c_str());
    position_ = 0;
  }
  return order_[position_++];
}

}  // namespace minigpt4::datasets
