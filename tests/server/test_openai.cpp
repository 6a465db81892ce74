// The OpenAI request mapping and the reply/chunk/error shapes, without a model.
#include "minigpt4/generate/json_schema.h"
#include "minigpt4/server/base64.h"
#include "minigpt4/server/openai.h"
#include "minigpt4/server/page.h"

#include <catch2/catch.hpp>
#include <opencv2/imgcodecs.hpp>

#include <optional>

using namespace minigpt4;
using namespace minigpt4::server;
using json = nlohmann::json;
using Catch::Contains;

namespace {

std::string png_uri(int width = 8, int height = 6) {
  std::vector<uchar> bytes;
  REQUIRE(cv::imencode(".png", cv::Mat(height, width, CV_8UC3, cv::Scalar(0, 255, 0)), bytes));
  return "data:image/png;base64," + base64_encode(std::string(bytes.begin(), bytes.end()));
}

ChatRequest parse(const json& body, const RequestLimits& limits = {}) {
  return parse_chat_request(body.dump(), limits);
}

json user(const json& content) { return {{"role", "user"}, {"content", content}}; }

// The 400 a body gets: its message contains `text` and it names `param`.
void check_rejected(const json& body, const std::string& param, const std::string& text,
                    const RequestLimits& limits = {}) {
  INFO(body.dump().substr(0, 300));
  try {
    parse(body, limits);
    FAIL("accepted");
  } catch (const ApiError& e) {
    CHECK(e.status == 400);
    CHECK(e.type == "invalid_request_error");
    CHECK(e.param == param);
    CHECK_THAT(e.what(), Contains(text));
  }
}

}  // namespace

TEST_CASE("a multi-round OpenAI conversation maps onto Chat's operations", "[server]") {
  const json body = {{"model", "anything"},
                     {"messages",
                      {{{"role", "system"}, {"content", "You are helpful."}},
                       user({{{"type", "text"}, {"text", "What is this?"}},
                             {{"type", "image_url"}, {"image_url", {{"url", png_uri()}, {"detail", "low"}}}}}),
                       {{"role", "assistant"}, {"content", "A green square."}},
                       user({{{"type", "image_url"}, {"image_url", png_uri(4, 4)}},
                             {{"type", "text"}, {"text", "And this?"}},
                             {{"type", "text"}, {"text", "Compare."}}})}},
                     {"max_tokens", 20},
                     {"temperature", 0},
                     {"top_p", 0.5},
                     {"top_k", 7},
                     {"num_beams", 2},
                     {"seed", 42},
                     {"stop", "END"},
                     {"n", 1},
                     {"frequency_penalty", 0},
                     {"user", "u1"}};
  const auto r = parse(body);
  CHECK(r.model == "anything");
  CHECK(r.system_given);
  REQUIRE(r.steps.size() == 5);
  using K = ChatStep::Kind;
  CHECK(r.steps[0].kind == K::Image);  // images go first, as upload_img precedes ask
  CHECK(r.steps[0].param == "messages[1].content[1].image_url.url");
  CHECK(r.steps[0].image.substr(1, 3) == "PNG");
  CHECK((r.steps[1].kind == K::Ask && r.steps[1].text == "What is this?"));
  CHECK((r.steps[2].kind == K::Answer && r.steps[2].text == "A green square."));
  CHECK((r.steps[3].kind == K::Image && r.steps[3].param == "messages[3].content[0].image_url"));
  CHECK((r.steps[4].kind == K::Ask && r.steps[4].text == "And this?\nCompare."));
  CHECK(r.options.max_new_tokens == 20);
  CHECK(r.options.temperature == 0);
  CHECK(r.options.top_p == 0.5);
  CHECK(r.options.top_k == 7);
  CHECK(r.options.num_beams == 2);
  CHECK((r.seeded && r.options.seed == 42));
  CHECK(r.stop == std::vector<std::string>{"END"});
  CHECK_FALSE(r.stream);
}

TEST_CASE("request defaults are Chat.answer's, within the server's limits", "[server]") {
  RequestLimits limits;
  limits.max_tokens = 100;
  const auto r = parse({{"messages", {user("Hi")}},
                        {"stream", true},
                        {"stream_options", {{"include_usage", true}}},
                        {"max_completion_tokens", nullptr}},
                       limits);
  CHECK(r.options.max_new_tokens == 100);  // min(default 300, cap)
  CHECK(r.options.temperature == 1.0);
  CHECK(r.options.top_p == 0.9);
  CHECK(r.options.num_beams == 1);
  CHECK_FALSE(r.seeded);
  CHECK((r.stream && r.include_usage));
  REQUIRE(r.steps.size() == 1);
  CHECK(r.steps[0].text == "Hi");
  CHECK(parse({{"messages", {user("Hi")}}, {"max_completion_tokens", 5}}).options.max_new_tokens == 5);
}

TEST_CASE("what clients send that has no meaning here is accepted: late system messages, empty text, new fields",
          "[server]") {
  // A system message anywhere (OpenAI and llama.cpp take them so), an empty user text.
  const auto r = parse({{"messages", {user("Hi"), {{"role", "system"}, {"content", "late"}}, user("")}}});
  REQUIRE(r.steps.size() == 2);
  CHECK(r.steps[1].text.empty());
  CHECK(r.system_given);
  // Current OpenAI fields without meaning for this model, accepted and ignored.
  const json fields = {{"reasoning_effort", "low"},
                       {"verbosity", "low"},
                       {"prompt_cache_key", "k"},
                       {"safety_identifier", "s"},
                       {"web_search_options", json::object()},
                       {"audio", nullptr},
                       {"prediction", nullptr}};
  for (const auto& [key, value] : fields.items()) {
    INFO(key);
    CHECK_NOTHROW(parse({{"messages", {user("Hi")}}, {key, value}}));
  }
  check_rejected({{"messages", {user("Hi")}}, {"audio", {{"voice", "alloy"}}}}, "audio", "not supported");
  check_rejected({{"messages", {user("Hi")}}, {"prediction", {{"type", "content"}}}}, "prediction", "not supported");
}

TEST_CASE("logprobs, top_logprobs and logit_bias map onto the answer's options", "[server]") {
  const auto plain = parse({{"messages", {user("Hi")}}});
  CHECK(plain.options.top_logprobs == -1);
  CHECK(plain.options.logit_bias.empty());
  CHECK(parse({{"messages", {user("Hi")}}, {"logprobs", true}}).options.top_logprobs == 0);
  CHECK(parse({{"messages", {user("Hi")}}, {"logprobs", true}, {"top_logprobs", 5}}).options.top_logprobs == 5);
  CHECK(parse({{"messages", {user("Hi")}}, {"logprobs", false}, {"top_logprobs", 0}}).options.top_logprobs == -1);
  const auto biased = parse({{"messages", {user("Hi")}}, {"logit_bias", {{"17", -100}, {"4", 2.5}}}});
  auto bias = biased.options.logit_bias;
  std::sort(bias.begin(), bias.end());
  CHECK(bias == std::vector<std::pair<int64_t, double>>{{4, 2.5}, {17, -100}});
  CHECK(parse({{"messages", {user("Hi")}}, {"logit_bias", json::object()}}).options.logit_bias.empty());
  CHECK(parse({{"messages", {user("Hi")}}, {"response_format", {{"type", "json_object"}}}}).options.json_schema ==
        JsonSchema::any_object());
  const json schema = {{"type", "object"}, {"properties", {{"a", {{"type", "integer"}}}}}, {"required", {"a"}}};
  const auto with_schema =
      parse({{"messages", {user("Hi")}},
             {"response_format", {{"type", "json_schema"}, {"json_schema", {{"name", "s"}, {"schema", schema}}}}}});
  REQUIRE(with_schema.options.json_schema);
  CHECK(with_schema.options.json_schema->node(with_schema.options.json_schema->root()).properties.size() == 1);
  CHECK(parse({{"messages", {user("Hi")}}, {"n", 3}}).n == 3);
  CHECK(parse({{"messages", {user("Hi")}}}).n == 1);
  CHECK_FALSE(parse({{"messages", {user("Hi")}}, {"response_format", {{"type", "text"}}}}).options.json_schema);
}

TEST_CASE("malformed and unsupported requests get a 400 naming the field", "[server]") {
  try {
    parse_chat_request("{\"messages\": [", {});
    FAIL("accepted");
  } catch (const ApiError& e) {
    CHECK((e.status == 400 && e.code == "invalid_json"));
  }
  const json hi = json::array({user("Hi")});
  check_rejected(json::array(), "", "must be a JSON object");
  check_rejected({{"model", "m"}}, "messages", "'messages' is required");
  check_rejected({{"messages", "Hi"}}, "messages", "must be an array");
  check_rejected({{"messages", json::array()}}, "messages", "empty");
  check_rejected({{"messages", {{{"role", "robot"}, {"content", "x"}}}}}, "messages[0].role", "unknown role 'robot'");
  check_rejected({{"messages", {{{"role", "tool"}, {"content", "x"}}}}}, "messages[0].role", "not supported");
  check_rejected({{"messages", {{{"content", "x"}}}}}, "messages[0].role", "missing");
  check_rejected({{"messages", {{{"role", 3}, {"content", "x"}}}}}, "messages[0].role", "must be a string");
  check_rejected({{"messages", {user(5)}}}, "messages[0].content", "string or an array");
  check_rejected({{"messages", {user(json::array({{{"type", "input_audio"}}}))}}}, "messages[0].content[0].type",
                 "'input_audio' is not supported");
  check_rejected({{"messages", {user("Hi"), {{"role", "assistant"}, {"content", "Hello"}}}}}, "messages",
                 "last message must be the user's");
  check_rejected(
      {{"messages",
        {{{"role", "assistant"}, {"content", {{{"type", "image_url"}, {"image_url", png_uri()}}}}}, user("x")}}},
      "messages[0].content[0].type", "images only come in user messages");
  check_rejected({{"messages", hi}, {"temperature", "hot"}}, "temperature", "must be a number");
  check_rejected({{"messages", hi}, {"temperature", 2.5}}, "temperature", "[0, 2]");
  check_rejected({{"messages", hi}, {"top_p", 0}}, "top_p", "(0, 1]");
  check_rejected({{"messages", hi}, {"max_tokens", 0}}, "max_tokens", "at least 1");
  check_rejected({{"messages", hi}, {"max_tokens", 1.5}}, "max_tokens", "must be an integer");
  check_rejected({{"messages", hi}, {"max_tokens", 5000}}, "max_tokens", "at most 1024");
  check_rejected({{"messages", hi}, {"n", 9}}, "n", "1..8");
  check_rejected({{"messages", hi}, {"n", 0}}, "n", "1..8");
  check_rejected({{"messages", hi}, {"n", 2}, {"num_beams", 2}}, "n", "beam search");
  check_rejected({{"messages", hi}, {"n", 2}, {"explain", true}}, "n", "'explain'");
  check_rejected({{"messages", hi}, {"num_beams", 11}}, "num_beams", "1..10");
  check_rejected({{"messages", hi}, {"stop", {"a", "b", "c", "d", "e"}}}, "stop", "at most 4");
  check_rejected({{"messages", hi}, {"stop", ""}}, "stop", "must not be empty");
  check_rejected({{"messages", hi}, {"stream", "yes"}}, "stream", "must be a boolean");
  check_rejected({{"messages", hi}, {"stream_options", {{"include_usage", true}}}}, "stream_options",
                 "only allowed with");
  check_rejected({{"messages", hi}, {"presence_penalty", 0.5}}, "presence_penalty", "not supported");
  check_rejected({{"messages", hi}, {"logprobs", "yes"}}, "logprobs", "must be a boolean");
  check_rejected({{"messages", hi}, {"logprobs", true}, {"top_logprobs", 21}}, "top_logprobs", "0..20");
  check_rejected({{"messages", hi}, {"top_logprobs", 2}}, "top_logprobs", "needs 'logprobs': true");
  check_rejected({{"messages", hi}, {"logprobs", true}, {"num_beams", 2}}, "logprobs", "beam search");
  check_rejected({{"messages", hi}, {"logit_bias", {1, 2}}}, "logit_bias", "must be an object");
  check_rejected({{"messages", hi}, {"logit_bias", {{"abc", 1}}}}, "logit_bias.abc", "token ids");
  check_rejected({{"messages", hi}, {"logit_bias", {{"-3", 1}}}}, "logit_bias.-3", "token ids");
  check_rejected({{"messages", hi}, {"logit_bias", {{"17", 101}}}}, "logit_bias.17", "[-100, 100]");
  check_rejected({{"messages", hi}, {"logit_bias", {{"17", "up"}}}}, "logit_bias.17", "must be a number");
  check_rejected({{"messages", hi}, {"tools", {{{"type", "function"}}}}}, "tools", "not supported");
  check_rejected({{"messages", hi}, {"response_format", {{"type", "json_schema"}}}}, "response_format",
                 "needs 'json_schema'");
  check_rejected({{"messages", hi},
                  {"response_format",
                   {{"type", "json_schema"}, {"json_schema", {{"schema", {{"type", "string"}, {"pattern", "a+"}}}}}}}},
                 "response_format", "'pattern'");
  check_rejected({{"messages", hi}, {"response_format", {{"type", "xml"}}}}, "response_format", "must be");
  check_rejected({{"messages", hi}, {"response_format", {{"type", "json_object"}}}, {"num_beams", 3}},
                 "response_format", "beam search");
  check_rejected({{"messages", hi}, {"temprature", 1}}, "temprature", "unrecognized request argument");
}

TEST_CASE("images must be inline data URIs within the limits", "[server]") {
  const auto with_image = [](const json& image_url) {
    return json{
        {"messages", {user({{{"type", "image_url"}, {"image_url", image_url}}, {{"type", "text"}, {"text", "?"}}})}}};
  };
  const std::string param = "messages[0].content[0].image_url.url";
  check_rejected(with_image({{"url", "https://example.com/cat.png"}}), param, "not fetched");
  check_rejected(with_image({{"url", "file:///etc/passwd"}}), param, "file://");
  check_rejected(with_image({{"url", "data:image/png;base64,@@@@"}}), param, "invalid base64");
  check_rejected(with_image({{"url", "data:image/png;base64,aGVsbG8="}}), param,
                 "not an image in a format this build reads");
  check_rejected(with_image({{"detail", "high"}}), param, "missing");
  check_rejected(with_image(7), "messages[0].content[0].image_url", "must be a string");
  RequestLimits small;
  small.image.max_pixels = 10;
  check_rejected(with_image({{"url", png_uri(8, 6)}}), param, "8x6", small);
}

TEST_CASE("hostile bodies: overflowing numbers, wrong types, deep nesting and huge strings are 400s naming the field",
          "[server]") {
  const std::string hi = R"("messages": [{"role": "user", "content": "Hi"}])";
  const auto rejected = [](const std::string& body, const std::string& param, const std::string& text) {
    INFO(body.substr(0, 200));
    try {
      parse_chat_request(body, {});
      FAIL("accepted");
    } catch (const ApiError& e) {
      CHECK(e.status == 400);
      CHECK(e.param == param);
      CHECK_THAT(e.what(), Contains(text));
      CHECK(std::string(e.what()).size() < 600);  // never the whole input
    }
  };
  // nlohmann throws out_of_range (406), not parse_error, for numbers beyond double.
  rejected("{" + hi + R"(, "max_tokens": )" + std::string(100'000, '9') + "}", "max_tokens", "too large");
  rejected("{" + hi + R"(, "temperature": 1e309})", "temperature", "too large");
  rejected("{" + hi + R"(, "length_penalty": -1e309})", "length_penalty", "too large");
  rejected(R"({"messages": [{"role": "user", "content": [{"type": "text", "text": "a"}, 1e999]}]})",
           "messages[0].content[1]", "too large");
  rejected("{" + hi + R"(, "response_format": {"type": 5}})", "response_format", "response_format must be");
  rejected("{" + hi + R"(, "response_format": "text"})", "response_format", "must be an object");
  rejected("{" + hi + R"(, "max_tokens": 18446744073709551615})", "max_tokens", "does not fit");
  rejected("{" + hi + R"(, "seed": 9223372036854775808})", "seed", "does not fit");
  rejected("{" + hi + R"(, "top_k": "50"})", "top_k", "must be an integer");
  rejected("{" + hi + R"(, "repetition_penalty": 1e-300})", "repetition_penalty", "[0.01, 100]");
  rejected("{" + hi + R"(, "stop": [")" + std::string(1000, 'x') + R"("]})", "stop", "at most 512 bytes");
  rejected("{" + hi + R"(, "stream_options": {"include_usage": 1}, "stream": true})", "stream_options.include_usage",
           "must be a boolean");
  CHECK_THROWS_WITH(parse_chat_request(std::string(100'000, '['), {}), Contains("deeper than 256 levels"));
  CHECK_THROWS_WITH(parse_chat_request("{\"messages\": " + std::string(300, '[') + std::string(300, ']') + "}", {}),
                    Contains("deeper than"));
  rejected("{\"" + std::string(1'000'000, 'k') + "\": 1}", std::string(60, 'k') + "... (1000000 bytes)",
           "unrecognized request argument");
  rejected(R"({"messages": [{"role": ")" + std::string(100'000, 'r') + R"(", "content": "x"}]})", "messages[0].role",
           "unknown role");
  rejected(R"({"messages": [{"role": "user", "content": [{"type": ")" + std::string(100'000, 't') + R"("}]}]})",
           "messages[0].content[0].type", "is not supported");
  rejected(R"({"messages": [{"role": "user", "content": "x"}], "lora": 7})", "lora", "must be a string");
  rejected("{\"messages\": [\"" + std::string(10, '\x01') + "\"]}", "messages[0]", "not valid JSON");
  // A tiny temperature samples as greedy (its logits would divide into infinities).
  CHECK(parse_chat_request("{" + hi + R"(, "temperature": 1e-300})", {}).options.temperature == 0);
  CHECK(parse_chat_request("{" + hi + R"(, "temperature": 0.5})", {}).options.temperature == 0.5);
}

TEST_CASE("a request's images are counted and budgeted from their headers, and its text from its size", "[server]") {
  const auto image = [](int width, int height) {
    return json{{"type", "image_url"}, {"image_url", {{"url", png_uri(width, height)}}}};
  };
  RequestLimits limits;
  limits.max_images = 2;
  check_rejected({{"messages", {user({image(8, 6), image(8, 6), image(8, 6)})}}}, "messages[0].content[2]",
                 "more than 2 images in one request (--max-images-per-request)", limits);
  // Counted over the whole conversation, not per message.
  check_rejected({{"messages",
                   {user({image(8, 6), image(8, 6)}),
                    {{"role", "assistant"}, {"content", "ok"}},
                    user(json::array({image(8, 6)}))}}},
                 "messages[2].content[0]", "--max-images-per-request", limits);
  CHECK(parse({{"messages", {user({image(8, 6), image(8, 6)})}}}, limits).steps.size() == 2);

  limits = RequestLimits{};
  limits.max_request_pixels = 90;  // one 8x6 image (48 pixels), not two
  check_rejected({{"messages", {user({image(8, 6), image(8, 6)})}}}, "messages[0].content[1].image_url.url",
                 "--max-request-pixels", limits);
  // A header claiming a huge canvas is refused before decoding, whatever the limits add up to.
  std::vector<uchar> png;
  REQUIRE(cv::imencode(".png", cv::Mat(6, 8, CV_8UC3), png));
  std::string bomb(png.begin(), png.end());
  bomb[16] = '\x7f', bomb[17] = bomb[18] = bomb[19] = '\xff';  // width 2^31-1
  check_rejected(
      {{"messages", {user({{{"type", "image_url"}, {"image_url", "data:image/png;base64," + base64_encode(bomb)}}})}}},
      "messages[0].content[0].image_url", "2147483647x6", RequestLimits{});

  limits = RequestLimits{};
  limits.max_prompt_tokens = 10;  // 320 bytes of text
  check_rejected({{"messages", {user(std::string(400, 'a'))}}}, "messages[0].content", "--max-prompt-tokens", limits);
  check_rejected({{"messages", {user("a"), {{"role", "assistant"}, {"content", std::string(400, 'b')}}, user("c")}}},
                 "messages[1].content", "at most 10 prompt tokens", limits);
  json many = json::array();
  for (int i = 0; i < 20; ++i) many.push_back(user("x")), many.push_back({{"role", "assistant"}, {"content", ""}});
  many.push_back(user("x"));
  check_rejected({{"messages", many}}, "messages[9]", "--max-prompt-tokens", limits);  // each message counts
  CHECK(parse({{"messages", {user(std::string(200, 'a'))}}}, limits).steps.size() == 1);
  try {
    parse({{"messages", {user(std::string(400, 'a'))}}}, limits);
  } catch (const ApiError& e) {
    CHECK(e.code == "context_length_exceeded");
  }

  RequestLimits page;
  page.max_prompt_tokens = 10;
  CHECK_THROWS_WITH(parse_page_ask(json{{"text", std::string(400, 'a')}}.dump(), page),
                    Contains("--max-prompt-tokens"));
  CHECK_THROWS_WITH(parse_page_ask(R"({"text": "x", "num_beams": 1e400})", page), Contains("too large"));
  CHECK_THROWS_WITH(parse_page_ask(R"({"text": "x", "max_new_tokens": 18446744073709551615})", page),
                    Contains("1..1024"));
  CHECK_THROWS_WITH(parse_page_ask(R"({"text": "x", "num_beams": 2.5})", page), Contains("1..10"));
  CHECK(parse_page_ask(R"({"text": "x", "temperature": 1e-200})", page).options.temperature == 0);
  page.max_request_pixels = 40;
  CHECK_THROWS_WITH(parse_page_image(json{{"image", png_uri(8, 6)}}.dump(), page), Contains("--max-request-pixels"));
  CHECK_THROWS_WITH(parse_page_lora(json{{std::string(100'000, 'k'), 1}}.dump(), false), Contains("(100000 bytes)"));
}

TEST_CASE("replies, chunks, models and errors have OpenAI's shapes", "[server]") {
  const CompletionMeta meta{"chatcmpl-1", 1700000000, "tiny", ""};
  const auto reply = completion_json(meta, "Hello", "stop", 40, 3);
  CHECK(reply["object"] == "chat.completion");
  CHECK(reply["choices"][0]["message"] == json({{"role", "assistant"}, {"content", "Hello"}}));
  CHECK(reply["choices"][0]["finish_reason"] == "stop");
  CHECK(reply["usage"] == json({{"prompt_tokens", 40}, {"completion_tokens", 3}, {"total_tokens", 43}}));

  const auto first = chunk_json(meta, {{"role", "assistant"}, {"content", ""}});
  CHECK(first["object"] == "chat.completion.chunk");
  CHECK(first["choices"][0]["finish_reason"].is_null());
  const auto last = chunk_json(meta, json::object(), std::string("length"));
  CHECK(last["choices"][0]["delta"] == json::object());
  CHECK(last["choices"][0]["finish_reason"] == "length");
  const auto usage = usage_chunk_json(meta, 5, 6);
  CHECK(usage["choices"].empty());
  CHECK(usage["usage"]["total_tokens"] == 11);

  CHECK(models_json("tiny", 1)["data"][0]["id"] == "tiny");
  const auto error = error_json(ApiError(400, "bad", "messages", "x"));
  CHECK(
      error ==
      json({{"error", {{"message", "bad"}, {"type", "invalid_request_error"}, {"param", "messages"}, {"code", "x"}}}}));
  CHECK(error_json(ApiError(503, "busy"))["error"]["type"] == "server_error");
  CHECK(error_json(ApiError(503, "busy"))["error"]["param"].is_null());

  CHECK(openai_finish_reason("stop") == "stop");
  CHECK(openai_finish_reason("length") == "length");
  CHECK(openai_finish_reason("cancelled") == "length");
  CHECK(sse_event({{"a", 1}}) == "data: {\"a\":1}\n\n");
  CHECK(sse_event({{"text", "\xff"}}) ==
        "data: {\"text\":\"\xEF\xBF\xBD\"}\n\n");  // invalid UTF-8 replaced, not thrown
  CHECK(new_completion_id().rfind("chatcmpl-", 0) == 0);
  CHECK(new_completion_id() != new_completion_id());
}

TEST_CASE("the page's requests are validated like the API's", "[server]") {
  RequestLimits limits;
  const auto ask = parse_page_ask(R"({"text": "What is it?", "num_beams": 3, "temperature": 0.7})", limits);
  CHECK(ask.text == "What is it?");
  CHECK(ask.options.num_beams == 3);
  CHECK(ask.options.temperature == 0.7);
  CHECK(ask.options.max_new_tokens == 300);
  CHECK_THROWS_AS(parse_page_ask(R"({"text": ""})", limits), ApiError);
  CHECK_THROWS_WITH(parse_page_ask(R"({"text": "x", "num_beams": 0})", limits), Contains("1..10"));
  CHECK_THROWS_WITH(parse_page_ask(R"({"text": "x", "temperature": 3})", limits), Contains("[0, 2]"));
  CHECK_THROWS_WITH(parse_page_ask(R"({"text": "x", "extra": 1})", limits), Contains("unknown field"));
  CHECK_THROWS_WITH(parse_page_ask("nope", limits), Contains("not valid JSON"));
  CHECK(parse_page_image(json{{"image", png_uri()}}.dump(), limits).substr(1, 3) == "PNG");
  CHECK_THROWS_WITH(parse_page_image(R"({"image": "http://x/y.png"})", limits), Contains("not fetched"));
  CHECK(page_html().find("<!DOCTYPE html>") == 0);
  CHECK(page_html().find("http") == std::string::npos);  // loads nothing from elsewhere
}

TEST_CASE("LoRA adapters: the request's `lora`, its resolution and /v1/models", "[server][lora]") {
  const json body = {{"messages", {user("hi")}}, {"lora", "det"}};
  CHECK(parse(body).lora == std::optional<std::string>("det"));
  CHECK_FALSE(parse({{"messages", {user("hi")}}}).lora);
  CHECK_FALSE(parse({{"messages", {user("hi")}}, {"lora", nullptr}}).lora);
  check_rejected({{"messages", {user("hi")}}, {"lora", ""}}, "lora", "must name an adapter");
  check_rejected({{"messages", {user("hi")}}, {"lora", 3}}, "lora", "must be a string");

  const std::vector<std::string> choices = {"original", "det", "ocr"};
  CHECK(resolve_adapter(parse(body), choices, "original") == "det");
  CHECK(resolve_adapter(parse({{"messages", {user("hi")}}}), choices, "ocr") == "ocr");  // default
  CHECK(resolve_adapter(parse({{"messages", {user("hi")}}, {"model", "ocr"}}), choices, "original") ==
        "ocr");  // as a model
  CHECK(resolve_adapter(parse({{"messages", {user("hi")}}, {"model", "gpt-4o"}}), choices, "det") == "det");
  CHECK(resolve_adapter(parse({{"messages", {user("hi")}}, {"model", "ocr"}, {"lora", "original"}}), choices, "det") ==
        "original");  // lora wins
  try {
    resolve_adapter(parse({{"messages", {user("hi")}}, {"lora", "grounding"}}), choices, "original");
    FAIL("accepted");
  } catch (const ApiError& e) {
    CHECK(e.status == 400);
    CHECK(e.param == "lora");
    CHECK(e.code == "unknown_adapter");
    CHECK_THAT(e.what(), Contains("'grounding'") && Contains("original, det, ocr"));
  }
  // A model without adapters: only "original".
  CHECK(resolve_adapter(parse({{"messages", {user("hi")}}, {"lora", "original"}}), {"original"}, "original") ==
        "original");
  CHECK_THROWS_AS(resolve_adapter(parse(body), {"original"}, "original"), ApiError);

  const auto models = models_json("tiny", 1, choices, "det");
  REQUIRE(models["data"].size() == 3);
  CHECK(models["data"][0]["adapters"] == json(choices));
  CHECK(models["data"][0]["default_adapter"] == "det");
  CHECK(models["data"][1] == json({{"id", "det"},
                                   {"object", "model"},
                                   {"created", 1},
                                   {"owned_by", "minigpt4-cpp"},
                                   {"parent", "tiny"},
                                   {"lora", "det"}}));
  CHECK(models_json("tiny", 1, {"original"}, "original")["data"].size() == 1);
  CHECK_FALSE(models_json("tiny", 1, {"original"}, "original")["data"][0].contains("adapters"));

  CHECK(parse_page_lora("", false) == std::nullopt);
  CHECK(parse_page_lora("{}", false) == std::nullopt);
  CHECK(parse_page_lora(R"({"lora": "det"})", true) == std::optional<std::string>("det"));
  CHECK_THROWS_WITH(parse_page_lora("{}", true), Contains("'lora' is required"));
  CHECK_THROWS_WITH(parse_page_lora(R"({"lora": 1})", false), Contains("non-empty string"));
  CHECK_THROWS_WITH(parse_page_lora(R"({"lora": "a", "b": 1})", false), Contains("unknown field 'b'"));
}

TEST_CASE("boxes of an answer go into the reply and the last chunk", "[server][lora]") {
  const auto boxes = boxes_json("It is at <bin_0> <bin_0> <bin_223> <bin_111>.", 446, 100);
  REQUIRE(boxes.size() == 1);
  CHECK(boxes[0] == json({{"x0", 0},
                          {"y0", 0},
                          {"x1", 446},
                          {"y1", 50},
                          {"bins", {0, 0, 223, 111}},
                          {"grid", 224},
                          {"format", "conlora"},
                          {"label", nullptr},
                          {"clamped", false},
                          {"image_size", {446, 100}},
                          {"text", "<bin_0> <bin_0> <bin_223> <bin_111>"}}));
  const auto labelled = boxes_json("<p>cat</p> {<10><20><30><40>}", 0, 0);  // no image: bins only
  REQUIRE(labelled.size() == 1);
  CHECK(labelled[0]["label"] == "cat");
  CHECK(labelled[0]["x0"].is_null());
  CHECK(labelled[0]["image_size"].is_null());
  CHECK(boxes_json("A cat.", 10, 10).empty());

  CompletionMeta meta{"chatcmpl-1", 1700000000, "tiny", "det"};
  const auto reply = completion_json(meta, "x", "stop", 1, 1, boxes);
  CHECK(reply["choices"][0]["message"]["boxes"] == boxes);
  CHECK(reply["lora"] == "det");
  CHECK(chunk_json(meta, {{"boxes", boxes}}, std::string("stop"))["lora"] == "det");
  CHECK(usage_chunk_json(meta, 1, 1)["lora"] == "det");
  meta.lora.clear();
  CHECK_FALSE(completion_json(meta, "x", "stop", 1, 1)["choices"][0]["message"].contains("boxes"));
  CHECK_FALSE(completion_json(meta, "x", "stop", 1, 1).contains("lora"));
}
