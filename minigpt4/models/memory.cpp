#include "minigpt4/models/memory.h"

#include "minigpt4/models/layers.h"

#include <fmt/format.h>

#include <fstream>
#include <set>

#if defined(__GLIBC__)
#include <malloc.h>
#endif

namespace minigpt4 {

TensorBytes tensor_bytes(const torch::nn::Module& module) {
  TensorBytes out;
  std::set<const c10::StorageImpl*> seen;
  auto add = [&](const torch::Tensor& t) {
    if (!t.defined() || !t.has_storage()) return;
    if (!seen.insert(t.storage().unsafeGetStorageImpl()).second) return;
    const auto bytes = static_cast<int64_t>(t.storage().nbytes());
    out.by_dtype[dtype_name(t.scalar_type())] += bytes;
    out.total += bytes;
  };
  for (const auto& p : module.parameters(/*recurse=*/true)) add(p);
  for (const auto& b : module.buffers(/*recurse=*/true)) add(b);
  return out;
}

namespace {

// A "Key:   123456 kB" line of /proc/self/status, in bytes.
int64_t proc_status_bytes(const std::string& key) {
  std::ifstream status("/proc/self/status");
  std::string line;
  while (std::getline(status, line))
    if (line.rfind(key, 0) == 0) return std::stoll(line.substr(key.size())) * 1024;
  return -1;
}

}  // namespace

int64_t resident_set_bytes() { return proc_status_bytes("VmRSS:"); }
int64_t peak_resident_set_bytes() { return proc_status_bytes("VmHWM:"); }

void release_free_heap() {
#if defined(__GLIBC__)
  malloc_trim(0);
#endif
}

std::string format_bytes(int64_t bytes) {
  const double b = static_cast<double>(bytes);
  if (bytes >= (int64_t{1} << 30)) return fmt::format("{:.2f} GiB", b / (1 << 30));
  if (bytes >= (int64_t{1} << 20)) return fmt::format("{:.1f} MiB", b / (1 << 20));
  if (bytes >= (int64_t{1} << 10)) return fmt::format("{:.1f} KiB", b / (1 << 10));
  return fmt::format("{} B", bytes);
}

}  // namespace minigpt4
