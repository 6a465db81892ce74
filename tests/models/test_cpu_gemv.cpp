// The decode GEMVs (minigpt4/models/cpu_gemv.h) against ATen's product on the same values:
// widths that are and are not multiples of the vector length, 1-4 rows, with and without
// bias, and the cases the kernels must hand back (more rows, autograd, other dtypes).
#include "minigpt4/models/cpu_gemv.h"
#include "minigpt4/models/layers.h"
#include "minigpt4/models/quantize.h"

#include <ATen/Parallel.h>
#include <catch2/catch.hpp>
#include <torch/torch.h>

#include <atomic>
#include <iostream>

using namespace minigpt4;

namespace {

// Widths: below one vector, ragged tails, exact multiples, and a decoder's.
const std::vector<int64_t> kWidths = {5, 16, 31, 32, 33, 64, 100, 344, 2048};

double max_relative_error(const torch::Tensor& got, const torch::Tensor& want) {
  const auto scale = want.abs().max().item<double>() + 1e-6;
  return (got.to(torch::kFloat) - want).abs().max().item<double>() / scale;
}

}  // namespace

TEST_CASE("bf16 GEMV equals the float32 product of the same bf16 values", "[cpu_gemv]") {
  if (!cpu_gemv::bf16_available()) {
    std::cout << "skipped: this CPU has no AVX512-BF16 (or MINIGPT4_CPU_GEMV=0); ATen's path runs instead\n";
    return;
  }
  torch::manual_seed(0);
  for (const int64_t K : kWidths) {
    for (const int64_t M : {1, 2, 3, 4}) {
      for (const bool with_bias : {false, true}) {
        const int64_t N = 37 + K % 7;
        const auto x = torch::randn({M, 1, K}).to(torch::kBFloat16);
        const auto w = (torch::randn({N, K}) / std::sqrt(double(K))).to(torch::kBFloat16);
        const auto b = with_bias ? torch::randn({N}).to(torch::kBFloat16) : torch::Tensor();
        const auto y = cpu_gemv::linear_bf16(x, w, b);
        REQUIRE(y.defined());
        CHECK(y.scalar_type() == torch::kBFloat16);
        CHECK(y.sizes() == torch::IntArrayRef({M, 1, N}));
        // Exact products of bf16 values summed in float32; the only rounding left is the
        // output's to bf16 (8 bits of mantissa) and the order of the float32 sums.
        const auto want = torch::linear(x.to(torch::kFloat), w.to(torch::kFloat),
                                        with_bias ? b.to(torch::kFloat) : torch::Tensor());
        INFO("K " << K << " M " << M << " bias " << with_bias);
        CHECK(max_relative_error(y, want) < 8e-3);
      }
    }
  }
}

TEST_CASE("int8 GEMV equals the product with the dequantised weight", "[cpu_gemv]") {
  if (!cpu_gemv::int8_available()) {
    std::cout << "skipped: this CPU has no AVX-512 (or MINIGPT4_CPU_GEMV=0); ATen's path runs instead\n";
    return;
  }
  torch::manual_seed(1);
  for (const int64_t K : kWidths) {
    for (const int64_t M : {1, 4}) {
      for (const auto dtype : {torch::kFloat, torch::kBFloat16}) {
        const int64_t N = 29 + K % 5;
        const auto q = quantize_int8(torch::randn({N, K}) / std::sqrt(double(K)));
        const auto x = torch::randn({M, K}).to(dtype);
        const auto y = cpu_gemv::linear_int8(x, q.values, q.scales);
        REQUIRE(y.defined());
        CHECK(y.scalar_type() == dtype);
        const auto want = torch::linear(x.to(torch::kFloat), dequantize_int8(q.values, q.scales, torch::kFloat));
        INFO("K " << K << " M " << M << " dtype " << dtype);
        CHECK(max_relative_error(y, want) < (dtype == torch::kFloat ? 1e-5 : 8e-3));
      }
    }
  }
}

TEST_CASE("the GEMVs hand back what they do not handle", "[cpu_gemv]") {
  const auto w = torch::randn({8, 32}).to(torch::kBFloat16);
  // Five rows are a GEMM; float32 weights are ATen's; a shape mismatch is not ours to report.
  CHECK_FALSE(cpu_gemv::linear_bf16(torch::randn({5, 32}).to(torch::kBFloat16), w, {}).defined());
  CHECK_FALSE(cpu_gemv::linear_bf16(torch::randn({1, 32}), w.to(torch::kFloat), {}).defined());
  CHECK_FALSE(cpu_gemv::linear_bf16(torch::randn({1, 31}).to(torch::kBFloat16), w, {}).defined());
  const auto q = quantize_int8(torch::randn({8, 32}));
  CHECK_FALSE(cpu_gemv::linear_int8(torch::randn({5, 32}), q.values, q.scales).defined());
  CHECK_FALSE(cpu_gemv::linear_int8(torch::randn({1, 32}).to(torch::kHalf), q.values, q.scales).defined());
}

TEST_CASE("Linear keeps autograd: a bf16 input that needs a gradient takes ATen's path", "[cpu_gemv]") {
  Linear linear(32, 8, /*bias=*/true, torch::TensorOptions().dtype(torch::kBFloat16));
  linear.reset_parameters();
  const auto x = torch::randn({1, 32}).to(torch::kBFloat16).requires_grad_(true);
  const auto y = linear.forward(x);
  REQUIRE(y.requires_grad());
  y.sum().backward();
  CHECK(x.grad().defined());
  // Without autograd the two paths agree to bf16's rounding.
  torch::NoGradGuard no_grad;
  const auto fast = linear.forward(x.detach());
  const auto aten = torch::linear(x.detach(), linear.weight, linear.bias);
  CHECK(max_relative_error(fast, aten.to(torch::kFloat)) < 8e-3);
}

// at::parallel_for is inlined from LibTorch's headers and splits work only in translation
// units compiled with OpenMP (CMakeLists.txt links OpenMP::OpenMP_CXX to everything); without
// it the kernels above silently ran on one thread at half the speed.
TEST_CASE("at::parallel_for runs on more than one thread where LibTorch has several", "[cpu_gemv]") {
  const int threads = at::get_num_threads();
  if (threads < 2) {
    std::cout << "skipped: LibTorch has " << threads << " intra-op thread here\n";
    return;
  }
  std::vector<std::atomic<int>> used(static_cast<size_t>(threads));
  at::parallel_for(0, 1024, 1, [&](int64_t, int64_t) { used[static_cast<size_t>(at::get_thread_num())] = 1; });
  int distinct = 0;
  for (const auto& u : used) distinct += u.load();
  CHECK(distinct > 1);
}
