#pragma once
// Helpers for the io tests: manifest lookups, exact tensor equality, scratch files, pickle
// programs and torch.save-style zips built by hand (and patched to lie).
#include "minigpt4/common/limits.h"
#include "minigpt4/common/state_dict.h"
#include "tests/support/fixtures.h"

#include <caffe2/serialize/inline_container.h>
#include <catch2/catch.hpp>
#include <torch/torch.h>
#include <unistd.h>

#include <cstring>
#include <fstream>
#include <random>
#include <set>
#include <sstream>

namespace minigpt4::test {

inline std::string safetensors_dtype_name(at::ScalarType t) {
  switch (t) {
    case at::kDouble: return "F64";
    case at::kFloat: return "F32";
    case at::kHalf: return "F16";
    case at::kBFloat16: return "BF16";
    case at::kLong: return "I64";
    case at::kInt: return "I32";
    case at::kShort: return "I16";
    case at::kChar: return "I8";
    case at::kByte: return "U8";
    case at::kBool: return "BOOL";
    default: return c10::toString(t);
  }
}

// The manifest's files[] entry for `path` (a path relative to the case directory), or null.
inline const nlohmann::json* manifest_file(const nlohmann::json& manifest, const std::string& path) {
  for (const auto& f : manifest["files"])
    if (f["path"] == path) return &f;
  return nullptr;
}

// Names, dtypes and shapes of `loaded` equal the manifest's tensors[] of that file.
inline void check_against_manifest(const StateDict& loaded, const nlohmann::json& file) {
  INFO("file " << file["path"].get<std::string>());
  std::set<std::string> expected_names;
  for (const auto& t : file["tensors"]) {
    const auto name = t["name"].get<std::string>();
    expected_names.insert(name);
    INFO("tensor " << name);
    const auto it = loaded.find(name);
    REQUIRE(it != loaded.end());
    CHECK(safetensors_dtype_name(it->second.scalar_type()) == t["dtype"].get<std::string>());
    CHECK(it->second.sizes().vec() == t["shape"].get<std::vector<int64_t>>());
  }
  std::set<std::string> loaded_names;
  for (const auto& [name, t] : loaded) loaded_names.insert(name);
  CHECK(loaded_names == expected_names);
}

// Same dtype, shape and bit-for-bit values (the fixtures store identical weights twice).
inline void check_same(const std::string& name, const at::Tensor& actual, const at::Tensor& expected) {
  INFO("tensor " << name);
  REQUIRE(actual.defined());
  REQUIRE(actual.scalar_type() == expected.scalar_type());
  REQUIRE(actual.sizes() == expected.sizes());
  CHECK(at::equal(actual, expected));
}

// `part` is the `prefix` subtree of `full`: each of its tensors equals full[prefix + name],
// and every tensor of `full` under `prefix` is in `part` unless `may_lack(short name)`.
template <typename MayLack>
void check_part_of(const StateDict& part, const StateDict& full, const std::string& prefix, MayLack may_lack) {
  for (const auto& [name, t] : part) {
    INFO("loaded " << name << ", expected as " << prefix << name);
    const auto it = full.find(prefix + name);
    REQUIRE(it != full.end());
    check_same(name, t, it->second);
  }
  size_t under_prefix = 0;
  for (const auto& [name, t] : full) {
    if (name.rfind(prefix, 0) != 0) continue;
    ++under_prefix;
    const std::string short_name = name.substr(prefix.size());
    INFO("missing " << short_name);
    CHECK((part.count(short_name) == 1 || may_lack(short_name)));
  }
  CHECK(under_prefix > 0);
}
inline void check_part_of(const StateDict& part, const StateDict& full, const std::string& prefix) {
  check_part_of(part, full, prefix, [](const std::string&) { return false; });
}

// A fresh directory under the system temp dir, removed with everything in it.
class TempDir {
 public:
  TempDir() {
    std::random_device rd;
    path_ = fs::temp_directory_path() / ("minigpt4_io_test_" + std::to_string(::getpid()) + "_" + std::to_string(rd()));
    fs::create_directories(path_);
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path_, ec);
  }
  const fs::path& path() const { return path_; }
  std::string file(const std::string& name) const { return (path_ / name).string(); }

 private:
  fs::path path_;
};

// Assembles pickle opcodes by hand, to feed the reader things torch.save never writes for
// our fixtures but real checkpoints contain.
struct Pickle {
  Pickle& proto(uint8_t v = 2) { return op(0x80).op(v); }
  Pickle& bin_get(uint8_t k) { return op('h').op(k); }
  Pickle& bin_put(uint8_t k) { return op('q').op(k); }
  Pickle& long_get(uint32_t k) { return op('j').raw(&k, 4); }
  Pickle& long_put(uint32_t k) { return op('r').raw(&k, 4); }
  std::string s;
  Pickle& op(uint8_t c) {
    s.push_back(static_cast<char>(c));
    return *this;
  }
  Pickle& raw(const void* p, size_t n) {
    s.append(static_cast<const char*>(p), n);
    return *this;
  }
  Pickle& str(const std::string& t) {  // BINUNICODE
    const auto n = static_cast<uint32_t>(t.size());
    return op('X').raw(&n, 4).raw(t.data(), t.size());
  }
  Pickle& int32(int32_t v) { return op('J').raw(&v, 4); }
  Pickle& real(double d) {  // BINFLOAT, big-endian
    uint64_t bits;
    std::memcpy(&bits, &d, 8);
    op('G');
    for (int i = 7; i >= 0; --i) op(static_cast<uint8_t>(bits >> (8 * i)));
    return *this;
  }
  Pickle& global(const std::string& module, const std::string& name) {
    op('c');
    s += module + "\n" + name + "\n";
    return *this;
  }
  Pickle& ordered_dict() { return global("collections", "OrderedDict").op(')').op('R'); }
  // torch._utils._rebuild_tensor_v2(('storage', torch.<type>, key, 'cpu', numel), offset, size, stride, False,
  // OrderedDict())
  Pickle& tensor(const std::string& type, const std::string& key, int32_t numel, int32_t offset,
                 const std::vector<int32_t>& size, const std::vector<int32_t>& stride) {
    global("torch._utils", "_rebuild_tensor_v2").op('(');
    op('(').str("storage").global("torch", type).str(key).str("cpu").int32(numel).op('t').op('Q');
    int32(offset);
    op('(');
    for (int32_t x : size) int32(x);
    op('t').op('(');
    for (int32_t x : stride) int32(x);
    op('t').op(0x89);
    ordered_dict();
    return op('t').op('R');
  }
};

// A torch.save-style zip holding `pkl` as data.pkl and the given storage records (deflated
// when `compress`, which torch.save never does but a re-zipped file may).
inline void write_zip(const std::string& path, const std::string& pkl,
                      const std::vector<std::pair<std::string, at::Tensor>>& records, bool compress = false) {
  caffe2::serialize::PyTorchStreamWriter zip(path);
  zip.writeRecord("data.pkl", pkl.data(), pkl.size(), compress);
  for (const auto& [name, t] : records) zip.writeRecord(name, t.data_ptr(), t.nbytes(), compress);
  zip.writeEndOfFile();
}

// The central directory headers of a small zip (no zip64 needed), to patch them: each
// header's offset in the file and the record's name.
struct CentralEntry {
  size_t at;
  std::string name;
};
inline std::vector<CentralEntry> central_entries(const std::string& zip) {
  std::vector<CentralEntry> out;
  for (size_t at = zip.find("PK\x01\x02"); at != std::string::npos; at = zip.find("PK\x01\x02", at + 4)) {
    uint16_t name_len;
    std::memcpy(&name_len, zip.data() + at + 28, 2);
    out.push_back({at, zip.substr(at + 46, name_len)});
  }
  return out;
}
inline const CentralEntry& central_entry(const std::vector<CentralEntry>& entries, const std::string& suffix) {
  for (const auto& e : entries)
    if (e.name.size() >= suffix.size() && e.name.compare(e.name.size() - suffix.size(), suffix.size(), suffix) == 0)
      return e;
  FAIL("no zip record ending in " << suffix);
  throw;
}
template <typename T>
void poke(std::string& bytes, size_t at, T value) {
  std::memcpy(bytes.data() + at, &value, sizeof value);
}
template <typename T>
T peek(const std::string& bytes, size_t at) {
  T v;
  std::memcpy(&v, bytes.data() + at, sizeof v);
  return v;
}
// Central directory header fields (APPNOTE 4.3.12).
constexpr size_t kCentralCompressed = 20, kCentralUncompressed = 24, kCentralLocalOffset = 42;

// Sets input_limits() for one test and restores the previous ones after it.
class LimitsGuard {
 public:
  LimitsGuard() : saved_(input_limits()) {}
  ~LimitsGuard() { set_input_limits(saved_); }
  template <typename F>
  void set(F&& change) {
    InputLimits l = input_limits();
    change(l);
    set_input_limits(l);
  }

 private:
  InputLimits saved_;
};

inline std::string read_bytes(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

inline void write_bytes(const fs::path& p, const std::string& bytes) {
  std::ofstream out(p, std::ios::binary);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

// One tensor of every dtype the writers support, plus awkward layouts.
inline StateDict every_dtype() {
  torch::manual_seed(7);
  StateDict sd;
  sd["f64"] = torch::randn({3, 4}, torch::kDouble);
  sd["f32"] = torch::randn({2, 3, 5});
  sd["f16"] = torch::randn({7}).to(torch::kHalf);
  sd["bf16"] = torch::randn({4, 2}).to(torch::kBFloat16);
  sd["i64"] = torch::tensor({INT64_MIN, int64_t(-1), int64_t(0), INT64_MAX});
  sd["i32"] = torch::tensor({INT32_MIN, -5, 0, INT32_MAX}, torch::kInt);
  sd["i16"] = torch::tensor({-32768, -1, 0, 32767}, torch::kShort);
  sd["i8"] = torch::tensor({-128, -1, 0, 127}, torch::kChar);
  sd["u8"] = torch::tensor({0, 1, 128, 255}, torch::kByte);
  sd["bool"] = torch::tensor({true, false, true});
  sd["scalar"] = torch::tensor(3.5);
  sd["empty"] = torch::zeros({0, 4});
  sd["transposed"] = torch::arange(15, torch::kFloat).reshape({3, 5}).t();  // non-contiguous
  sd["strided"] = torch::arange(40, torch::kLong).reshape({5, 8}).slice(1, 1, 8, 3);
  return sd;
}

}  // namespace minigpt4::test
