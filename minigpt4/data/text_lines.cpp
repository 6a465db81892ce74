#include "minigpt4/data/text_lines.h"

#include "minigpt4/common/error.h"

#include <fstream>

namespace minigpt4::data {

TextLinesStream::TextLinesStream(const std::string& path, uint64_t seed, int rank, int world_size)
    : path_(path), seed_(seed), rank_(rank), world_size_(world_size) {
  std::ifstream in(path, std::ios::binary);
  if (!in) fail("text dataset: cannot open {} (build_info.storage of a data_type: text dataset is a text file, one "
                "training text per line)", path);
  for (std::string line; std::getline(in, line);) {
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (line.find_first_not_of(" \t") != std::string::npos) lines_.push_back(std::move(line));
  }
  if (lines_.empty()) fail("text dataset: {} holds no non-empty line", path);
  if (world_size < 1 || rank < 0 || rank >= world_size)
    fail("text dataset: rank {} is not in [0, world_size {})", rank, world_size);
  if (lines_.size() < static_cast<size_t>(world_size))
    fail("text dataset: {} lines of {} cannot be split over {} ranks", lines_.size(), path, world_size);
  start_pass();
}

void TextLinesStream::start_pass() {
  order_ = rank_pass_order(lines_.size(), seed_, pass_, rank_, world_size_, "text dataset");
  position_ = 0;
}

StreamRecord TextLinesStream::next() {
  if (position_ == order_.size()) {
    ++pass_;
    start_pass();
  }
  const size_t i = order_[position_++];
  StreamRecord rec;
  rec.has_image = false;
  rec.caption = lines_[i];
  rec.source = path_ + ":" + std::to_string(i + 1);
  rec.pass = pass_;
  return rec;
}

}  // namespace minigpt4::data
