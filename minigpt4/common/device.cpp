#include "minigpt4/common/device.h"

#include "minigpt4/common/error.h"

#include <torch/torch.h>

#ifdef MINIGPT4_WITH_CUDA
#include <ATen/cuda/CUDAContext.h>
#include <torch/csrc/cuda/nccl.h>
#endif

namespace minigpt4 {

bool built_with_cuda() {
#ifdef MINIGPT4_WITH_CUDA
  return true;
#else
  return false;
#endif
}

c10::Device select_device(const std::string& name, int gpu_id) {
  if (name == "cpu") return torch::kCPU;
  if (name != "cuda") fail("device must be cpu or cuda, got '{}'", name);
  if (!built_with_cuda()) fail("device cuda: this build's LibTorch has no CUDA support");
  if (!torch::cuda::is_available())
    fail("device cuda: no CUDA device is visible (check the driver and CUDA_VISIBLE_DEVICES)");
  const auto count = static_cast<int>(torch::cuda::device_count());
  if (gpu_id < 0 || gpu_id >= count) fail("--gpu-id {} is out of range: {} CUDA device(s) visible", gpu_id, count);
  return {torch::kCUDA, static_cast<c10::DeviceIndex>(gpu_id)};
}

std::string describe_device(const c10::Device& device) {
  if (device.is_cpu()) return fmt::format("cpu ({} threads)", at::get_num_threads());
#ifdef MINIGPT4_WITH_CUDA
  const auto* p = at::cuda::getDeviceProperties(device.index());
  const auto nccl = torch::cuda::nccl::version();
  return fmt::format("cuda:{} {} (sm_{}{}, {:.1f} GiB, bf16 {}), NCCL {}.{}.{}", device.index(), p->name, p->major,
                     p->minor, static_cast<double>(p->totalGlobalMem) / (1 << 30), p->major >= 8 ? "yes" : "no",
                     nccl / 10000, (nccl / 100) % 100, nccl % 100);
#else
  return device.str();
#endif
}

}  // namespace minigpt4
