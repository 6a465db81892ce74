#include "minigpt4/evaluate/progress.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <unistd.h>

namespace minigpt4::evaluate {

namespace {

std::string clock_text(double seconds) {
  if (!std::isfinite(seconds) || seconds < 0) return "--:--";
  const auto s = static_cast<int64_t>(std::llround(seconds));
  return s >= 3600 ? fmt::format("{}:{:02d}:{:02d}", s / 3600, s / 60 % 60, s % 60)
                   : fmt::format("{:02d}:{:02d}", s / 60, s % 60);
}

}  // namespace

Progress::Progress(int64_t total, std::FILE* out)
    : total_(total), out_(out), tty_(isatty(fileno(out)) != 0), start_(Clock::now()), last_line_(start_) {}

std::string Progress::format(int64_t done, int64_t total, double items_per_second, int bar_width) {
  const double fraction =
      total > 0 ? std::clamp(static_cast<double>(done) / static_cast<double>(total), 0.0, 1.0) : 1.0;
  const int filled = static_cast<int>(fraction * bar_width);
  const double eta = items_per_second > 0 ? static_cast<double>(total - done) / items_per_second : -1;
  return fmt::format("evaluate [{}{}] {}/{} {:.2f} items/s ETA {}", std::string(static_cast<size_t>(filled), '#'),
                     std::string(static_cast<size_t>(bar_width - filled), '.'), done, total, items_per_second,
                     clock_text(eta));
}

void Progress::advance(int64_t items) {
  done_ += items;
  draw(false);
}

void Progress::finish() { draw(true); }

void Progress::draw(bool final) {
  const auto now = Clock::now();
  const double elapsed = std::chrono::duration<double>(now - start_).count();
  const double rate = elapsed > 0 ? static_cast<double>(done_) / elapsed : 0;
  if (tty_) {
    std::fprintf(out_, "\r%s%s", format(done_, total_, rate).c_str(), final ? "\n" : "");
  } else if (final || now - last_line_ >= std::chrono::seconds(10)) {
    std::fprintf(out_, "%s\n", format(done_, total_, rate).c_str());
    last_line_ = now;
  }
  std::fflush(out_);
}

}  // namespace minigpt4::evaluate
