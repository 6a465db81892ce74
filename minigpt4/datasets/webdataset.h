#pragma once
// Webdataset tar shards (img2dataset's LAION / CC / SBU output), read in place with
// libarchive: no extraction, one pass over each tar, gzip-compressed tars too.
#include "minigpt4/datasets/stream.h"

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

struct archive;

namespace minigpt4::datasets {

// "dir/x.seg.png" -> {"dir/x", "seg.png"}: the key is everything before the first dot of
// the file's base name, the extension the rest, lower-cased (webdataset's rule). Names
// without such a dot (or starting with one) give nullopt and are ignored, as webdataset does.
std::optional<std::pair<std::string, std::string>> split_sample_name(const std::string& path_in_tar);

// One sample's files: consecutive tar entries with the same key.
struct TarSample {
  std::string key;
  std::vector<std::pair<std::string, std::string>> files;  // (extension, bytes), tar order
  // Members of this key that were not read, each with why ("'x.jpg' is 4294967296 bytes,
  // more than limits.max_tar_member_bytes ..."): a sample with any is unusable, and the
  // stream skips it (SkipReason::TooLarge), as webdataset's warn_and_continue would.
  std::vector<std::string> refused;
  const std::string* find(const std::string& extension) const;
};

// A sample holds at most limits.max_files_per_sample files; further members of the same
// key are refused. A member name (its key and extension) longer than
// kMaxTarMemberNameBytes (PATH_MAX) is refused too.
inline constexpr size_t kMaxTarMemberNameBytes = 4096;
// In a gzip-compressed shard, refused members are passed over (by inflating them) while
// their declared sizes add up to at most this many times limits.max_tar_member_bytes; a
// shard that declares more is an Error from there on (its rest left unread).
inline constexpr int64_t kCompressedSkipFactor = 4;

// Reads one shard from start to end. next() gives the samples in tar order, nullopt at the
// end; a truncated or corrupt tar throws Error naming the shard (the sample being
// assembled when that happens is dropped, the ones returned before are whole).
// Limits (common/limits.h): a member declared (or found) larger than
// limits.max_tar_member_bytes is not read, and neither is a member that would bring its
// sample's files past that size in all: the sample comes back with `refused` set; a shard
// that decompresses to more than limits.max_decompressed_bytes is an Error, and so is a
// compressed shard whose refused members add up to more than kCompressedSkipFactor times
// the member limit (skipping them would mean inflating them).
class TarShardReader {
 public:
  explicit TarShardReader(std::string path);
  // A shard held in memory (fuzzing, tests); `name` is what messages call it.
  static std::unique_ptr<TarShardReader> from_bytes(std::string bytes, std::string name);
  ~TarShardReader();
  TarShardReader(const TarShardReader&) = delete;
  TarShardReader& operator=(const TarShardReader&) = delete;
  std::optional<TarSample> next();
  const std::string& path() const { return path_; }

 private:
  struct Member {
    std::string key, extension, bytes;
    std::string refused;  // why the member was not read; empty when it was
  };
  TarShardReader(std::string name, std::string bytes);
  void open_archive();
  [[noreturn]] void fail_archive(const std::string& what);
  void check_decompressed(int64_t more = 0);
  // Reads the next file entry into `pending_`; false at the end of the archive.
  // `sample_bytes` is what the sample being assembled holds so far (its key `sample_key`).
  bool read_entry(const std::string* sample_key, int64_t sample_bytes, size_t sample_files);

  std::string path_;
  std::string memory_;  // the shard's bytes when read from memory
  bool in_memory_ = false;
  archive* archive_ = nullptr;
  bool at_end_ = false;
  std::optional<Member> pending_;
  int64_t inflated_skips_ = 0;  // declared bytes of refused members in a compressed shard
};

// A usable sample, or why not: the image is the first of jpg, jpeg, png, webp; the caption
// is json["caption"] (what the original reads) or else the txt file. The caption is
// returned as stored; the stream applies the caption processor.
struct WebDatasetPick {
  std::optional<SkipReason> skip;
  std::string image_extension;
  std::string caption;
};
WebDatasetPick pick_image_and_caption(const TarSample& sample);

// The shuffle buffer's default byte budget: 1000 LAION samples of 256 KB each. Samples of
// large images make it hold fewer (less shuffling), never more memory.
inline constexpr size_t kMaxShuffleBufferBytes = size_t(256) << 20;

struct WebDatasetOptions {
  std::string name = "webdataset";  // for messages and reports
  std::vector<std::string> shards;  // as expand_shard_spec gives them
  uint64_t seed = 42;
  int rank = 0;
  int world_size = 1;
  size_t shuffle_buffer = 1000;                          // <= 1: no shuffling
  size_t shuffle_buffer_bytes = kMaxShuffleBufferBytes;  // ... and at most this many bytes held
  int max_words = 50;                                    // blip_caption
  std::string prompt;                                    // prepended to each processed caption (usually empty)
};

// The endless stream of a webdataset: pass p visits the shards in an order shuffled with
// seed + p (the same on every rank); rank r reads shards r, r + world_size, ... of that
// order, or, with fewer shards than ranks, every shard and keeps every world_size-th
// sample. Samples go through a shuffle buffer of at most `shuffle_buffer` samples and
// `shuffle_buffer_bytes` of encoded images and captions (whichever is reached first, so a
// shard of huge members cannot make it hold a thousand of them), and samples of at most
// three consecutive passes (a shard smaller than the buffer is not read a thousand times
// to fill it); skip notes (no image, no
// caption, a member over the size limit, an unreadable shard) go out at once. A whole
// pass that gives no usable sample at all is an Error (the next pass would read the same
// shards again, and again: a dataset of nothing but skips would otherwise spin forever).
class WebDatasetStream : public SampleStream {
 public:
  explicit WebDatasetStream(WebDatasetOptions options);
  ~WebDatasetStream() override;
  StreamRecord next() override;
  // The lowest pass of the samples in the shuffle buffer and of those not read yet.
  std::optional<uint64_t> lowest_pass_held() const override;

 private:
  StreamRecord read_record();                // the next record in tar order (before the shuffle buffer)
  StreamRecord note_skip(StreamRecord rec);  // counts a skip note of this pass
  void start_pass();

  WebDatasetOptions opt_;
  std::mt19937_64 buffer_rng_;
  std::vector<StreamRecord> buffer_;
  size_t buffer_bytes_ = 0;                   // image and caption bytes the buffer holds
  std::map<uint64_t, size_t> buffer_passes_;  // samples the buffer holds, by pass
  uint64_t pass_ = 0;
  bool pass_started_ = false;
  std::vector<std::string> pass_shards_;
  size_t next_shard_ = 0;
  uint64_t pass_records_ = 0;    // records the current pass produced so far
  uint64_t pass_usable_ = 0;     // ... of which samples (not skip notes)
  std::string pass_first_skip_;  // the first skip of the current pass, for the error
  uint64_t too_large_warnings_ = 0;
  uint64_t sample_counter_ = 0;  // samples seen in this pass (for the per-sample rank split)
  std::unique_ptr<TarShardReader> reader_;
};

}  // namespace minigpt4::datasets
