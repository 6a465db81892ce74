#include "minigpt4/train/schedule.h"

#include "minigpt4/common/run_settings.h"
#include "minigpt4/common/error.h"
#include "minigpt4/common/log.h"

#include <algorithm>
#include <cmath>

namespace minigpt4::train {

namespace {

constexpr double kPi = 3.14159265358979323846;

double warmup_start(const LrSchedule& s) { return s.warmup_lr >= 0 ? s.warmup_lr : s.init_lr; }

// LAVIS' warmup_lr_schedule.
double warmup(const LrSchedule& s, int64_t step) {
  const double start = warmup_start(s);
  const double denom = static_cast<double>(std::max<int64_t>(s.warmup_steps, 1));
  return std::min(s.init_lr, start + (s.init_lr - start) * static_cast<double>(step) / denom);
}

double required(const std::optional<double>& value, const std::string& key, const RunSettings& run) {
  if (!value)
    fail("{}: {} is required by run.lr_sched '{}' but is not set", run.config_path, key, run.schedule.lr_sched);
  return *value;
}

}  // namespace

double linear_warmup_cosine_lr(const LrSchedule& s, int64_t epoch, int64_t iter) {
  const int64_t total = epoch * s.iters_per_epoch + iter;
  if (total < s.warmup_steps) return warmup(s, total);
  const double progress = static_cast<double>(total) / static_cast<double>(s.max_epoch * s.iters_per_epoch);
  return (s.init_lr - s.min_lr) * 0.5 * (1.0 + std::cos(kPi * progress)) + s.min_lr;
}

double constant_lr(const LrSchedule& s, int64_t epoch, int64_t iter) {
  return epoch == 0 ? warmup(s, iter) : s.init_lr;
}

double LrSchedule::lr_at(int64_t epoch, int64_t iter) const {
  return name == "constant_lr" ? constant_lr(*this, epoch, iter) : linear_warmup_cosine_lr(*this, epoch, iter);
}

LrSchedule LrSchedule::from_run(const RunSettings& run, int64_t loader_length) {
  const ScheduleSettings& in = run.schedule;
  LrSchedule s;
  s.name = in.lr_sched;
  if (s.name.empty()) fail("{}: run.lr_sched is not set (linear_warmup_cosine_lr or constant_lr)", run.config_path);
  s.init_lr = required(in.init_lr, "run.init_lr", run);
  // constant_lr never reads min_lr or max_epoch; the cosine needs both.
  const bool cosine = s.name == "linear_warmup_cosine_lr";
  s.min_lr = cosine ? required(in.min_lr, "run.min_lr", run) : in.min_lr.value_or(0);
  s.warmup_lr = in.warmup_lr;
  s.warmup_steps = in.warmup_steps;
  if (cosine && !in.max_epoch)
    fail("{}: run.max_epoch is required by run.lr_sched '{}' but is not set", run.config_path, s.name);
  s.max_epoch = in.max_epoch.value_or(1);

  if (in.iters_per_epoch) {
    s.iters_per_epoch = *in.iters_per_epoch;
  } else if (loader_length > 0) {
    s.iters_per_epoch = loader_length;
  } else {
    // The original's fallback for loaders without a length (webdataset streams).
    s.iters_per_epoch = 10000;
    log::warn(
        "{}: run.iters_per_epoch is not set and the training data has no length; using 10000 as the "
        "original runner does",
        run.config_path);
  }
  return s;
}

}  // namespace minigpt4::train
