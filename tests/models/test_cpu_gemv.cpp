// The decode GEMVs (minigpt4/models/cpu_gemv.h) against ATen's product on the same values:
// widths that are and are not multiples of the vector length, 1-8 rows, with and without
// bias, and the cases the kernels must hand back (more rows, autograd, other dtypes).
#include "minigpt4/models/cpu_gemv.h"
#include "minigpt4/models/layers.h"
#include "minigpt4/models/quantize.h"
#include "tests/support/skip.h"

#include <ATen/Parallel.h>
#include <catch2/catch.hpp>
#include <torch/torch.h>

#include <algorithm>
#include <atomic>
#include <cstdlib>
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

namespace {

// Every family this CPU runs for a dtype, ATen's excluded, each forced in turn; the guard puts
// the process's own choice back.
struct ForcedKernels {
  cpu_gemv::Choice saved = cpu_gemv::chosen();
  ~ForcedKernels() { cpu_gemv::set_choice(saved); }
};

std::vector<cpu_gemv::Kernels> ours(torch::Dtype weight_dtype) {
  std::vector<cpu_gemv::Kernels> out;
  for (const auto k : cpu_gemv::runnable(weight_dtype))
    if (k != cpu_gemv::Kernels::aten) out.push_back(k);
  return out;
}

// For the tests of our kernels: true (and the test is reported skipped) where this CPU runs
// none of them for any of `dtypes`.
bool none_of_ours(std::initializer_list<torch::Dtype> dtypes) {
  for (const auto dtype : dtypes)
    if (!ours(dtype).empty()) return false;
  test::skip_test("this CPU runs none of cpu_gemv's kernels for these weights (" + cpu_gemv::describe() + ")");
  return true;
}

}  // namespace

TEST_CASE("bf16 and float32 GEMVs equal the float32 product of the same values, on every kernel family",
          "[cpu_gemv][conditional][needs_cpu_kernels]") {
  if (none_of_ours({torch::kBFloat16, torch::kFloat})) return;
  ForcedKernels restore;
  torch::manual_seed(0);
  for (const auto dtype : {torch::kBFloat16, torch::kFloat}) {
    for (const auto family : ours(dtype)) {
      auto choice = cpu_gemv::chosen();
      (dtype == torch::kBFloat16 ? choice.bf16 : choice.f32) = family;
      cpu_gemv::set_choice(choice);
      for (const int64_t K : kWidths) {
        for (const int64_t M : {1, 2, 3, 4, 5, 7, 8}) {
          for (const bool with_bias : {false, true}) {
            // Few rows as well as many: a thread's rows go four distant ones per pass, and the
            // few left over one at a time.
            const int64_t N = K < 64 ? 5 + K % 7 : 37 + K % 7;
            const auto x = torch::randn({M, 1, K}).to(dtype);
            const auto w = (torch::randn({N, K}) / std::sqrt(double(K))).to(dtype);
            const auto b = with_bias ? torch::randn({N}).to(dtype) : torch::Tensor();
            const auto y = dtype == torch::kBFloat16 ? cpu_gemv::linear_bf16(x, w, b) : cpu_gemv::linear_f32(x, w, b);
            INFO("kernels " << cpu_gemv::name(family) << " dtype " << dtype << " K " << K << " M " << M << " bias "
                            << with_bias);
            REQUIRE(y.defined());
            CHECK(y.scalar_type() == dtype);
            CHECK(y.sizes() == torch::IntArrayRef({M, 1, N}));
            // Exact products summed in float32; the only rounding left is the output's (8
            // bits of mantissa in bf16) and the order of the float32 sums.
            const auto want = torch::linear(x.to(torch::kFloat), w.to(torch::kFloat),
                                            with_bias ? b.to(torch::kFloat) : torch::Tensor());
            CHECK(max_relative_error(y, want) < (dtype == torch::kFloat ? 1e-5 : 8e-3));
          }
        }
      }
    }
  }
}

TEST_CASE("int8 GEMV equals the product with the dequantised weight, on every kernel family",
          "[cpu_gemv][conditional][needs_cpu_kernels]") {
  if (none_of_ours({torch::kChar})) return;
  ForcedKernels restore;
  torch::manual_seed(1);
  for (const auto family : ours(torch::kChar)) {
    auto choice = cpu_gemv::chosen();
    choice.int8 = family;
    cpu_gemv::set_choice(choice);
    for (const int64_t K : kWidths) {
      for (const int64_t M : {1, 2, 3, 4, 5, 7, 8}) {
        for (const auto dtype : {torch::kFloat, torch::kBFloat16}) {
          const int64_t N = K < 64 ? 4 + K % 5 : 29 + K % 5;  // few rows as well as many (above)
          const auto q = quantize_int8(torch::randn({N, K}) / std::sqrt(double(K)));
          const auto x = torch::randn({M, K}).to(dtype);
          const auto y = cpu_gemv::linear_int8(x, q.values, q.scales);
          INFO("kernels " << cpu_gemv::name(family) << " K " << K << " M " << M << " dtype " << dtype);
          REQUIRE(y.defined());
          CHECK(y.scalar_type() == dtype);
          const auto want = torch::linear(x.to(torch::kFloat), dequantize_int8(q.values, q.scales, torch::kFloat));
          // avx2 multiplies int16 activations (per 256 inputs, 1.5e-5 of the block's largest value
          // at most per input), avx512 float32 ones.
          CHECK(max_relative_error(y, want) < (dtype == torch::kFloat ? 1e-4 : 8e-3));
        }
      }
    }
  }
}

TEST_CASE("linear_row, the fused decode step's entry, equals the tensor product on every family",
          "[cpu_gemv][conditional][needs_cpu_kernels]") {
  if (none_of_ours({torch::kFloat, torch::kBFloat16, torch::kChar})) return;
  ForcedKernels restore;
  torch::manual_seed(2);
  for (const auto dtype : {torch::kFloat, torch::kBFloat16, torch::kChar}) {
    for (const auto family : ours(dtype)) {
      auto choice = cpu_gemv::chosen();
      (dtype == torch::kFloat ? choice.f32 : dtype == torch::kBFloat16 ? choice.bf16 : choice.int8) = family;
      cpu_gemv::set_choice(choice);
      for (const int64_t K : {33, 2048}) {
        const int64_t N = 45;
        const auto x = torch::randn({K}).to(torch::kBFloat16).to(torch::kFloat);  // values a bf16 holds
        torch::Tensor w, scales, want;
        if (dtype == torch::kChar) {
          const auto q = quantize_int8(torch::randn({N, K}));
          w = q.values, scales = q.scales;
          want = torch::mv(dequantize_int8(q.values, q.scales, torch::kFloat), x);
        } else {
          w = torch::randn({N, K}).to(dtype);
          want = torch::mv(w.to(torch::kFloat), x);
        }
        REQUIRE(cpu_gemv::row_available(w.scalar_type()));
        std::vector<float> y(N);
        cpu_gemv::linear_row(w, scales, x.data_ptr<float>(), K, y.data());
        INFO("kernels " << cpu_gemv::name(family) << " dtype " << dtype << " K " << K);
        CHECK(max_relative_error(torch::from_blob(y.data(), {N}).clone(), want) <
              (dtype == torch::kChar ? 1e-4 : 1e-5));
      }
    }
  }
}

TEST_CASE("a bf16 prompt through float32 blocks equals the float32 product of the same values", "[cpu_gemv]") {
  ForcedKernels restore;
  torch::manual_seed(3);
  auto choice = cpu_gemv::chosen();
  choice.bf16_prompt_float32 = true;
  cpu_gemv::set_choice(choice);
  for (const int64_t K : {31, 344, 2048}) {
    // 700 output rows: more than one block of rows at K = 2048 (blocks of 2 MiB of float32).
    const int64_t N = 700, M = 9;
    const auto x = torch::randn({1, M, K}).to(torch::kBFloat16);
    const auto w = (torch::randn({N, K}) / std::sqrt(double(K))).to(torch::kBFloat16);
    const auto b = torch::randn({N}).to(torch::kBFloat16);
    const auto y = cpu_gemv::linear_bf16_prompt(x, w, b);
    REQUIRE(y.defined());
    CHECK(y.scalar_type() == torch::kBFloat16);
    CHECK(y.sizes() == torch::IntArrayRef({1, M, N}));
    const auto want = torch::linear(x.to(torch::kFloat), w.to(torch::kFloat), b.to(torch::kFloat));
    INFO("K " << K);
    CHECK(max_relative_error(y, want) < 8e-3);
    // Through Linear::forward too: the prompt path is what a bf16 model's prefill runs.
    Linear linear(K, N, /*bias=*/true, torch::TensorOptions().dtype(torch::kBFloat16));
    {
      torch::NoGradGuard no_grad;
      linear.weight.copy_(w);
      linear.bias.copy_(b);
    }
    torch::NoGradGuard no_grad;
    CHECK(max_relative_error(linear.forward(x), want) < 8e-3);
  }
  // A few rows stay a GEMV.
  CHECK_FALSE(cpu_gemv::linear_bf16_prompt(torch::randn({4, 32}).to(torch::kBFloat16),
                                           torch::randn({8, 32}).to(torch::kBFloat16), {})
                  .defined());
  choice.bf16_prompt_float32 = false;
  cpu_gemv::set_choice(choice);
  CHECK_FALSE(cpu_gemv::linear_bf16_prompt(torch::randn({9, 32}).to(torch::kBFloat16),
                                           torch::randn({8, 32}).to(torch::kBFloat16), {})
                  .defined());
}

TEST_CASE("a prompt through our GEMM equals the product of the same values, for every weight kind", "[cpu_gemv]") {
  if (std::find(cpu_gemv::runnable(torch::kFloat).begin(), cpu_gemv::runnable(torch::kFloat).end(),
                cpu_gemv::Kernels::avx2) == cpu_gemv::runnable(torch::kFloat).end()) {
    test::skip_test("this CPU has no AVX2 with FMA: no prompt GEMM of ours (" + cpu_gemv::describe() + ")");
    return;
  }
  ForcedKernels restore;
  auto choice = cpu_gemv::chosen();
  choice.gemm = cpu_gemv::Kernels::avx2;
  cpu_gemv::set_choice(choice);
  torch::manual_seed(11);
  // Rows: one panel of 8 or 16 and ragged ones, and more than one chunk of 256; outputs: below
  // and across the 6-row tile and several blocks; inputs: below a vector, ragged, across
  // blocks of 256.
  struct Shape {
    int64_t M, N, K;
  };
  for (const Shape s : {Shape{9, 5, 5}, Shape{16, 13, 31}, Shape{17, 100, 300}, Shape{37, 700, 96}, Shape{300, 61, 520},
                        Shape{64, 97, 2048}}) {
    const auto x = torch::randn({s.M, s.K});
    const auto w = torch::randn({s.N, s.K}) / std::sqrt(double(s.K));
    const auto reference = [&](const torch::Tensor& dense) {
      return torch::mm(x.to(torch::kDouble), dense.to(torch::kDouble).t()).to(torch::kFloat);
    };
    INFO("M " << s.M << " N " << s.N << " K " << s.K);
    // float32, bf16 (the same values widened exactly), per-channel int8 (scaled).
    CHECK(max_relative_error(cpu_gemv::prompt_mm(x, w, {}), reference(w)) < 1e-5);
    const auto w16 = w.to(torch::kBFloat16);
    CHECK(max_relative_error(cpu_gemv::prompt_mm(x, w16, {}), reference(w16)) < 1e-5);
    CHECK(max_relative_error(cpu_gemv::prompt_mm(x.to(torch::kBFloat16), w16, {}),
                             reference(w16).to(torch::kBFloat16).to(torch::kFloat)) < 1e-2);
    const auto q = quantize_int8(w);
    CHECK(max_relative_error(cpu_gemv::prompt_mm(x, q.values, q.scales),
                             reference(dequantize_int8(q.values, q.scales, torch::kFloat))) < 1e-5);
    // Group-wise, 8 and 4 bits (a width below the padded one reads only its own inputs).
    for (const int bits : {8, 4}) {
      const auto g = quantize_grouped(w, bits, 32);
      const auto y = cpu_gemv::prompt_mm(x, g.values, g.scales);
      INFO(bits << " bits");
      if (cpu_gemv::runnable(torch::kByte).size() < 2) {
        CHECK_FALSE(y.defined());  // no F16C: the float16 scales have no reader of ours
        continue;
      }
      CHECK(max_relative_error(y, reference(dequantize_grouped(g.values, g.scales, s.K, torch::kFloat))) < 1e-5);
    }
    // Through Linear::forward: a float32 model's prefill.
    Linear linear(s.K, s.N, /*bias=*/true, torch::TensorOptions());
    {
      torch::NoGradGuard no_grad;
      linear.weight.copy_(w);
      linear.bias.normal_();
    }
    torch::NoGradGuard no_grad;
    const auto want = torch::linear(x.to(torch::kDouble), w.to(torch::kDouble), linear.bias.to(torch::kDouble));
    CHECK(max_relative_error(linear.forward(x.unsqueeze(0)).squeeze(0), want.to(torch::kFloat)) < 1e-5);
  }
  // A few rows stay a GEMV; MKL's choice hands everything back.
  CHECK_FALSE(cpu_gemv::linear_f32_prompt(torch::randn({cpu_gemv::kMaxRows, 32}), torch::randn({8, 32}), {}).defined());
  CHECK(cpu_gemv::linear_f32_prompt(torch::randn({cpu_gemv::kMaxRows + 1, 32}), torch::randn({8, 32}), {}).defined());
  choice.gemm = cpu_gemv::Kernels::aten;
  cpu_gemv::set_choice(choice);
  CHECK_FALSE(cpu_gemv::prompt_mm(torch::randn({20, 32}), torch::randn({8, 32}), {}).defined());
  choice.gemm = cpu_gemv::Kernels::avx512;
  CHECK_THROWS_WITH(cpu_gemv::set_choice(choice), Catch::Contains("no avx512 prompt GEMM"));
}

TEST_CASE("MINIGPT4_CPU_KERNELS=aten: every product is handed back to ATen", "[cpu_gemv]") {
  ForcedKernels restore;
  cpu_gemv::set_choice({cpu_gemv::Kernels::aten, cpu_gemv::Kernels::aten, cpu_gemv::Kernels::aten});
  const auto q = quantize_int8(torch::randn({8, 32}));
  CHECK_FALSE(
      cpu_gemv::linear_bf16(torch::randn({1, 32}).to(torch::kBFloat16), torch::randn({8, 32}).to(torch::kBFloat16), {})
          .defined());
  CHECK_FALSE(cpu_gemv::linear_f32(torch::randn({1, 32}), torch::randn({8, 32}), {}).defined());
  CHECK_FALSE(cpu_gemv::linear_int8(torch::randn({1, 32}), q.values, q.scales).defined());
  CHECK_FALSE(cpu_gemv::row_available(torch::kFloat));
  CHECK_FALSE(cpu_gemv::row_available(torch::kBFloat16));
}

TEST_CASE("the automatic choice is the widest family this CPU runs (float32: MKL on Intel)",
          "[cpu_gemv][conditional][needs_automatic_kernel_choice]") {
  if (std::getenv("MINIGPT4_CPU_KERNELS") != nullptr || std::getenv("MINIGPT4_CPU_GEMV") != nullptr) {
    test::skip_test("MINIGPT4_CPU_KERNELS / MINIGPT4_CPU_GEMV force the choice in this run");
    return;
  }
  ForcedKernels restore;
  const auto automatic = restore.saved;
  CHECK(automatic.int8 == cpu_gemv::runnable(torch::kChar).back());
  CHECK(automatic.bf16 == cpu_gemv::runnable(torch::kBFloat16).back());
  const bool intel = cpu_gemv::describe().find("(GenuineIntel)") != std::string::npos;
  CHECK(automatic.f32 == (intel ? cpu_gemv::Kernels::aten : cpu_gemv::runnable(torch::kFloat).back()));
  const bool amx = cpu_gemv::describe().find("amx_bf16 yes") != std::string::npos;
  CHECK(automatic.bf16_prompt_float32 == !amx);
  const auto described = cpu_gemv::describe();
  const bool int8_dots = described.find("avx512_vnni yes") != std::string::npos ||
                         described.find("avx_vnni yes") != std::string::npos ||
                         described.find("amx_int8 yes") != std::string::npos;
  CHECK(automatic.int8_prompt_llm_int8 == int8_dots);
  const bool avx2 = described.find("avx2+fma yes") != std::string::npos;
  CHECK(automatic.gemm == (avx2 && !intel ? cpu_gemv::Kernels::avx2 : cpu_gemv::Kernels::aten));
}

TEST_CASE("kernels this CPU cannot run are refused, naming what is missing", "[cpu_gemv]") {
  ForcedKernels restore;
  for (const auto dtype : {torch::kFloat, torch::kBFloat16, torch::kChar}) {
    const auto can = cpu_gemv::runnable(dtype);
    CHECK(can.front() == cpu_gemv::Kernels::aten);
    for (const auto family : {cpu_gemv::Kernels::avx2, cpu_gemv::Kernels::avx512}) {
      if (std::find(can.begin(), can.end(), family) != can.end()) continue;
      cpu_gemv::Choice choice;
      (dtype == torch::kFloat ? choice.f32 : dtype == torch::kBFloat16 ? choice.bf16 : choice.int8) = family;
      CHECK_THROWS_WITH(cpu_gemv::set_choice(choice), Catch::Contains("this CPU has no"));
    }
  }
  CHECK_THAT(cpu_gemv::describe(), Catch::Contains("int8  weights"));
}

TEST_CASE("the GEMVs hand back what they do not handle", "[cpu_gemv]") {
  const auto w = torch::randn({8, 32}).to(torch::kBFloat16);
  // More than kMaxRows rows are a GEMM; a weight of another dtype is not theirs; a shape mismatch is not
  // ours to report.
  CHECK_FALSE(cpu_gemv::linear_bf16(torch::randn({cpu_gemv::kMaxRows + 1, 32}).to(torch::kBFloat16), w, {}).defined());
  CHECK_FALSE(cpu_gemv::linear_bf16(torch::randn({1, 32}), w.to(torch::kFloat), {}).defined());
  CHECK_FALSE(cpu_gemv::linear_bf16(torch::randn({1, 31}).to(torch::kBFloat16), w, {}).defined());
  CHECK_FALSE(cpu_gemv::linear_f32(torch::randn({cpu_gemv::kMaxRows + 1, 32}), w.to(torch::kFloat), {}).defined());
  CHECK_FALSE(cpu_gemv::linear_f32(torch::randn({1, 32}), w, {}).defined());
  const auto q = quantize_int8(torch::randn({8, 32}));
  CHECK_FALSE(cpu_gemv::linear_int8(torch::randn({cpu_gemv::kMaxRows + 1, 32}), q.values, q.scales).defined());
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
TEST_CASE("at::parallel_for runs on more than one thread where LibTorch has several",
          "[cpu_gemv][conditional][needs_threads]") {
  const int threads = at::get_num_threads();
  if (threads < 2) {
    test::skip_test("LibTorch has " + std::to_string(threads) + " intra-op thread here");
    return;
  }
  std::vector<std::atomic<int>> used(static_cast<size_t>(threads));
  at::parallel_for(0, 1024, 1, [&](int64_t, int64_t) { used[static_cast<size_t>(at::get_thread_num())] = 1; });
  int distinct = 0;
  for (const auto& u : used) distinct += u.load();
  CHECK(distinct > 1);
}
