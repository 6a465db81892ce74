// The fused CPU decode step (minigpt4/models/cpu_decode.h) against the ATen path it replaces:
// the same logits and cache contents step after step in fp32, bf16 and int8, grouped-query
// attention and widths that are not multiples of the vector length; the cases it must hand
// back; and greedy generation choosing the same tokens either way.
#include "minigpt4/generate/generate.h"
#include "minigpt4/models/cpu_decode.h"
#include "minigpt4/models/cpu_gemv.h"
#include "minigpt4/models/init.h"
#include "minigpt4/models/llama.h"
#include "minigpt4/models/lora.h"
#include "minigpt4/models/weights.h"
#include "tests/support/skip.h"

#include <catch2/catch.hpp>
#include <torch/torch.h>

#include <algorithm>
#include <iostream>
#include <tuple>

using namespace minigpt4;

namespace {

LlamaConfig small_config() {
  LlamaConfig c;
  c.vocab_size = 77;
  c.hidden_size = 48;  // not a multiple of 64: masked tails in every GEMV
  c.intermediate_size = 100;
  c.num_hidden_layers = 3;
  c.num_attention_heads = 4;
  c.num_key_value_heads = 2;  // grouped-query attention
  return c;
}

// Wide enough that the MLP's weights pass cpu_decode's 1 MiB line (float32 and bf16), above
// which the step calls Linear::forward instead of its own row kernels.
LlamaConfig wide_config() {
  auto c = small_config();
  c.hidden_size = 512;
  c.intermediate_size = 1024;
  c.num_hidden_layers = 2;
  c.num_attention_heads = 8;
  c.num_key_value_heads = 2;
  return c;
}

// The same random weights (std 0.1, so that activations are far from zero) in a model of
// the given activation dtype and linear format.
std::shared_ptr<LlamaForCausalLM> make_model(torch::Dtype dtype, WeightFormat format,
                                             const LlamaConfig& config = small_config()) {
  LlamaForCausalLM reference(config, torch::kFloat32);
  init_fresh_weights(reference, /*seed=*/3, /*std=*/0.1);
  StateDict state;
  for (const auto& item : reference.named_parameters()) state[item.key()] = item.value();
  auto model = std::make_shared<LlamaForCausalLM>(config, torch::TensorOptions().dtype(dtype), format);
  std::set<std::string> filled;
  load_into(*model, state, LoadSpec{}, filled);
  REQUIRE(unfilled_parameters(*model, filled).empty());
  return model;
}

bool fused_runs(torch::Dtype dtype) {
  return cpu_gemv::row_available(dtype == torch::kBFloat16 ? torch::kBFloat16 : torch::kFloat);
}

double relative_error(const torch::Tensor& got, const torch::Tensor& want) {
  return (got.to(torch::kFloat) - want.to(torch::kFloat)).abs().max().item<double>() /
         (want.to(torch::kFloat).abs().max().item<double>() + 1e-12);
}

struct Restore {
  cpu_gemv::Choice saved = cpu_gemv::chosen();
  ~Restore() {
    cpu_decode::set_enabled(true);
    cpu_gemv::set_choice(saved);
  }
};

// The kernel choices the fused step is tried with: each of our families for every dtype it
// runs here, and once with float32 left to ATen (as on Intel, where large float32 weights go
// through Linear::forward and small ones through the int8 family's row kernel).
std::vector<cpu_gemv::Choice> kernel_choices() {
  std::vector<cpu_gemv::Choice> out;
  for (const auto family : cpu_gemv::runnable(torch::kChar)) {
    if (family == cpu_gemv::Kernels::aten) continue;
    const auto bf16 = cpu_gemv::runnable(torch::kBFloat16);
    cpu_gemv::Choice c{family, std::find(bf16.begin(), bf16.end(), family) != bf16.end() ? family : bf16.back(),
                       family};
    c.grouped = cpu_gemv::runnable(torch::kByte).back();
    out.push_back(c);
    c.f32 = cpu_gemv::Kernels::aten;
    out.push_back(c);
  }
  return out;
}

}  // namespace

TEST_CASE("the fused decode step equals the ATen path step after step",
          "[cpu_decode][conditional][needs_cpu_kernels]") {
  if (kernel_choices().empty()) {
    test::skip_test("this CPU runs none of cpu_gemv's kernels; the fused step never applies");
    return;
  }
  torch::NoGradGuard no_grad;
  Restore restore;
  struct Case {
    const char* name;
    torch::Dtype dtype;
    WeightFormat format;
    double tolerance;  // max |diff| / max |logit|
  };
  for (const auto& c : {Case{"fp32", torch::kFloat32, WeightFormat::Dense, 1e-5},
                        Case{"bf16", torch::kBFloat16, WeightFormat::Dense, 3e-2},
                        Case{"int8, bf16 activations", torch::kBFloat16, WeightFormat::Int8, 3e-2},
                        // The AVX2 int8 kernel multiplies int16 activations (per 256 inputs,
                        // at most 1.5e-5 of the block's largest value each); the ATen path float32.
                        Case{"int8, fp32 activations", torch::kFloat32, WeightFormat::Int8, 2e-4},
                        // Group-wise weights quantise the activations to int8: where the two
                        // paths' inputs differ in the last bit (their norms sum in another
                        // order), a value can round to the next level (1/254 of its run's
                        // largest), and each path goes on from its own cache, so the gap grows
                        // (4-bit, these std 0.1 weights, hidden 512: 5e-7 until a rounding
                        // flips at the third step, then up to 1.1e-2; 8-bit bf16 up to 4e-2).
                        // A wrong kernel is off by the logits' own size.
                        Case{"4-bit groups of 32, fp32 activations", torch::kFloat32, WeightFormat{4, 32}, 3e-2},
                        Case{"8-bit groups of 64, bf16 activations", torch::kBFloat16, WeightFormat{8, 64}, 6e-2}}) {
    INFO(c.name);
    for (const auto& choice : kernel_choices())
      for (const auto& config : {small_config(), wide_config()}) {
        cpu_gemv::set_choice(choice);
        INFO("kernels f32 " << cpu_gemv::name(choice.f32) << ", bf16 " << cpu_gemv::name(choice.bf16) << ", int8 "
                            << cpu_gemv::name(choice.int8));
        REQUIRE(fused_runs(c.dtype));
        INFO("hidden " << config.hidden_size);
        const auto model = make_model(c.dtype, c.format, config);
        torch::manual_seed(1);
        // A prompt longer than the decode kernels take (a GEMM) through the ATen path fills
        // both caches, then one token at a time.
        const int64_t prompt = cpu_gemv::kMaxRows + 1, total = prompt + 9;
        const auto ids = torch::randint(0, config.vocab_size, {1, total});
        const auto embeds = model->embed(ids);
        KVCache fused, aten;
        CausalLMOptions with_fused, with_aten;
        with_fused.cache = &fused;
        with_aten.cache = &aten;
        cpu_decode::set_enabled(false);
        model->forward(embeds.narrow(1, 0, prompt), with_fused);
        model->forward(embeds.narrow(1, 0, prompt), with_aten);
        for (int64_t t = prompt; t < total; ++t) {
          INFO("position " << t);
          const auto token = embeds.narrow(1, t, 1);
          cpu_decode::set_enabled(true);
          const auto got = cpu_decode::llama_step(*model, token, fused);
          REQUIRE(got.defined());
          cpu_decode::set_enabled(false);
          const auto want = model->forward(token, with_aten).logits;
          REQUIRE(got.sizes() == want.sizes());
          CHECK(relative_error(got, want) < c.tolerance);
          CHECK(got.argmax(-1).item<int64_t>() == want.argmax(-1).item<int64_t>());
          REQUIRE(fused.length() == t + 1);
          for (size_t layer = 0; layer < aten.keys.size(); ++layer) {
            CHECK(relative_error(fused.keys[layer], aten.keys[layer]) < c.tolerance);
            CHECK(relative_error(fused.values[layer], aten.values[layer]) < c.tolerance);
          }
        }
        // The fused cache continues on the ATen path too (a prompt after a decoded answer).
        const auto more = model->forward(embeds.narrow(1, 0, 3), with_fused).logits;
        const auto more_aten = model->forward(embeds.narrow(1, 0, 3), with_aten).logits;
        CHECK(relative_error(more, more_aten) < c.tolerance);
      }
  }
}

TEST_CASE("a decode step of several sequences equals each sequence stepped alone",
          "[cpu_decode][conditional][needs_cpu_kernels]") {
  if (kernel_choices().empty()) {
    test::skip_test("this CPU runs none of cpu_gemv's kernels; the fused step never applies");
    return;
  }
  torch::NoGradGuard no_grad;
  Restore restore;
  struct Case {
    const char* name;
    torch::Dtype dtype;
    WeightFormat format;
    double tolerance;  // as above: the rows' products run through other kernels than one row's
  };
  for (const auto& c : {Case{"fp32", torch::kFloat32, WeightFormat::Dense, 1e-5},
                        Case{"bf16", torch::kBFloat16, WeightFormat::Dense, 3e-2},
                        Case{"int8, fp32 activations", torch::kFloat32, WeightFormat::Int8, 2e-4},  // int16 (above)
                        Case{"4-bit groups of 32, fp32 activations", torch::kFloat32, WeightFormat{4, 32}, 3e-2}}) {
    INFO(c.name);
    const auto model = make_model(c.dtype, c.format, wide_config());
    // Up to kMaxRows rows run our multi-row kernels, more a blocked GEMM: both are tried.
    for (const int64_t rows : {int64_t{2}, int64_t{3}, int64_t{6}, cpu_gemv::kMaxRows + 2}) {
      INFO(rows << " sequences");
      torch::manual_seed(rows);
      std::vector<KVCache> batched(static_cast<size_t>(rows)), alone(static_cast<size_t>(rows));
      std::vector<KVCache*> caches;
      std::vector<torch::Tensor> tokens;
      cpu_decode::set_enabled(false);
      for (int64_t r = 0; r < rows; ++r) {  // prompts of different lengths: ragged caches
        const auto prompt = model->embed(torch::randint(0, 77, {1, 2 + 3 * r}));
        for (auto* cache : {&batched[static_cast<size_t>(r)], &alone[static_cast<size_t>(r)]}) {
          CausalLMOptions options;
          options.cache = cache;
          model->forward(prompt, options);
        }
        caches.push_back(&batched[static_cast<size_t>(r)]);
      }
      cpu_decode::set_enabled(true);
      for (int step = 0; step < 3; ++step) {
        INFO("step " << step);
        tokens.clear();
        for (int64_t r = 0; r < rows; ++r) tokens.push_back(model->embed(torch::randint(0, 77, {1, 1})));
        const auto got = model->step_sequences(torch::cat(tokens, 0), caches);
        REQUIRE(got.sizes() == torch::IntArrayRef({rows, 77}));
        for (int64_t r = 0; r < rows; ++r) {
          const auto want =
              cpu_decode::llama_step(*model, tokens[static_cast<size_t>(r)], alone[static_cast<size_t>(r)]);
          REQUIRE(want.defined());
          CHECK(relative_error(got[r], want.view({-1})) < c.tolerance);
          CHECK(got[r].argmax().item<int64_t>() == want.argmax().item<int64_t>());
          const auto& b = batched[static_cast<size_t>(r)];
          const auto& a = alone[static_cast<size_t>(r)];
          REQUIRE(b.length() == a.length());
          for (size_t layer = 0; layer < a.keys.size(); ++layer)
            CHECK(relative_error(b.values[layer], a.values[layer]) < c.tolerance);
        }
      }
      // Where the fused step does not apply, each sequence goes through forward() alone.
      cpu_decode::set_enabled(false);
      tokens.clear();
      for (int64_t r = 0; r < rows; ++r) tokens.push_back(model->embed(torch::randint(0, 77, {1, 1})));
      const auto got = model->step_sequences(torch::cat(tokens, 0), caches);
      for (int64_t r = 0; r < rows; ++r) {
        CausalLMOptions options;
        options.cache = &alone[static_cast<size_t>(r)];
        const auto want = model->forward(tokens[static_cast<size_t>(r)], options).logits.view({-1});
        CHECK(relative_error(got[r], want) < c.tolerance);
      }
    }
  }
}

TEST_CASE("a cache given for several consecutive rows takes them as consecutive positions (a riding prompt chunk)",
          "[cpu_decode][conditional][needs_cpu_kernels]") {
  if (kernel_choices().empty()) {
    test::skip_test("this CPU runs none of cpu_gemv's kernels; the fused step never applies");
    return;
  }
  torch::NoGradGuard no_grad;
  Restore restore;
  for (const auto& [name, dtype, tolerance] :
       {std::tuple{"fp32", torch::kFloat32, 1e-5}, std::tuple{"bf16", torch::kBFloat16, 3e-2}}) {
    INFO(name);
    const auto model = make_model(dtype, WeightFormat::Dense, wide_config());
    for (const bool fused : {true, false}) {  // the fused step and the row-by-row fallback
      INFO((fused ? "fused step" : "row by row"));
      torch::manual_seed(7);
      KVCache decoding, decoding_alone, joining, joining_alone;
      cpu_decode::set_enabled(false);
      const auto prompt = model->embed(torch::randint(0, 77, {1, 4}));
      const auto earlier = model->embed(torch::randint(0, 77, {1, 3}));  // the joining prompt's first positions
      for (auto* cache : {&decoding, &decoding_alone}) {
        CausalLMOptions options;
        options.cache = cache;
        model->forward(prompt, options);
      }
      for (auto* cache : {&joining, &joining_alone}) {
        CausalLMOptions options;
        options.cache = cache;
        model->forward(earlier, options);
      }
      const auto token = model->embed(torch::randint(0, 77, {1, 1}));
      const auto chunk = model->embed(torch::randint(0, 77, {1, 5}));  // the next 5 positions
      cpu_decode::set_enabled(fused);
      const auto got = model->step_sequences(torch::cat({token, chunk.transpose(0, 1)}, 0),
                                             {&decoding, &joining, &joining, &joining, &joining, &joining});
      REQUIRE(got.sizes() == torch::IntArrayRef({6, 77}));
      cpu_decode::set_enabled(false);
      CausalLMOptions one;
      one.cache = &decoding_alone;
      CHECK(relative_error(got[0], model->forward(token, one).logits.view({-1})) < tolerance);
      CausalLMOptions many;
      many.cache = &joining_alone;
      const auto want = model->forward(chunk, many).logits[0];  // [5, V]: the chunk as a prompt
      CHECK(relative_error(got.narrow(0, 1, 5), want) < tolerance);
      CHECK(got.narrow(0, 1, 5).argmax(-1).equal(want.argmax(-1)));
      CHECK(decoding.length() == 5);
      CHECK(joining.length() == 8);
      for (size_t layer = 0; layer < joining.keys.size(); ++layer)
        CHECK(relative_error(joining.values[layer], joining_alone.values[layer]) < tolerance);
    }
  }
}

TEST_CASE("the fused decode step hands back what it does not handle", "[cpu_decode][conditional][needs_cpu_kernels]") {
  torch::NoGradGuard no_grad;
  Restore restore;
  if (!fused_runs(torch::kFloat32)) {
    test::skip_test("this CPU does not run cpu_gemv's kernels");
    return;
  }
  const auto model = make_model(torch::kFloat32, WeightFormat::Dense);
  const auto token = model->embed(torch::tensor({{3}}));
  KVCache cache;
  CHECK(cpu_decode::llama_step(*model, token, cache).defined());  // position 0 of an empty cache

  SECTION("two sequences") {
    KVCache two;
    CHECK_FALSE(cpu_decode::llama_step(*model, token.expand({2, 1, -1}).contiguous(), two).defined());
  }
  SECTION("two positions") {
    CHECK_FALSE(cpu_decode::llama_step(*model, model->embed(torch::tensor({{3, 4}})), cache).defined());
  }
  SECTION("autograd") {
    torch::AutoGradMode grad(true);
    CHECK_FALSE(cpu_decode::llama_step(*model, token, cache).defined());
  }
  SECTION("switched off") {
    cpu_decode::set_enabled(false);
    CHECK_FALSE(cpu_decode::llama_step(*model, token, cache).defined());
  }
  SECTION("an active LoRA adapter, unless merged") {
    lora::LoraConfig lora;
    lora.r = 4;
    lora.lora_alpha = 8;
    lora.target_modules = {"q_proj", "v_proj"};
    lora::add_adapter(*model, "task", lora);
    lora::set_active_adapter(*model, "task", /*merge=*/false);
    CHECK_FALSE(cpu_decode::llama_step(*model, token, cache).defined());
    lora::set_active_adapter(*model, "task", /*merge=*/true);
    CHECK(cpu_decode::llama_step(*model, token, cache).defined());
    lora::set_active_adapter(*model, "original", false);
    CHECK(cpu_decode::llama_step(*model, token, cache).defined());
  }
}

TEST_CASE("greedy generation picks the same tokens with and without the fused step",
          "[cpu_decode][conditional][needs_cpu_kernels]") {
  Restore restore;
  if (!fused_runs(torch::kFloat32)) {
    test::skip_test("this CPU does not run cpu_gemv's kernels");
    return;
  }
  const auto model = make_model(torch::kFloat32, WeightFormat::Dense);
  torch::manual_seed(2);
  const auto prompt = model->embed(torch::randint(0, small_config().vocab_size, {1, 6}));
  GenerationConfig config;
  config.max_new_tokens = 24;
  config.eos_token_id = -1;
  cpu_decode::set_enabled(true);
  const auto fused = generate(*model, prompt, config);
  cpu_decode::set_enabled(false);
  const auto aten = generate(*model, prompt, config);
  CHECK(fused.tokens == aten.tokens);
  REQUIRE(fused.tokens.size() == 24);
}
