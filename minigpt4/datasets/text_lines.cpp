#include "minigpt4/datasets/text_lines.h"

#include "minigpt4/common/error.h"
#include "minigpt4/common/untrusted.h"

#include <filesystem>

namespace minigpt4::datasets {

namespace {

// Every non-empty line of `path`, a trailing '\r' dropped; none is an error.
std::vector<std::string> read_lines(const std::string& path) {
  std::error_code ec;
  if (!std::filesystem::is_regular_file(path, ec))
    fail(
        "text dataset: cannot open {} (build_info.storage of a data_type: text dataset is a text file, one "
        "training text per line)",
        path);
  // Read whole, at most limits.max_text_file_bytes (an Error naming the file and the limit).
  const std::string text = read_text_file(path, "text dataset");
  std::vector<std::string> lines;
  for (size_t start = 0; start < text.size();) {
    size_t end = text.find('\n', start);
    if (end == std::string::npos) end = text.size();
    std::string line = text.substr(start, end - start);
    start = end + 1;
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (line.find_first_not_of(" \t") != std::string::npos) lines.push_back(std::move(line));
  }
  if (lines.empty()) fail("text dataset: {} holds no non-empty line", path);
  return lines;
}

}  // namespace

TextLinesStream::TextLinesStream(const std::string& path, uint64_t seed, int rank, int world_size)
    : path_(path), lines_(read_lines(path)), cursor_(lines_.size(), seed, rank, world_size, "text dataset " + path) {}

StreamRecord TextLinesStream::next() {
  const size_t i = cursor_.next();
  StreamRecord rec;
  rec.has_image = false;
  rec.caption = lines_[i];
  rec.source = path_ + ":" + std::to_string(i + 1);
  rec.pass = cursor_.pass();
  return rec;
}

}  // namespace minigpt4::datasets
