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
//
// Crash safety (docs/training.md): a checkpoint is written through io::torch_save (a
// temporary in the same folder, fsync, rename, fsync of the folder), so a checkpoint_*.pth
// is always a whole file; meta/json also records a digest of every other tensor in the
// file, checked whenever a checkpoint is loaded, so a file damaged later (a disk error, a
// copy cut short) is an error naming it rather than a resume from wrong numbers. A step
// checkpoint taken inside a gradient accumulation window also holds the gradients
// accumulated so far ("grad": {name: tensor}), so resuming from it continues exactly.
#include <nlohmann/json.hpp>

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace torch::nn {
class Module;
}

namespace minigpt4::train {

class Optimizer;
class GradScaler;

struct TrainingProgress {
  int64_t epoch = 0;                       // epoch being trained, 0-based
  int64_t iter = 0;                        // iterations of that epoch completed (iters_per_epoch at an epoch end)
  int64_t global_step = 0;                 // iterations completed since training started
  nlohmann::json data_position = nullptr;  // the data loader's position, opaque here
  std::string config_text;                 // the run config (JSON or YAML text)
};

// checkpoint_{epoch}.pth and checkpoint_step_{step}.pth inside `dir`.
std::string epoch_checkpoint_path(const std::string& dir, int64_t epoch);
std::string step_checkpoint_path(const std::string& dir, int64_t global_step);

// True for the names the trainer writes and resumes from: "checkpoint_<digits>.pth" and
// "checkpoint_step_<digits>.pth" (a plain character check, no regex).
bool is_checkpoint_name(const std::string& filename);

// Writes `path` atomically and durably (io::torch_save: temporary file in the same folder,
// fsync, rename, fsync of the folder; parent directories created). On failure (a full
// disk...) the error names `path` and the errno text, and an earlier `path` is unchanged.
// `scaler` may be null (no AMP). `with_gradients`: also store the trainable parameters'
// current gradients (a checkpoint inside a gradient accumulation window).
void save_training_checkpoint(const std::string& path, const torch::nn::Module& model, const Optimizer& optimizer,
                              const GradScaler* scaler, const TrainingProgress& progress, bool with_gradients = false);

// Restores the trainable parameters by name (a trainable parameter missing from the file,
// or a file entry that is not a trainable parameter of `model`, is an error naming them),
// the optimizer state, the scaler state (when `scaler` is enabled and the file has one),
// the accumulated gradients (when the file has them) and the last learning rate, and
// returns the progress. The file is read and its digest, names and shapes are checked
// before any weight is changed. Every error names the file.
TrainingProgress load_training_checkpoint(const std::string& path, torch::nn::Module& model, Optimizer& optimizer,
                                          GradScaler* scaler);

// Only the metadata (also validates that `path` is a training checkpoint of ours).
TrainingProgress read_training_progress(const std::string& path);

// Reads `path` whole and checks it: a training checkpoint of ours whose tensors all load
// and match the digest recorded when it was written (files written before the digest
// existed are checked for the rest). The progress, or an error naming the file and the fault.
TrainingProgress verify_training_checkpoint(const std::string& path);

// The checkpoint_*.pth in `dir` (not its subdirectories) that is furthest into training
// (largest global_step; ties: the newer file). Unreadable files are skipped with a warning.
// nullopt when there is none. Reads only the metadata; see find_resumable_checkpoint.
std::optional<std::string> find_latest_checkpoint(const std::string& dir);

// What `run.resume_ckpt_path: latest` resumes from: the checkpoint_*.pth of `dir` furthest
// into training that passes verify_training_checkpoint. Newer ones that fail are reported
// (a warning naming the file and the fault) and passed over. nullopt when `dir` holds no
// checkpoint at all; an error naming every file when it holds some and none is whole.
std::optional<std::string> find_resumable_checkpoint(const std::string& dir);

// Removes the temporaries (checkpoint_*.pth.tmp.<pid>) that a killed run left in `dir`;
// one whose writer is still running is left alone. Returns the paths removed (each is
// also logged). Nothing ever reads a temporary, so this only frees the space.
std::vector<std::string> remove_checkpoint_temporaries(const std::string& dir);

}  // namespace minigpt4::train
