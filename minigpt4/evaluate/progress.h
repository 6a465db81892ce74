#pragma once
// The evaluation's progress on stderr: "evaluate [######....] 120/500 3.2 items/s ETA 01:58",
// redrawn in place on a terminal, a plain line at most every 10 seconds otherwise (logs).
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <string>

namespace minigpt4::evaluate {

class Progress {
 public:
  // `total`: the items this process will evaluate.
  explicit Progress(int64_t total, std::FILE* out = stderr);
  void advance(int64_t items);
  void finish();  // draws the final state and ends the line

  // The rate is measured from construction; ETA is the rest at that rate ("--:--" before
  // there is one).
  static std::string format(int64_t done, int64_t total, double items_per_second, int bar_width = 20);

 private:
  using Clock = std::chrono::steady_clock;
  void draw(bool final);
  int64_t total_, done_ = 0;
  std::FILE* out_;
  bool tty_;
  Clock::time_point start_, last_line_;
};

}  // namespace minigpt4::evaluate
