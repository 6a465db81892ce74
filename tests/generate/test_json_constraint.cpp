// Constrained decoding to JSON (generate/json_constraint.h, json_schema.h): the byte automaton
// against valid and invalid texts, schemas and their refusals, and the vocabulary mask on the
// tiny fixture's tokenizer, its answers checked by an independent validator.
#include "minigpt4/chat/chat.h"
#include "minigpt4/common/config.h"
#include "minigpt4/common/error.h"
#include "minigpt4/generate/json_constraint.h"
#include "minigpt4/models/minigpt4.h"
#include "minigpt4/tokenizer/tokenizer.h"
#include "tests/support/fixtures.h"
#include "tests/support/json_schema_check.h"

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
       {R"({})", R"( {"a": 1})", R"({"a": [1, -2.5e+3, 0.25E-1, true, false, null, "x\"\\\/\b\f\n\r\t\u00e9"]})",
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
  CHECK_FALSE(accepts("{} "));  // nothing after the value: the answer ends there
  // White space as llama.cpp's JSON grammars write it: " " or newlines and an indentation.
  CHECK(accepts("{\n" + std::string(JsonPrefix::kMaxIndent, ' ') + "\"a\":"));
  CHECK_FALSE(accepts("{\n" + std::string(JsonPrefix::kMaxIndent + 1, ' ')));
  CHECK(accepts("{\n\n\t\t\"a\": 1"));
  CHECK_FALSE(accepts("{  "));
  CHECK_FALSE(accepts("{\n\n\n"));
  CHECK_FALSE(accepts("{\n  \n"));
  CHECK_FALSE(accepts("{\t"));
  CHECK_FALSE(accepts("{\r\n"));
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
      constraint.mask(scores, text, JsonSchema::any_object());
      REQUIRE(torch::isfinite(scores).any().item<bool>());
      const int64_t id = scores.argmax().item<int64_t>();
      JsonPrefix p;
      INFO(text);
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
    options.json_schema = JsonSchema::any_object();
    const auto reply = session.answer(options);
    INFO(reply.text);
    JsonPrefix p;
    CHECK(p.feed(reply.text));
    if (reply.finish_reason == "stop") CHECK(nlohmann::json::parse(reply.text).is_object());
    CHECK((reply.text.empty() || reply.text[0] == '{'));
  }
}

namespace {

bool schema_accepts(const nlohmann::json& schema, const std::string& text, bool whole) {
  JsonPrefix p(JsonSchema::compile(schema));
  return p.feed(text) && (!whole || p.complete());
}

std::string refusal(const nlohmann::json& schema) {
  try {
    JsonSchema::compile(schema);
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

const nlohmann::json kPerson = nlohmann::json::parse(R"({
  "type": "object",
  "properties": {
    "name": {"type": "string", "minLength": 1, "maxLength": 8},
    "age": {"type": "integer"},
    "colour": {"enum": ["red", "green", "blue", 7, null]},
    "pets": {"type": "array", "items": {"$ref": "#/$defs/pet"}, "minItems": 1, "maxItems": 2},
    "nick": {"anyOf": [{"type": "string", "maxLength": 3}, {"type": "null"}]}
  },
  "required": ["name", "age"],
  "additionalProperties": false,
  "$defs": {"pet": {"type": "object", "properties": {"kind": {"const": "cat"}, "next": {"$ref": "#/$defs/pet"}},
                    "required": ["kind"], "additionalProperties": false}}
})");

}  // namespace

TEST_CASE("a JSON schema: every prefix of a satisfying value is accepted, and nothing that breaks it",
          "[generate][json]") {
  for (const std::string text :
       {R"({"name": "Ann", "age": 31})", R"({"age":-4,"name":"\u00e9\"x","colour":"green"})",
        R"({"name": "B", "age": 0, "colour": 7, "pets": [{"kind": "cat", "next": {"kind": "cat"}}], "nick": null})",
        R"({"name": "été", "age": 2, "colour": null, "nick": "abc"})"}) {
    INFO(text);
    REQUIRE(test::satisfies(nlohmann::json::parse(text), kPerson));
    for (size_t n = 0; n < text.size(); ++n) CHECK(schema_accepts(kPerson, text.substr(0, n), false));
    CHECK(schema_accepts(kPerson, text, true));
  }
  for (const std::string bad :
       {R"({"name": "Ann"})",                                                                       // age required
        R"({"name": "", "age": 1})",                                                                // minLength
        R"({"name": "ABCDEFGHI", "age": 1})",                                                       // maxLength
        R"({"name": "A", "age": 1.5})",                                                             // integer
        R"({"name": "A", "age": 1, "colour": "pink"})",                                             // enum
        R"({"name": "A", "age": 1, "color": "red"})",                                               // no such property
        R"({"name": "A", "age": 1, "pets": []})",                                                   // minItems
        R"({"name": "A", "age": 1, "pets": [{"kind": "cat"}, {"kind": "cat"}, {"kind": "cat"}]})",  // maxItems
        R"({"name": "A", "age": 1, "pets": [{"kind": "dog"}]})",                                    // const
        R"({"name": "A", "age": 1, "nick": "abcd"})",  // anyOf: too long for the string
        R"({"name": "A", "age": 1, "nick": 3})",       // anyOf: neither
        R"(["name"])", R"("Ann")"}) {
    INFO(bad);
    CHECK_FALSE(test::satisfies(nlohmann::json::parse(bad), kPerson));
    CHECK_FALSE(schema_accepts(kPerson, bad, true));
  }
  CHECK_FALSE(schema_accepts(kPerson, R"({"name": "A", "age": 1, "name": )", false));  // a key written twice
  // Scalars at the top: a number may go on, so it is complete and still open.
  CHECK(schema_accepts({{"type", "integer"}}, "12", true));
  CHECK(schema_accepts({{"type", "integer"}}, "123", true));
  CHECK_FALSE(schema_accepts({{"type", "integer"}}, "1.", false));
  CHECK(schema_accepts({{"type", "number"}}, "-0.5e3", true));
  CHECK(schema_accepts({{"enum", {1, 12}}}, "1", true));
  CHECK(schema_accepts({{"enum", {1, 12}}}, "12", true));
  CHECK_FALSE(schema_accepts({{"enum", {1, 12}}}, "13", false));
  CHECK(schema_accepts({{"type", {"boolean", "null"}}}, "nul", false));
  CHECK_FALSE(schema_accepts({{"type", {"boolean", "null"}}}, "\"", false));
  CHECK(schema_accepts(true, "[1, {\"a\": null}]", true));
  // A property name that JSON must escape is matched as written.
  CHECK(schema_accepts(
      {{"type", "object"}, {"properties", {{"a\"b", {{"type", "null"}}}}}, {"additionalProperties", false}},
      R"({"a\"b": null})", true));
  // Recursion through $ref is bounded by the nesting limit, not by the schema.
  const nlohmann::json list = {{"type", "array"}, {"items", {{"$ref", "#"}}}};
  CHECK(schema_accepts(list, "[[[]], []]", true));
  CHECK_FALSE(schema_accepts(list, std::string(JsonPrefix::kMaxDepth + 1, '['), false));
}

TEST_CASE("schemas outside the subset, or that no value satisfies, are refused by name", "[generate][json]") {
  using nlohmann::json;
  CHECK_THAT(refusal({{"type", "string"}, {"pattern", "^a"}}),
             Catch::Contains("'pattern'") && Catch::Contains("not supported"));
  CHECK_THAT(refusal({{"properties", {{"n", {{"type", "number"}, {"minimum", 0}}}}}}),
             Catch::Contains("'minimum'") && Catch::Contains("/properties/n"));
  CHECK_THAT(refusal({{"type", "strng"}}), Catch::Contains("'type'"));
  CHECK_THAT(refusal(false), Catch::Contains("false"));
  CHECK_THAT(refusal({{"$ref", "#/$defs/missing"}}), Catch::Contains("points at nothing"));
  CHECK_THAT(refusal({{"$ref", "http://example.com/s.json"}}), Catch::Contains("inside the schema"));
  CHECK_THAT(refusal(json::parse(R"({"$ref": "#/$defs/a", "$defs": {"a": {"$ref": "#/$defs/a"}}})")),
             Catch::Contains("refers to itself"));
  CHECK_THAT(refusal({{"required", {"x"}}, {"additionalProperties", false}}), Catch::Contains("'x'"));
  CHECK_THAT(refusal({{"enum", json::array()}}), Catch::Contains("non-empty"));
  CHECK_THAT(refusal({{"type", "integer"}, {"enum", {"a"}}}), Catch::Contains("'enum'"));
  CHECK_THAT(refusal({{"minItems", 3}, {"maxItems", 2}}), Catch::Contains("minItems > maxItems"));
  CHECK_THAT(refusal({{"anyOf", {{{"type", "string"}}}}, {"type", "string"}}), Catch::Contains("beside"));
  CHECK_THAT(refusal({{"items", {{{"type", "string"}}}}}), Catch::Contains("tuple"));
  CHECK_THAT(refusal("object"), Catch::Contains("must be an object or a boolean"));
  CHECK_THAT(refusal({{"anyOf", json(std::vector<json>(65, {{"type", "null"}}))}}), Catch::Contains("65 choices"));
  json deep = {{"type", "string"}};
  for (int i = 0; i < 100; ++i) deep = {{"type", "array"}, {"items", deep}};
  CHECK_THAT(refusal(deep), Catch::Contains("deeper"));
  CHECK(refusal(kPerson).empty());
  CHECK(refusal({{"title", "t"}, {"description", "d"}, {"format", "date-time"}, {"type", "string"}}).empty());
}

TEST_CASE("answers under a schema's mask satisfy the schema (random scores, independent validator)",
          "[generate][json]") {
  const auto dir = test::data_dir() / "parity/tiny_vicuna0/vicuna";
  const auto tokenizer = load_tokenizer(dir.string());
  const int64_t vocab = tokenizer->vocab_size(), eos = tokenizer->eos_id();
  const JsonConstraint constraint(*tokenizer, vocab, eos);
  const nlohmann::json small = nlohmann::json::parse(R"({
    "type": "object",
    "properties": {"colour": {"enum": ["red", "green"]}, "ok": {"type": "boolean"},
                   "tags": {"type": "array", "items": {"enum": ["a", "bc"]}, "maxItems": 2},
                   "note": {"anyOf": [{"type": "null"}, {"type": "string", "maxLength": 2}]}},
    "required": ["colour", "ok", "tags", "note"], "additionalProperties": false})");
  int ended = 0;
  for (const auto& schema_json : {small, kPerson}) {
    const auto schema = JsonSchema::compile(schema_json);
    for (int seed = 0; seed < 8; ++seed) {
      torch::manual_seed(seed);
      std::vector<int64_t> ids;
      for (int step = 0; step < 120; ++step) {
        auto scores = torch::randn({vocab});
        const auto text = tokenizer->decode(ids);
        constraint.mask(scores, text, schema);
        REQUIRE(torch::isfinite(scores).any().item<bool>());
        const int64_t id = scores.argmax().item<int64_t>();
        if (id == eos) {
          INFO(text);
          const auto value = nlohmann::json::parse(text);
          CHECK(test::satisfies(value, schema_json));
          ++ended;
          break;
        }
        ids.push_back(id);
        INFO(tokenizer->decode(ids));
        JsonPrefix p(schema);
        REQUIRE(p.feed(tokenizer->decode(ids)));
      }
    }
  }
  CHECK(ended >= 8);  // the small schema's language is finite: every seed ends
}
