#pragma once
// Learning-rate schedules of the original runner, by their `run.lr_sched` names.
//
// `linear_warmup_cosine_lr` follows MiniGPT-4's own copy of the LAVIS scheduler
// (minigpt4/common/optims.py), which is what its runner calls once per iteration with
// (cur_epoch, cur_step = iteration inside the epoch):
//   total = epoch * iters_per_epoch + iter
//   total <  warmup_steps: lr = min(init_lr, warmup_lr + (init_lr - warmup_lr) * total / max(warmup_steps, 1))
//   otherwise:             lr = (init_lr - min_lr) * 0.5 * (1 + cos(pi * total / (max_epoch * iters_per_epoch))) +
//   min_lr
// Two differences from upstream LAVIS (lavis/common/optims.py), whose scheduler warms up
// only in epoch 0 and then decays by whole epochs (cos(pi * epoch / max_epoch)):
// - MiniGPT-4 decays per ITERATION over the whole run, not per epoch;
// - the warm-up test uses the total step. (The 2023 release then fed the in-epoch step to
//   the warm-up formula, a later MiniGPT-4 revision the total step; both agree whenever
//   warmup_steps <= iters_per_epoch, as in every shipped config. We use the total step.)
//
// `constant_lr` is LAVIS' ConstantLRScheduler (VPGTrans uses it): the same linear warm-up
// during epoch 0 (by in-epoch step), then init_lr. With the defaults (warmup_steps 0,
// warmup_lr = init_lr) that is init_lr at every step.
#include <cstdint>
#include <string>

namespace minigpt4 {
struct RunSettings;
}

namespace minigpt4::train {

struct LrSchedule {
  std::string name = "linear_warmup_cosine_lr";  // or "constant_lr"
  double init_lr = 1e-4;
  double min_lr = 0;
  double warmup_lr = -1;  // < 0: init_lr, as LAVIS' warmup_start_lr
  int64_t warmup_steps = 0;
  int64_t max_epoch = 1;
  int64_t iters_per_epoch = 1;

  // The learning rate for iteration `iter` (0-based, inside the epoch) of epoch `epoch`
  // (0-based), set before that iteration's forward pass as the original does.
  double lr_at(int64_t epoch, int64_t iter) const;

  // From the run's schedule settings (run.lr_sched, init_lr, min_lr, warmup_lr,
  // warmup_steps, max_epoch, iters_per_epoch). Without iters_per_epoch the original uses
  // the train loader's length (pass it as `loader_length`), or 10000 for unsized
  // (webdataset) loaders. A missing required key is an error naming the key and the config.
  static LrSchedule from_run(const RunSettings& run, int64_t loader_length = 0);
};

// The two formulas on their own (see above).
double linear_warmup_cosine_lr(const LrSchedule& s, int64_t epoch, int64_t iter);
double constant_lr(const LrSchedule& s, int64_t epoch, int64_t iter);

}  // namespace minigpt4::train
