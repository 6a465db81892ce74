#pragma once
// What a training run reports, in three forms:
// - a JSONL log (one JSON object per logged step, flushed per line, so `tail -f` and a
//   crash both see every line written so far);
// - a progress bar on stderr: redrawn in place with '\r' on a terminal, a plain line every
//   `log_freq` iterations otherwise (logs, pipes, CI);
// - at the end, a PNG of the loss and learning-rate curves, drawn with OpenCV.
#include <nlohmann/json.hpp>

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <limits>
#include <string>
#include <vector>

namespace minigpt4::train {

struct StepRecord {
  int64_t step = 0;   // iterations completed since training started
  int64_t epoch = 0;  // 0-based
  int64_t iter = 0;   // iterations of this epoch completed (1..iters_per_epoch)
  double loss = std::numeric_limits<double>::quiet_NaN();
  double lr = 0;
  double samples_per_sec = 0;
  double elapsed = 0;                                // seconds since training (this process) started
  nlohmann::json extras = nlohmann::json::object();  // anything else, merged into the line

  // {"step", "epoch", "iter", "loss", "lr", "samples_per_sec", "elapsed", ...extras};
  // a non-finite loss is written as null.
  nlohmann::json to_json() const;
  static StepRecord from_json(const nlohmann::json& j);  // unknown keys go to extras
};

class MetricsLog {
 public:
  // Appends to `path` (a resumed run continues the same file); directories are created.
  explicit MetricsLog(const std::string& path, bool append = true);
  ~MetricsLog();
  MetricsLog(const MetricsLog&) = delete;
  MetricsLog& operator=(const MetricsLog&) = delete;

  void write(const StepRecord& record);
  const std::string& path() const { return path_; }

 private:
  std::string path_;
  std::FILE* file_ = nullptr;
};

// Every record of a JSONL log, in step order. When a resumed run logged a step again,
// the later line wins and the earlier lines from that step on are dropped. A malformed
// line is an error naming the file and line; a truncated LAST line (a crash mid-write)
// is skipped.
std::vector<StepRecord> read_metrics_log(const std::string& path);

class ProgressBar {
 public:
  // `out` defaults to stderr; whether it is a terminal decides the mode.
  ProgressBar(int64_t max_epoch, int64_t iters_per_epoch, int64_t log_freq, std::FILE* out = stderr);
  void set_interactive(bool interactive) { tty_ = interactive; }  // override the detection

  void update(const StepRecord& record);
  // Ends the in-place line (if one is showing) so that other output starts on a new line.
  void break_line();

  // "epoch 1/4 [#####.....] 120/500 loss 2.314 lr 9.8e-05 42.1 samples/s ETA 03:12":
  // epoch 1-based, iterations of this epoch done, ETA to the end of the epoch (update()
  // measures the rate from its first call on); eta_seconds < 0 shows "ETA --:--".
  static std::string format(const StepRecord& record, int64_t max_epoch, int64_t iters_per_epoch, double eta_seconds,
                            int bar_width = 10);

 private:
  using Clock = std::chrono::steady_clock;
  int64_t max_epoch_, iters_per_epoch_, log_freq_;
  std::FILE* out_;
  bool tty_;
  bool showing_ = false;  // an unfinished '\r' line is on screen
  bool started_ = false;
  Clock::time_point start_time_, last_draw_;
  int64_t start_step_ = 0;
};

// Two panels (loss, with a moving average once there are enough points; learning rate),
// steps on the x axes, tick labels on both axes. Written atomically as PNG. Non-finite
// values are left out of the curves.
void plot_training_curves(const std::vector<StepRecord>& records, const std::string& png_path, int width = 1200,
                          int height = 800);

}  // namespace minigpt4::train
