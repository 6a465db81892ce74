// The run: section read once into typed settings: defaults, values, checks, and the schema's
// default column printed from the same structs.
#include "minigpt4/common/config.h"
#include "minigpt4/common/config_schema.h"
#include "minigpt4/common/error.h"
#include "minigpt4/common/run_settings.h"
#include "tests/support/fixtures.h"

#include <catch2/catch.hpp>

#include <map>

using namespace minigpt4;
using Catch::Contains;

namespace {

RunSettings settings_of(const std::string& yaml) {
  return RunSettings::from_config(Config::from_yaml(yaml, "run.yaml"));
}

std::string error_of(const std::string& yaml) {
  try {
    settings_of(yaml);
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

}  // namespace

TEST_CASE("an empty run: section gives the documented defaults", "[config]") {
  const RunSettings s = settings_of("model:\n  arch: minigpt4\n");
  const RunSettings d;
  CHECK(s.device == "cuda");
  CHECK(s.trainer.seed == 42);
  CHECK(s.trainer.num_workers == 4);
  CHECK(s.trainer.output_dir == "output");
  CHECK(s.trainer.log_freq == 50);
  CHECK(s.trainer.accum_grad_iters == 1);
  CHECK(s.trainer.amp_dtype == "fp16");
  CHECK_FALSE(s.schedule.init_lr);
  CHECK_FALSE(s.schedule.iters_per_epoch);
  CHECK(s.schedule.warmup_lr == d.schedule.warmup_lr);
  CHECK_FALSE(s.distributed.distributed);
  CHECK(s.distributed.dist_url == "env://");
  CHECK(s.distributed.dist_timeout_s == 1800);
  CHECK(s.evaluation.batch_size_eval == 8);
  CHECK_FALSE(s.evaluation.output_dir);
  CHECK(s.config_path == "run.yaml");
}

TEST_CASE("run: values reach every component's part", "[config]") {
  const RunSettings s = settings_of(
      "run:\n  device: cpu\n  seed: 7\n  init_lr: 3e-4\n  min_lr: 1e-5\n  weight_decay: 0.05\n  lr_sched: "
      "constant_lr\n  max_epoch: 3\n  iters_per_epoch: 10\n  warmup_steps: 2\n  batch_size_train: 6\n  "
      "num_workers: 1\n  accum_grad_iters: 0\n  save_freq: 5\n  output_dir: out\n  resume_ckpt_path: latest\n  "
      "amp: true\n  amp_dtype: bf16\n  distributed: false\n  dist_url: tcp://127.0.0.1:29500\n  dist_backend: gloo\n"
      "  dist_timeout: 60\n  batch_size_eval: 2\n");
  CHECK(s.device == "cpu");
  CHECK(s.trainer.seed == 7);
  CHECK(*s.schedule.init_lr == Approx(3e-4));
  CHECK(*s.optimizer.init_lr == Approx(3e-4));
  CHECK(*s.optimizer.weight_decay == Approx(0.05));
  CHECK(s.schedule.lr_sched == "constant_lr");
  CHECK(*s.schedule.max_epoch == 3);
  CHECK(*s.schedule.iters_per_epoch == 10);
  CHECK(s.schedule.warmup_steps == 2);
  CHECK(s.trainer.batch_size_train == 6);
  CHECK(s.trainer.num_workers == 1);
  CHECK(s.trainer.accum_grad_iters == 1);  // fewer than one means one, as the original
  CHECK(s.trainer.save_freq == 5);
  CHECK(s.trainer.output_dir == "out");
  CHECK(*s.evaluation.output_dir == "out");
  CHECK(s.trainer.resume_ckpt_path == "latest");
  CHECK(s.trainer.amp);
  CHECK(s.trainer.amp_dtype == "bf16");
  CHECK(*s.distributed.distributed == false);
  CHECK(s.distributed.dist_url == "tcp://127.0.0.1:29500");
  CHECK(s.distributed.dist_backend == "gloo");
  CHECK(s.distributed.dist_timeout_s == 60);
  CHECK(s.evaluation.batch_size_eval == 2);
}

TEST_CASE("a bad run: value is an error naming the key", "[config]") {
  CHECK_THAT(error_of("run:\n  lr_sched: cosine\n"), Contains("run.lr_sched 'cosine' is not a known schedule"));
  CHECK_THAT(error_of("run:\n  warmup_steps: -1\n"), Contains("run.warmup_steps must not be negative"));
  CHECK_THAT(error_of("run:\n  max_epoch: 0\n"), Contains("run.max_epoch must be positive"));
  CHECK_THAT(error_of("run:\n  iters_per_epoch: -3\n"), Contains("run.iters_per_epoch must be positive"));
  CHECK_THAT(error_of("run:\n  amp_dtype: fp32\n"), Contains("run.amp_dtype must be fp16 or bf16"));
  CHECK_THAT(error_of("run:\n  dist_url: file:///tmp/x\n"), Contains("run.dist_url must be env:// or tcp://"));
  CHECK_THAT(error_of("run:\n  dist_url: tcp://host\n"), Contains("has no port"));
  CHECK_THAT(error_of("run:\n  dist_url: tcp://host:80a\n"), Contains("the port is not a number"));
  CHECK_THAT(error_of("run:\n  dist_url: tcp://host:99999\n"), Contains("the port is not a number"));
  CHECK_THAT(error_of("run:\n  dist_backend: mpi\n"), Contains("run.dist_backend must be gloo or nccl"));
  CHECK_THAT(error_of("run:\n  dist_timeout: 0\n"), Contains("run.dist_timeout must be a positive"));
  CHECK_THAT(error_of("run:\n  batch_size_eval: 0\n"), Contains("run.batch_size_eval must be >= 1"));
  // The file that set the key is named.
  CHECK_THAT(error_of("run:\n  max_epoch: 0\n"), Contains("run.yaml"));
}

TEST_CASE("the schema's run: rows carry the defaults RunSettings applies", "[config]") {
  std::map<std::string, std::string> defaults;
  for (const auto& key : config_schema())
    if (key.pattern.rfind("run.", 0) == 0) defaults[key.pattern] = key.default_value;
  const RunSettings d;
  CHECK(defaults.at("run.seed") == std::to_string(d.trainer.seed));
  CHECK(defaults.at("run.num_workers") == std::to_string(d.trainer.num_workers));
  CHECK(defaults.at("run.log_freq") == std::to_string(d.trainer.log_freq));
  CHECK(defaults.at("run.batch_size_eval") == std::to_string(d.evaluation.batch_size_eval));
  CHECK(defaults.at("run.dist_timeout") == std::to_string(d.distributed.dist_timeout_s));
  CHECK(defaults.at("run.device") == "\"" + d.device + "\"");
  CHECK_THAT(defaults.at("run.init_lr"), Contains("required"));
  // Every run: key the schema knows is one the config check accepts, and appears once.
  CHECK(defaults.size() == run_settings_schema().size());
  CHECK_NOTHROW(Config::from_yaml("run:\n  seed: 1\n  wandb_log: false\n  job_name: x\n", "run.yaml"));
}
