// The GGUF reader (minigpt4/io/gguf.h) on files written here byte by byte: metadata of every
// value type, each tensor type's dequantisation against values worked out by hand, q8_0 and
// q4_0 rearranged into group-wise storage, and hostile headers (every truncation, absurd
// counts, lengths, dimensions, offsets, unknown types), each a named error.
#include "minigpt4/common/error.h"
#include "minigpt4/io/gguf.h"

#include <c10/util/Half.h>
#include <catch2/catch.hpp>
#include <torch/torch.h>

#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <optional>
#include <fstream>
#include <string>
#include <vector>

using namespace minigpt4;
using Catch::Contains;
namespace fs = std::filesystem;

namespace {

// A GGUF file assembled in memory.
struct Writer {
  std::string bytes;
  template <typename T>
  void put(T v) {
    bytes.append(reinterpret_cast<const char*>(&v), sizeof v);
  }
  void str(const std::string& s) {
    put<uint64_t>(s.size());
    bytes += s;
  }
  void header(uint64_t tensors, uint64_t kvs, uint32_t version = 3) {
    bytes = "GGUF";
    put<uint32_t>(version);
    put<uint64_t>(tensors);
    put<uint64_t>(kvs);
  }
  void kv_u32(const std::string& key, uint32_t v) {
    str(key);
    put<uint32_t>(4);
    put<uint32_t>(v);
  }
  void kv_str(const std::string& key, const std::string& v) {
    str(key);
    put<uint32_t>(8);
    str(v);
  }
  void tensor(const std::string& name, std::vector<uint64_t> ne, uint32_t type, uint64_t offset) {
    str(name);
    put<uint32_t>(static_cast<uint32_t>(ne.size()));
    for (auto n : ne) put<uint64_t>(n);
    put<uint32_t>(type);
    put<uint64_t>(offset);
  }
  void align(size_t a = 32) {
    while (bytes.size() % a) bytes += '\0';
  }
};

uint16_t half_bits(float v) { return c10::Half(v).x; }

fs::path write(const std::string& name, const std::string& bytes) {
  const auto dir = fs::temp_directory_path() / ("minigpt4_test_gguf_" + std::to_string(::getpid()));
  fs::create_directories(dir);
  const auto path = dir / name;
  std::ofstream(path, std::ios::binary) << bytes;
  return path;
}

// Block bytes of one q8_0 / q4_0 / q4_1 block.
std::string q8_block(float d, const std::vector<int8_t>& q) {
  Writer w;
  w.put<uint16_t>(half_bits(d));
  for (auto v : q) w.put<int8_t>(v);
  return w.bytes;
}
std::string q4_block(float d, const std::vector<uint8_t>& nibbles, std::optional<float> m = std::nullopt) {
  Writer w;
  w.put<uint16_t>(half_bits(d));
  if (m) w.put<uint16_t>(half_bits(*m));
  for (int j = 0; j < 16; ++j) w.put<uint8_t>(static_cast<uint8_t>(nibbles[j] | nibbles[j + 16] << 4));
  return w.bytes;
}

// A small file: metadata of several types and one tensor per type this reader knows.
std::string sample_file() {
  Writer w;
  w.header(5, 4);
  w.kv_str("general.architecture", "llama");
  w.kv_u32("llama.block_count", 2);
  w.str("tokenizer.ggml.tokens");  // an array of strings
  w.put<uint32_t>(9);
  w.put<uint32_t>(8);
  w.put<uint64_t>(2);
  w.str("<s>");
  w.str("hi");
  w.str("flag");
  w.put<uint32_t>(7);
  w.put<uint8_t>(1);
  // Data: f32 [2, 3] at 0; f16 [4] at 32; q8_0 [2, 32] at 64; q4_0 [1, 32] at 160; q4_1 [1, 32] at 192.
  w.tensor("f32", {3, 2}, 0, 0);
  w.tensor("f16", {4}, 1, 32);
  w.tensor("q8", {32, 2}, 8, 64);
  w.tensor("q4", {32, 1}, 2, 160);
  w.tensor("q41", {32, 1}, 3, 192);
  w.align();
  Writer data;
  for (float v : {1.f, 2.f, 3.f, 4.f, 5.f, 6.f}) data.put<float>(v);
  data.align();
  for (float v : {0.5f, -1.f, 2.f, 65504.f}) data.put<uint16_t>(half_bits(v));
  data.align();
  std::vector<int8_t> q(32);
  for (int j = 0; j < 32; ++j) q[j] = static_cast<int8_t>(j - 16);
  data.bytes += q8_block(0.25f, q);
  data.bytes += q8_block(-2.f, q);
  data.align();
  std::vector<uint8_t> nib(32);
  for (int j = 0; j < 32; ++j) nib[j] = static_cast<uint8_t>(j % 16);
  data.bytes += q4_block(0.5f, nib);
  data.align();
  data.bytes += q4_block(0.5f, nib, 1.0f);  // the file ends with it: every shorter file is broken
  return w.bytes + data.bytes;
}

}  // namespace

TEST_CASE("GGUF: metadata, tensor table and every type's values", "[io][gguf]") {
  const auto path = write("sample.gguf", sample_file());
  const auto g = io::read_gguf(path.string());
  CHECK(g.version == 3);
  CHECK(g.at("general.architecture") == "llama");
  CHECK(g.at("llama.block_count") == 2);
  CHECK(g.at("tokenizer.ggml.tokens") == nlohmann::json::array({"<s>", "hi"}));
  CHECK(g.at("flag") == true);
  CHECK_THROWS_WITH(g.at("llama.missing"), Contains("llama.missing") && Contains(path.string()));
  REQUIRE(g.tensors.size() == 5);
  CHECK(g.find("f32")->shape == std::vector<int64_t>({2, 3}));
  CHECK(g.find("q8")->shape == std::vector<int64_t>({2, 32}));
  CHECK(io::ggml_type_name(g.find("q41")->type) == "q4_1");

  CHECK(torch::equal(io::gguf_dequantize(g, *g.find("f32")), torch::arange(1, 7, torch::kFloat).view({2, 3})));
  CHECK(torch::equal(io::gguf_dequantize(g, *g.find("f16")), torch::tensor({0.5f, -1.f, 2.f, 65504.f})));
  const auto ramp = torch::arange(-16, 16, torch::kFloat);
  CHECK(torch::equal(io::gguf_dequantize(g, *g.find("q8")), torch::stack({ramp * 0.25, ramp * -2.0})));
  // q4_0: byte j holds inputs j (low nibble) and j + 16 (high); w = (q - 8) d.
  const auto nib = torch::arange(0, 32, torch::kFloat).remainder(16);
  CHECK(torch::equal(io::gguf_dequantize(g, *g.find("q4")), ((nib - 8) * 0.5).view({1, 32})));
  CHECK(torch::equal(io::gguf_dequantize(g, *g.find("q41")), (nib * 0.5 + 1).view({1, 32})));

  const auto q8 = io::gguf_grouped(g, *g.find("q8"));
  CHECK(q8.values.scalar_type() == torch::kInt8);
  CHECK(torch::equal(q8.values, torch::stack({ramp, ramp}).to(torch::kInt8)));
  CHECK(torch::equal(q8.scales, torch::tensor({{0.25f}, {-2.f}}).to(torch::kHalf)));
  const auto q4 = io::gguf_grouped(g, *g.find("q4"));
  CHECK(q4.values.sizes() == torch::IntArrayRef({1, 16}));
  CHECK(q4.values[0][1].item<int64_t>() == (1 | 1 << 4));
  CHECK_THROWS_WITH(io::gguf_grouped(g, *g.find("f32")), Contains("only 2-D q8_0 and q4_0"));
}

TEST_CASE("GGUF: q4_K super-blocks decode their 6-bit scales and minimums", "[io][gguf]") {
  // One block of 256: d = 1, dmin = 0.5; run j gets scale j + 1 and minimum 2 j (all below 64,
  // so runs 4-7 use both the low and the high packing); every nibble is 3.
  Writer w;
  w.header(1, 0);
  w.tensor("k", {256, 1}, 12, 0);
  w.align();
  w.put<uint16_t>(half_bits(1.f));
  w.put<uint16_t>(half_bits(0.5f));
  uint8_t s[12] = {};
  for (int j = 0; j < 8; ++j) {
    const int sc = j + 1 + 48 * (j >= 6), mn = 2 * j + 40 * (j >= 6);  // above 15: the high bits too
    if (j < 4) {
      s[j] = static_cast<uint8_t>(sc);
      s[j + 4] = static_cast<uint8_t>(mn);
    } else {
      s[j + 4] = static_cast<uint8_t>((sc & 15) | (mn & 15) << 4);
      s[j - 4] |= static_cast<uint8_t>((sc >> 4) << 6);
      s[j] |= static_cast<uint8_t>((mn >> 4) << 6);
    }
  }
  for (auto b : s) w.put<uint8_t>(b);
  for (int i = 0; i < 128; ++i) w.put<uint8_t>(0x33);
  const auto g = io::read_gguf(write("k.gguf", w.bytes).string());
  const auto y = io::gguf_dequantize(g, g.tensors[0]).view({8, 32});
  for (int j = 0; j < 8; ++j) {
    INFO("run " << j);
    const double sc = j + 1 + 48 * (j >= 6), mn = 2 * j + 40 * (j >= 6);
    CHECK(y[j][0].item<double>() == Approx(1.0 * sc * 3 - 0.5 * mn));
    CHECK(torch::all(y[j] == y[j][0]).item<bool>());
  }
}

TEST_CASE("GGUF: hostile headers are named errors, never a crash or a huge allocation", "[io][gguf][hostile]") {
  const auto good = sample_file();
  // Every truncation of the file: the header's ones fail in the header, the data's name a tensor.
  for (size_t n = 0; n < good.size(); ++n) {
    INFO("first " << n << " bytes");
    const auto path = write("cut.gguf", good.substr(0, n));
    CHECK_THROWS_AS(io::read_gguf(path.string()), Error);
  }
  const auto fails = [](const std::string& bytes, const std::string& text) {
    INFO(text);
    CHECK_THROWS_WITH(io::read_gguf(write("bad.gguf", bytes).string()), Contains(text));
  };
  fails("GGML" + good.substr(4), "not a GGUF file");
  {
    auto v1 = good;
    v1[4] = 1;
    fails(v1, "version 1");
  }
  Writer w;
  w.header(uint64_t{1} << 60, 0);
  fails(w.bytes + std::string(64, '\0'), "more than the file could hold");
  w.header(0, 1);
  w.str("k");
  w.put<uint32_t>(8);
  w.put<uint64_t>(uint64_t{1} << 62);  // a string "longer" than the file
  fails(w.bytes, "bytes long");
  w.header(0, 1);
  w.str("k");
  w.put<uint32_t>(9);
  w.put<uint32_t>(4);
  w.put<uint64_t>(uint64_t{1} << 61);  // an array "longer" than the file
  fails(w.bytes, "claims");
  w.header(0, 1);
  w.str("k");
  w.put<uint32_t>(9);
  w.put<uint32_t>(0);                        // u8
  w.put<uint64_t>((uint64_t{1} << 24) + 1);  // fits in the file, but past the reader's element budget
  fails(w.bytes + std::string((size_t{1} << 24) + 1, '\0'), "array elements past");
  w.header(0, 1);
  w.str("k");
  w.put<uint32_t>(77);
  fails(w.bytes + std::string(16, '\0'), "unknown value type 77");
  w.header(0, 1);
  w.str("k");
  w.put<uint32_t>(7);
  w.put<uint8_t>(2);
  fails(w.bytes, "bool");
  w.header(0, 2);
  w.kv_u32("k", 1);
  w.kv_u32("k", 2);
  fails(w.bytes, "appears twice");
  w.header(0, 1);
  w.kv_u32("general.alignment", 24);
  fails(w.bytes, "power of two");
  const auto one_tensor = [](std::vector<uint64_t> ne, uint32_t type, uint64_t offset, size_t data) {
    Writer t;
    t.header(1, 0);
    t.tensor("t", std::move(ne), type, offset);
    t.align();
    return t.bytes + std::string(data, '\0');
  };
  fails(one_tensor({4, 4, 4, 4, 4}, 0, 0, 64), "5 dimensions");
  fails(one_tensor({0, 4}, 0, 0, 64), "dimension of 0");
  fails(one_tensor({uint64_t{1} << 35, uint64_t{1} << 35}, 0, 0, 64), "too large");
  fails(one_tensor({32}, 7, 0, 64), "ggml type 7");
  fails(one_tensor({48}, 2, 0, 64), "not a whole number of 32-wide blocks");
  fails(one_tensor({4}, 0, 8, 64), "not a multiple of the alignment");
  fails(one_tensor({64}, 0, 0, 64), "beyond the end of the file");
  fails(one_tensor({8}, 0, uint64_t{1} << 63, 64), "beyond the end of the file");
  Writer twice;
  twice.header(2, 0);
  twice.tensor("t", {4}, 0, 0);
  twice.tensor("t", {4}, 0, 32);
  fails(twice.bytes + std::string(128, '\0'), "appears twice");
}
