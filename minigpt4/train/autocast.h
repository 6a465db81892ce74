#pragma once
// Mixed precision for the training forward, as `with torch.cuda.amp.autocast(enabled=amp)`
// in MiniGPT-4's runner: matrix products in fp16 (or bf16), reductions and norms in fp32.
// Only CUDA: on the CPU `run.amp` is ignored (the frozen parts already run in their dtype).
#include <c10/core/Device.h>
#include <c10/core/ScalarType.h>

namespace minigpt4::train {

class AutocastGuard {
 public:
  AutocastGuard(c10::Device device, c10::ScalarType dtype, bool enabled);
  ~AutocastGuard();
  AutocastGuard(const AutocastGuard&) = delete;
  AutocastGuard& operator=(const AutocastGuard&) = delete;

 private:
  bool active_ = false;
  bool was_enabled_ = false;
  c10::ScalarType was_dtype_ = c10::kHalf;
};

}  // namespace minigpt4::train
