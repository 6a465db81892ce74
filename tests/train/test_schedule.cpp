// Learning-rate schedules against the formulas of MiniGPT-4's optims.py.
#include "minigpt4/common/config.h"
#include "minigpt4/common/error.h"
#include "minigpt4/common/run_settings.h"
#include "minigpt4/train/schedule.h"

#include <catch2/catch.hpp>

#include <cmath>

using namespace minigpt4;
using namespace minigpt4::train;
using Catch::Contains;

namespace {

// The schedule a config's run: section gives, as the trainer builds it.
train::LrSchedule schedule_of(const Config& config, int64_t loader_length = 0) {
  return train::LrSchedule::from_run(RunSettings::from_config(config), loader_length);
}

const double kPi = std::acos(-1.0);

// The stage-1 run section (train_configs/minigpt4_stage1_pretrain.yaml).
const char* kStage1 = R"(run:
  lr_sched: "linear_warmup_cosine_lr"
  init_lr: 1e-4
  min_lr: 8e-5
  warmup_lr: 1e-6
  weight_decay: 0.05
  max_epoch: 4
  warmup_steps: 5000
  iters_per_epoch: 5000
)";

double cosine(double total, double all_steps, double init, double min) {
  return (init - min) * 0.5 * (1 + std::cos(kPi * total / all_steps)) + min;
}

}  // namespace

TEST_CASE("linear_warmup_cosine_lr matches the formula at chosen steps", "[train]") {
  const auto s = schedule_of(Config::from_yaml(kStage1, "stage1.yaml"));
  CHECK(s.name == "linear_warmup_cosine_lr");
  CHECK(s.init_lr == Approx(1e-4));
  CHECK(s.warmup_steps == 5000);
  const double init = 1e-4, min = 8e-5, warm = 1e-6, all = 4 * 5000;

  // Warm-up: start, middle, last warm-up step.
  CHECK(s.lr_at(0, 0) == Approx(warm).epsilon(1e-12));
  CHECK(s.lr_at(0, 2500) == Approx(warm + (init - warm) * 0.5).epsilon(1e-12));
  CHECK(s.lr_at(0, 4999) == Approx(warm + (init - warm) * 4999.0 / 5000.0).epsilon(1e-12));
  // Epoch boundary: the first cosine step is already a quarter into the run.
  CHECK(s.lr_at(1, 0) == Approx(cosine(5000, all, init, min)).epsilon(1e-12));
  CHECK(s.lr_at(2, 0) == Approx(cosine(10000, all, init, min)).epsilon(1e-12));
  CHECK(s.lr_at(2, 0) == Approx((init + min) / 2).epsilon(1e-12));  // cos(pi/2) = 0
  // MiniGPT-4 decays per iteration, not per epoch.
  CHECK(s.lr_at(1, 1) < s.lr_at(1, 0));
  CHECK(s.lr_at(1, 2500) == Approx(cosine(7500, all, init, min)).epsilon(1e-12));
  // Last epoch, last iteration: just above the floor.
  CHECK(s.lr_at(3, 4999) == Approx(cosine(19999, all, init, min)).epsilon(1e-12));
  CHECK(s.lr_at(3, 4999) > min);
  CHECK(s.lr_at(3, 4999) - min < 1e-12);
}

TEST_CASE("linear_warmup_cosine_lr: warm-up longer than an epoch, defaults", "[train]") {
  LrSchedule s;
  s.init_lr = 3e-5;
  s.min_lr = 1e-5;
  s.warmup_lr = 1e-6;
  s.warmup_steps = 300;
  s.max_epoch = 5;
  s.iters_per_epoch = 200;
  // Step 250 is in epoch 1 but still warming up (by the total step).
  CHECK(s.lr_at(1, 50) == Approx(1e-6 + (3e-5 - 1e-6) * 250.0 / 300.0).epsilon(1e-12));
  CHECK(s.lr_at(1, 100) == Approx(cosine(300, 1000, 3e-5, 1e-5)).epsilon(1e-12));

  // No warm-up keys: warmup_lr = init_lr and no warm-up steps -> the cosine from step 0.
  const auto d =
      schedule_of(Config::from_yaml("run:\n  lr_sched: linear_warmup_cosine_lr\n  init_lr: 1.0\n  min_lr: "
                                    "0.0\n  max_epoch: 2\n  iters_per_epoch: 10\n",
                                    "d.yaml"));
  CHECK(d.lr_at(0, 0) == Approx(1.0));
  CHECK(d.lr_at(1, 0) == Approx(0.5));
  CHECK(d.lr_at(1, 9) == Approx(cosine(19, 20, 1.0, 0.0)));
}

TEST_CASE("constant_lr", "[train]") {
  const auto s = schedule_of(Config::from_yaml("run:\n  lr_sched: constant_lr\n  init_lr: 2e-4\n", "c.yaml"), 100);
  for (int e = 0; e < 3; ++e)
    for (int i : {0, 1, 50, 99}) CHECK(s.lr_at(e, i) == Approx(2e-4).epsilon(1e-12));
  CHECK(s.iters_per_epoch == 100);  // from the loader when the config has none

  // LAVIS' ConstantLRScheduler still warms up in epoch 0 when asked to.
  LrSchedule w = s;
  w.warmup_lr = 0;
  w.warmup_steps = 10;
  CHECK(w.lr_at(0, 0) == Approx(0.0));
  CHECK(w.lr_at(0, 5) == Approx(1e-4));
  CHECK(w.lr_at(0, 10) == Approx(2e-4));
  CHECK(w.lr_at(1, 0) == Approx(2e-4));
}

TEST_CASE("schedule config errors name the key and the file", "[train]") {
  CHECK_THROWS_WITH(
      schedule_of(Config::from_yaml("run:\n  lr_sched: cosine\n  init_lr: 1e-4\n", "my.yaml")),
      Contains("run.lr_sched") && Contains("my.yaml") && Contains("cosine") && Contains("linear_warmup_cosine_lr"));
  CHECK_THROWS_WITH(schedule_of(Config::from_yaml(
                        "run:\n  lr_sched: linear_warmup_cosine_lr\n  init_lr: 1e-4\n  max_epoch: 1\n", "my.yaml")),
                    Contains("run.min_lr") && Contains("my.yaml"));
  CHECK_THROWS_WITH(
      schedule_of(Config::from_yaml(
          "run:\n  lr_sched: linear_warmup_cosine_lr\n  init_lr: 1e-4\n  min_lr: 0.0\n  max_epoch: 0\n", "my.yaml")),
      Contains("run.max_epoch") && Contains("positive"));
  CHECK_THROWS_AS(schedule_of(Config::from_yaml("run:\n  init_lr: 1e-4\n", "my.yaml")), Error);
}
