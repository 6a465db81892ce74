#include "minigpt4/server/stop_strings.h"

#include <algorithm>

namespace minigpt4::server {

StopStrings::StopStrings(std::vector<std::string> stops) : stops_(std::move(stops)) {
  stops_.erase(std::remove(stops_.begin(), stops_.end(), std::string()), stops_.end());
}

std::string StopStrings::cut(const std::string& text) const {
  size_t first = std::string::npos;
  for (const auto& stop : stops_) first = std::min(first, text.find(stop));
  return first == std::string::npos ? text : text.substr(0, first);
}

std::string StopStrings::feed(const std::string& piece) {
  if (stopped_) return "";
  held_ += piece;
  const std::string before = cut(held_);
  if (before.size() < held_.size()) {  // a stop string appeared
    stopped_ = true;
    held_.clear();
    return before;
  }
  // Hold back the longest tail of the text that a stop string starts with.
  size_t keep = 0;
  for (const auto& stop : stops_)
    for (size_t n = std::min(stop.size() - 1, held_.size()); n > keep; --n)
      if (held_.compare(held_.size() - n, n, stop, 0, n) == 0) {
        keep = n;
        break;
      }
  std::string out = held_.substr(0, held_.size() - keep);
  held_.erase(0, held_.size() - keep);
  return out;
}

std::string StopStrings::flush() {
  std::string out;
  if (!stopped_) out.swap(held_);
  return out;
}

}  // namespace minigpt4::server
