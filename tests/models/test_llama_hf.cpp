// LLaMA against Hugging Face transformers on a grouped-query attention config with another
// RMSNorm eps and rope theta (tests/data/hf_llama_gqa, made by its generate.py), loaded from
// the HF directory as a user's would be.
#include "minigpt4/io/checkpoint.h"
#include "minigpt4/io/safetensors.h"
#include "minigpt4/models/llama.h"
#include "minigpt4/models/weights.h"
#include "tests/support/fixtures.h"

#include <catch2/catch.hpp>

using namespace minigpt4;

TEST_CASE("LLaMA with grouped-query attention matches transformers", "[models]") {
  torch::NoGradGuard no_grad;
  const auto dir = test::data_dir() / "hf_llama_gqa";
  const auto config = LlamaConfig::from_json(io::read_json_file((dir / "config.json").string()), "config.json");
  CHECK(config.num_key_value_heads < config.num_attention_heads);
  CHECK(config.rope_theta == 500000.0);
  LlamaForCausalLM model(config, torch::kFloat32);
  std::set<std::string> filled;
  LoadSpec spec;
  spec.source = dir.string();
  const auto result = load_into(model, io::load_state_dict(dir.string()), spec, filled);
  CHECK(result.unexpected.empty());
  CHECK(unfilled_parameters(model, filled).empty());

  const auto io = io::load_safetensors((dir / "io.safetensors").string());
  const auto embeds = model.embed(io.at("input_ids"));
  CausalLMOptions options;
  options.output_hidden_states = true;
  const auto out = model.forward(embeds, options);
  const test::Tolerance tol{1e-4, 1e-4, false};
  auto check = [&](const char* name, const torch::Tensor& actual) {
    const auto r = test::compare(name, actual, io.at(name), tol);
    INFO(r.message);
    CHECK(r.ok);
  };
  check("logits", out.logits);
  check("hidden_states", torch::stack(out.hidden_states));

  const auto mask = io.at("attention_mask");
  CausalLMOptions padded;
  padded.attention_mask = mask;
  padded.position_ids = position_ids_from_mask(mask);
  const auto padded_logits = model.forward(embeds, padded).logits;
  // Only real (unmasked) positions are meaningful; compare those.
  const auto real = mask.to(torch::kBool).unsqueeze(-1).expand_as(padded_logits);
  check("padded_logits", torch::where(real, padded_logits, io.at("padded_logits")));
}

TEST_CASE("LLaMA configs this code cannot run are refused by name", "[models]") {
  auto base = io::read_json_file((test::data_dir() / "hf_llama_gqa/config.json").string());
  auto scaled = base;
  scaled["rope_parameters"] = {{"rope_type", "llama3"}, {"rope_theta", 500000.0}, {"factor", 8.0}};
  CHECK_THROWS_WITH(LlamaConfig::from_json(scaled, "cfg.json"),
                    Catch::Contains("cfg.json") && Catch::Contains("rope_parameters"));
  auto biased = base;
  biased["attention_bias"] = true;
  CHECK_THROWS_WITH(LlamaConfig::from_json(biased, "cfg.json"), Catch::Contains("attention_bias"));
  auto missing = base;
  missing.erase("hidden_size");
  CHECK_THROWS_WITH(LlamaConfig::from_json(missing, "cfg.json"), Catch::Contains("hidden_size"));
}
