// Constrained decoding to a JSON object (generate/json_constraint.h): the byte automaton
// against valid and invalid texts, and the vocabulary mask on the tiny fixture's tokenizer.
#include "minigpt4/chat/chat.h"
#include "minigpt4/common/config.h"
#include "minigpt4/generate/json_constraint.h"
#include "minigpt4/models/minigpt4.h"
#include "minigpt4/tokenizer/tokenizer.h"
#include "tests/support/fixtures.h"

#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>
#include <torch/torch.h>

using namespace minigpt4;

namespace {

bool accepts(const std::string& text) {
  JsonPrefix p;
  return p.feed(text);
}

bool complete(const std::string& text) {
  JsonPrefix p;
  return p.feed(text) && p.complete();
}

}  // namespace

TEST_CASE("the JSON automaton accepts every prefix of a JSON object and nothing else", "[generate][json]") {
  for (const std::string text :
       {R"({})", R"( {"a": 1} )", R"({"a": [1, -2.5e+3, 0.25E-1, true, false, null, "x\"\\\/\b\f\n\r\t\u00e9"]})",
        R"({"nested": {"deep": [[], [{}], {"k": "v"}]}, "n": 0})", "{\n  \"\xc3\xa9t\xc3\xa9\": \"\xe2\x9c\x93\"\n}"}) {
    INFO(text);
    CHECK(nlohmann::json::accept(text));
    for (size_t n = 0; n < text.size(); ++n) CHECK(accepts(text.substr(0, n)));
    CHECK(complete(text));
  }
  for (const std::string bad : {"{a: 1}", "{\"a\" 1}", "{\"a\": 01}", "{\"a\": 1,}", "{\"a\": tru}", "{\"a\": 1]",
                                "{\"a\": \"\\x\"}", "{\"a\": \"\\u12g4\"}", "{\"a\": -}", "{\"a\": 1.}", "{\"a\": 1e}",
                                "{} {}", "{\"a\": \"line\nbreak\"}", "{\"a\": [1 2]}", "{,}"}) {
    INFO(bad);
    CHECK_FALSE(nlohmann::json::accept(bad));
    CHECK_FALSE(complete(bad));
  }
  // JSON, but not an object: json_object wants one.
  for (const std::string other : {"[1]", "\"a\"", "1", "null"}) {
    INFO(other);
    CHECK(nlohmann::json::accept(other));
    CHECK_FALSE(accepts(other));
  }
  CHECK_FALSE(accepts("x"));
  CHECK_FALSE(accepts("{\"a\": 1]"));
  CHECK(accepts("{\"a\": 12"));  // a number may go on
  CHECK_FALSE(complete("{\"a\": 12"));
  std::string deep(JsonPrefix::kMaxDepth, '[');
  CHECK_FALSE(accepts("{\"a\": " + deep));
}

TEST_CASE("the JSON mask leaves only tokens that keep a JSON object, then only the end", "[generate][json]") {
  const auto dir = test::data_dir() / "parity/tiny_vicuna0/vicuna";
  const auto tokenizer = load_tokenizer(dir.string());
  const int64_t vocab = tokenizer->vocab_size(), eos = tokenizer->eos_id();
  const JsonConstraint constraint(*tokenizer, vocab, eos);
  // Random scores, the best allowed token each step: whatever a model prefers, the text stays
  // a JSON prefix, a token is always left, and a complete object leaves only eos.
  for (int seed = 0; seed < 20; ++seed) {
    torch::manual_seed(seed);
    std::vector<int64_t> ids;
    bool ended = false;
    for (int step = 0; step < 60 && !ended; ++step) {
      auto scores = torch::randn({vocab});
      const auto text = tokenizer->decode(ids);
      constraint.mask(scores, text);
      REQUIRE(torch::isfinite(scores).any().item<bool>());
      const int64_t id = scores.argmax().item<int64_t>();
      JsonPrefix p;
      REQUIRE(p.feed(text));
      if (p.complete()) {
        CHECK(id == eos);
        CHECK(torch::isfinite(scores).sum().item<int64_t>() == 1);
        CHECK(nlohmann::json::parse(text).is_object());
        ended = true;
      } else {
        CHECK(id != eos);
        ids.push_back(id);
      }
    }
    JsonPrefix p;
    CHECK(p.feed(tokenizer->decode(ids)));
  }
}

TEST_CASE("a chat answer with json_object is a JSON object, or its beginning when cut by max_new_tokens",
          "[generate][json]") {
  const auto dir = test::data_dir() / "parity/tiny_vicuna0";
  const auto config = Config::load(
      (test::source_dir() / "configs/tiny_vicuna0.yaml").string(),
      {"model.vit_model=" + (dir / "eva_vit_g.pth").string(),
       "model.q_former_model=" + (dir / "blip2_pretrained.pth").string(),
       "model.llama_model=" + (dir / "vicuna").string(), "model.ckpt=" + (dir / "pretrained_minigpt4.pth").string()});
  const auto model = ChatModel::load(config, torch::kCPU);
  for (const double temperature : {0.0, 1.0}) {
    ChatSession session(model);
    session.ask("Describe a cat as JSON.");
    AnswerOptions options;
    options.temperature = temperature;
    options.max_new_tokens = 40;
    options.json_object = true;
    const auto reply = session.answer(options);
    INFO(reply.text);
    JsonPrefix p;
    CHECK(p.feed(reply.text));
    if (reply.finish_reason == "stop") CHECK(nlohmann::json::parse(reply.text).is_object());
    CHECK((reply.text.empty() || reply.text[0] == '{'));
  }
}
