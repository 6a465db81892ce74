#pragma once
// Webdataset tar shards (img2dataset's LAION / CC / SBU output), read in place with
// libarchive: no extraction, one pass over each tar, gzip-compressed tars too.
#include "minigpt4/data/stream.h"

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

struct archive;

namespace minigpt4::data {

// "dir/x.seg.png" -> {"dir/x", "seg.png"}: the key is everything before the first dot of
// the file's base name, the extension the rest, lower-cased (webdataset's rule). Names
// without such a dot (or starting with one) give nullopt and are ignored, as webdataset does.
std::optional<std::pair<std::string, std::string>> split_sample_name(const std::string& path_in_tar);

// One sample's files: consecutive tar entries with the same key.
struct TarSample {
  std::string key;
  std::vector<std::pair<std::string, std::string>> files;  // (extension, bytes), tar order
  const std::string* find(const std::string& extension) const;
};

// Reads one shard from start to end. next() gives the samples in tar order, nullopt at the
// end; a truncated or corrupt tar throws Error naming the shard (the sample being
// assembled when that happens is dropped, the ones returned before are whole).
class TarShardReader {
 public:
  explicit TarShardReader(std::string path);
  ~TarShardReader();
  TarShardReader(const TarShardReader&) = delete;
  TarShardReader& operator=(const TarShardReader&) = delete;
  std::optional<TarSample> next();
  const std::string& path() const { return path_; }

 private:
  [[noreturn]] void fail_archive(const std::string& what);
  // Reads the next file entry into `pending_`; false at the end of the archive.
  bool read_entry();

  std::string path_;
  archive* archive_ = nullptr;
  bool at_end_ = false;
  std::optional<std::pair<std::string, std::pair<std::string, std::string>>> pending_;  // key, (ext, bytes)
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

struct WebDatasetOptions {
  std::string name = "webdataset";   // for messages and reports
  std::vector<std::string> shards;   // as expand_shard_spec gives them
  uint64_t seed = 42;
  int rank = 0;
  int world_size = 1;
  size_t shuffle_buffer = 1000;      // <= 1: no shuffling
  int max_words = 50;                // blip_caption
  std::string prompt;                // prepended to each processed caption (usually empty)
};

// The endless stream of a webdataset: pass p visits the shards in an order shuffled with
// seed + p (the same on every rank); rank r reads shards r, r + world_size, ... of that
// order, or, with fewer shards than ranks, every shard and keeps every world_size-th
// sample. Samples go through a shuffle buffer; skip notes (no image, no caption, an
// unreadable shard) go out at once.
class WebDatasetStream : public SampleStream {
 public:
  explicit WebDatasetStream(WebDatasetOptions options);
  ~WebDatasetStream() override;
  StreamRecord next() override;

 private:
  StreamRecord read_record();  // the next record in tar order (before the shuffle buffer)
  void start_pass();

  WebDatasetOptions opt_;
  std::mt19937_64 buffer_rng_;
  std::vector<StreamRecord> buffer_;
  uint64_t pass_ = 0;
  bool pass_started_ = false;
  std::vector<std::string> pass_shards_;
  size_t next_shard_ = 0;
  uint64_t pass_records_ = 0;   // records the current pass produced so far
  uint64_t sample_counter_ = 0;  // samples seen in this pass (for the per-sample rank split)
  std::unique_ptr<TarShardReader> reader_;
};

}  // namespace minigpt4::data
