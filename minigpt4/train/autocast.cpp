#include "minigpt4/train/autocast.h"

#include <ATen/autocast_mode.h>

namespace minigpt4::train {

AutocastGuard::AutocastGuard(c10::Device device, c10::ScalarType dtype, bool enabled)
    : active_(enabled && device.is_cuda()) {
  if (!active_) return;
  was_enabled_ = at::autocast::is_autocast_enabled(c10::DeviceType::CUDA);
  was_dtype_ = at::autocast::get_autocast_dtype(c10::DeviceType::CUDA);
  at::autocast::set_autocast_dtype(c10::DeviceType::CUDA, dtype);
  at::autocast::set_autocast_enabled(c10::DeviceType::CUDA, true);
  at::autocast::increment_nesting();
}

AutocastGuard::~AutocastGuard() {
  if (!active_) return;
  // Leaving the outermost region drops the casted-weight cache, as Python's autocast does.
  if (at::autocast::decrement_nesting() == 0) at::autocast::clear_cache();
  at::autocast::set_autocast_enabled(c10::DeviceType::CUDA, was_enabled_);
  at::autocast::set_autocast_dtype(c10::DeviceType::CUDA, was_dtype_);
}

}  // namespace minigpt4::train
