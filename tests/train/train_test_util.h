#pragma once
// Helpers for the training tests: a scratch directory and a tiny module whose parameter
// names exercise the weight-decay rule (bias, ln, bn, 1-D, a frozen part).
#include <catch2/catch.hpp>
#include <torch/torch.h>
#include <unistd.h>

#include <filesystem>
#include <string>

namespace minigpt4::test {

// A fresh directory under the system temp dir, removed with everything in it.
class ScratchDir {
 public:
  explicit ScratchDir(const std::string& tag) {
    static int counter = 0;
    path_ = std::filesystem::temp_directory_path() /
            ("minigpt4_train_" + tag + "_" + std::to_string(::getpid()) + "_" + std::to_string(counter++));
    std::filesystem::remove_all(path_);
    std::filesystem::create_directories(path_);
  }
  ~ScratchDir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  std::string file(const std::string& name) const { return (path_ / name).string(); }
  std::string str() const { return path_.string(); }

 private:
  std::filesystem::path path_;
};

// Trainable: proj.{weight,bias}, ln_final.{weight,bias}, bn.{weight,bias} (unused in forward,
// so never gets a gradient), scale (1-D), kiln_table (2-D but "ln" in its name), table (2-D).
// Frozen: frozen.{weight,bias}.
struct TinyNet : torch::nn::Module {
  TinyNet() {
    proj = register_module("proj", torch::nn::Linear(4, 3));
    ln_final = register_module("ln_final", torch::nn::LayerNorm(torch::nn::LayerNormOptions({3})));
    bn = register_module("bn", torch::nn::BatchNorm1d(3));
    scale = register_parameter("scale", torch::ones({3}));
    kiln_table = register_parameter("kiln_table", torch::randn({2, 3}));
    table = register_parameter("table", torch::randn({3, 3}));
    frozen = register_module("frozen", torch::nn::Linear(3, 2));
    for (auto& p : frozen->parameters()) p.set_requires_grad(false);
  }

  torch::Tensor loss(const torch::Tensor& x, const torch::Tensor& target) {
    auto h = ln_final(proj(x)) * scale;
    h = frozen(h.matmul(table) + kiln_table.sum(0));
    return torch::mse_loss(h, target);
  }

  torch::nn::Linear proj{nullptr}, frozen{nullptr};
  torch::nn::LayerNorm ln_final{nullptr};
  torch::nn::BatchNorm1d bn{nullptr};
  torch::Tensor scale, kiln_table, table;
};

}  // namespace minigpt4::test
