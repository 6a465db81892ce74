#pragma once
// Dynamic loss scaling for fp16 autocast, with the semantics of PyTorch's
// torch.amp.GradScaler (LibTorch has no C++ one). Per iteration:
//   scaler.scale(loss).backward();
//   scaler.unscale_(opt);        // optional: only to clip or inspect gradients
//   scaler.step(opt);            // unscales if needed; skips opt.step() on inf/NaN grads
//   scaler.update();             // backoff on inf/NaN, growth after growth_interval clean steps
// It uses the kernels the Python scaler calls, at::_amp_foreach_non_finite_check_and_unscale_
// and at::_amp_update_scale_, which have CPU and CUDA implementations in LibTorch >= 2.3,
// so the same code runs (and is tested) on the CPU.
// A disabled scaler is a pass-through: scale() returns the loss, step() just steps.
#include "minigpt4/common/state_dict.h"

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <map>
#include <string>

namespace torch::optim {
class Optimizer;
}

namespace minigpt4::train {

struct GradScalerOptions {
  double init_scale = 65536.0;  // 2**16
  double growth_factor = 2.0;
  double backoff_factor = 0.5;
  int64_t growth_interval = 2000;
};

class GradScaler {
 public:
  explicit GradScaler(bool enabled, GradScalerOptions options = {});

  bool enabled() const { return enabled_; }

  // loss * scale (the scale lives on the loss' device, created on first use).
  at::Tensor scale(const at::Tensor& loss);

  // Divides every gradient of `optimizer` by the scale in place and records whether any
  // was inf/NaN. At most once per optimizer between update() calls; fp16 gradients are an
  // error (keep trainable master weights in fp32), as in PyTorch.
  void unscale_(torch::optim::Optimizer& optimizer);

  // Unscales (if unscale_ was not called) and runs optimizer.step() unless a gradient was
  // inf/NaN. Returns whether the optimizer stepped.
  bool step(torch::optim::Optimizer& optimizer);

  // New scale from this iteration's inf checks (all optimizers stepped since the last
  // update): scale *= backoff_factor on inf/NaN; scale *= growth_factor after
  // growth_interval consecutive clean iterations.
  void update();

  double get_scale() const;        // the current scale (1.0 when disabled)
  int64_t growth_tracker() const;  // clean iterations since the last change

  // {"scale": float32 scalar, "_growth_tracker": int32 scalar}; empty when disabled (as
  // PyTorch's state_dict()). load_state_dict accepts what state_dict wrote; an entry
  // missing is an error naming `source`.
  StateDict state_dict() const;
  void load_state_dict(const StateDict& state, const std::string& source);

 private:
  enum class Stage { Ready, Unscaled, Stepped };
  struct PerOptimizer {
    Stage stage = Stage::Ready;
    std::map<std::string, at::Tensor> found_inf_per_device;  // device string -> float32 scalar
  };
  void require_scale(const char* what) const;

  bool enabled_;
  GradScalerOptions options_;
  // Created lazily on the loss' device; before that the values below stand in for them.
  at::Tensor scale_;           // float32 scalar
  at::Tensor growth_tracker_;  // int32 scalar
  double init_scale_;
  int64_t init_growth_tracker_ = 0;
  std::map<const void*, PerOptimizer> per_optimizer_;
};

}  // namespace minigpt4::train
