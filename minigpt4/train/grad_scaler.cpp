#include "minigpt4/train/grad_scaler.h"

#include "minigpt4/common/error.h"

#include <ATen/ops/_amp_foreach_non_finite_check_and_unscale.h>
#include <ATen/ops/_amp_update_scale.h>
#include <torch/torch.h>

namespace minigpt4::train {

GradScaler::GradScaler(bool enabled, GradScalerOptions options)
    : enabled_(enabled), options_(options), init_scale_(options.init_scale) {
  if (options.growth_factor <= 1.0) fail("GradScaler: growth_factor must be > 1, got {}", options.growth_factor);
  if (options.backoff_factor >= 1.0) fail("GradScaler: backoff_factor must be < 1, got {}", options.backoff_factor);
  if (options.growth_interval <= 0)
    fail("GradScaler: growth_interval must be positive, got {}", options.growth_interval);
}

at::Tensor GradScaler::scale(const at::Tensor& loss) {
  if (!enabled_) return loss;
  if (!scale_.defined()) {  // lazily, on the device the loss lives on
    const auto options = torch::TensorOptions().device(loss.device());
    scale_ = torch::full({}, init_scale_, options.dtype(torch::kFloat32));
    growth_tracker_ = torch::full({}, init_growth_tracker_, options.dtype(torch::kInt32));
  }
  return loss * scale_.to(loss.device(), /*non_blocking=*/true);
}

void GradScaler::require_scale(const char* what) const {
  if (!scale_.defined()) fail("GradScaler::{}: no scale yet; call scale(loss) earlier in the iteration", what);
}

void GradScaler::unscale_(torch::optim::Optimizer& optimizer) {
  if (!enabled_) return;
  require_scale("unscale_");
  PerOptimizer& state = per_optimizer_[&optimizer];
  if (state.stage == Stage::Unscaled)
    fail("GradScaler::unscale_() was already called on this optimizer since the last update()");
  if (state.stage == Stage::Stepped) fail("GradScaler::unscale_() called after step() (call update() first)");

  // The reciprocal in float64 as PyTorch does: float32 division can be imprecise.
  const at::Tensor inv_scale = scale_.to(torch::kFloat64).reciprocal().to(torch::kFloat32);
  const at::Tensor found_inf = torch::zeros({}, scale_.options().dtype(torch::kFloat32));

  // The kernel wants one device and dtype per call: group the gradients first.
  std::map<std::string, std::map<at::ScalarType, std::vector<at::Tensor>>> grads;
  std::map<std::string, at::Device> devices;
  for (auto& group : optimizer.param_groups())
    for (auto& p : group.params()) {
      const at::Tensor& g = p.grad();
      if (!g.defined()) continue;
      if (g.scalar_type() == torch::kFloat16)
        fail("GradScaler: attempting to unscale fp16 gradients (keep trainable parameters in fp32)");
      if (g.is_sparse()) fail("GradScaler: sparse gradients are not supported");
      const std::string device = g.device().str();
      devices.emplace(device, g.device());
      grads[device][g.scalar_type()].push_back(g);
    }

  torch::NoGradGuard no_grad;
  state.found_inf_per_device.clear();
  for (auto& [device, by_dtype] : grads) {
    at::Tensor device_found_inf = found_inf.to(devices.at(device), /*non_blocking=*/false, /*copy=*/true);
    const at::Tensor device_inv_scale = inv_scale.to(devices.at(device));
    for (auto& [dtype, list] : by_dtype)
      at::_amp_foreach_non_finite_check_and_unscale_(list, device_found_inf, device_inv_scale);
    state.found_inf_per_device[device] = device_found_inf;
  }
  state.stage = Stage::Unscaled;
}

bool GradScaler::step(torch::optim::Optimizer& optimizer) {
  if (!enabled_) {
    optimizer.step();
    return true;
  }
  require_scale("step");
  PerOptimizer& state = per_optimizer_[&optimizer];
  if (state.stage == Stage::Stepped) fail("GradScaler::step() was already called since the last update()");
  if (state.stage == Stage::Ready) unscale_(optimizer);
  if (state.found_inf_per_device.empty())
    fail("GradScaler::step(): no gradients were found for this optimizer (did backward run?)");

  double found = 0;
  for (const auto& [device, flag] : state.found_inf_per_device) found += flag.item<double>();
  const bool stepped = found == 0;
  if (stepped) optimizer.step();
  state.stage = Stage::Stepped;
  return stepped;
}

void GradScaler::update() {
  if (!enabled_) return;
  require_scale("update");
  at::Tensor found_inf;
  for (const auto& [opt, state] : per_optimizer_)
    for (const auto& [device, flag] : state.found_inf_per_device) {
      at::Tensor here = flag.to(scale_.device());
      found_inf = found_inf.defined() ? found_inf + here : here;
    }
  if (!found_inf.defined()) fail("GradScaler::update(): no inf checks were recorded (call step() first)");
  at::_amp_update_scale_(scale_, growth_tracker_, found_inf, options_.growth_factor, options_.backoff_factor,
                         options_.growth_interval);
  per_optimizer_.clear();
}

double GradScaler::get_scale() const {
  if (!enabled_) return 1.0;
  return scale_.defined() ? scale_.item<double>() : init_scale_;
}

int64_t GradScaler::growth_tracker() const {
  if (!enabled_) return 0;
  return growth_tracker_.defined() ? growth_tracker_.item<int64_t>() : init_growth_tracker_;
}

StateDict GradScaler::state_dict() const {
  if (!enabled_) return {};
  return {{"scale", torch::tensor(static_cast<float>(get_scale()), torch::kFloat32)},
          {"_growth_tracker", torch::tensor(static_cast<int32_t>(growth_tracker()), torch::kInt32)}};
}

void GradScaler::load_state_dict(const StateDict& state, const std::string& source) {
  if (!enabled_) return;
  for (const char* key : {"scale", "_growth_tracker"})
    if (!state.count(key) || state.at(key).numel() != 1)
      fail("{}: grad scaler state has no scalar '{}' (saved without AMP?)", source, key);
  init_scale_ = state.at("scale").item<double>();
  init_growth_tracker_ = state.at("_growth_tracker").item<int64_t>();
  if (scale_.defined()) scale_.fill_(init_scale_);
  if (growth_tracker_.defined()) growth_tracker_.fill_(init_growth_tracker_);
}

}  // namespace minigpt4::train
