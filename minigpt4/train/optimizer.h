#pragma once
// AdamW with the original runner's two parameter groups (MiniGPT-4's RunnerBase.optimizer,
// itself LAVIS'): over the parameters with requires_grad only, in named_parameters() order,
//   no weight decay  when  p.ndim < 2  or the NAME contains "bias", "ln" or "bn"
//                          (plain substring tests, as in Python: "ln_vision.weight",
//                          "blocks.0.attn.q_bias" and also e.g. "kiln.weight" match);
//   run.weight_decay otherwise.
// betas (0.9, 0.999), eps 1e-8, lr run.init_lr (the schedule overwrites it every iteration
// anyway). (The original also reads an optional run.beta2; our config schema has no such
// key, so AdamWSettings::beta2 is only settable from code.)
#include "minigpt4/common/state_dict.h"

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace torch::nn {
class Module;
}
namespace torch::optim {
class Optimizer;
class AdamW;
}  // namespace torch::optim

namespace minigpt4 {
struct RunSettings;
}

namespace minigpt4::train {

struct NamedParameter {
  std::string name;  // as named_parameters() gives it, e.g. "llama_proj.weight"
  at::Tensor tensor;
};

// LAVIS' rule above: true when the parameter gets weight decay.
bool uses_weight_decay(const std::string& name, const at::Tensor& parameter);

struct ParamGroups {
  std::vector<NamedParameter> decay, no_decay;
  int64_t numel() const;
  // "trainable parameters: N (decay: a tensors / b params, no decay: c / d)"
  std::string summary() const;
};

// The trainable (requires_grad) parameters of `model`, split by the rule above.
ParamGroups split_parameters(const torch::nn::Module& model);

struct AdamWSettings {
  double lr = 1e-4;
  double weight_decay = 0.05;
  double beta1 = 0.9, beta2 = 0.999;
  double eps = 1e-8;
  // run.init_lr and run.weight_decay, both required (the original fails without them too).
  static AdamWSettings from_run(const RunSettings& run);
};

// torch::optim::AdamW over the two groups (group 0: decay, group 1: no decay), knowing the
// name of every parameter so that checkpoints can key the state by name.
class Optimizer {
 public:
  Optimizer(ParamGroups groups, const AdamWSettings& settings);
  ~Optimizer();
  Optimizer(const Optimizer&) = delete;
  Optimizer& operator=(const Optimizer&) = delete;

  torch::optim::Optimizer& torch_optimizer();
  const torch::optim::Optimizer& torch_optimizer() const;
  void step();             // one AdamW step (prefer GradScaler::step under AMP)
  void zero_grad();        // gradients set to None, as PyTorch 2's default
  void set_lr(double lr);  // every group, as the LAVIS schedulers do
  double lr() const;       // group 0's
  const ParamGroups& groups() const { return groups_; }

  // Per-parameter AdamW state keyed by parameter name: "<name>/exp_avg",
  // "<name>/exp_avg_sq", "<name>/step" (a float32 scalar, like Python's). Parameters that
  // never had a gradient have no state and no entries.
  StateDict state_by_name() const;
  // The inverse. Entries for a name that is not a parameter here, or a state missing one
  // of its three tensors or of the wrong shape, are errors naming `source`.
  void load_state_by_name(const StateDict& state, const std::string& source);

 private:
  ParamGroups groups_;
  std::unique_ptr<torch::optim::AdamW> adamw_;
};

// The model's trainable parameters under the run's AdamW settings; logs the summary.
std::unique_ptr<Optimizer> make_optimizer(const torch::nn::Module& model, const RunSettings& run);

}  // namespace minigpt4::train
