// Group-wise 8- and 4-bit weights (quantize.h, docs/weights.md): the quantiser's error bound
// and q4_0 packing, the kernels (every family this CPU runs) against an independent scalar
// W·A8 product and against the dequantised float product, the prompt path, the config keys,
// and what such a model holds in memory.
#include "minigpt4/common/config.h"
#include "minigpt4/models/cpu_gemv.h"
#include "minigpt4/models/layers.h"
#include "minigpt4/models/memory.h"
#include "minigpt4/models/minigpt4.h"
#include "minigpt4/models/quantize.h"
#include "tests/support/fixtures.h"

#include <catch2/catch.hpp>
#include <torch/torch.h>

#include <cmath>

using namespace minigpt4;
using Catch::Contains;
namespace fs = std::filesystem;

namespace {

struct Format {
  int bits;
  int64_t group;
};
const std::vector<Format> kFormats = {{4, 32}, {4, 64}, {4, 128}, {8, 32}, {8, 64}, {8, 128}};

// Rows of different ranges, a zero row, one outlier, and a width that is not a whole group.
torch::Tensor awkward_weight(int64_t N, int64_t K) {
  auto w = torch::randn({N, K}) * torch::rand({N, 1}) * 3;
  w[2].zero_();
  w[4][K / 2] = 40.0;
  return w;
}

// The product a W·A8 kernel computes, written out in double from the stored integers: each
// run of 32 inputs of x rounded to int8 with scale absmax / 127 (half to even), times the
// integer weights, times both scales.
torch::Tensor reference_w_a8(const torch::Tensor& x, const GroupedWeight& q, int bits, int64_t K) {
  const auto levels = bits == 8 ? q.values.to(torch::kDouble)
                                : torch::cat({torch::bitwise_and(q.values.view({q.values.size(0), -1, 16}), 15),
                                              torch::bitwise_right_shift(q.values.view({q.values.size(0), -1, 16}), 4)},
                                             -1)
                                      .view({q.values.size(0), -1})
                                      .to(torch::kDouble)
                                      .sub(8);
  const int64_t N = levels.size(0), Kp = levels.size(1), G = Kp / q.scales.size(1);
  const auto scales = q.scales.to(torch::kDouble).repeat_interleave(G, 1);  // [N, Kp]
  const auto x32 = torch::zeros({x.size(0), Kp}, torch::kFloat);
  x32.narrow(1, 0, K).copy_(x.to(torch::kFloat));
  auto out = torch::zeros({x.size(0), N}, torch::kDouble);
  for (int64_t r = 0; r < Kp / 32; ++r) {
    const auto xr = x32.narrow(1, r * 32, 32);
    const auto absmax = xr.abs().amax(1, true);
    const auto inverse = torch::where(absmax > 0, 127.0f / absmax, torch::zeros_like(absmax));
    const auto xq = (xr * inverse).round().to(torch::kDouble);  // float32 product, as the kernel
    const auto d = (absmax / 127.0f).to(torch::kDouble);
    const auto wr = (levels.narrow(1, r * 32, 32) * scales.narrow(1, r * 32, 32));
    out += torch::matmul(xq, wr.t()) * d;
  }
  return out;
}

double max_relative_error(const torch::Tensor& got, const torch::Tensor& want) {
  const auto w = want.to(torch::kDouble);
  return (got.to(torch::kDouble) - w).abs().max().item<double>() / (w.abs().max().item<double>() + 1e-12);
}

struct ForcedKernels {
  cpu_gemv::Choice saved = cpu_gemv::chosen();
  ~ForcedKernels() { cpu_gemv::set_choice(saved); }
};

}  // namespace

TEST_CASE("group-wise quantisation is within half a step of every weight, per group", "[models][quantize]") {
  torch::manual_seed(0);
  for (const auto& f : kFormats) {
    for (const int64_t K : {32, 100, 128, 344}) {
      INFO(f.bits << " bits, groups of " << f.group << ", width " << K);
      const auto w = awkward_weight(9, K);
      const auto q = quantize_grouped(w, f.bits, f.group);
      const int64_t Kp = (K + f.group - 1) / f.group * f.group;
      CHECK(q.values.scalar_type() == (f.bits == 8 ? torch::kInt8 : torch::kUInt8));
      CHECK(q.values.sizes() == torch::IntArrayRef({9, f.bits == 8 ? Kp : Kp / 2}));
      CHECK(q.scales.scalar_type() == torch::kHalf);
      CHECK(q.scales.sizes() == torch::IntArrayRef({9, Kp / f.group}));
      CHECK(grouped_group_size(q.values, q.scales) == f.group);
      const auto restored = dequantize_grouped(q.values, q.scales, K, torch::kFloat);
      REQUIRE(restored.sizes() == w.sizes());
      // Each weight's step is its group's scale; 4 bits may clamp the one level +8 to +7.
      auto step = torch::zeros({9, Kp});
      step.copy_(q.scales.to(torch::kFloat).abs().repeat_interleave(f.group, 1));
      step = step.narrow(1, 0, K);
      const auto err = (w - restored).abs();
      CHECK((err <= step * (f.bits == 8 ? 0.5 : 1.0) * (1 + 1e-3) + 1e-7).all().item<bool>());
      CHECK(((err <= step * 0.5 * (1 + 1e-3) + 1e-7).to(torch::kFloat).mean().item<double>() > 0.97));
      CHECK(restored[2].abs().max().item<double>() == 0);
      // The outlier is (nearly) exact: the largest magnitude in its group sets the scale.
      CHECK(restored[4][K / 2].item<double>() == Approx(40.0).epsilon(1e-3));
      // Only the outlier's group pays for it: another group of the same row keeps a fine step.
      if (Kp / f.group > 1) {
        const int64_t other = (K / 2) / f.group == 0 ? 1 : 0;
        CHECK(q.scales[4][other].abs().item<double>() < 1.0);
      }
    }
  }
}

TEST_CASE("4-bit weights are packed as llama.cpp's q4_0 blocks", "[models][quantize]") {
  // Inputs j and j + 16 of each run of 32 share byte j (low, high nibble); a weight w is
  // (nibble - 8) * d with d = m / -8 for the group's largest magnitude m.
  auto w = torch::zeros({1, 64});
  for (int64_t j = 0; j < 64; ++j) w[0][j] = static_cast<float>((j % 16) - 8) * 0.5f;
  w[0][5] = -4.0;  // largest magnitude of the first group of 32: d = 0.5
  const auto q = quantize_grouped(w, 4, 32);
  REQUIRE(q.values.sizes() == torch::IntArrayRef({1, 32}));
  CHECK(q.scales[0][0].item<double>() == 0.5);
  const auto bytes = q.values.to(torch::kLong);
  for (int64_t j = 0; j < 16; ++j) {
    INFO("byte " << j);
    const int64_t low = std::lround(w[0][j].item<double>() / 0.5) + 8,
                  high = std::lround(w[0][j + 16].item<double>() / 0.5) + 8;
    CHECK(bytes[0][j].item<int64_t>() == (low | high << 4));
  }
  CHECK_THROWS_WITH(quantize_grouped(w, 4, 48), Contains("32, 64 or 128"));
  CHECK_THROWS_WITH(quantize_grouped(w, 3, 32), Contains("4 or 8"));
  auto bad = w.clone();
  bad[0][3] = std::numeric_limits<float>::infinity();
  CHECK_THROWS_WITH(quantize_grouped(bad, 8, 32), Contains("not finite"));
}

TEST_CASE("group-wise GEMVs compute the W·A8 product exactly, on every kernel family", "[models][quantize]") {
  torch::NoGradGuard no_grad;
  ForcedKernels restore;
  torch::manual_seed(2);
  for (const auto family : cpu_gemv::runnable(torch::kByte)) {
    auto choice = cpu_gemv::chosen();
    choice.grouped = family;
    cpu_gemv::set_choice(choice);
    for (const auto& f : kFormats) {
      for (const int64_t K : {32, 100, 344, 1024}) {
        for (const int64_t M : {1, 2, 3, 4, 5, 8, 9}) {
          const int64_t N = K == 100 ? 6 : 19 + K % 5;  // few rows too: four distant ones go per pass
          INFO("kernels " << cpu_gemv::name(family) << ", " << f.bits << " bits, groups of " << f.group << ", K " << K
                          << ", rows " << M);
          const auto q = quantize_grouped(torch::randn({N, K}) / std::sqrt(double(K)), f.bits, f.group);
          const auto x = torch::randn({M, K});
          const auto dense =
              torch::linear(x.to(torch::kDouble), dequantize_grouped(q.values, q.scales, K, torch::kDouble));
          const auto y = grouped_linear(x, q.values, q.scales, {});
          REQUIRE(y.sizes() == torch::IntArrayRef({M, N}));
          if (family == cpu_gemv::Kernels::aten || M > cpu_gemv::kMaxRows) {
            // Dequantised weights, float32 products: the float product itself.
            CHECK(max_relative_error(y, dense) < 1e-5);
          } else {
            CHECK(cpu_gemv::linear_grouped(x, q.values, q.scales).defined());
            CHECK(max_relative_error(y, reference_w_a8(x, q, f.bits, K)) < 1e-5);
            // The activations' int8 rounding: within a few per cent of the float product.
            CHECK(max_relative_error(y, dense) < 0.03);
            // One row at a time through the fused step's entry gives the same.
            std::vector<float> row(static_cast<size_t>(N));
            const auto x0 = x[0].contiguous();
            cpu_gemv::linear_row(q.values, q.scales, x0.data_ptr<float>(), K, row.data());
            CHECK(max_relative_error(torch::from_blob(row.data(), {N}, torch::kFloat), y[0]) < 1e-6);
          }
          // bf16 activations: the same product, rounded once at the end.
          const auto yb = grouped_linear(x.to(torch::kBFloat16), q.values, q.scales, {});
          CHECK(yb.scalar_type() == torch::kBFloat16);
          CHECK(max_relative_error(yb, dense) < 0.04);
        }
      }
    }
  }
}

TEST_CASE("a group-wise Linear loads, multiplies with a bias, and refuses what it cannot be", "[models][quantize]") {
  torch::NoGradGuard no_grad;
  torch::manual_seed(3);
  const auto w = torch::randn({48, 344}) / 18.0;
  const auto b = torch::randn({48});
  for (const auto& f : kFormats) {
    INFO(f.bits << " bits, groups of " << f.group);
    Linear layer(344, 48, true, torch::kFloat32, WeightFormat{f.bits, f.group});
    CHECK(layer.is_quantized());
    CHECK(layer.is_grouped());
    CHECK(layer.format() == WeightFormat{f.bits, f.group});
    CHECK_FALSE(layer.weight.requires_grad());
    layer.load_weight(w);
    layer.bias.copy_(b);
    const auto x = torch::randn({2, 7, 344});
    const auto y = layer.forward(x);
    REQUIRE(y.sizes() == torch::IntArrayRef({2, 7, 48}));
    const auto want = torch::linear(x, layer.dense_weight(torch::kFloat), b);
    CHECK(max_relative_error(y, want) < 1e-5);  // 14 rows: the prompt path, float products
    // Autograd (explanations differentiate through frozen layers): the dequantised product.
    torch::AutoGradMode grad(true);
    const auto xg = x.clone().requires_grad_(true);
    layer.forward(xg).sum().backward();
    CHECK(xg.grad().defined());
    CHECK_THROWS_WITH(layer.reset_parameters(), Contains("quantised") && Contains("-bit"));
    CHECK_THROWS_WITH(layer.load_weight(torch::ones({48, 343}), "w.safetensors"),
                      Contains("w.safetensors") && Contains("[48, 343]") && Contains("[48, 344]"));
  }
}

TEST_CASE("llm_weight_bits and llm_weight_group_size choose the LLM's format", "[models][quantize]") {
  torch::NoGradGuard no_grad;
  const auto dir = test::data_dir() / "parity/tiny_vicuna0";
  const auto manifest = test::read_json(dir / "manifest.json");
  auto load = [&](const std::vector<std::string>& options) {
    const auto config =
        Config::from_yaml(test::parity_case_yaml(dir, manifest), (dir / "manifest.json").string(), options);
    LoadReport report;
    auto model = load_minigpt4(MiniGPT4Config::from_config(config), torch::kCPU, &report);
    return std::make_pair(model, report);
  };
  const auto [dense, dense_report] = load({});
  const auto [four, four_report] = load({"model.llm_weight_bits=4", "model.llm_weight_group_size=64"});
  const auto* llama = four->llama_model->as<LlamaForCausalLM>();
  const auto& down = *llama->layers->ptr(0)->as<LlamaDecoderLayer>()->mlp->down_proj;
  CHECK(down.format() == WeightFormat{4, 64});
  CHECK(llama->lm_head->format() == WeightFormat{8, 32});  // llm_head_bits unset: 8 with group-wise layers
  bool noted = false;
  for (const auto& note : four_report.notes)
    noted = noted || (note.find("4-bit, groups of 64") != std::string::npos &&
                      note.find("lm_head is 8-bit, groups of 32") != std::string::npos);
  CHECK(noted);
  // Memory: 4 bits per projection weight plus a float16 scale per 64 (and the padding of
  // widths that are not whole groups), against 32 bits dense.
  int64_t projection_elements = 0, stored = 0;
  for (const auto& item : four->llama_model->named_modules("", false)) {
    const auto* linear = item.value()->as<Linear>();
    if (!linear || !linear->is_quantized()) continue;
    projection_elements += linear->in_features * linear->out_features;
    stored += static_cast<int64_t>(linear->weight.nbytes() + linear->weight_scale.nbytes());
  }
  REQUIRE(projection_elements > 0);
  CHECK(tensor_bytes(*dense->llama_model).total - tensor_bytes(*four->llama_model).total ==
        4 * projection_elements - stored);
  CHECK(stored < projection_elements * 0.75);  // <= 6 bits a weight even with this fixture's padding

  const auto [eight, eight_report] = load({"model.llm_weight_bits=8", "model.llm_weight_group_size=0"});
  CHECK(eight->llama_model->as<LlamaForCausalLM>()->layers->ptr(0)->as<LlamaDecoderLayer>()->mlp->up_proj->format() ==
        WeightFormat::Int8);

  CHECK_FALSE(eight->llama_model->as<LlamaForCausalLM>()->lm_head->is_quantized());  // per channel: as low_resource

  // llm_head_bits set: 16 keeps lm_head dense under 4-bit layers, 8 quantises it under dense ones.
  const auto [four_dense_head, unused1] = load({"model.llm_weight_bits=4", "model.llm_head_bits=16"});
  CHECK_FALSE(four_dense_head->llama_model->as<LlamaForCausalLM>()->lm_head->is_quantized());
  const auto [head_only, unused2] = load({"model.llm_head_bits=8"});
  const auto* head_only_llama = head_only->llama_model->as<LlamaForCausalLM>();
  CHECK(head_only_llama->lm_head->format() == WeightFormat{8, 32});
  CHECK_FALSE(head_only_llama->layers->ptr(0)->as<LlamaDecoderLayer>()->mlp->up_proj->is_quantized());
  CHECK_THROWS_WITH(load({"model.llm_head_bits=4"}), Contains("llm_head_bits") && Contains("16 or 8"));
  CHECK_THROWS_WITH(load({"model.llm_head_bits=8", "model.freeze_llm=False"}),
                    Contains("llm_head_bits") && Contains("freeze_llm"));

  CHECK_THROWS_WITH(load({"model.llm_weight_bits=3"}), Contains("llm_weight_bits") && Contains("16, 8 or 4"));
  CHECK_THROWS_WITH(load({"model.llm_weight_bits=4", "model.llm_weight_group_size=0"}),
                    Contains("llm_weight_group_size"));
  CHECK_THROWS_WITH(load({"model.llm_weight_group_size=48", "model.llm_weight_bits=8"}), Contains("32, 64 or 128"));
  CHECK_THROWS_WITH(load({"model.low_resource=True", "model.llm_weight_bits=4"}),
                    Contains("low_resource") && Contains("llm_weight_bits"));
  CHECK_THROWS_WITH(load({"model.llm_weight_bits=4", "model.freeze_llm=False"}), Contains("freeze_llm"));
}
