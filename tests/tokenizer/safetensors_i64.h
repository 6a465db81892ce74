#pragma once
// A tiny safetensors reader for the integer (I64) tensors of a fixture's io.safetensors, so
// the tokenizer and chat tests need neither torch nor the io library. Format: 8-byte
// little-endian header length N, N bytes of JSON {name: {dtype, shape, data_offsets}}, data.
#include <nlohmann/json.hpp>

#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

namespace minigpt4::test {

struct I64Tensor {
  std::vector<int64_t> shape;
  std::vector<int64_t> values;  // row-major

  // Row r of a 2-D tensor.
  std::vector<int64_t> row(int64_t r) const {
    const int64_t cols = shape.at(1);
    return {values.begin() + r * cols, values.begin() + (r + 1) * cols};
  }
};

class I64Safetensors {
 public:
  explicit I64Safetensors(const std::filesystem::path& path) : path_(path) {
    std::ifstream in(path, std::ios::binary);
    if (!in) throw std::runtime_error("cannot open " + path.string());
    uint64_t n = 0;
    unsigned char len[8];
    in.read(reinterpret_cast<char*>(len), 8);
    for (int i = 7; i >= 0; --i) n = (n << 8) | len[i];
    std::string header(n, '\0');
    in.read(header.data(), static_cast<std::streamsize>(n));
    header_ = nlohmann::json::parse(header);
    data_start_ = 8 + n;
  }

  bool contains(const std::string& name) const { return header_.contains(name); }

  std::optional<I64Tensor> get(const std::string& name) const {
    if (!contains(name)) return std::nullopt;
    const auto& info = header_.at(name);
    if (info.at("dtype") != "I64")
      throw std::runtime_error(name + " in " + path_.string() + " is not I64");
    I64Tensor t;
    t.shape = info.at("shape").get<std::vector<int64_t>>();
    const auto begin = info.at("data_offsets").at(0).get<uint64_t>();
    const auto end = info.at("data_offsets").at(1).get<uint64_t>();
    std::ifstream in(path_, std::ios::binary);
    in.seekg(static_cast<std::streamoff>(data_start_ + begin));
    std::vector<unsigned char> bytes(end - begin);
    in.read(reinterpret_cast<char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
    t.values.resize(bytes.size() / 8);
    for (size_t i = 0; i < t.values.size(); ++i) {  // little-endian on disk, whatever the host
      uint64_t v = 0;
      for (int b = 7; b >= 0; --b) v = (v << 8) | bytes[i * 8 + b];
      std::memcpy(&t.values[i], &v, 8);
    }
    return t;
  }

 private:
  std::filesystem::path path_;
  nlohmann::json header_;
  uint64_t data_start_ = 0;
};

}  // namespace minigpt4::test
