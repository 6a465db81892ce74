#include "minigpt4/train/metrics.h"

#include "minigpt4/common/error.h"

#include <fmt/format.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>

namespace minigpt4::train {

namespace fs = std::filesystem;

namespace {

const char* const kCoreKeys[] = {"step", "epoch", "iter", "loss", "lr", "samples_per_sec", "elapsed"};

double number_or_nan(const nlohmann::json& j, const char* key) {
  auto it = j.find(key);
  return it != j.end() && it->is_number() ? it->get<double>() : std::numeric_limits<double>::quiet_NaN();
}

std::string clock_text(double seconds) {
  if (!(seconds >= 0) || !std::isfinite(seconds)) return "--:--";
  const auto s = static_cast<int64_t>(std::llround(seconds));
  if (s >= 3600) return fmt::format("{}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60);
  return fmt::format("{:02}:{:02}", s / 60, s % 60);
}

}  // namespace

// ---------------------------------------------------------------------------------------
// JSONL

nlohmann::json StepRecord::to_json() const {
  nlohmann::json j = {{"step", step}, {"epoch", epoch}, {"iter", iter}};
  j["loss"] = std::isfinite(loss) ? nlohmann::json(loss) : nlohmann::json(nullptr);
  j["lr"] = lr;
  j["samples_per_sec"] = samples_per_sec;
  j["elapsed"] = elapsed;
  if (extras.is_object())
    for (auto it = extras.begin(); it != extras.end(); ++it)
      if (!j.contains(it.key())) j[it.key()] = it.value();  // the core fields keep their meaning
  return j;
}

StepRecord StepRecord::from_json(const nlohmann::json& j) {
  StepRecord r;
  r.step = j.value("step", int64_t{0});
  r.epoch = j.value("epoch", int64_t{0});
  r.iter = j.value("iter", int64_t{0});
  r.loss = number_or_nan(j, "loss");
  r.lr = number_or_nan(j, "lr");
  r.samples_per_sec = number_or_nan(j, "samples_per_sec");
  r.elapsed = number_or_nan(j, "elapsed");
  for (auto it = j.begin(); it != j.end(); ++it)
    if (std::find(std::begin(kCoreKeys), std::end(kCoreKeys), it.key()) == std::end(kCoreKeys))
      r.extras[it.key()] = it.value();
  return r;
}

MetricsLog::MetricsLog(const std::string& path, bool append) : path_(path) {
  const fs::path parent = fs::path(path).parent_path();
  std::error_code ec;
  if (!parent.empty()) fs::create_directories(parent, ec);
  file_ = std::fopen(path.c_str(), append ? "a" : "w");
  if (file_ == nullptr) fail("cannot open metrics log {}: {}", path, std::strerror(errno));
}

MetricsLog::~MetricsLog() {
  if (file_ != nullptr) std::fclose(file_);
}

void MetricsLog::write(const StepRecord& record) {
  const std::string line = record.to_json().dump() + "\n";
  if (std::fwrite(line.data(), 1, line.size(), file_) != line.size() || std::fflush(file_) != 0)
    fail("cannot write metrics log {}: {}", path_, std::strerror(errno));
}

std::vector<StepRecord> read_metrics_log(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) fail("cannot open metrics log {}: {}", path, std::strerror(errno));
  const std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());

  std::vector<StepRecord> records;
  size_t begin = 0;
  for (int64_t line_no = 1; begin < text.size(); ++line_no) {
    size_t end = text.find('\n', begin);
    const bool complete = end != std::string::npos;
    if (!complete) end = text.size();
    const std::string line = text.substr(begin, end - begin);
    begin = end + 1;
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    nlohmann::json j;
    try {
      j = nlohmann::json::parse(line);
    } catch (const nlohmann::json::exception& e) {
      if (!complete) break;  // the last line was cut short by a crash: nothing after it
      fail("{}:{}: not a JSON line: {}", path, line_no, e.what());
    }
    if (!j.is_object()) fail("{}:{}: expected a JSON object", path, line_no);
    StepRecord r = StepRecord::from_json(j);
    // A resumed run repeats the steps logged after its checkpoint: the newer lines win.
    while (!records.empty() && records.back().step >= r.step) records.pop_back();
    records.push_back(std::move(r));
  }
  return records;
}

// ---------------------------------------------------------------------------------------
// Progress bar

ProgressBar::ProgressBar(int64_t max_epoch, int64_t iters_per_epoch, int64_t log_freq, std::FILE* out)
    : max_epoch_(max_epoch),
      iters_per_epoch_(std::max<int64_t>(iters_per_epoch, 1)),
      log_freq_(std::max<int64_t>(log_freq, 1)),
      out_(out),
      tty_(::isatty(::fileno(out)) != 0) {}

std::string ProgressBar::format(const StepRecord& r, int64_t max_epoch, int64_t iters_per_epoch, double eta_seconds,
                                int bar_width) {
  const double fraction =
      std::clamp(static_cast<double>(r.iter) / static_cast<double>(std::max<int64_t>(iters_per_epoch, 1)), 0.0, 1.0);
  const int filled = static_cast<int>(std::floor(fraction * bar_width));
  const std::string bar = std::string(filled, '#') + std::string(bar_width - filled, '.');
  const std::string loss = std::isfinite(r.loss) ? fmt::format("{:.3f}", r.loss) : "nan";
  return fmt::format("epoch {}/{} [{}] {}/{} loss {} lr {:.1e} {:.1f} samples/s ETA {}", r.epoch + 1, max_epoch, bar,
                     r.iter, iters_per_epoch, loss, r.lr, r.samples_per_sec, clock_text(eta_seconds));
}

void ProgressBar::update(const StepRecord& r) {
  const auto now = Clock::now();
  if (!started_) {  // the rate is measured from the first update on (startup excluded)
    started_ = true;
    start_time_ = now;
    start_step_ = r.step;
  }
  const bool epoch_end = r.iter >= iters_per_epoch_;
  double eta = -1;
  if (r.step > start_step_) {
    const double per_iter = std::chrono::duration<double>(now - start_time_).count() / double(r.step - start_step_);
    eta = per_iter * static_cast<double>(std::max<int64_t>(iters_per_epoch_ - r.iter, 0));
  }
  const std::string line = format(r, max_epoch_, iters_per_epoch_, eta);
  if (tty_) {
    // At most ~10 redraws a second; always the last one of an epoch.
    if (!epoch_end && showing_ && now - last_draw_ < std::chrono::milliseconds(100)) return;
    std::fprintf(out_, "\r%s\033[K", line.c_str());
    showing_ = true;
    last_draw_ = now;
    if (epoch_end) break_line();
  } else if (r.iter % log_freq_ == 0 || epoch_end) {
    std::fprintf(out_, "%s\n", line.c_str());
  }
  std::fflush(out_);
}

void ProgressBar::break_line() {
  if (!showing_) return;
  std::fputc('\n', out_);
  std::fflush(out_);
  showing_ = false;
}

}  // namespace minigpt4::train
