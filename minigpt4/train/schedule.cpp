#include "minigpt4/train/schedule.h"

#include "minigpt4/common/config.h"
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

// Where a key came from, for messages: the file that set it, else the config's own file.
std::string origin(const Config& config, const std::string& key) {
  std::string from = config.source_of(key);
  return from.empty() ? config.path() : from;
}

double required_float(const Config& config, const std::string& key, const std::string& sched) {
  if (!config.has(key))
    fail("{}: {} is required by run.lr_sched '{}' but is not set", config.path(), key, sched);
  return config.get_float(key, 0);
}

int64_t positive_int(const Config& config, const std::string& key, int64_t value) {
  if (value <= 0) fail("{}: {} must be positive, got {}", origin(config, key), key, value);
  return value;
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

LrSchedule LrSchedule::from_config(const Config& config, int64_t loader_length) {
  LrSchedule s;
  s.name = config.get_string("run.lr_sched", "");
  if (s.name.empty()) fail("{}: run.lr_sched is not set (linear_warmup_cosine_lr or constant_lr)", config.path());
  if (s.name != "linear_warmup_cosine_lr" && s.name != "constant_lr")
    fail("{}: run.lr_sched '{}' is not a known schedule (known: linear_warmup_cosine_lr, constant_lr)",
         origin(config, "run.lr_sched"), s.name);

  s.init_lr = required_float(config, "run.init_lr", s.name);
  // constant_lr never reads min_lr or max_epoch; the cosine needs both.
  const bool cosine = s.name == "linear_warmup_cosine_lr";
  s.min_lr = cosine ? required_float(config, "run.min_lr", s.name) : config.get_float("run.min_lr", 0);
  s.warmup_lr = config.get_float("run.warmup_lr", -1);
  s.warmup_steps = config.get_int("run.warmup_steps", 0);
  if (s.warmup_steps < 0)
    fail("{}: run.warmup_steps must not be negative, got {}", origin(config, "run.warmup_steps"), s.warmup_steps);
  if (cosine && !config.has("run.max_epoch"))
    fail("{}: run.max_epoch is required by run.lr_sched '{}' but is not set", config.path(), s.name);
  s.max_epoch = positive_int(config, "run.max_epoch", config.get_int("run.max_epoch", 1));

  if (config.has("run.iters_per_epoch")) {
    s.iters_per_epoch = positive_int(config, "run.iters_per_epoch", config.get_int("run.iters_per_epoch", 0));
  } else if (loader_length > 0) {
    s.iters_per_epoch = loader_length;
  } else {
    // The original's fallback for loaders without a length (webdataset streams).
    s.iters_per_epoch = 10000;
    log::warn("{}: run.iters_per_epoch is not set and the training data has no length; using 10000 as the "
              "original runner does",
              config.path());
  }
  return s;
}

}  // namespace minigpt4::train
