#pragma once
// Choosing and describing the compute device (`--device cpu|cuda --gpu-id N`).
#include <c10/core/Device.h>

#include <string>

namespace minigpt4 {

// "cpu" or "cuda" (+ index); errors clearly when CUDA is asked for but absent.
c10::Device select_device(const std::string& name, int gpu_id);

// One line for logs: the CPU's thread count, or the GPU's name, capability, memory and
// bf16 support, and the NCCL version LibTorch runs with.
std::string describe_device(const c10::Device& device);

// Whether this build has CUDA code paths compiled in (the LibTorch it was built against
// has CUDA); a CPU-only LibTorch compiles them out.
bool built_with_cuda();

}  // namespace minigpt4
