#include "minigpt4/common/run_settings.h"

#include "minigpt4/common/config.h"
#include "minigpt4/common/error.h"

#include <fmt/format.h>

#include <string_view>

namespace minigpt4 {

namespace {

using T = ValueType;

// Where a key came from, for messages: the file that set it, else the config's own file.
std::string origin(const Config& config, const std::string& key) {
  std::string from = config.source_of(key);
  return from.empty() ? config.path() : from;
}

template <typename V>
std::optional<V> optional_value(const Config& config, const std::string& key);
template <>
std::optional<double> optional_value(const Config& config, const std::string& key) {
  return config.has(key) ? std::optional<double>(config.get_float(key, 0)) : std::nullopt;
}
template <>
std::optional<int64_t> optional_value(const Config& config, const std::string& key) {
  return config.has(key) ? std::optional<int64_t>(config.get_int(key, 0)) : std::nullopt;
}

void check_positive(const Config& config, const std::string& key, const std::optional<int64_t>& value) {
  if (value && *value <= 0) fail("{}: {} must be positive, got {}", origin(config, key), key, *value);
}

// env:// (torchrun's MASTER_ADDR / MASTER_PORT) or tcp://host:port.
void check_dist_url(const Config& config, const std::string& url) {
  if (url == "env://") return;
  if (url.rfind("tcp://", 0) != 0)
    fail("run.dist_url must be env:// or tcp://host:port, got '{}' ({})", url, origin(config, "run.dist_url"));
  const auto colon = url.rfind(':');
  if (colon <= 6) fail("run.dist_url '{}' has no port (tcp://host:port)", url);
  const std::string port = url.substr(colon + 1);
  if (port.empty() || port.size() > 5 || port.find_first_not_of("0123456789") != std::string::npos ||
      std::stoi(port) > 65535)
    fail("run.dist_url '{}': the port is not a number from 0 to 65535", url);
}

std::string show(const std::string& s) { return s.empty() ? "" : fmt::format("\"{}\"", s); }
std::string show(bool b) { return b ? "true" : "false"; }
std::string show(int64_t v) { return std::to_string(v); }
std::string show(double v) { return fmt::format("{}", v); }

}  // namespace

RunSettings RunSettings::from_config(const Config& config) {
  RunSettings s;
  s.config_path = config.path();
  s.device = config.get_string("run.device", s.device);

  ScheduleSettings& sched = s.schedule;
  sched.lr_sched = config.get_string("run.lr_sched", "");
  if (!sched.lr_sched.empty() && sched.lr_sched != "linear_warmup_cosine_lr" && sched.lr_sched != "constant_lr")
    fail("{}: run.lr_sched '{}' is not a known schedule (known: linear_warmup_cosine_lr, constant_lr)",
         origin(config, "run.lr_sched"), sched.lr_sched);
  sched.init_lr = optional_value<double>(config, "run.init_lr");
  sched.min_lr = optional_value<double>(config, "run.min_lr");
  sched.warmup_lr = config.get_float("run.warmup_lr", sched.warmup_lr);
  sched.warmup_steps = config.get_int("run.warmup_steps", sched.warmup_steps);
  if (sched.warmup_steps < 0)
    fail("{}: run.warmup_steps must not be negative, got {}", origin(config, "run.warmup_steps"), sched.warmup_steps);
  sched.max_epoch = optional_value<int64_t>(config, "run.max_epoch");
  check_positive(config, "run.max_epoch", sched.max_epoch);
  sched.iters_per_epoch = optional_value<int64_t>(config, "run.iters_per_epoch");
  check_positive(config, "run.iters_per_epoch", sched.iters_per_epoch);

  s.optimizer.init_lr = sched.init_lr;
  s.optimizer.weight_decay = optional_value<double>(config, "run.weight_decay");

  TrainerSettings& train = s.trainer;
  train.seed = config.get_int("run.seed", train.seed);
  train.batch_size_train = config.get_int("run.batch_size_train", train.batch_size_train);
  train.num_workers = static_cast<int>(config.get_int("run.num_workers", train.num_workers));
  // As the original: fewer than one means one.
  train.accum_grad_iters = std::max<int64_t>(1, config.get_int("run.accum_grad_iters", train.accum_grad_iters));
  train.log_freq = std::max<int64_t>(1, config.get_int("run.log_freq", train.log_freq));
  train.save_freq = config.get_int("run.save_freq", train.save_freq);
  train.output_dir = config.get_string("run.output_dir", train.output_dir);
  train.resume_ckpt_path = config.get_string("run.resume_ckpt_path", train.resume_ckpt_path);
  train.amp = config.get_bool("run.amp", train.amp);
  train.amp_dtype = config.get_string("run.amp_dtype", train.amp_dtype);
  if (train.amp_dtype != "fp16" && train.amp_dtype != "bf16")
    fail("run.amp_dtype must be fp16 or bf16, got {} ({})", train.amp_dtype, origin(config, "run.amp_dtype"));

  DistributedSettings& dist = s.distributed;
  if (config.has("run.distributed")) dist.distributed = config.get_bool("run.distributed", true);
  dist.dist_url = config.get_string("run.dist_url", dist.dist_url);
  check_dist_url(config, dist.dist_url);
  dist.dist_backend = config.get_string("run.dist_backend", dist.dist_backend);
  if (!dist.dist_backend.empty() && dist.dist_backend != "gloo" && dist.dist_backend != "nccl")
    fail("run.dist_backend must be gloo or nccl, got '{}' ({})", dist.dist_backend, origin(config, "run.dist_backend"));
  dist.dist_timeout_s = config.get_int("run.dist_timeout", dist.dist_timeout_s);
  if (dist.dist_timeout_s <= 0)
    fail("run.dist_timeout must be a positive number of seconds, got {}", dist.dist_timeout_s);

  EvaluationRunSettings& eval = s.evaluation;
  eval.batch_size_eval = config.get_int("run.batch_size_eval", eval.batch_size_eval);
  if (eval.batch_size_eval < 1) fail("run.batch_size_eval must be >= 1, got {}", eval.batch_size_eval);
  if (config.has("run.output_dir")) eval.output_dir = config.get_string("run.output_dir");
  return s;
}

std::vector<ConfigKey> run_settings_schema() {
  const RunSettings d;
  const TrainerSettings& t = d.trainer;
  const std::string required_to_train = "(required to train)";
  return {
      {"run.task", T::String, "image_text_pretrain (accepted for LAVIS configs; there is one task)"},
      {"run.lr_sched", T::String,
       "linear_warmup_cosine_lr (linear warm-up over warmup_steps, then cosine to min_lr over all max_epoch * "
       "iters_per_epoch iterations, as MiniGPT-4's optims.py) or constant_lr",
       required_to_train},
      {"run.init_lr", T::Float, "peak learning rate", required_to_train},
      {"run.min_lr", T::Float, "cosine floor", "(required by the cosine)"},
      {"run.warmup_lr", T::Float, "learning rate at step 0 of the warm-up (< 0: init_lr)", show(d.schedule.warmup_lr)},
      {"run.warmup_steps", T::Int, "linear warm-up length in iterations", show(d.schedule.warmup_steps)},
      {"run.weight_decay", T::Float, "AdamW weight decay of >=2-D weights (not biases or norms)", required_to_train},
      {"run.max_epoch", T::Int, "epochs", "1 (required by the cosine)"},
      {"run.iters_per_epoch", T::Int, "iterations per epoch (webdataset streams are endless)",
       "the data's length, else 10000"},
      {"run.batch_size_train", T::Int, "training batch size (datasets may set their own; 0: each must)",
       show(t.batch_size_train)},
      {"run.batch_size_eval", T::Int, "evaluation batch size", show(d.evaluation.batch_size_eval)},
      {"run.accum_grad_iters", T::Int, "iterations per optimizer step (gradient accumulation)",
       show(t.accum_grad_iters)},
      {"run.num_workers", T::Int, "image decoding threads", show(static_cast<int64_t>(t.num_workers))},
      {"run.seed", T::Int, "random seed (rank is added under distributed training)", show(t.seed)},
      {"run.output_dir", T::String, "where checkpoints, logs and plots go",
       show(t.output_dir) + " (evaluate: runs/evaluate/<config name>)"},
      {"run.amp", T::Bool, "mixed precision on CUDA (autocast; fp16 with dynamic loss scaling); ignored on the CPU",
       show(t.amp)},
      {"run.amp_dtype", T::String,
       "autocast dtype: fp16 (the original's torch.cuda.amp default) or bf16 (no loss scaling)", show(t.amp_dtype)},
      {"run.resume_ckpt_path", T::String,
       "checkpoint to resume from (null: start fresh); latest: the newest whole checkpoint in run.output_dir, damaged "
       "ones named and passed over, or start fresh when there is none"},
      {"run.evaluate", T::Bool, "evaluate only (accepted for LAVIS configs; `minigpt4 evaluate` is the command)"},
      {"run.train_splits", T::StringList, "splits to train on"},
      {"run.valid_splits", T::StringList, "splits to validate on"},
      {"run.test_splits", T::StringList, "splits to test on"},
      {"run.device", T::String, "cuda or cpu", show(d.device)},
      {"run.world_size", T::Int, "processes (set by the launcher)"},
      {"run.dist_url", T::String, "rendezvous: env:// (torchrun's variables) or tcp://host:port",
       show(d.distributed.dist_url)},
      {"run.distributed", T::Bool, "use distributed training when launched with several ranks",
       "true when launched with several ranks"},
      {"run.dist_backend", T::String, "collectives: nccl (CUDA) or gloo (CPU)", "by run.device"},
      {"run.dist_timeout", T::Int, "seconds a rendezvous or collective may wait for the other ranks",
       show(d.distributed.dist_timeout_s)},
      {"run.wandb_log", T::Bool, "accepted for compatibility; metrics go to the JSONL log"},
      {"run.job_name", T::String, "name of the run"},
      {"run.log_freq", T::Int, "iterations between log lines", show(t.log_freq)},
      {"run.save_freq", T::Int, "iterations between checkpoints (0: only at epoch ends)", show(t.save_freq)},
      {"run.gpu", T::Int, "GPU index (set from --gpu-id / LOCAL_RANK)"},
  };
}

}  // namespace minigpt4
