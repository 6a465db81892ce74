#include "minigpt4/data/stream.h"

namespace minigpt4::data {

const char* skip_reason_name(SkipReason reason) {
  switch (reason) {
    case SkipReason::CorruptImage: return "corrupt image";
    case SkipReason::MissingImage: return "missing image";
    case SkipReason::NoImage: return "no image";
    case SkipReason::NoCaption: return "no caption";
    case SkipReason::BadShard: return "unreadable shard";
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

}  // namespace minigpt4::data
