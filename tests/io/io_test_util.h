#pragma once
// Helpers for the io tests: manifest lookups, exact tensor equality, scratch files.
#include "minigpt4/common/state_dict.h"
#include "tests/support/fixtures.h"

#include <catch2/catch.hpp>
#include <torch/torch.h>
#include <unistd.h>

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
    path_ = fs::temp_directory_path() /
            ("minigpt4_io_test_" + std::to_string(::getpid()) + "_" + std::to_string(rd()));
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
