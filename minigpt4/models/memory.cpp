#include "minigpt4/models/memory.h"

#include "minigpt4/models/layers.h"

#include <fmt/format.h>
#include <torch/torch.h>

#include <cstdlib>
#include <cstring>
#include <fstream>
#include <map>
#include <set>

#if defined(__GLIBC__)
#include <malloc.h>
#endif
#if defined(__linux__)
#include <sys/mman.h>
#include <unistd.h>
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

namespace {

#if defined(__linux__)
constexpr size_t kHugePage = size_t{2} << 20;

bool huge_pages_wanted() {
  const char* env = std::getenv("MINIGPT4_HUGE_PAGES");
  if (env && std::strcmp(env, "0") == 0) return false;
  std::ifstream setting("/sys/kernel/mm/transparent_hugepage/enabled");
  std::string line;
  return std::getline(setting, line) && line.find("[never]") == std::string::npos;
}

struct Mapping {
  void* start;
  size_t length;
};

void unmap(void* ctx) {
  const auto* m = static_cast<Mapping*>(ctx);
  munmap(m->start, m->length);
  delete m;
}

// `bytes` of anonymous memory starting on a 2 MiB boundary, advised MADV_HUGEPAGE: map 2 MiB
// more than needed and give back what lies before the boundary and after the end. The last,
// partial 2 MiB stays in 4 KiB pages (the mapping ends inside it), so nothing is rounded up.
c10::DataPtr map_huge(size_t bytes) {
  const size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
  const size_t length = (bytes + page - 1) / page * page;
  void* raw = mmap(nullptr, length + kHugePage, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (raw == MAP_FAILED) return {};
  const auto base = reinterpret_cast<uintptr_t>(raw);
  const uintptr_t start = (base + kHugePage - 1) / kHugePage * kHugePage;
  if (start > base) munmap(raw, start - base);
  const size_t after = base + length + kHugePage - (start + length);
  if (after > 0) munmap(reinterpret_cast<void*>(start + length), after);
  madvise(reinterpret_cast<void*>(start), length, MADV_HUGEPAGE);  // advice: failing it only costs speed
  auto* mapping = new Mapping{reinterpret_cast<void*>(start), length};
  return {mapping->start, mapping, &unmap, c10::Device(c10::kCPU)};
}
#endif

}  // namespace

int64_t move_to_huge_pages(torch::nn::Module& module) {
#if defined(__linux__)
  if (!huge_pages_wanted()) return 0;
  torch::NoGradGuard no_grad;
  // Old storage -> (itself, its copy): holding the old one until the end keeps its address from
  // being reused by another storage while the map is keyed by it.
  std::map<const c10::StorageImpl*, std::pair<c10::Storage, c10::Storage>> moved;
  std::set<const c10::StorageImpl*> copies;  // a tensor met twice (tied) is moved already
  int64_t total = 0;
  auto move = [&](torch::Tensor& t) {
    if (!t.defined() || !t.has_storage() || !t.device().is_cpu() || t.is_sparse()) return;
    const auto& old = t.storage();
    if (copies.count(old.unsafeGetStorageImpl())) return;
    const size_t bytes = old.nbytes();
    if (bytes < kHugePage || old.data() == nullptr) return;
    auto it = moved.find(old.unsafeGetStorageImpl());
    if (it == moved.end()) {
      auto data = map_huge(bytes);
      if (!data) return;  // no address space: the tensor stays where it is
      std::memcpy(data.get(), old.data(), bytes);
      c10::Storage copy(c10::Storage::use_byte_size_t(), bytes, std::move(data), /*allocator=*/nullptr,
                        /*resizable=*/false);
      copies.insert(copy.unsafeGetStorageImpl());
      it = moved.emplace(old.unsafeGetStorageImpl(), std::make_pair(old, std::move(copy))).first;
      total += static_cast<int64_t>(bytes);
    }
    auto fresh = torch::empty({0}, t.options().requires_grad(false));
    fresh.set_(it->second.second, t.storage_offset(), t.sizes(), t.strides());
    t.set_data(fresh);
  };
  for (auto& p : module.parameters(/*recurse=*/true)) move(p);
  for (auto& b : module.buffers(/*recurse=*/true)) move(b);
  moved.clear();
  release_free_heap();  // the old storages that came from the heap rather than their own mappings
  return total;
#else
  (void)module;
  return 0;
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
