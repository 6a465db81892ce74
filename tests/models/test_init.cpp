// Models built from scratch: fresh weights by the originals' rules, written in the real
// four-file layout, loaded back; and the text-only training forward of a language warm-up.
#include "minigpt4/common/config.h"
#include "minigpt4/models/init.h"
#include "minigpt4/models/minigpt4.h"
#include "minigpt4/tokenizer/llama_tokenizer.h"
#include "tests/support/fixtures.h"

#include <catch2/catch.hpp>
#include <torch/torch.h>

#include <unistd.h>

#include <filesystem>

using namespace minigpt4;
namespace fs = std::filesystem;

namespace {

fs::path tiny() { return test::data_dir() / "parity/tiny_vicuna0"; }

MiniGPT4Config tiny_config() {
  return MiniGPT4Config::from_config(Config::load((test::source_dir() / "configs/tiny_vicuna0.yaml").string(),
                                                  {"model.llama_model=" + (tiny() / "vicuna").string()}));
}

LlamaConfig tiny_llama() {
  LlamaConfig c;
  c.vocab_size = 1000, c.hidden_size = 64, c.intermediate_size = 96, c.num_hidden_layers = 2;
  c.num_attention_heads = 4, c.num_key_value_heads = 2;
  return c;
}

}  // namespace

TEST_CASE("fresh weights: norms 1, biases 0, matrices N(0, 0.02) truncated, fixed by seed and name", "[models]") {
  MiniGPT4 a(tiny_config(), tiny_llama(), torch::kCPU), b(tiny_config(), tiny_llama(), torch::kCPU);
  init_fresh_weights(a, 5);
  init_fresh_weights(b, 5);
  const auto pa = a.named_parameters(), pb = b.named_parameters();
  for (const auto& item : pa) {
    const auto& name = item.key();
    const auto& v = item.value();
    INFO(name);
    CHECK(torch::equal(v, pb[name]));
    if (name.size() >= 4 && name.compare(name.size() - 4, 4, "bias") == 0) {
      CHECK(v.abs().max().item<float>() == 0.0f);
    } else if (v.dim() == 1) {
      CHECK(torch::all(v == 1).item<bool>());
    } else {
      CHECK(v.abs().max().item<float>() <= 0.04f + 1e-6f);
      if (v.numel() > 1000) CHECK(v.std().item<float>() == Approx(0.0176).margin(0.002));  // truncated at 2 sd
    }
  }
  MiniGPT4 c(tiny_config(), tiny_llama(), torch::kCPU);
  init_fresh_weights(c, 6);
  CHECK_FALSE(torch::equal(c.llama_model->as<LlamaForCausalLM>()->lm_head->weight,
                           a.llama_model->as<LlamaForCausalLM>()->lm_head->weight));
}

TEST_CASE("a fresh model saved in the real layout loads back equal, and trains on text alone", "[models]") {
  const fs::path dir = fs::temp_directory_path() / ("minigpt4_init_" + std::to_string(::getpid()));
  fs::remove_all(dir);
  MiniGPT4 fresh(tiny_config(), tiny_llama(), torch::kCPU);
  init_fresh_weights(fresh, 1);
  const auto files = save_model_parts(fresh, dir.string());
  fs::copy_file(tiny() / "vicuna" / "tokenizer.model", fs::path(files.llama_model) / "tokenizer.model");

  auto config = tiny_config();
  config.vit_model = files.vit_model;
  config.q_former_model = files.q_former_model;
  config.llama_model = files.llama_model;
  config.ckpt.clear();
  LoadReport report;
  const auto loaded = load_minigpt4(config, torch::kCPU, &report);
  CHECK(loaded->llama_model->as<LlamaForCausalLM>()->config.num_key_value_heads == 2);
  const auto loaded_params = loaded->named_parameters();
  for (const auto& item : fresh.named_parameters()) {
    if (item.key().rfind("llama_proj.", 0) == 0) continue;  // not saved: stage 1 creates it
    INFO(item.key());
    CHECK(torch::equal(item.value(), loaded_params[item.key()]));
  }

  // Text only: [bos] + text + end_sym, no image, loss over the text.
  const auto tokenizer = LlamaTokenizer::from_pretrained(files.llama_model);
  const auto out = loaded->forward(torch::Tensor(), {"a red circle", "two blue squares on the left"}, "", tokenizer);
  CHECK(out.inputs_embeds.size(0) == 2);
  const auto first = tokenizer.encode("two blue squares on the left" + config.end_sym, false);
  CHECK(out.inputs_embeds.size(1) == 1 + static_cast<int64_t>(first.size()));
  CHECK(out.targets[1][0].item<int64_t>() == -100);  // bos is context
  CHECK(out.targets[1][1].item<int64_t>() == first[0]);
  CHECK(std::isfinite(out.loss.item<double>()));
  CHECK_THROWS(loaded->forward(torch::Tensor(), {"x"}, "<Img><ImageHere></Img>", tokenizer));
  fs::remove_all(dir);
}
