#include "minigpt4/datasets/webdataset.h"

#include "minigpt4/common/error.h"
#include "minigpt4/common/limits.h"
#include "minigpt4/common/log.h"
#include "minigpt4/common/untrusted.h"
#include "minigpt4/processors/caption_processor.h"

#include <archive.h>
#include <archive_entry.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <cctype>
#include <cstring>

namespace minigpt4::datasets {

std::optional<std::pair<std::string, std::string>> split_sample_name(const std::string& path) {
  const size_t slash = path.rfind('/');
  const size_t base = slash == std::string::npos ? 0 : slash + 1;
  const size_t dot = path.find('.', base);
  if (dot == std::string::npos || dot == base || dot + 1 == path.size()) return std::nullopt;
  std::string ext = path.substr(dot + 1);
  std::transform(ext.begin(), ext.end(), ext.begin(), [](unsigned char c) { return char(std::tolower(c)); });
  return std::make_pair(path.substr(0, dot), std::move(ext));
}

const std::string* TarSample::find(const std::string& extension) const {
  for (const auto& [ext, bytes] : files)
    if (ext == extension) return &bytes;
  return nullptr;
}

// ---- TarShardReader

TarShardReader::TarShardReader(std::string path) : path_(std::move(path)) { open_archive(); }

TarShardReader::TarShardReader(std::string name, std::string bytes)
    : path_(std::move(name)), memory_(std::move(bytes)), in_memory_(true) {
  open_archive();
}

std::unique_ptr<TarShardReader> TarShardReader::from_bytes(std::string bytes, std::string name) {
  return std::unique_ptr<TarShardReader>(new TarShardReader(std::move(name), std::move(bytes)));
}

void TarShardReader::open_archive() {
  archive_ = archive_read_new();
  if (!archive_) fail("shard {}: cannot allocate a libarchive reader", path_);
  archive_read_support_format_tar(archive_);
  archive_read_support_filter_gzip(archive_);
  const int rc = in_memory_ ? archive_read_open_memory(archive_, memory_.data(), memory_.size())
                            : archive_read_open_filename(archive_, path_.c_str(), 1 << 16);
  if (rc != ARCHIVE_OK) fail_archive("cannot open the tar");
}

TarShardReader::~TarShardReader() {
  if (archive_) archive_read_free(archive_);
}

void TarShardReader::fail_archive(const std::string& what) {
  const char* why = archive_ ? archive_error_string(archive_) : nullptr;
  fail("shard {}: {}: {}", path_, what, why ? excerpt(why, 200) : std::string("unknown libarchive error"));
}

// The tar stream (after gunzip) may not exceed limits.max_decompressed_bytes; `more` is
// what is about to be read or skipped, so a member declared past the limit is refused
// before libarchive inflates it.
void TarShardReader::check_decompressed(int64_t more) {
  const int64_t limit = input_limits().max_decompressed_bytes;
  const la_int64_t so_far = archive_filter_bytes(archive_, 0);
  if (so_far > limit || (more > 0 && more > limit - std::max<int64_t>(so_far, 0)))
    fail("shard {}: the tar holds more than {} bytes (after decompression), the limit limits.max_decompressed_bytes",
         path_, limit);
}

bool TarShardReader::read_entry(const std::string* sample_key, int64_t sample_bytes, size_t sample_files) {
  const int64_t member_limit = input_limits().max_tar_member_bytes;
  while (!at_end_) {
    archive_entry* entry = nullptr;
    const int rc = archive_read_next_header(archive_, &entry);
    if (rc == ARCHIVE_EOF) {
      at_end_ = true;
      break;
    }
    if (rc < ARCHIVE_WARN) fail_archive("corrupt or truncated tar (reading an entry header)");
    check_decompressed();
    if (archive_entry_filetype(entry) != AE_IFREG) continue;
    const char* name = archive_entry_pathname(entry);
    if (!name) name = archive_entry_pathname_utf8(entry);
    if (!name) continue;
    const size_t name_length = std::strlen(name);
    Member m;
    if (name_length > kMaxTarMemberNameBytes) {
      // Its own sample, named by a bounded excerpt; its data is never read.
      m.key = excerpt(std::string_view(name, name_length), 200);
      m.extension = "?";
      m.refused = fmt::format("a member's name is {} bytes, more than the {} a member name may have", name_length,
                              kMaxTarMemberNameBytes);
      pending_.emplace(std::move(m));
      return true;
    }
    auto key_ext = split_sample_name(name);
    if (!key_ext) continue;  // libarchive skips the unread data on the next header call
    m.key = std::move(key_ext->first);
    m.extension = std::move(key_ext->second);
    const bool same_sample = sample_key && *sample_key == m.key;
    const int64_t held = same_sample ? sample_bytes : 0;
    const int64_t declared = archive_entry_size_is_set(entry) ? archive_entry_size(entry) : -1;
    if (declared > 0) check_decompressed(declared);
    const auto max_files = static_cast<size_t>(input_limits().max_files_per_sample);
    if (same_sample && sample_files >= max_files) {
      m.refused = fmt::format("more than {} members share the key '{}' (limits.max_files_per_sample)", max_files,
                              excerpt(m.key, 100));
    } else if (declared > member_limit) {
      m.refused = fmt::format("'{}' is {} bytes, more than the {} a member may have (limits.max_tar_member_bytes)",
                              excerpt(name, 200), declared, member_limit);
    } else if (declared > member_limit - held) {
      m.refused = fmt::format(
          "'{}' ({} bytes) would bring its sample's files to {} bytes, more than the {} a sample may "
          "hold (limits.max_tar_member_bytes)",
          excerpt(name, 200), declared, held + declared, member_limit);
    }
    if (m.refused.empty()) {
      // Reserve what the header declares, but not more than a modest start: a truncated
      // tar may declare far more than it holds.
      if (declared > 0) m.bytes.reserve(static_cast<size_t>(std::min<int64_t>(declared, int64_t(8) << 20)));
      char chunk[1 << 16];
      while (true) {
        const la_ssize_t n = archive_read_data(archive_, chunk, sizeof chunk);
        if (n == 0) break;
        if (n < 0) fail_archive(fmt::format("corrupt or truncated tar (reading '{}')", excerpt(name, 200)));
        if (static_cast<int64_t>(m.bytes.size()) + n > member_limit - held) {  // larger than it said
          m.bytes.clear();
          m.bytes.shrink_to_fit();
          m.refused = fmt::format(
              "'{}' holds more than the {} bytes a member (or sample) may have "
              "(limits.max_tar_member_bytes)",
              excerpt(name, 200), member_limit - held);
          break;
        }
        m.bytes.append(chunk, static_cast<size_t>(n));
      }
      check_decompressed();
    }
    if (!m.refused.empty() && declared > 0 && archive_filter_count(archive_) > 1) {
      // In a compressed shard a member is skipped by inflating it (in an uncompressed one,
      // by seeking). A few oversized members are passed over so; a shard that asks for more
      // (a 4 MB tar.gz declaring a 4 GiB member) is left unread from here, in no time.
      inflated_skips_ += declared;
      if (inflated_skips_ > kCompressedSkipFactor * member_limit)
        fail(
            "shard {}: {}; in a compressed shard the members after it can only be reached by inflating it, and "
            "the members skipped so would add up to {} bytes, more than {} x limits.max_tar_member_bytes: the rest "
            "of the shard is left unread",
            path_, m.refused, inflated_skips_, kCompressedSkipFactor);
    }
    if (!m.refused.empty() && archive_read_data_skip(archive_) < ARCHIVE_WARN)
      fail_archive(fmt::format("corrupt or truncated tar (skipping '{}')", excerpt(name, 200)));
    pending_.emplace(std::move(m));
    return true;
  }
  return false;
}

std::optional<TarSample> TarShardReader::next() {
  if (!pending_ && !read_entry(nullptr, 0, 0)) return std::nullopt;
  TarSample sample;
  int64_t sample_bytes = 0;
  auto take = [&](Member& m) {
    if (!m.refused.empty()) {
      if (sample.refused.size() < 20) sample.refused.push_back(std::move(m.refused));
    } else {
      sample_bytes += static_cast<int64_t>(m.bytes.size());
      sample.files.emplace_back(std::move(m.extension), std::move(m.bytes));
    }
  };
  sample.key = std::move(pending_->key);
  take(*pending_);
  pending_.reset();
  size_t members = 1;
  while (read_entry(&sample.key, sample_bytes, members)) {
    if (pending_->key != sample.key) break;  // the next sample's first file: kept for the next call
    take(*pending_);
    pending_.reset();
    ++members;
  }
  return sample;
}

// ---- choosing the image and caption

WebDatasetPick pick_image_and_caption(const TarSample& sample) {
  WebDatasetPick pick;
  for (const char* ext : {"jpg", "jpeg", "png", "webp"}) {
    if (sample.find(ext)) {
      pick.image_extension = ext;
      break;
    }
  }
  if (pick.image_extension.empty()) {
    pick.skip = SkipReason::NoImage;
    return pick;
  }
  if (const std::string* json_text = sample.find("json")) {
    // Depth-limited; a json that does not parse (or nests too deep) is no caption, and the
    // txt file is the fallback, as for a json without a "caption" string.
    nlohmann::json j;
    try {
      j = parse_json(*json_text, sample.key + ".json");
    } catch (const Error&) {}
    if (j.is_object()) {
      const auto it = j.find("caption");
      if (it != j.end() && it->is_string()) {
        pick.caption = std::move(it->get_ref<std::string&>());
        return pick;
      }
    }
  }
  if (const std::string* txt = sample.find("txt")) {
    pick.caption = *txt;
    return pick;
  }
  pick.skip = SkipReason::NoCaption;
  return pick;
}

namespace {

// "jpg, json" -- what a skipped sample did hold, so a wrong layout is obvious in the report
// (the first few, each cut short: a sample may hold a thousand files with long names).
std::string describe_files(const TarSample& sample) {
  constexpr size_t kShown = 10;
  std::string out;
  for (size_t i = 0; i < sample.files.size() && i < kShown; ++i)
    out += (out.empty() ? "" : ", ") + excerpt(sample.files[i].first, 40);
  if (sample.files.size() > kShown) out += fmt::format(", ... ({} files)", sample.files.size());
  return out.empty() ? "no files" : out;
}

StreamRecord bad_shard(const std::string& why, const std::string& shard, uint64_t pass) {
  StreamRecord rec;
  rec.skipped = true;
  rec.reason = SkipReason::BadShard;
  rec.detail = why;
  rec.source = shard;
  rec.pass = pass;
  return rec;
}

}  // namespace

// ---- WebDatasetStream

WebDatasetStream::WebDatasetStream(WebDatasetOptions options)
    : opt_(std::move(options)), buffer_rng_(mix_seed(opt_.seed, opt_.rank, name_seed(opt_.name), 1)) {
  if (opt_.shards.empty()) fail("dataset '{}': no shards given", opt_.name);
  if (opt_.world_size < 1 || opt_.rank < 0 || opt_.rank >= opt_.world_size)
    fail("dataset '{}': rank {} is not in [0, world_size {})", opt_.name, opt_.rank, opt_.world_size);
}

WebDatasetStream::~WebDatasetStream() = default;

void WebDatasetStream::start_pass() {
  std::vector<std::string> order = opt_.shards;
  std::mt19937_64 rng(opt_.seed + pass_);  // the same on every rank, so the split is disjoint
  portable_shuffle(order, rng);
  const size_t ws = static_cast<size_t>(opt_.world_size);
  pass_shards_.clear();
  if (order.size() >= ws) {
    for (size_t i = static_cast<size_t>(opt_.rank); i < order.size(); i += ws) pass_shards_.push_back(order[i]);
  } else {
    pass_shards_ = std::move(order);
  }
  next_shard_ = 0;
  pass_records_ = 0;
  pass_usable_ = 0;
  pass_first_skip_.clear();
  sample_counter_ = 0;
  pass_started_ = true;
}

StreamRecord WebDatasetStream::read_record() {
  const bool split_by_sample = opt_.shards.size() < static_cast<size_t>(opt_.world_size);
  while (true) {
    if (!reader_) {
      if (!pass_started_) start_pass();
      if (next_shard_ == pass_shards_.size()) {
        if (pass_records_ == 0)
          fail(
              "dataset '{}': a whole pass over its {} shard(s) (rank {} of {}) found no samples; expected "
              "webdataset tars holding files like 000000001.jpg + 000000001.json or .txt",
              opt_.name, pass_shards_.size(), opt_.rank, opt_.world_size);
        if (pass_usable_ == 0)
          fail(
              "dataset '{}': a whole pass over its {} shard(s) (rank {} of {}) found no usable sample: all {} were "
              "skipped (the first: {}); the next pass would read the same",
              opt_.name, pass_shards_.size(), opt_.rank, opt_.world_size, pass_records_, pass_first_skip_);
        ++pass_;
        start_pass();
      }
      const std::string& shard = pass_shards_[next_shard_++];
      try {
        reader_ = std::make_unique<TarShardReader>(shard);
      } catch (const Error& e) {
        return note_skip(bad_shard(e.what(), shard, pass_));
      }
    }
    std::optional<TarSample> sample;
    try {
      sample = reader_->next();
    } catch (const Error& e) {
      const std::string shard = reader_->path();
      reader_.reset();
      return note_skip(bad_shard(e.what(), shard, pass_));
    }
    if (!sample) {
      reader_.reset();
      continue;
    }
    if (split_by_sample && sample_counter_++ % opt_.world_size != static_cast<uint64_t>(opt_.rank)) continue;

    StreamRecord rec;
    rec.source = reader_->path() + ":" + sample->key;
    rec.pass = pass_;
    if (!sample->refused.empty()) {
      rec.skipped = true;
      rec.reason = SkipReason::TooLarge;
      rec.detail = sample->refused.front();
      if (sample->refused.size() > 1) rec.detail += fmt::format(" (and {} more)", sample->refused.size() - 1);
      constexpr uint64_t kWarned = 10;  // then only the data report counts them
      if (too_large_warnings_++ < kWarned)
        log::warn(
            "dataset '{}': skipped {}: {}{}", opt_.name, excerpt(rec.source, 300), rec.detail,
            too_large_warnings_ == kWarned ? " (further samples too large are only counted in the data report)" : "");
      return note_skip(std::move(rec));
    }
    WebDatasetPick pick = pick_image_and_caption(*sample);
    if (pick.skip) {
      rec.skipped = true;
      rec.reason = *pick.skip;
      rec.detail = *pick.skip == SkipReason::NoImage
                       ? "expected a jpg, jpeg, png or webp file; found " + describe_files(*sample)
                       : "expected a txt file or a json with a \"caption\" string; found " + describe_files(*sample);
      return note_skip(std::move(rec));
    }
    ++pass_records_;
    ++pass_usable_;
    for (auto& [ext, bytes] : sample->files) {
      if (ext == pick.image_extension) {
        rec.image_bytes = std::move(bytes);
        break;
      }
    }
    rec.source += "." + pick.image_extension;
    rec.caption = opt_.prompt + blip_caption(pick.caption, opt_.max_words);
    return rec;
  }
}

std::optional<uint64_t> WebDatasetStream::lowest_pass_held() const {
  // Samples not read yet belong to the pass being read or a later one.
  return buffer_passes_.empty() ? pass_ : std::min(pass_, buffer_passes_.begin()->first);
}

StreamRecord WebDatasetStream::note_skip(StreamRecord rec) {
  ++pass_records_;
  if (pass_first_skip_.empty()) pass_first_skip_ = excerpt(rec.source, 200) + ": " + excerpt(rec.detail, 300);
  return rec;
}

namespace {
size_t held_bytes(const StreamRecord& rec) { return rec.image_bytes.size() + rec.caption.size(); }
}  // namespace

StreamRecord WebDatasetStream::next() {
  if (opt_.shuffle_buffer <= 1) return read_record();
  // Fills up to shuffle_buffer samples or shuffle_buffer_bytes, whichever comes first
  // (always at least one sample), and with samples of at most three consecutive passes: a
  // dataset smaller than the buffer is not read over and over to fill it, and the loader
  // can tell when a pass is wholly out (loader.cpp).
  auto spans_three_passes = [this] {
    return !buffer_passes_.empty() && buffer_passes_.rbegin()->first >= buffer_passes_.begin()->first + 2;
  };
  while (buffer_.size() < opt_.shuffle_buffer && (buffer_.empty() || buffer_bytes_ < opt_.shuffle_buffer_bytes) &&
         !spans_three_passes()) {
    StreamRecord rec = read_record();
    if (rec.skipped) return rec;
    buffer_bytes_ += held_bytes(rec);
    ++buffer_passes_[rec.pass];
    buffer_.push_back(std::move(rec));
  }
  const size_t i = static_cast<size_t>(uniform_index(buffer_rng_, buffer_.size()));
  std::swap(buffer_[i], buffer_.back());
  StreamRecord out = std::move(buffer_.back());
  buffer_.pop_back();
  buffer_bytes_ -= held_bytes(out);
  if (--buffer_passes_[out.pass] == 0) buffer_passes_.erase(out.pass);
  return out;
}

}  // namespace minigpt4::datasets
