// Generation with a Phi LLM against transformers' `generate(input_ids=...)` for every fixture
// case holding a Phi directory (tests/data/parity/tiny_phi2 + MINIGPT4_PARITY_DIRS): greedy
// for one row and for a batch, beam search, and greedy over a left-padded batch must give the
// fixture's ids exactly.
//
// The fixture passes the prompt as input_ids; we pass its embeddings. transformers then
// returns prompt + new ids; we return the new ids, prepended here. Nothing is seeded
// (bos_token_id -1) and min_length is transformers' default 0, so no logits processor runs;
// beam search since transformers 4.36 leaves the prompt out of a hypothesis' length too.
#include "minigpt4/generate/generate.h"
#include "minigpt4/io/safetensors.h"
#include "minigpt4/models/llm_family.h"
#include "tests/support/fixtures.h"

#include <catch2/catch.hpp>

#include <cstdio>
#include <iostream>
#include <regex>

using namespace minigpt4;
namespace fs = std::filesystem;

namespace {

// max_new_tokens as the manifest states it for an io tensor ("max_new_tokens=16"), else
// the widest output's new part.
int64_t max_new_tokens(const nlohmann::json& manifest, const StateDict& io, int64_t prompt_length) {
  static const std::regex stated(R"(max_new_tokens=(\d+))");
  for (const auto& file : manifest.at("files"))
    for (const auto& tensor : file.value("tensors", nlohmann::json::array())) {
      std::smatch m;
      const std::string meaning = tensor.value("meaning", "");
      if (std::regex_search(meaning, m, stated)) return std::stoll(m[1]);
    }
  int64_t widest = 0;
  for (const char* name : {"greedy_ids", "beam3_ids", "greedy_ids_batch", "greedy_leftpad_ids"})
    if (io.count(name)) widest = std::max(widest, io.at(name).size(-1) - prompt_length);
  return widest;
}

// Whether the case's reference ran transformers >= major.minor (manifest generator.transformers.version).
bool transformers_at_least(const nlohmann::json& manifest, int major, int minor) {
  const auto version = manifest.at("generator").at("transformers").at("version").get<std::string>();
  int got_major = 0, got_minor = 0;
  REQUIRE(std::sscanf(version.c_str(), "%d.%d", &got_major, &got_minor) == 2);
  return got_major > major || (got_major == major && got_minor >= minor);
}

// The rows transformers returns for a batch: prompt + new ids, finished rows padded.
torch::Tensor batch_output(const torch::Tensor& prompts, const std::vector<GenerationOutput>& outs, int64_t pad) {
  size_t width = 0;
  for (const auto& o : outs) width = std::max(width, o.tokens.size());
  std::vector<torch::Tensor> rows;
  for (size_t b = 0; b < outs.size(); ++b) {
    auto generated = outs[b].tokens;
    generated.resize(width, pad);
    rows.push_back(torch::cat({prompts[b].to(torch::kLong), torch::tensor(generated, torch::kLong)}));
  }
  return torch::stack(rows);
}

}  // namespace

TEST_CASE("generation with a Phi LLM matches transformers on every Phi fixture case", "[parity]") {
  torch::NoGradGuard no_grad;
  int cases = 0;
  for (const auto& dir : test::parity_cases()) {
    const auto manifest = test::read_json(dir / "manifest.json");
    const auto phi_dir = test::hf_model_dir(dir, manifest, "phi");
    if (phi_dir.empty()) continue;
    ++cases;
    INFO("case directory " << dir);
    const auto io = io::load_safetensors((dir / "io.safetensors").string());
    const auto model = load_causal_lm(phi_dir.string(), torch::kFloat32);

    // transformers takes eos/pad from generation_config.json, else config.json; pad falls back to eos.
    GenerationConfig config;
    config.bos_token_id = -1;
    config.min_length = 0;
    config.eos_token_id = -1;
    for (const char* file : {"config.json", "generation_config.json"}) {
      if (!fs::exists(phi_dir / file)) continue;
      const auto j = test::read_json(phi_dir / file);
      for (const auto& [key, target] : {std::pair<const char*, int64_t*>{"eos_token_id", &config.eos_token_id},
                                        {"pad_token_id", &config.pad_token_id}})
        if (j.contains(key) && j[key].is_number_integer()) *target = j[key].get<int64_t>();
    }
    const int64_t pad = config.pad_token_id >= 0 ? config.pad_token_id : config.eos_token_id;
    const auto ids = io.at("input_ids");
    config.max_new_tokens = max_new_tokens(manifest, io, ids.size(1));
    REQUIRE(config.max_new_tokens > 0);
    int checked = 0;
    auto check = [&](const std::string& name, const torch::Tensor& actual) {
      INFO("tensor " << name);
      const auto result = test::compare(name, actual, io.at(name), {0, 0, true});
      INFO(result.message);
      CHECK(result.ok);
      ++checked;
    };

    const auto first = ids.slice(0, 0, 1);
    if (io.count("greedy_ids")) {
      const auto out = generate(*model, model->embed(first), config);
      check("greedy_ids", torch::cat({first[0], torch::tensor(out.tokens, torch::kLong)}));
    }
    if (io.count("beam3_ids")) {
      auto beam = config;
      beam.num_beams = 3;
      beam.beam_length_generated_only = transformers_at_least(manifest, 4, 36);
      const auto out = generate(*model, model->embed(first), beam);
      check("beam3_ids", torch::cat({first[0], torch::tensor(out.tokens, torch::kLong)}));
    }
    if (io.count("greedy_ids_batch")) {
      const auto mask = torch::ones(ids.sizes(), torch::kLong);
      check("greedy_ids_batch", batch_output(ids, generate_batch(*model, model->embed(ids), mask, config), pad));
    }
    if (io.count("greedy_leftpad_ids")) {
      // The fixture generated with masked_attention_mask: 0 over the left padding.
      const auto padded = io.at("greedy_leftpad_input_ids");
      const auto mask = io.at("masked_attention_mask");
      REQUIRE(mask.sizes() == padded.sizes());
      check("greedy_leftpad_ids",
            batch_output(padded, generate_batch(*model, model->embed(padded), mask, config), pad));
    }
    std::cout << "phi generation case " << manifest.value("case", dir.filename().string()) << ": " << checked
              << " id tensors checked" << std::endl;
  }
  CHECK(cases >= 1);
}

TEST_CASE("beam search scores hypotheses by generated length as transformers >= 4.36 does", "[generate]") {
  // Settings under which the two length rules pick different hypotheses on tiny_phi2. The
  // expected new ids are transformers 5.24's generate(input_ids[:1], num_beams=3,
  // max_new_tokens=16, length_penalty, eos_token_id=pad_token_id=eos) on that model (its
  // rule is the one of 4.36); the fixture's own beam3_ids does not tell the rules apart.
  struct Run {
    int64_t eos;
    double length_penalty;
    std::vector<int64_t> expected;
  };
  const std::vector<Run> runs = {
      {173, 0.5, {173}},
      {440, 1.0, {173, 68, 375, 132, 478, 56, 428, 440}},
      {328, 3.0, {14, 9, 505, 213, 96, 369, 142, 233, 440, 211, 440, 211, 440, 209, 440, 328}},
  };
  torch::NoGradGuard no_grad;
  const auto dir = test::data_dir() / "parity/tiny_phi2";
  const auto model = load_causal_lm((dir / "phi2").string(), torch::kFloat32);
  const auto prompt = io::load_safetensors((dir / "io.safetensors").string()).at("input_ids").slice(0, 0, 1);
  for (const auto& run : runs) {
    INFO("eos " << run.eos << ", length_penalty " << run.length_penalty);
    GenerationConfig config;
    config.bos_token_id = -1, config.min_length = 0, config.max_new_tokens = 16, config.num_beams = 3;
    config.eos_token_id = config.pad_token_id = run.eos;
    config.length_penalty = run.length_penalty;
    config.beam_length_generated_only = true;
    const auto tokens = generate(*model, model->embed(prompt), config).tokens;
    CHECK(tokens == run.expected);
    config.beam_length_generated_only = false;
    CHECK(generate(*model, model->embed(prompt), config).tokens != tokens);
  }
}
