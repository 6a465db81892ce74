// Loading the real file layouts, the errors users get for bad weights, and model behaviour
// the fixtures do not pin down (KV cache, grouped-query attention, padding, the LLaMA-2
// variant). Uses the tiny_vicuna0 files.
#include "minigpt4/common/config.h"
#include "minigpt4/common/error.h"
#include "minigpt4/io/checkpoint.h"
#include "minigpt4/io/safetensors.h"
#include "minigpt4/models/minigpt4.h"
#include "tests/support/fixtures.h"

#include <catch2/catch.hpp>

#include <fstream>

#include <unistd.h>

using namespace minigpt4;
using Catch::Contains;
namespace fs = std::filesystem;

namespace {

fs::path tiny() { return test::data_dir() / "parity/tiny_vicuna0"; }

// The shipped tiny config with paths made absolute and extra overrides.
MiniGPT4Config tiny_config(std::vector<std::string> options = {}) {
  std::vector<std::string> all = {"model.vit_model=" + (tiny() / "eva_vit_g.pth").string(),
                                  "model.q_former_model=" + (tiny() / "blip2_pretrained.pth").string(),
                                  "model.llama_model=" + (tiny() / "vicuna").string(),
                                  "model.ckpt=" + (tiny() / "pretrained_minigpt4.pth").string()};
  all.insert(all.end(), options.begin(), options.end());
  return MiniGPT4Config::from_config(Config::load((test::source_dir() / "configs/tiny_vicuna0.yaml").string(), all));
}

fs::path temp_dir() {
  auto dir = fs::temp_directory_path() / ("minigpt4_test_loading_" + std::to_string(::getpid()));
  fs::create_directories(dir);
  return dir;
}

bool same_weights(const MiniGPT4& a, const MiniGPT4& b) {
  auto pb = b.named_parameters();
  for (const auto& item : a.named_parameters())
    if (!torch::equal(item.value(), pb[item.key()])) return false;
  return true;
}

}  // namespace

TEST_CASE("every weight layout of the fixture loads to the same model", "[models]") {
  torch::NoGradGuard no_grad;
  const auto reference = load_minigpt4(tiny_config(), torch::kCPU);
  for (const auto& options :
       std::vector<std::vector<std::string>>{{"model.vit_model=" + (tiny() / "eva_vit_g.safetensors").string()},
                                             {"model.ckpt=" + (tiny() / "pretrained_minigpt4.safetensors").string()},
                                             {"model.llama_model=" + (tiny() / "vicuna_bin").string()},
                                             {"model.llama_model=" + (tiny() / "vicuna_bin_sharded").string()},
                                             // the assembled state dict as the only checkpoint over the split files
                                             {"model.ckpt=" + (tiny() / "minigpt4_full.safetensors").string()}}) {
    INFO(options[0]);
    const auto model = load_minigpt4(tiny_config(options), torch::kCPU);
    CHECK(same_weights(*model, *reference));
  }
}

TEST_CASE("only the projector trains, frozen parts are in eval mode", "[models]") {
  const auto model = load_minigpt4(tiny_config(), torch::kCPU);
  for (const auto& item : model->named_parameters())
    CHECK(item.value().requires_grad() == (item.key().rfind("llama_proj.", 0) == 0));
  CHECK_FALSE(model->llama_model->is_training());
  const auto unfrozen = load_minigpt4(tiny_config({"model.freeze_qformer=False"}), torch::kCPU);
  CHECK(unfrozen->query_tokens.requires_grad());
  CHECK(unfrozen->Qformer->embeddings_norm->weight.requires_grad());
  CHECK_FALSE(unfrozen->llama_model->as<LlamaForCausalLM>()->lm_head->weight.requires_grad());
  const auto llm = load_minigpt4(tiny_config({"model.freeze_llm=False"}), torch::kCPU);
  CHECK(llm->llama_model->as<LlamaForCausalLM>()->lm_head->weight.requires_grad());
  CHECK_FALSE(llm->visual_encoder->pos_embed.requires_grad());
}

TEST_CASE("a checkpoint with a missing key, a wrong shape or a bad file fails by name", "[models]") {
  torch::NoGradGuard no_grad;
  const auto dir = temp_dir();
  auto eva = io::load_state_dict((tiny() / "eva_vit_g.pth").string());

  auto missing = eva;
  missing.erase("blocks.1.attn.proj.weight");
  io::save_safetensors((dir / "eva_missing.safetensors").string(), missing);
  CHECK_THROWS_WITH(
      load_minigpt4(tiny_config({"model.vit_model=" + (dir / "eva_missing.safetensors").string()}), torch::kCPU),
      Contains("visual_encoder.blocks.1.attn.proj.weight") && Contains("not found"));

  auto wrong = eva;
  wrong["blocks.0.mlp.fc1.weight"] = torch::zeros({7, 64});
  io::save_safetensors((dir / "eva_wrong.safetensors").string(), wrong);
  CHECK_THROWS_WITH(
      load_minigpt4(tiny_config({"model.vit_model=" + (dir / "eva_wrong.safetensors").string()}), torch::kCPU),
      Contains("eva_wrong.safetensors") && Contains("blocks.0.mlp.fc1.weight") && Contains("[7, 64]") &&
          Contains("[279, 64]"));

  // A config whose sizes disagree with the files: the first mismatching key is named.
  CHECK_THROWS_WITH(load_minigpt4(tiny_config({"model.vit_width=32"}), torch::kCPU), Contains("shape"));

  {
    std::ifstream in(tiny() / "blip2_pretrained.pth", std::ios::binary);
    std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    std::ofstream out(dir / "blip2_truncated.pth", std::ios::binary);
    out.write(bytes.data(), static_cast<std::streamsize>(bytes.size() / 2));
  }
  CHECK_THROWS_WITH(
      load_minigpt4(tiny_config({"model.q_former_model=" + (dir / "blip2_truncated.pth").string()}), torch::kCPU),
      Contains("blip2_truncated.pth"));
  CHECK_THROWS_WITH(load_minigpt4(tiny_config({"model.llama_model=" + (dir / "nowhere").string()}), torch::kCPU),
                    Contains("nowhere") && Contains("llama_model"));
  CHECK_THROWS_WITH(load_minigpt4(tiny_config({"model.vit_model=eva_clip_g"}), torch::kCPU), Contains("eva_vit_g.pth"));
  fs::remove_all(dir);
}

TEST_CASE("stage 1 starts the projector fresh when no ckpt is given", "[models]") {
  LoadReport report;
  const auto model = load_minigpt4(tiny_config({"model.ckpt="}), torch::kCPU, &report);
  CHECK(report.initialised == std::vector<std::string>{"llama_proj.weight", "llama_proj.bias"});
  CHECK(model->llama_proj->weight.abs().max().item<double>() > 0);
}

TEST_CASE("a checkpoint at another image size gets its position embedding interpolated", "[models]") {
  torch::NoGradGuard no_grad;
  const auto io = io::load_safetensors((tiny() / "io.safetensors").string());
  const auto expected = io.at("pos_embed_interp");  // the original's interpolation to a 6x6 grid
  const int64_t grid = static_cast<int64_t>(std::lround(std::sqrt(static_cast<double>(expected.size(1) - 1))));
  const auto model = load_minigpt4(tiny_config({"model.image_size=" + std::to_string(grid * 14)}), torch::kCPU);
  CHECK(torch::allclose(model->visual_encoder->pos_embed, expected, 1e-5, 1e-5));
  const auto embeds = model->encode_img(torch::randn({1, 3, grid * 14, grid * 14}));
  CHECK(embeds.sizes() == torch::IntArrayRef({1, 8, 64}));
}

TEST_CASE("the LLaMA-2 variant projects 4 concatenated patch tokens, without a Q-Former", "[models]") {
  torch::NoGradGuard no_grad;
  LoadReport report;
  const auto model = load_minigpt4(tiny_config({"model.has_qformer=False", "model.ckpt="}), torch::kCPU, &report);
  CHECK(model->Qformer == nullptr);
  CHECK(model->llama_proj->weight.sizes() == torch::IntArrayRef({64, 4 * 64}));
  // The variant's own code reads no BLIP-2 file: ln_vision keeps LayerNorm's defaults even
  // though the config names one, and the report says so.
  CHECK(torch::equal(model->ln_vision->weight, torch::ones_like(model->ln_vision->weight)));
  CHECK(torch::equal(model->ln_vision->bias, torch::zeros_like(model->ln_vision->bias)));
  CHECK(std::any_of(report.notes.begin(), report.notes.end(),
                    [](const std::string& n) { return n.find("is not read") != std::string::npos; }));
  // A file of ln_vision alone (save_model_parts' release of a tower trained without a
  // Q-Former) is read.
  const auto own = fs::temp_directory_path() / ("minigpt4_ln_vision_" + std::to_string(::getpid()) + ".safetensors");
  const int64_t width = model->ln_vision->weight.size(0);
  io::save_safetensors(
      own.string(), {{"ln_vision.weight", torch::full({width}, 2.0)}, {"ln_vision.bias", torch::full({width}, 0.5)}});
  const auto trained = load_minigpt4(
      tiny_config({"model.has_qformer=False", "model.ckpt=", "model.q_former_model=" + own.string()}), torch::kCPU);
  CHECK(torch::equal(trained->ln_vision->weight, torch::full({width}, 2.0)));
  CHECK(torch::equal(trained->ln_vision->bias, torch::full({width}, 0.5)));
  fs::remove(own);
  const auto embeds = model->encode_img(torch::randn({2, 3, 56, 56}));
  CHECK(embeds.sizes() == torch::IntArrayRef({2, 16 / 4, 64}));
  // the projection input is 4 consecutive patch tokens after ln_vision
  const auto tokens = model->encode_vision(torch::ones({1, 3, 56, 56}));
  const auto first = torch::cat({tokens[0][1], tokens[0][2], tokens[0][3], tokens[0][4]});
  CHECK(torch::allclose(model->image_queries(tokens)[0][0], first));
}

TEST_CASE("LLaMA: KV cache, left padding and grouped-query attention", "[models]") {
  torch::NoGradGuard no_grad;
  torch::manual_seed(0);
  LlamaConfig c;
  c.vocab_size = 50, c.hidden_size = 32, c.intermediate_size = 48, c.num_hidden_layers = 2;
  c.num_attention_heads = 4, c.num_key_value_heads = 2;
  LlamaForCausalLM gqa(c, torch::kFloat32);
  for (auto& p : gqa.parameters()) p.normal_(0, 0.3);
  const auto ids = torch::randint(3, 50, {1, 9});
  const auto embeds = gqa.embed(ids);
  const auto full = gqa.forward(embeds).logits;

  SECTION("incremental decoding with the cache equals the full forward") {
    KVCache cache;
    CausalLMOptions options;
    options.cache = &cache;
    std::vector<torch::Tensor> steps{gqa.forward(embeds.slice(1, 0, 5), options).logits};
    for (int64_t t = 5; t < 9; ++t) steps.push_back(gqa.forward(embeds.slice(1, t, t + 1), options).logits);
    CHECK(torch::allclose(torch::cat(steps, 1), full, 1e-5, 1e-5));
    CHECK(cache.length() == 9);
  }
  SECTION("a left-padded row gives the unpadded logits at its real positions") {
    const auto padded = torch::cat({torch::zeros({1, 3, 32}), embeds}, 1);
    auto mask = torch::ones({1, 12}, torch::kLong);
    mask.slice(1, 0, 3).zero_();
    CausalLMOptions options;
    options.attention_mask = mask;
    options.position_ids = position_ids_from_mask(mask);
    const auto logits = gqa.forward(padded, options).logits;
    CHECK(torch::allclose(logits.slice(1, 3), full, 1e-5, 1e-5));
  }
  SECTION("grouped-query attention equals multi-head attention with repeated kv heads") {
    auto mha_config = c;
    mha_config.num_key_value_heads = 4;
    LlamaForCausalLM mha(mha_config, torch::kFloat32);
    auto mha_params = mha.named_parameters();
    for (const auto& item : gqa.named_parameters()) {
      auto value = item.value();
      if (item.key().find("k_proj") != std::string::npos || item.key().find("v_proj") != std::string::npos)
        value = value.view({2, 8, 32}).repeat_interleave(2, 0).reshape({32, 32});  // kv head j -> query heads 2j, 2j+1
      mha_params[item.key()].copy_(value);
    }
    CHECK(torch::allclose(mha.forward(embeds).logits, full, 1e-5, 1e-5));
  }
}

TEST_CASE("configured precisions: fp16 runs as fp32 on the CPU, bf16 as bf16", "[models]") {
  LoadReport report;
  const auto model =
      load_minigpt4(tiny_config({"model.vit_precision=fp16", "model.llm_precision=bf16"}), torch::kCPU, &report);
  CHECK(model->visual_encoder->pos_embed.scalar_type() == torch::kFloat32);
  CHECK(model->llama_model->dtype() == torch::kBFloat16);
  CHECK(!report.notes.empty());
  torch::NoGradGuard no_grad;
  CHECK(model->encode_img(torch::randn({1, 3, 56, 56})).scalar_type() == torch::kBFloat16);
}

TEST_CASE("LLaMA in half precision stays finite under left padding", "[models]") {
  torch::NoGradGuard no_grad;
  torch::manual_seed(0);
  LlamaConfig c;
  c.vocab_size = 40, c.hidden_size = 32, c.intermediate_size = 48, c.num_hidden_layers = 2;
  c.num_attention_heads = 4, c.num_key_value_heads = 4;
  for (const auto dtype : {torch::kBFloat16, torch::kFloat16}) {
    LlamaForCausalLM model(c, dtype);
    for (auto& p : model.parameters()) p.normal_(0, 0.3);
    auto mask = torch::ones({2, 7}, torch::kLong);
    mask[1].slice(0, 0, 3).zero_();
    CausalLMOptions options;
    options.attention_mask = mask;
    options.position_ids = position_ids_from_mask(mask);
    const auto logits = model.forward(model.embed(torch::randint(3, 40, {2, 7})), options).logits;
    INFO(c10::toString(dtype));
    CHECK(torch::isfinite(logits).all().item<bool>());
  }
}
