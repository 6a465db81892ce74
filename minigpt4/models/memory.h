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

// Moves the module's large CPU tensors (storages of at least 2 MiB: the weights) into memory
// the kernel is asked to back with 2 MiB pages (transparent huge pages, madvise). Decoding reads
// every weight once per token; with 4 KiB pages that stream crosses a page every 64 cache
// lines, where the hardware prefetcher stops and a TLB entry is missed (a 2-thread read of
// 1 GiB on a Zen 3 EPYC: 1.04-1.25x faster in 2 MiB pages). Tensors sharing a storage (a tied
// lm_head) keep sharing it. Does nothing where the kernel's THP setting is "never", off Linux,
// or with MINIGPT4_HUGE_PAGES=0. Returns the bytes moved.
int64_t move_to_huge_pages(torch::nn::Module& module);

// "812.4 MiB", "3.27 GiB".
std::string format_bytes(int64_t bytes);

}  // namespace minigpt4
