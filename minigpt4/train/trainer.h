#pragma once
// The training run MiniGPT-4's train.py performs, driven by one config: build and load the
// model, stream the datasets, and for each iteration set the scheduled learning rate, run
// the training forward, back-propagate into the trainable parameters, step AdamW (through
// the grad scaler under fp16), log, and checkpoint at epoch ends (and every run.save_freq
// iterations). run.resume_ckpt_path continues exactly where a checkpoint stopped.
//
// Data-parallel when given a process group (torchrun / `minigpt4 launch`): every rank holds
// the whole model and reads its own part of the data; gradients are averaged over the ranks
// (distributed::GradientSync) so the optimizer steps identically everywhere; rank 0 alone logs and
// writes checkpoints, which hold every rank's data position.
#include <c10/core/Device.h>

#include <cstdint>
#include <memory>
#include <string>

namespace minigpt4 {
class Config;
}
namespace minigpt4::distributed {
class Group;
}

namespace minigpt4::train {

struct TrainOptions {
  c10::Device device = c10::kCPU;
  std::shared_ptr<distributed::Group> group;  // null: one process
  // Stop after this many epochs of this process (tests and staged runs); -1: run to max_epoch.
  int64_t stop_after_epochs = -1;
  bool interactive_progress = true;  // a '\r' progress bar when stderr is a terminal
};

struct TrainResult {
  std::string output_dir;
  std::string last_checkpoint;
  int64_t global_step = 0;
  double first_loss = 0, last_loss = 0;  // mean over the first / last logged window (and over ranks)
  int64_t skipped_steps = 0;             // non-finite steps skipped under fp16 gradient scaling
};

TrainResult run_training(const Config& config, const TrainOptions& options);

}  // namespace minigpt4::train
