// low_resource (weight-only int8) and the reduced precisions: the quantiser's error bound,
// the int8 kernels against the product with the dequantised weight, the LLM's logits
// against the fp32 originals on every MiniGPT-4 parity case, the memory an int8 model
// holds, and a config with `low_resource: True` from file to logits.
#include "minigpt4/common/config.h"
#include "minigpt4/common/error.h"
#include "minigpt4/io/checkpoint.h"
#include "minigpt4/io/safetensors.h"
#include "minigpt4/models/cpu_gemv.h"
#include "minigpt4/models/memory.h"
#include "minigpt4/models/minigpt4.h"
#include "minigpt4/models/quantize.h"
#include "minigpt4/tokenizer/llama_tokenizer.h"
#include "tests/support/fixtures.h"

#include <catch2/catch.hpp>

#include <iostream>

using namespace minigpt4;
using Catch::Contains;
namespace fs = std::filesystem;

namespace {

fs::path tiny() { return test::data_dir() / "parity/tiny_vicuna0"; }

std::shared_ptr<MiniGPT4> load_case(const fs::path& dir, const std::vector<std::string>& options,
                                    LoadReport* report = nullptr) {
  const auto manifest = test::read_json(dir / "manifest.json");
  const auto config =
      Config::from_yaml(test::parity_case_yaml(dir, manifest), (dir / "manifest.json").string(), options);
  return load_minigpt4(MiniGPT4Config::from_config(config), torch::kCPU, report);
}

// How far one set of logits [.., V] is from another, position by position.
struct Agreement {
  double top1 = 0;        // fraction of positions with the same argmax
  double min_cosine = 0;  // the worst position's cosine similarity
  int64_t positions = 0;
  // The expected logits' gap between first and second place: its median, and the largest
  // at a position whose argmax changed (small: the flips are near-ties).
  double median_margin = 0, max_flipped_margin = 0;
};

Agreement agreement(const torch::Tensor& actual, const torch::Tensor& expected) {
  const int64_t V = expected.size(-1);
  const auto a = actual.to(torch::kFloat64).reshape({-1, V}), e = expected.to(torch::kFloat64).reshape({-1, V});
  Agreement out;
  out.positions = e.size(0);
  const auto same = a.argmax(-1) == e.argmax(-1);
  out.top1 = same.to(torch::kFloat64).mean().item<double>();
  out.min_cosine = torch::cosine_similarity(a, e, -1).min().item<double>();
  const auto top2 = std::get<0>(e.topk(2, -1));
  const auto margin = top2.select(1, 0) - top2.select(1, 1);
  out.median_margin = margin.median().item<double>();
  if (!same.all().item<bool>()) out.max_flipped_margin = margin.masked_select(same.logical_not()).max().item<double>();
  return out;
}

// The LLM's logits for every sequence the case has golden fp32 logits of: the chat prompt
// and both training stages (their inputs_embeds and masks, as the original computed them).
std::pair<torch::Tensor, torch::Tensor> llm_logits(const MiniGPT4& model, const StateDict& io) {
  std::vector<torch::Tensor> actual, expected;
  actual.push_back(model.llama_model->forward(io.at("chat_embs")).logits.flatten(0, 1));
  expected.push_back(io.at("chat_logits").flatten(0, 1));
  for (const std::string stage : {"stage1", "stage2"}) {
    CausalLMOptions options;
    options.attention_mask = io.at(stage + "_attention_mask");
    actual.push_back(model.llama_model->forward(io.at(stage + "_inputs_embeds"), options).logits.flatten(0, 1));
    expected.push_back(io.at(stage + "_logits").flatten(0, 1));
  }
  return {torch::cat(actual), torch::cat(expected)};
}

// Runs with int8 prompts through LLM.int8() or float32 blocks from now on; the guard puts the
// process's own choice back.
struct ForcedInt8Prompt {
  cpu_gemv::Choice saved = cpu_gemv::chosen();
  explicit ForcedInt8Prompt(bool llm_int8) {
    auto choice = saved;
    choice.int8_prompt_llm_int8 = llm_int8;
    cpu_gemv::set_choice(choice);
  }
  ~ForcedInt8Prompt() { cpu_gemv::set_choice(saved); }
};

// LLM.int8() written out in double, from the paper rather than from quantize.cpp: per row,
// the elements of magnitude >= 6 meet the dequantised weight in full precision; the rest are
// rounded to int8 by the row's absmax / 127 and meet the int8 weight, then both scales.
torch::Tensor llm_int8_reference(const torch::Tensor& x, const torch::Tensor& values, const torch::Tensor& scales) {
  const auto xd = x.to(torch::kFloat64).reshape({-1, x.size(-1)});
  const auto big = xd.abs() >= 6.0;
  const auto outliers = xd * big, rest = xd * big.logical_not();
  auto row_scale = rest.abs().amax(1, true) / 127.0;
  row_scale = torch::where(row_scale == 0, torch::ones_like(row_scale), row_scale);
  const auto q = torch::clamp(torch::round(rest / row_scale), -127, 127);
  const auto w = values.to(torch::kFloat64), s = scales.to(torch::kFloat64);
  return torch::mm(q, w.t()) * row_scale * s.unsqueeze(0) + torch::mm(outliers, (w * s.unsqueeze(1)).t());
}

}  // namespace

TEST_CASE("int8 quantisation is within half a scale step of every weight", "[models]") {
  torch::manual_seed(0);
  auto w = torch::randn({37, 53}) * torch::rand({37, 1}) * 3;  // rows of different ranges
  w[5].zero_();
  w[7][3] = 100.0;  // one outlier: only its own row gets a coarse scale
  const auto q = quantize_int8(w);
  REQUIRE(q.values.scalar_type() == torch::kInt8);
  REQUIRE(q.scales.scalar_type() == torch::kFloat32);
  CHECK(q.values.sizes() == w.sizes());
  CHECK(q.scales.sizes() == torch::IntArrayRef({37}));
  CHECK(q.values.abs().max().item<int64_t>() == 127);
  const auto restored = dequantize_int8(q.values, q.scales, torch::kFloat32);
  // Half a step, plus float32's rounding of w/scale and of q*scale (|q| <= 127: ~1e-5 of a step).
  const auto bound = q.scales.unsqueeze(1) / 2 * (1 + 1e-4);
  CHECK(((w - restored).abs() <= bound).all().item<bool>());
  CHECK(restored[5].abs().max().item<double>() == 0);
  CHECK(q.scales[7].item<double>() == Approx(100.0 / 127));
  CHECK(q.scales[6].item<double>() < 0.1);

  // A bf16 weight is quantised from its exact values; dequantising to bf16 rounds once.
  const auto wb = w.to(torch::kBFloat16);
  const auto qb = quantize_int8(wb);
  const auto err = (wb.to(torch::kFloat32) - dequantize_int8(qb.values, qb.scales, torch::kFloat32)).abs();
  CHECK((err <= qb.scales.unsqueeze(1) / 2 * (1 + 1e-4)).all().item<bool>());
  CHECK(dequantize_int8(qb.values, qb.scales, torch::kBFloat16).scalar_type() == torch::kBFloat16);
  CHECK_THROWS_WITH(quantize_int8(torch::ones({4})), Contains("[N, K]"));
}

TEST_CASE("an int8 Linear computes the product with its dequantised weight", "[models]") {
  torch::NoGradGuard no_grad;
  torch::manual_seed(1);
  // 600 outputs of 2048 inputs: several CPU fp32 blocks, the last one partial. Input widths
  // that are not a multiple of 16 (the quickstart LLM's FFN of 344, and 40) must not reach
  // ATen's fused kernel, which crashes or gives garbage on them.
  for (const auto& [in, out] : std::vector<std::pair<int64_t, int64_t>>{{64, 96}, {2048, 600}, {344, 128}, {40, 24}}) {
    const auto w = torch::randn({out, in}) / std::sqrt(static_cast<double>(in));
    const auto b = torch::randn({out});
    for (const auto dtype : {torch::kFloat32, torch::kBFloat16, torch::kFloat16}) {
      INFO("in " << in << ", out " << out << ", " << dtype_name(dtype));
      const auto options = torch::TensorOptions().dtype(dtype);
      Linear layer(in, out, true, options, WeightFormat::Int8);
      layer.load_weight(w);
      layer.bias.copy_(b);
      CHECK(layer.is_int8());
      CHECK(layer.weight.scalar_type() == torch::kInt8);
      CHECK_FALSE(layer.weight.requires_grad());
      // 4 rows (the decode kernels), 10 (CPU bf16/fp16: ATen's fused kernel, or LLM.int8())
      // and 80 (the blocked conversion, or LLM.int8()); a few activations past LLM.int8()'s
      // outlier threshold.
      for (const bool llm_int8 : {false, true}) {
        ForcedInt8Prompt forced(llm_int8);
        for (const int64_t T : {2, 5, 40}) {
          INFO((llm_int8 ? "LLM.int8()" : "float32 prompts") << ", " << T << " rows per batch");
          auto x = torch::randn({2, T, in});
          x.view({-1})[7] = 9.0, x.view({-1})[in + 3] = -40.0, x.view({-1})[2 * in + 3] = 6.5;
          x = x.to(dtype);
          const auto y = layer.forward(x);
          REQUIRE(y.scalar_type() == dtype);
          REQUIRE(y.sizes() == torch::IntArrayRef({2, T, out}));
          const auto dense =
              torch::linear(x.to(torch::kFloat32), dequantize_int8(layer.weight, layer.weight_scale, torch::kFloat32),
                            b.to(dtype).to(torch::kFloat32));
          const auto scale = dense.abs().max().item<double>();
          const auto error = [&](const torch::Tensor& reference) {
            return (y.to(torch::kFloat64) - reference.to(torch::kFloat64)).abs().max().item<double>() / scale;
          };
          // Our decode kernels take float32 and bf16 activations; fp16 goes on to the prompt path.
          const bool decode_kernels = 2 * T <= cpu_gemv::kMaxRows &&
                                      cpu_gemv::chosen().int8 != cpu_gemv::Kernels::aten && dtype != torch::kFloat16;
          // fp32: summation order only, except that the AVX2 decode kernel multiplies int16
          // activations (1.5e-5 of a block's largest value at most per input). bf16/fp16: the
          // output's rounding and the scales' cast.
          const bool int16_activations = decode_kernels && cpu_gemv::chosen().int8 == cpu_gemv::Kernels::avx2;
          const double tol = dtype == torch::kFloat32   ? (int16_activations ? 2e-4 : 1e-5)
                             : dtype == torch::kFloat16 ? 5e-3
                                                        : 2e-2;
          if (llm_int8 && !decode_kernels) {
            // The same numbers as the paper's product; and the activations' rounding (half a
            // step of absmax / 127 per element) keeps it within ~1 % of the dense product.
            const auto reference = llm_int8_reference(x, layer.weight, layer.weight_scale).view({2, T, out}) +
                                   b.to(dtype).to(torch::kFloat64);
            CHECK(error(reference) <= tol);
            CHECK(error(dense) <= 0.03);
          } else {
            CHECK(error(dense) <= tol);
          }
          // A transposed (non-contiguous) input gives the same result.
          const auto xt = x.transpose(0, 1).contiguous().transpose(0, 1);
          CHECK(torch::allclose(layer.forward(xt).to(torch::kFloat32), y.to(torch::kFloat32)));
        }
      }
    }
  }
  Linear layer(8, 4, false, torch::kFloat32, WeightFormat::Int8);
  CHECK_THROWS_WITH(layer.reset_parameters(), Contains("int8"));
  CHECK_THROWS_WITH(layer.load_weight(torch::ones({4, 9}), "w.safetensors"),
                    Contains("w.safetensors") && Contains("[4, 9]") && Contains("[4, 8]"));
}

TEST_CASE("LLM.int8() prompts: each row's product depends on that row alone (chunked prefill)", "[models]") {
  torch::NoGradGuard no_grad;
  ForcedInt8Prompt forced(true);
  torch::manual_seed(3);
  Linear layer(256, 96, false, torch::kFloat32, WeightFormat::Int8);
  layer.load_weight(torch::randn({96, 256}) / 16);
  const int64_t half = cpu_gemv::kMaxRows + 2;  // more rows than the decode kernels take
  auto x = torch::randn({2 * half, 256});
  x[1][5] = 30, x[half + 2][40] = -12, x[half + 2][41] = 7;  // outliers in different rows and columns
  const auto whole = layer.forward(x);
  const auto chunks = torch::cat({layer.forward(x.narrow(0, 0, half)), layer.forward(x.narrow(0, half, half))});
  CHECK(torch::allclose(whole, chunks, 1e-6, 1e-6));
  // The same rows in another company: the first half next to rows full of outliers.
  const auto mixed = layer.forward(torch::cat({x.narrow(0, 0, half), torch::randn({half, 256}) * 10}));
  CHECK(torch::allclose(mixed.narrow(0, 0, half), whole.narrow(0, 0, half), 1e-6, 1e-6));
}

TEST_CASE("an int8 LLaMA loads from a Hugging Face directory and keeps its logits", "[models]") {
  torch::NoGradGuard no_grad;
  const auto dir = test::data_dir() / "hf_llama_gqa";  // grouped-query attention: narrower k/v
  const auto config = LlamaConfig::from_json(io::read_json_file((dir / "config.json").string()), "config.json");
  const auto state = io::load_state_dict(dir.string());
  LlamaForCausalLM dense(config, torch::kFloat32), int8(config, torch::kFloat32, WeightFormat::Int8);
  LoadSpec spec;
  spec.source = dir.string();
  std::set<std::string> filled_dense, filled_int8;
  load_into(dense, state, spec, filled_dense);
  const auto result = load_into(int8, state, spec, filled_int8);
  CHECK(result.unexpected.empty());
  CHECK(unfilled_parameters(int8, filled_int8).empty());
  CHECK(int8.layers->ptr(0)->as<LlamaDecoderLayer>()->self_attn->k_proj->weight.scalar_type() == torch::kInt8);
  CHECK(int8.lm_head->weight.scalar_type() == torch::kFloat32);
  const auto io = io::load_safetensors((dir / "io.safetensors").string());
  const auto embeds = dense.embed(io.at("input_ids"));
  const auto original = dense.forward(embeds).logits;
  // Every projection landed in its own layer: the dense model with the dequantised
  // weights computes the same logits.
  int64_t replaced = 0;
  for (auto& item : dense.named_modules("", /*include_self=*/false)) {
    auto* linear = dynamic_cast<Linear*>(item.value().get());
    if (!linear || item.key() == "lm_head") continue;
    const auto* q = int8.named_modules("", false)[item.key()]->as<Linear>();
    linear->weight.copy_(dequantize_int8(q->weight, q->weight_scale, torch::kFloat32));
    ++replaced;
  }
  CHECK(replaced == 7 * config.num_hidden_layers);
  {
    ForcedInt8Prompt exact(false);  // activations kept whole: the dense product's numbers
    CHECK(torch::allclose(int8.forward(embeds).logits, dense.forward(embeds).logits, 1e-4, 1e-4));
  }
  const auto logits = int8.forward(embeds).logits;  // this CPU's own choice
  // This fixture's N(0, 0.2) weights make attention sharp and errors grow; still close.
  CHECK(agreement(logits, original).min_cosine >= 0.99);
}

TEST_CASE("low_resource and bf16 LLMs agree with the fp32 original on every fixture case", "[parity]") {
  torch::NoGradGuard no_grad;
  struct Mode {
    std::string name;
    std::vector<std::string> options;
    double min_top1, min_cosine;
    bool llm_int8 = false;  // per-channel int8 prompts through LLM.int8() (else float32)
  };
  // int8 weights with fp32 activations: 97 % of argmaxes, cosine 0.999. bf16 rounds every
  // weight and activation to 8 significant bits, so near-ties flip too: 97 % (int8 weights
  // with bf16 activations carry both errors: 95 %), cosine still 0.999. Measured (int8 /
  // bf16 / both) on tiny_vicuna0 (362 positions): 99.2 / 98.9 / 98.1 %; on
  // tiny_llama2_noqformer (430): 98.6 / 98.4 / 97.4 %; on tiny_llama2_example (406, one KV
  // head): 97.5 / 98.8 / 97.5 %, its 10 int8 flips all near-ties (top-2 margin <= 0.03, the
  // same in a plain Python re-quantisation); cosine >= 0.9997 in all. One scale per output
  // channel is what keeps int8 under llama.cpp's q8_0 (a scale per 32 weights) here: 99 %
  // needs group-wise scales (issue 22).
  // LLM.int8() rounds the activations too (per row, outliers kept): measured 97.0 / 98.4 /
  // 98.9 % with fp32 activations and 96.1 / 97.9 / 98.3 % with bf16 (the three cases in the
  // order below), cosine >= 0.9994, the flips near-ties (margin <= 0.17).
  const std::vector<Mode> modes = {
      {"int8 (fp32 activations)", {"model.low_resource=True"}, 0.97, 0.999},
      {"bf16", {"model.llm_precision=bf16"}, 0.97, 0.999},
      {"int8 (bf16 activations)", {"model.low_resource=True", "model.llm_precision=bf16"}, 0.95, 0.999},
      {"int8, LLM.int8() prompts (fp32 activations)", {"model.low_resource=True"}, 0.95, 0.999, true},
      {"int8, LLM.int8() prompts (bf16 activations)",
       {"model.low_resource=True", "model.llm_precision=bf16"},
       0.94,
       0.999,
       true},
      // Group-wise. Measured (tiny_vicuna0 / tiny_llama2_noqformer / tiny_llama2_example):
      // 8-bit g32 with lm_head in 8 bits too (llm_head_bits' default) 98.1 / 99.1 / 97.5 %
      // (lm_head 16-bit: 98.9 / 99.3 / 98.5 %), cosine >= 0.9998, its flips near-ties (margin
      // <= 0.09, median 0.37-0.42); lm_head alone in 8 bits 97.8 / 99.1 / 99.3 % (margin <= 0.022);
      // 4-bit g32 75.4 / 76.7 / 77.1 % (lm_head 16-bit: 76.0 / 77.0 / 77.1 %; lowest cosine
      // 0.976 / 0.959 / 0.984), g64 and g128
      // 73-75 %, bf16 activations the same. These fixtures' N(0, 0.2) weights make attention sharp: a 4-bit
      // weight's error (8.6 % of the weights' norm at g32, against 0.3 % at 8 bits) moves
      // argmaxes whose margins are far from ties. The floors below sit a few points under
      // what was measured, so a real regression fails; docs/weights.md has the figures.
      {"8-bit groups of 32", {"model.llm_weight_bits=8", "model.llm_weight_group_size=32"}, 0.97, 0.9995},
      {"4-bit groups of 32", {"model.llm_weight_bits=4", "model.llm_weight_group_size=32"}, 0.72, 0.95},
      {"4-bit groups of 64", {"model.llm_weight_bits=4", "model.llm_weight_group_size=64"}, 0.70, 0.93},
      {"4-bit groups of 128", {"model.llm_weight_bits=4", "model.llm_weight_group_size=128"}, 0.70, 0.93},
      // lm_head in 8-bit groups of 32 (llm_head_bits; the default with group-wise layers),
      // alone, and the 4-bit layers with lm_head kept in 16 bits.
      {"lm_head 8-bit groups of 32", {"model.llm_head_bits=8"}, 0.97, 0.9999},
      {"4-bit groups of 32, lm_head 16-bit",
       {"model.llm_weight_bits=4", "model.llm_weight_group_size=32", "model.llm_head_bits=16"},
       0.72,
       0.95},
      {"4-bit groups of 32 (bf16 activations)",
       {"model.llm_weight_bits=4", "model.llm_weight_group_size=32", "model.llm_precision=bf16"},
       0.72,
       0.95},
  };
  const auto cases = test::parity_cases("minigpt4_full.safetensors");
  REQUIRE(!cases.empty());
  for (const auto& dir : cases) {
    const auto io = io::load_safetensors((dir / "io.safetensors").string());
    for (const auto& mode : modes) {
      INFO("case " << dir << ", " << mode.name);
      ForcedInt8Prompt prompts(mode.llm_int8);
      const auto model = load_case(dir, mode.options);
      const auto [actual, expected] = llm_logits(*model, io);
      const auto a = agreement(actual, expected);
      std::cout << "case " << dir.filename().string() << ", " << mode.name << ": top-1 agreement " << a.top1 << " over "
                << a.positions << " positions, min cosine " << a.min_cosine << ", top-2 margin median "
                << a.median_margin << ", at most " << a.max_flipped_margin << " where the argmax changed" << std::endl;
      CHECK(a.top1 >= mode.min_top1);
      CHECK(a.min_cosine >= mode.min_cosine);
    }
  }
}

TEST_CASE("a low_resource model holds its LLM projections in int8", "[models]") {
  torch::NoGradGuard no_grad;
  const auto fp32 = load_case(tiny(), {});
  const auto int8 = load_case(tiny(), {"model.low_resource=True"});
  int64_t projection_elements = 0, channels = 0;
  for (const auto& item : int8->llama_model->named_parameters()) {
    const bool projection =
        item.key().rfind("model.layers.", 0) == 0 && item.key().find("_proj.weight") != std::string::npos;
    INFO(item.key());
    CHECK(item.value().scalar_type() == (projection ? torch::kInt8 : torch::kFloat32));
    CHECK_FALSE(item.value().requires_grad());
    if (projection) projection_elements += item.value().numel(), channels += item.value().size(0);
  }
  CHECK(projection_elements > 0);
  const auto dense_bytes = tensor_bytes(*fp32->llama_model), int8_bytes = tensor_bytes(*int8->llama_model);
  CHECK(int8_bytes.by_dtype.at("int8") == projection_elements);
  // What is left in fp32: everything else, plus one scale per output channel.
  CHECK(int8_bytes.by_dtype.at("fp32") == dense_bytes.total - 4 * projection_elements + 4 * channels);
  CHECK(int8_bytes.total < dense_bytes.total);
  CHECK(tensor_bytes(*int8->visual_encoder).total == tensor_bytes(*fp32->visual_encoder).total);
  CHECK(resident_set_bytes() > 0);
  CHECK(format_bytes(3 * 1024 * 1024) == "3.0 MiB");
}

TEST_CASE("vit_weight_bits: 8 holds the ViT's linear layers in int8 and keeps the image embeddings", "[parity]") {
  torch::NoGradGuard no_grad;
  for (const auto& dir : test::parity_cases("minigpt4_full.safetensors")) {
    INFO("case " << dir);
    const auto dense = load_case(dir, {});
    const auto int8 = load_case(dir, {"model.vit_weight_bits=8"});
    int64_t quantized = 0, elements = 0, channels = 0;
    for (const auto& item : int8->visual_encoder->named_modules("", /*include_self=*/false))
      if (const auto* linear = dynamic_cast<const Linear*>(item.value().get())) {
        INFO(item.key());
        CHECK(linear->is_int8());
        ++quantized, elements += linear->weight.numel(), channels += linear->weight.size(0);
      }
    CHECK(quantized == 4 * int8->config.vision.depth);  // qkv, proj, fc1, fc2 per block
    // Each linear weight: one byte per element instead of the ViT dtype's, plus a float32
    // scale per output channel; everything else unchanged.
    const int64_t element_bytes =
        dense->visual_encoder->blocks->ptr(0)->as<EvaBlock>()->mlp->fc1->weight.element_size();
    CHECK(tensor_bytes(*int8->visual_encoder).total ==
          tensor_bytes(*dense->visual_encoder).total - (element_bytes - 1) * elements + 4 * channels);
    CHECK(tensor_bytes(*int8->llama_model).total == tensor_bytes(*dense->llama_model).total);
    // The image embeddings the LLM reads, per query token, against the float32 ViT's.
    const auto io = io::load_safetensors((dir / "io.safetensors").string());
    const auto image = io.at("image");
    const auto want = dense->encode_img(image).to(torch::kFloat64).flatten(0, 1);
    const auto got = int8->encode_img(image).to(torch::kFloat64).flatten(0, 1);
    const double cosine = torch::cosine_similarity(got, want, 1).min().item<double>();
    const double relative = ((got - want).norm() / want.norm()).item<double>();
    std::cout << "case " << dir.filename().string() << ", vit_weight_bits 8: image embeddings min cosine " << cosine
              << ", relative error " << relative << std::endl;
    // Measured on the three fixture cases: min cosine >= 0.99993, relative error <= 0.0088.
    CHECK(cosine >= 0.999);
    CHECK(relative <= 0.03);
  }
  CHECK_THROWS_WITH(load_case(tiny(), {"model.vit_weight_bits=4"}), Contains("vit_weight_bits must be 16 or 8"));
  CHECK_THROWS_WITH(load_case(tiny(), {"model.vit_weight_bits=8", "model.freeze_vit=False"}),
                    Contains("vit_weight_bits") && Contains("freeze_vit"));
}

TEST_CASE("a config with low_resource: True builds and runs", "[models]") {
  torch::NoGradGuard no_grad;
  const auto manifest = test::read_json(tiny() / "manifest.json");
  // The key as a user writes it in the YAML (the last line of the model section).
  const auto yaml = test::parity_case_yaml(tiny(), manifest) + "  low_resource: True\n";
  LoadReport report;
  const auto model =
      load_minigpt4(MiniGPT4Config::from_config(Config::from_yaml(yaml, "low_resource.yaml")), torch::kCPU, &report);
  CHECK(model->config.low_resource);
  CHECK(model->llama_model->as<LlamaForCausalLM>()->layers->ptr(0)->as<LlamaDecoderLayer>()->mlp->down_proj->is_int8());
  CHECK_FALSE(model->llama_model->as<LlamaForCausalLM>()->lm_head->is_int8());
  bool noted = false;
  for (const auto& note : report.notes) noted = noted || note.find("int8") != std::string::npos;
  CHECK(noted);

  // Image -> prompt -> logits, and the training forward's loss.
  const auto io = io::load_safetensors((tiny() / "io.safetensors").string());
  const auto tokenizer = LlamaTokenizer::from_pretrained(tiny() / "vicuna");
  const auto image = io.at("image");
  const auto chat = model->context_embedding("###Human: <Img><ImageHere></Img> What is this? ###Assistant: ",
                                             {model->encode_img(image.slice(0, 0, 1))}, tokenizer);
  const auto logits = model->llama_model->forward(chat).logits;
  CHECK(logits.scalar_type() == torch::kFloat32);
  CHECK(torch::isfinite(logits).all().item<bool>());
  const auto captions = manifest["config"]["minigpt4"]["captions"].get<std::vector<std::string>>();
  const auto out = model->forward(image, captions, "", tokenizer);
  CHECK(std::isfinite(out.loss.item<double>()));

  CHECK_THROWS_WITH(load_case(tiny(), {"model.low_resource=True", "model.freeze_llm=False"}),
                    Contains("low_resource") && Contains("freeze_llm"));
}
