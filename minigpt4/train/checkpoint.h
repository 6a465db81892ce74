#pragma once
// Training checkpoints in the original runner's layout, so that Python and the original
// code can read them: a torch.save zip
//   {"model":     OrderedDict(name -> tensor)   ONLY the requires_grad parameters, original names
//    "optimizer": {"state": {name: {"exp_avg", "exp_avg_sq", "step"}},
//                  "param_groups": ({"lr", "weight_decay", "params": (names...)}, ...)}
//    "scaler":    {"scale", "_growth_tracker"} or None without AMP
//    "epoch":     int
//    "config":    str (the run config text)
//    "meta":      {"json": uint8 tensor}}
// Differences from a Python checkpoint, each on purpose: optimizer state is keyed by
// parameter NAME (not index) so it survives reordering; numbers that Python keeps as
// floats are 0-d tensors (the writer stores tensors, ints and strings only); resume
// metadata is one JSON document stored as the UTF-8 bytes of "meta/json" (a tensor, so it
// lives in the same file and appears with it in the single atomic rename: no sidecar can
// get out of step). `torch.load(p)["model"]` and io::load_state_dict(p) give the trainable
// weights, so a stage-1 checkpoint works as stage 2's `model.ckpt`.
#include <nlohmann/json.hpp>

#include <cstdint>
#include <optional>
#include <string>

namespace torch::nn {
class Module;
}

namespace minigpt4::train {

class Optimizer;
class GradScaler;

struct TrainingProgress {
  int64_t epoch = 0;        // epoch being trained, 0-based
  int64_t iter = 0;         // iterations of that epoch completed (iters_per_epoch at an epoch end)
  int64_t global_step = 0;  // iterations completed since training started
  nlohmann::json data_position = nullptr;  // the data loader's position, opaque here
  std::string config_text;                 // the run config (JSON or YAML text)
};

// checkpoint_{epoch}.pth and checkpoint_step_{step}.pth inside `dir`.
std::string epoch_checkpoint_path(const std::string& dir, int64_t epoch);
std::string step_checkpoint_path(const std::string& dir, int64_t global_step);

// Writes `path` atomically (temporary file, fsync, rename; parent directories created).
// `scaler` may be null (no AMP).
void save_training_checkpoint(const std::string& path, const torch::nn::Module& model, const Optimizer& optimizer,
                              const GradScaler* scaler, const TrainingProgress& progress);

// Restores the trainable parameters by name (a trainable parameter missing from the file,
// or a file entry that is not a trainable parameter of `model`, is an error naming them),
// the optimizer state, the scaler state (when `scaler` is enabled and the file has one),
// and returns the progress. Every error names the file.
TrainingProgress load_training_checkpoint(const std::string& path, torch::nn::Module& model, Optimizer& optimizer,
                                          GradScaler* scaler);

// Only the metadata (also validates that `path` is a training checkpoint of ours).
TrainingProgress read_training_progress(const std::string& path);

// The checkpoint_*.pth in `dir` (not its subdirectories) that is furthest into training
// (largest global_step; ties: the newer file). Unreadable files are skipped with a warning.
// nullopt when there is none.
std::optional<std::string> find_latest_checkpoint(const std::string& dir);

}  // namespace minigpt4::train
