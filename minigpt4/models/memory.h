#pragma once
// What a loaded model costs: the bytes its parameters and buffers hold, by dtype (what
// llm_precision and low_resource change), and the process' resident set (what the
// machine sees, including LibTorch itself and anything not yet freed).
#include <cstdint>
#include <map>
#include <string>

namespace torch::nn {
class Module;
}

namespace minigpt4 {

struct TensorBytes {
  std::map<std::string, int64_t> by_dtype;  // "fp32", "bf16", "int8", ... (dtype_name)
  int64_t total = 0;
};

// Parameters and buffers of `module` and its children; a storage shared by several
// tensors (a tied lm_head) is counted once.
TensorBytes tensor_bytes(const torch::nn::Module& module);

// VmRSS of /proc/self/status in bytes; -1 where it cannot be read (not Linux).
int64_t resident_set_bytes();
// VmHWM: the largest resident set so far (what loading peaked at); -1 likewise.
int64_t peak_resident_set_bytes();

// Returns the C heap's free pages to the system (glibc's malloc_trim; nothing elsewhere).
// Quantising while loading frees many float32 blocks between the int8 weights' lifetimes;
// glibc keeps the holes (measured on a 1.1B LLaMA: up to 0.8 GiB resident beyond the
// weights, depending on thread timing) unless asked.
void release_free_heap();

// "812.4 MiB", "3.27 GiB".
std::string format_bytes(int64_t bytes);

}  // namespace minigpt4
