#pragma once
// The integer tensors of a fixture's io.safetensors as plain vectors, for tests that compare
// token ids (tokenizer, chat) without tensor arithmetic.
#include "minigpt4/common/error.h"
#include "minigpt4/io/safetensors.h"

#include <torch/torch.h>

#include <filesystem>
#include <optional>
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
  explicit I64Safetensors(const std::filesystem::path& path)
      : path_(path), tensors_(io::load_safetensors(path.string())) {}

  bool contains(const std::string& name) const { return tensors_.count(name) > 0; }

  std::optional<I64Tensor> get(const std::string& name) const {
    if (!contains(name)) return std::nullopt;
    const auto& t = tensors_.at(name);
    if (t.scalar_type() != torch::kLong) fail("{} in {} is not I64", name, path_.string());
    const auto flat = t.contiguous().view(-1);
    return I64Tensor{t.sizes().vec(),
                     std::vector<int64_t>(flat.data_ptr<int64_t>(), flat.data_ptr<int64_t>() + flat.numel())};
  }

 private:
  std::filesystem::path path_;
  StateDict tensors_;
};

}  // namespace minigpt4::test
