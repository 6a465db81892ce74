#pragma once
// What every dataset hands the loader: an endless, deterministic sequence of records. A
// record is either a sample whose image is still encoded (the loader's workers decode it)
// or a note that something was skipped, kept in sequence so the skip counts the loader
// reports depend only on how far it has read, never on thread timing.
#include "minigpt4/common/instruction.h"
#include "minigpt4/processors/train_processor.h"  // uniform_index

#include <array>
#include <optional>

#include <cstdint>
#include <random>
#include <string>
#include <utility>
#include <vector>

namespace minigpt4::datasets {

enum class SkipReason {
  CorruptImage,  // the image bytes did not decode
  MissingImage,  // the annotation names an image file that does not exist
  NoImage,       // the sample has no jpg/jpeg/png/webp file
  NoCaption,     // the sample has no txt file and no json with a "caption" string
  BadShard,      // the tar could not be opened or read to its end (the rest of it is lost)
  BadBox,        // a box of the annotation lies outside its decoded image
  TooLarge,      // a tar member over limits.max_tar_member_bytes, or an image over limits.max_image_pixels
};
inline constexpr int kSkipReasonCount = 7;
const char* skip_reason_name(SkipReason reason);  // "corrupt image", ...

struct StreamRecord {
  bool skipped = false;
  SkipReason reason = SkipReason::CorruptImage;  // when skipped
  std::string detail;                            // when skipped: why, in words
  std::string source;                            // what reports name: "<shard>:<key>" or the image path
  std::string image_bytes;                       // the encoded image, or empty when image_path is to be read
  std::string image_path;
  std::string caption;    // final text (caption processing already applied)
  uint64_t pass = 0;      // which pass over the data produced it
  bool has_image = true;  // false: a text-only record (data_type: text)
  // MiniGPT-v2's instruction datasets: the sample's turns (empty for caption records).
  Instruction instruction;
  // A box [x, y, w, h] in the image's pixels, written on MiniGPT-v2's 0..100 grid once the
  // worker has decoded the image and knows its size (as the original, from PIL's size): it
  // replaces kBoxSlot in the questions and answers.
  std::optional<std::array<double, 4>> box;
};

// A file name taken from a data file (an image_id, an annotation's image field) may be at
// most this long (PATH_MAX); longer is refused by name instead of the OS's bare
// "File name too long".
inline constexpr size_t kMaxFileNameBytes = 4096;

// Where a record's text awaits its box (a control character no annotation text holds).
inline constexpr const char* kBoxSlot = "\x1e<box>\x1e";

class SampleStream {
 public:
  virtual ~SampleStream() = default;
  virtual StreamRecord next() = 0;  // never ends; throws Error when no data can be had at all
  // The lowest pass a record not yet handed out may belong to. nullopt: the stream hands
  // its records out in pass order (every later record is of the last one's pass or after).
  virtual std::optional<uint64_t> lowest_pass_held() const { return std::nullopt; }
};

// Seeds for independent random streams (shuffles, crops, mixing) from one run seed:
// SplitMix64 over the parts, so nearby inputs give unrelated seeds.
uint64_t mix_seed(uint64_t a, uint64_t b, uint64_t c = 0, uint64_t d = 0);
uint64_t name_seed(const std::string& name);  // FNV-1a: a fixed number per dataset name

// Fisher-Yates with the portable uniform_index (std::shuffle's draws are library-specific),
// so a seed means the same order everywhere.
template <typename T>
void portable_shuffle(T& items, std::mt19937_64& rng) {
  for (size_t i = items.size(); i > 1; --i) {
    const size_t j = static_cast<size_t>(uniform_index(rng, i));
    std::swap(items[i - 1], items[j]);
  }
}

// The indices 0..n-1 that rank `rank` reads in pass `pass`: all of them shuffled with
// seed + pass (the same order on every rank), then every world_size-th from position
// `rank`, so the ranks together read each index exactly once per pass. Errors name `what`.
std::vector<size_t> rank_pass_order(size_t n, uint64_t seed, uint64_t pass, int rank, int world_size, const char* what);

// Which item of a dataset of n a rank's endless stream reads next: its rank_pass_order,
// pass after pass. Every rank must get at least one item; errors name `what`.
class PassCursor {
 public:
  PassCursor(size_t n, uint64_t seed, int rank, int world_size, std::string what);
  size_t next();                           // the next item's index (starts a new pass when due)
  uint64_t pass() const { return pass_; }  // the pass of the index next() returned last

 private:
  size_t n_;
  uint64_t seed_;
  int rank_, world_size_;
  std::string what_;
  uint64_t pass_ = 0;
  std::vector<size_t> order_;
  size_t position_ = 0;
};

}  // namespace minigpt4::datasets
