// Parity of generation with the original (MiniGPT-4's Chat.answer over transformers 4.28
// `generate`) for every fixture case (tests/data/parity + MINIGPT4_PARITY_DIRS). Every
// setting comes from the case's manifest ("generation" section) and model files: greedy,
// beam search, both repetition penalties, the stop-sequence and Chat-stop runs must give the
// fixture ids exactly; the processors' and warpers' scores match within tolerance; the
// answer text is Chat.answer's.
#include "tests/generate/generate_fixture.h"

#include <catch2/catch.hpp>

#include <iostream>

using namespace minigpt4;
namespace fs = std::filesystem;

namespace {

struct Checker {
  std::string case_name;
  const nlohmann::json& manifest;
  const StateDict& expected;
  int checked = 0;
  std::vector<std::string> failures;

  void operator()(const std::string& name, const torch::Tensor& actual) {
    INFO("case " << case_name << ", tensor " << name);
    REQUIRE(expected.count(name));
    const auto result = test::compare(name, actual, expected.at(name), test::tolerance_for(manifest, name));
    if (!result.ok) failures.push_back(result.message);
    if (std::getenv("MINIGPT4_PARITY_VERBOSE"))
      std::cout << "  " << name << ": max |diff| " << result.max_abs_diff << "\n";
    CHECK(result.ok);
    ++checked;
  }
};

// The io tensor of a manifest result: "greedy_seq_stop" -> "gen_greedy_seqstop_ids".
std::string result_tensor(std::string name) {
  for (size_t pos; (pos = name.find("_stop")) != std::string::npos;) name.erase(pos, 1);
  return "gen_" + name + "_ids";
}

torch::Tensor ids(const std::vector<int64_t>& v) { return torch::tensor(v, torch::kLong); }

}  // namespace

TEST_CASE("generation matches the original on every fixture case", "[parity]") {
  torch::NoGradGuard no_grad;
  const auto cases = test::parity_cases("minigpt4_full.safetensors");
  REQUIRE(!cases.empty());
  for (const auto& dir : cases) {
    INFO("case directory " << dir);
    const test::GenerationFixture fx(dir);
    Checker check{fx.name(), fx.manifest, fx.io, 0, {}};
    const auto& gen = fx.generation();
    const auto& tok = fx.tokenizer;

    // The input: Chat.get_context_emb rebuilt from the prompt and image equals chat_embs;
    // generation then runs on the fixture's own chat_embs.
    const std::string prompt = gen.at("prompt").get<std::string>();
    const int64_t image_index = gen.value("image_index", 0);
    const auto image = fx.io.at("image").slice(0, image_index, image_index + 1);
    check("chat_embs", fx.model->context_embedding(prompt, {fx.model->encode_img(image)}, tok));
    const auto chat_embs = fx.io.at("chat_embs");

    REQUIRE(!gen.at("results").empty());
    for (const auto& [name, result] : gen.at("results").items()) {
      INFO("generation result " << name);
      const auto config = fx.result_config(name);
      std::vector<int64_t> streamed;
      const auto out = generate(fx.llm(), chat_embs, config, [&](int64_t t) { streamed.push_back(t); });
      const auto hf = out.hf_output();
      CHECK(streamed == out.tokens);
      check(result_tensor(name), ids(hf));
      CHECK(hf == result.at("raw").get<std::vector<int64_t>>());
      CHECK(answer_tokens(hf) == result.at("output_token").get<std::vector<int64_t>>());
      CHECK(postprocess_answer(hf, tok) == result.at("output_text").get<std::string>());
      // The fixture ends each run either at max_new_tokens or at a stop sequence.
      if (static_cast<int64_t>(out.tokens.size()) < config.max_new_tokens)
        CHECK((out.finish_reason == "stop" || out.finish_reason == "eos"));

      // "<x>_last_step_*" tensors of result "greedy_<x>": the processors' arithmetic on the
      // last step of that run.
      const std::string variant = name.rfind("greedy_", 0) == 0 ? name.substr(7) : name;
      if (!fx.io.count(variant + "_last_step_scores")) continue;
      const auto step_ids = fx.io.at(variant + "_last_step_input_ids");
      const int64_t len = step_ids.size(0);
      REQUIRE(len + 1 == static_cast<int64_t>(hf.size()));  // the step that chose the last id
      check(variant + "_last_step_input_ids", ids(hf).slice(0, 0, len));
      // Our model's logits at that step: the prompt embeddings, then the generated ids (the
      // seeded bos is never fed), recomputed in full.
      const auto fed = fx.llm().embed(ids(hf).slice(0, 1, len).unsqueeze(0)).to(chat_embs.scalar_type());
      const auto logits = fx.llm().forward(torch::cat({chat_embs, fed}, 1)).logits[0][-1];
      check(variant + "_last_step_logits", logits);
      const auto step_logits = fx.io.at(variant + "_last_step_logits");
      check(variant + "_last_step_scores", process_logits(step_logits.unsqueeze(0), step_ids.unsqueeze(0), config)[0]);
      CHECK(process_logits(logits.unsqueeze(0), step_ids.unsqueeze(0), config).argmax(-1).item<int64_t>() == hf.back());
    }

    // The demo's first sampling step: Chat.answer's kwargs as given (do_sample=True) with
    // HF's default top_k; processors then warpers on the last prompt logits, input_ids = [bos].
    if (fx.io.count("sample_step0_scores")) {
      // The plain single-beam, unpenalised result's kwargs are the demo's.
      std::string plain;
      for (const auto& [name, result] : gen.at("results").items()) {
        const auto& kw = result.at("generate_kwargs_from_chat");
        if (plain.empty() && kw.at("num_beams").get<int>() == 1 && kw.at("repetition_penalty").get<double>() == 1.0)
          plain = name;
      }
      REQUIRE(!plain.empty());
      const auto demo = fx.result_config(plain, /*apply_overrides=*/false);
      REQUIRE(demo.do_sample);
      auto expected_pipeline = gen.at("processors").get<std::vector<std::string>>();
      for (const auto& w : gen.at("warpers").get<std::vector<std::string>>()) expected_pipeline.push_back(w);
      CHECK(logits_pipeline(demo) == expected_pipeline);
      const auto bos = ids({demo.bos_token_id}).unsqueeze(0);
      const auto warp = [&](const torch::Tensor& last_logits) {
        return warp_logits(process_logits(last_logits.unsqueeze(0), bos, demo), demo)[0];
      };
      const auto expected = fx.io.at("sample_step0_scores");
      const auto fixture_logits = fx.io.at("chat_logits")[0][-1];
      const auto from_fixture = warp(fixture_logits);
      // The filtered set must be exactly the original's; finite entries within tolerance.
      CHECK(torch::equal(torch::isinf(from_fixture), torch::isinf(expected)));
      check("sample_step0_scores", from_fixture);
      // The same from our own model's logits over chat_embs.
      const auto own = warp(fx.llm().forward(chat_embs).logits[0][-1]);
      CHECK(torch::equal(torch::isinf(own), torch::isinf(expected)));
      const auto own_cmp = test::compare("sample_step0_scores (own logits)", own, expected,
                                         test::tolerance_for(fx.manifest, "chat_logits"));
      INFO(own_cmp.message);
      CHECK(own_cmp.ok);
    }

    std::cout << "parity case " << check.case_name << ": " << check.checked << " tensors checked" << std::endl;
    for (const auto& f : check.failures) std::cout << "  FAILED " << f << std::endl;
  }
}
