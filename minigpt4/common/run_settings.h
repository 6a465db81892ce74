#pragma once
// The `run:` section as typed settings: every key read, checked and given its default here,
// once (RunSettings::from_config), and each component takes its own part. The defaults are
// the member initialisers below; `minigpt4 config-keys` and docs/configs.md print them from
// these structs (run_settings_schema()), so the documentation cannot drift from the code.
#include "minigpt4/common/config_schema.h"

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace minigpt4 {

class Config;

// run.lr_sched and its numbers (train/schedule.h turns them into a schedule).
struct ScheduleSettings {
  std::string lr_sched;           // linear_warmup_cosine_lr | constant_lr; "" = not set
  std::optional<double> init_lr;  // both schedules need it
  std::optional<double> min_lr;   // the cosine needs it
  double warmup_lr = -1;          // < 0: the warm-up starts at init_lr
  int64_t warmup_steps = 0;
  std::optional<int64_t> max_epoch;        // the cosine needs it; 1 otherwise
  std::optional<int64_t> iters_per_epoch;  // absent: the loader's length, else 10000
};

// AdamW (train/optimizer.h).
struct OptimizerSettings {
  std::optional<double> init_lr;
  std::optional<double> weight_decay;
};

// The training loop (train/trainer.h) and its data (datasets/loader.h).
struct TrainerSettings {
  int64_t seed = 42;             // rank is added for dropout, prompts and augmentation
  int64_t batch_size_train = 0;  // 0: each dataset must set its own batch_size
  int num_workers = 4;
  int64_t accum_grad_iters = 1;
  int64_t log_freq = 50;
  int64_t save_freq = 0;  // 0: only at epoch ends
  std::string output_dir = "output";
  std::string resume_ckpt_path;  // "": start fresh; "latest": the newest whole checkpoint
  bool amp = false;
  std::string amp_dtype = "fp16";  // fp16 | bf16
};

// Process group settings (distributed/init.h).
struct DistributedSettings {
  std::optional<bool> distributed;  // absent: distributed when launched with several ranks
  std::string dist_url = "env://";  // env:// or tcp://host:port
  std::string dist_backend;         // "": by device (nccl on CUDA, gloo on the CPU)
  int64_t dist_timeout_s = 1800;
};

// `minigpt4 evaluate` (evaluate/settings.h).
struct EvaluationRunSettings {
  int64_t batch_size_eval = 8;
  std::optional<std::string> output_dir;  // absent: runs/evaluate/<config stem>
};

struct RunSettings {
  std::string device = "cuda";  // cuda | cpu (MiniGPT-4's runs are on CUDA)
  ScheduleSettings schedule;
  OptimizerSettings optimizer;
  TrainerSettings trainer;
  DistributedSettings distributed;
  EvaluationRunSettings evaluation;
  std::string config_path;  // the config these came from, for messages

  // Reads and checks every run.* key; a value out of range is an error naming the key and
  // the file that set it. Keys a run only needs for training (lr_sched, init_lr...) are
  // checked where training starts (ScheduleSettings / OptimizerSettings users).
  static RunSettings from_config(const Config& config);
};

// The run.* rows of the config schema, with the defaults above.
std::vector<ConfigKey> run_settings_schema();

}  // namespace minigpt4
