#include "minigpt4/data/webdataset.h"

#include "minigpt4/common/error.h"
#include "minigpt4/processors/caption_processor.h"

#include <archive.h>
#include <archive_entry.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <cctype>

namespace minigpt4::data {

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

TarShardReader::TarShardReader(std::string path) : path_(std::move(path)) {
  archive_ = archive_read_new();
  if (!archive_) fail("{}: cannot allocate a libarchive reader", path_);
  archive_read_support_format_tar(archive_);
  archive_read_support_filter_gzip(archive_);
  if (archive_read_open_filename(archive_, path_.c_str(), 1 << 16) != ARCHIVE_OK) fail_archive("cannot open the tar");
}

TarShardReader::~TarShardReader() {
  if (archive_) archive_read_free(archive_);
}

void TarShardReader::fail_archive(const std::string& what) {
  const char* why = archive_ ? archive_error_string(archive_) : nullptr;
  fail("shard {}: {}: {}", path_, what, why ? why : "unknown libarchive error");
}

bool TarShardReader::read_entry() {
  while (!at_end_) {
    archive_entry* entry = nullptr;
    const int rc = archive_read_next_header(archive_, &entry);
    if (rc == ARCHIVE_EOF) {
      at_end_ = true;
      break;
    }
    if (rc < ARCHIVE_WARN) fail_archive("corrupt or truncated tar (reading an entry header)");
    if (archive_entry_filetype(entry) != AE_IFREG) continue;
    const char* name = archive_entry_pathname(entry);
    if (!name) name = archive_entry_pathname_utf8(entry);
    auto key_ext = name ? split_sample_name(name) : std::nullopt;
    if (!key_ext) continue;  // libarchive skips the unread data on the next header call
    std::string bytes;
    if (archive_entry_size_is_set(entry) && archive_entry_size(entry) > 0)
      bytes.reserve(static_cast<size_t>(archive_entry_size(entry)));
    char chunk[1 << 16];
    while (true) {
      const la_ssize_t n = archive_read_data(archive_, chunk, sizeof chunk);
      if (n == 0) break;
      if (n < 0) fail_archive(fmt::format("corrupt or truncated tar (reading '{}')", name));
      bytes.append(chunk, static_cast<size_t>(n));
    }
    pending_.emplace(std::move(key_ext->first), std::make_pair(std::move(key_ext->second), std::move(bytes)));
    return true;
  }
  return false;
}

std::optional<TarSample> TarShardReader::next() {
  if (!pending_ && !read_entry()) return std::nullopt;
  TarSample sample;
  sample.key = std::move(pending_->first);
  sample.files.push_back(std::move(pending_->second));
  pending_.reset();
  while (read_entry()) {
    if (pending_->first != sample.key) break;  // the next sample's first file: kept for the next call
    sample.files.push_back(std::move(pending_->second));
    pending_.reset();
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
    const auto j = nlohmann::json::parse(*json_text, nullptr, /*allow_exceptions=*/false);
    if (j.is_object() && j.contains("caption") && j["caption"].is_string()) {
      pick.caption = j["caption"].get<std::string>();
      return pick;
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

// "jpg, json" -- what a skipped sample did hold, so a wrong layout is obvious in the report.
std::string describe_files(const TarSample& sample) {
  std::string out;
  for (const auto& [ext, bytes] : sample.files) out += (out.empty() ? "" : ", ") + ext;
  return out;
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
          fail("dataset '{}': a whole pass over its {} shard(s) (rank {} of {}) found no samples; expected "
               "webdataset tars holding files like 000000001.jpg + 000000001.json or .txt",
               opt_.name, pass_shards_.size(), opt_.rank, opt_.world_size);
        ++pass_;
        start_pass();
      }
      const std::string& shard = pass_shards_[next_shard_++];
      try {
        reader_ = std::make_unique<TarShardReader>(shard);
      } catch (const Error& e) {
        ++pass_records_;
        return {true, SkipReason::BadShard, e.what(), shard, {}, {}, {}, pass_};
      }
    }
    std::optional<TarSample> sample;
    try {
      sample = reader_->next();
    } catch (const Error& e) {
      const std::string shard = reader_->path();
      reader_.reset();
      ++pass_records_;
      return {true, SkipReason::BadShard, e.what(), shard, {}, {}, {}, pass_};
    }
    if (!sample) {
      reader_.reset();
      continue;
    }
    if (split_by_sample && sample_counter_++ % opt_.world_size != static_cast<uint64_t>(opt_.rank)) continue;
    ++pass_records_;

    StreamRecord rec;
    rec.source = reader_->path() + ":" + sample->key;
    rec.pass = pass_;
    WebDatasetPick pick = pick_image_and_caption(*sample);
    if (pick.skip) {
      rec.skipped = true;
      rec.reason = *pick.skip;
      rec.detail = *pick.skip == SkipReason::NoImage
                       ? "expected a jpg, jpeg, png or webp file; found " + describe_files(*sample)
                       : "expected a txt file or a json with a \"caption\" string; found " + describe_files(*sample);
      return rec;
    }
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

StreamRecord WebDatasetStream::next() {
  if (opt_.shuffle_buffer <= 1) return read_record();
  while (buffer_.size() < opt_.shuffle_buffer) {
    StreamRecord rec = read_record();
    if (rec.skipped) return rec;
    buffer_.push_back(std::move(rec));
  }
  const size_t i = static_cast<size_t>(uniform_index(buffer_rng_, buffer_.size()));
  std::swap(buffer_[i], buffer_.back());
  StreamRecord out = std::move(buffer_.back());
  buffer_.pop_back();
  return out;
}

}  // namespace minigpt4::data
