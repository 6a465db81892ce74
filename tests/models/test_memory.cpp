// memory.h: the weights' move into 2 MiB pages keeps every value, every shared storage and
// training, and leaves small tensors and MINIGPT4_HUGE_PAGES=0 alone.
#include "minigpt4/models/memory.h"

#include <catch2/catch.hpp>
#include <torch/torch.h>

#include <cstdint>
#include <cstdlib>
#include <fstream>
#include <string>

using namespace minigpt4;

namespace {

constexpr int64_t kHugePage = int64_t{2} << 20;

// A weight of 3 MiB, the same tensor registered in a second module (a tied lm_head), a view
// into it registered as a buffer, and a small bias.
struct Holder : torch::nn::Module {
  torch::Tensor weight, bias, rows;
  std::shared_ptr<torch::nn::Module> tied = std::make_shared<torch::nn::Module>();
  Holder() {
    weight = register_parameter("weight", torch::randn({768, 1024}));
    bias = register_parameter("bias", torch::randn({1024}));
    rows = register_buffer("rows", weight.detach().narrow(0, 10, 100));
    tied->register_parameter("weight", weight);
    register_module("tied", tied);
  }
};

bool kernel_allows_huge_pages() {
  std::ifstream setting("/sys/kernel/mm/transparent_hugepage/enabled");
  std::string line;
  return std::getline(setting, line) && line.find("[never]") == std::string::npos;
}

uintptr_t address(const torch::Tensor& t) { return reinterpret_cast<uintptr_t>(t.data_ptr()); }

}  // namespace

TEST_CASE("move_to_huge_pages keeps values, shared storages and gradients", "[models]") {
  torch::manual_seed(0);
  Holder holder;
  const auto weight = holder.weight.detach().clone(), bias = holder.bias.detach().clone();
  const auto bias_address = address(holder.bias);

  const int64_t moved = move_to_huge_pages(holder);
  if (kernel_allows_huge_pages() && std::getenv("MINIGPT4_HUGE_PAGES") == nullptr) {
    CHECK(moved == 768 * 1024 * 4);  // the weight's storage once, not the tied copy or the view
    CHECK(address(holder.weight) % kHugePage == 0);
  } else {
    WARN("transparent huge pages are off here: only the values are checked");
  }
  CHECK(torch::equal(holder.weight, weight));
  CHECK(torch::equal(holder.bias, bias));
  CHECK(address(holder.bias) == bias_address);  // below 2 MiB: left where it was
  // The tied module still holds the very same tensor, the view still looks into it.
  CHECK(holder.tied->named_parameters()["weight"].data_ptr() == holder.weight.data_ptr());
  CHECK(holder.named_buffers()["rows"].data_ptr() == holder.weight[10].data_ptr());
  CHECK(torch::equal(holder.named_buffers()["rows"], weight.narrow(0, 10, 100)));

  // Still a trainable parameter.
  REQUIRE(holder.weight.requires_grad());
  holder.weight.sum().backward();
  REQUIRE(holder.weight.grad().defined());
  CHECK(torch::equal(holder.weight.grad(), torch::ones_like(weight)));
  {
    torch::NoGradGuard no_grad;
    holder.weight.add_(1.0);
  }
  CHECK(torch::equal(holder.named_buffers()["rows"], weight.narrow(0, 10, 100) + 1.0));
}

TEST_CASE("MINIGPT4_HUGE_PAGES=0 leaves the weights where they are", "[models]") {
  Holder holder;
  const auto before = address(holder.weight);
  setenv("MINIGPT4_HUGE_PAGES", "0", 1);
  const int64_t moved = move_to_huge_pages(holder);
  unsetenv("MINIGPT4_HUGE_PAGES");
  CHECK(moved == 0);
  CHECK(address(holder.weight) == before);
}
