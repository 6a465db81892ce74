// LoRA task adapters (ConLoRA) through the server, end to end on the tiny fixture model
// with two adapters made in the test (lora_fixture.h): each request's `lora` (the API) or
// session's task (the page) gives exactly the answer that set_active_adapter + ChatSession
// give in-process, whatever other requests ran in between; unknown names are 400s listing
// the adapters; /v1/models lists them.
#include "minigpt4/chat/chat.h"
#include "minigpt4/server/base64.h"
#include "minigpt4/server/openai.h"
#include "minigpt4/server/server.h"
#include "tests/server/running_server.h"
#include "tests/server/lora_fixture.h"

#include <catch2/catch.hpp>
#include <httplib.h>

#include <fstream>
#include <future>
#include <map>
#include <optional>
#include <sstream>
#include <stdexcept>
#include <thread>

using namespace minigpt4;
using json = nlohmann::json;
using Catch::Contains;

namespace {

std::shared_ptr<const ChatModel> adapted_model() {
  static const auto model = [] {
    auto options = test::tiny_weight_options();
    options.push_back(test::TinyAdapters::get().lora_path_option());
    return ChatModel::load(Config::load((test::source_dir() / "configs/tiny_vicuna0.yaml").string(), options),
                           torch::kCPU);
  }();
  return model;
}

const std::string& png_bytes() {
  static const auto bytes = [] {
    std::ifstream in(test::data_dir() / "parity/tiny_vicuna0/image_processor/arc_colors_rgba_357x200.png",
                     std::ios::binary);
    std::ostringstream s;
    s << in.rdbuf();
    return s.str();
  }();
  return bytes;
}

std::string png_uri() { return "data:image/png;base64," + server::base64_encode(png_bytes()); }

const std::vector<std::string> kQuestions = {"What is in this image?", "Tell me more."};
constexpr int kTokens = 8;

// In-process, no server running: the adapter switched directly, then ChatSession's greedy
// answers to `rounds` questions about the PNG. The model is left on "original".
std::vector<std::string> direct_answers(const std::string& adapter, size_t rounds = 1) {
  const auto model = adapted_model();
  model->use_adapter(adapter);
  ChatSession session(model);
  session.upload_image(model->encode_image_bytes(png_bytes(), "png"));
  AnswerOptions options;
  options.temperature = 0;
  options.max_new_tokens = kTokens;
  std::vector<std::string> answers;
  for (size_t i = 0; i < rounds; ++i) {
    session.ask(kQuestions[i]);
    answers.push_back(session.answer(options).text);
  }
  model->use_adapter("original");
  return answers;
}

struct Expected {
  std::map<std::string, std::vector<std::string>> answers;  // adapter -> two rounds
};

const Expected& expected() {
  static const Expected e = [] {
    Expected out;
    for (const char* adapter : {"original", "lora_a", "lora_b"}) out.answers[adapter] = direct_answers(adapter, 2);
    return out;
  }();
  return e;
}

// A server on a free loopback port, serving from a thread until the test ends.
struct Running : test::RunningServer {
  explicit Running(server::ServerOptions options = {}) : RunningServer(adapted_model(), std::move(options)) {}
};

json request_for(const std::optional<std::string>& lora) {
  json body = {{"messages",
                {{{"role", "user"},
                  {"content",
                   {{{"type", "image_url"}, {"image_url", {{"url", png_uri()}}}},
                    {{"type", "text"}, {"text", kQuestions[0]}}}}}}},
               {"max_tokens", kTokens},
               {"temperature", 0}};
  if (lora) body["lora"] = *lora;
  return body;
}

json post_json(const Running& s, const std::string& path, const json& body, int expected_status = 200) {
  const auto res = s.client().Post(path, body.dump(), "application/json");
  REQUIRE(res);
  INFO(path << " " << res->body);
  REQUIRE(res->status == expected_status);
  return json::parse(res->body);
}

// The text of a streamed answer, and its last chunk with a finish_reason. Runs on the
// test's worker threads too, so it throws instead of using Catch's assertions (Catch 2 is not
// thread-safe: TSan caught concurrent REQUIREs here); the caller's get() rethrows.
std::pair<std::string, json> streamed(const Running& s, json body) {
  body["stream"] = true;
  std::string raw;
  httplib::Request req;
  req.method = "POST";
  req.path = "/v1/chat/completions";
  req.body = body.dump();
  req.set_header("Content-Type", "application/json");
  req.content_receiver = [&](const char* data, size_t n, uint64_t, uint64_t) {
    raw.append(data, n);
    return true;
  };
  auto client = s.client();
  const auto res = client.send(req);
  if (!res || res->status != 200)
    throw std::runtime_error("streamed request failed: " +
                             (res ? std::to_string(res->status) + " " + res->body : std::string("no response")));
  std::string text;
  json last;
  std::istringstream lines(raw);
  for (std::string line; std::getline(lines, line);) {
    if (line.rfind("data: ", 0) != 0 || line == "data: [DONE]") continue;
    const auto chunk = json::parse(line.substr(6));
    if (chunk["choices"].empty()) continue;
    const auto& choice = chunk["choices"][0];
    if (choice["delta"].contains("content")) text += choice["delta"]["content"].get<std::string>();
    if (!choice["finish_reason"].is_null()) last = chunk;
  }
  return {text, last};
}

// A page session's streamed answer: its `done` event.
json page_ask(const Running& s, const std::string& session, const std::string& question) {
  const auto res = s.client().Post("/api/sessions/" + session + "/ask",
                                   json{{"text", question}, {"temperature", 0}, {"max_new_tokens", kTokens}}.dump(),
                                   "application/json");
  REQUIRE(res);
  INFO(res->body);
  REQUIRE(res->status == 200);
  std::string text;
  json done;
  std::istringstream lines(res->body);
  for (std::string line; std::getline(lines, line);) {
    if (line.rfind("data: ", 0) != 0) continue;
    const auto event = json::parse(line.substr(6));
    if (event.contains("text")) text += event["text"].get<std::string>();
    if (event.contains("done")) done = event;
  }
  REQUIRE(done.is_object());
  done["text"] = text;
  return done;
}

}  // namespace

TEST_CASE("the two test adapters change the answers (so the tests below can tell them apart)", "[server][lora]") {
  const auto& e = expected().answers;
  INFO("original: " << e.at("original")[0] << "\nlora_a: " << e.at("lora_a")[0] << "\nlora_b: " << e.at("lora_b")[0]);
  REQUIRE(e.at("original")[0] != e.at("lora_a")[0]);
  REQUIRE(e.at("original")[0] != e.at("lora_b")[0]);
  REQUIRE(e.at("lora_a")[0] != e.at("lora_b")[0]);
  CHECK(adapted_model()->adapter_choices() == std::vector<std::string>{"original", "lora_a", "lora_b"});
  CHECK_THROWS_WITH(adapted_model()->use_adapter("lora_c"),
                    Contains("'lora_c'") && Contains("original, lora_a, lora_b"));
}

TEST_CASE("API: `lora` chooses the adapter; absent = the server's default; /v1/models lists them", "[server][lora]") {
  const auto& e = expected().answers;
  Running s;  // default: model.lora_active, which is original with two adapters loaded and none named

  const auto models = json::parse(s.client().Get("/v1/models")->body);
  INFO(models.dump());
  REQUIRE(models["data"].size() == 3);
  CHECK(models["data"][0]["id"] == "tiny_vicuna0");
  CHECK(models["data"][0]["adapters"] == json({"original", "lora_a", "lora_b"}));
  CHECK(models["data"][0]["default_adapter"] == "original");
  CHECK(models["data"][1]["id"] == "lora_a");
  CHECK(models["data"][1]["parent"] == "tiny_vicuna0");
  CHECK(models["data"][2]["id"] == "lora_b");

  for (const auto& [lora, adapter] : std::vector<std::pair<std::optional<std::string>, std::string>>{
           {"lora_a", "lora_a"}, {"lora_b", "lora_b"}, {"original", "original"}, {std::nullopt, "original"}}) {
    const auto reply = post_json(s, "/v1/chat/completions", request_for(lora));
    INFO(adapter);
    CHECK(reply["lora"] == adapter);
    CHECK(reply["choices"][0]["message"]["content"] == e.at(adapter)[0]);
    // Boxes come with an answer that holds any; the tiny model's answers are whatever its
    // random weights say, so here the field only has to agree with the parser.
    const auto boxes = server::boxes_json(reply["choices"][0]["message"]["content"], 357, 200);
    CHECK(reply["choices"][0]["message"].value("boxes", json::array()) == boxes);
  }
  // The adapter's entry of /v1/models as the model name (as vLLM offers LoRA modules).
  auto by_model = request_for(std::nullopt);
  by_model["model"] = "lora_b";
  CHECK(post_json(s, "/v1/chat/completions", by_model)["choices"][0]["message"]["content"] == e.at("lora_b")[0]);
  // Streamed: the same text, the adapter on the chunks.
  const auto [text, last] = streamed(s, request_for("lora_a"));
  CHECK(text == e.at("lora_a")[0]);
  CHECK(last["lora"] == "lora_a");

  const auto error = post_json(s, "/v1/chat/completions", request_for("lora_c"), 400)["error"];
  CHECK(error["param"] == "lora");
  CHECK(error["code"] == "unknown_adapter");
  CHECK_THAT(error["message"].get<std::string>(), Contains("'lora_c'") && Contains("original, lora_a, lora_b"));
  CHECK(post_json(s, "/v1/chat/completions", request_for(""), 400)["error"]["param"] == "lora");
}

TEST_CASE("serve's default adapter (--lora) answers requests that name none", "[server][lora]") {
  const auto& e = expected().answers;
  server::ServerOptions options;
  options.lora = "lora_b";
  Running s(options);
  CHECK(json::parse(s.client().Get("/v1/models")->body)["data"][0]["default_adapter"] == "lora_b");
  CHECK(post_json(s, "/v1/chat/completions", request_for(std::nullopt))["choices"][0]["message"]["content"] ==
        e.at("lora_b")[0]);
  CHECK(post_json(s, "/v1/chat/completions", request_for("original"))["choices"][0]["message"]["content"] ==
        e.at("original")[0]);

  server::ServerOptions wrong;
  wrong.lora = "lora_z";
  CHECK_THROWS_WITH(server::Server(adapted_model(), wrong),
                    Contains("'lora_z'") && Contains("original, lora_a, lora_b"));
}

TEST_CASE("interleaved requests with different adapters each get their own", "[server][lora]") {
  const auto& e = expected().answers;
  Running s;

  // A page conversation on lora_a, its first round; then API requests on other adapters run
  // on the same model; then its second round must still be lora_a's, with its cache.
  const auto created = post_json(s, "/api/sessions", {{"lora", "lora_a"}});
  CHECK(created["adapters"] == json({"original", "lora_a", "lora_b"}));
  CHECK(created["lora"] == "lora_a");
  const auto id = created["session_id"].get<std::string>();
  post_json(s, "/api/sessions/" + id + "/image", {{"image", png_uri()}});
  const auto first = page_ask(s, id, kQuestions[0]);
  CHECK(first["text"] == e.at("lora_a")[0]);
  CHECK(first["lora"] == "lora_a");

  // Concurrent API requests, alternating adapters, queued on the one model thread.
  const std::vector<std::string> order = {"lora_b", "original", "lora_a", "lora_b", "original", "lora_a"};
  std::vector<std::future<std::string>> replies;
  for (size_t i = 0; i < order.size(); ++i)
    replies.push_back(std::async(std::launch::async, [&, i] {
      if (i % 2) return streamed(s, request_for(order[i])).first;
      const auto res = s.client().Post("/v1/chat/completions", request_for(order[i]).dump(), "application/json");
      return res && res->status == 200 ? json::parse(res->body)["choices"][0]["message"]["content"].get<std::string>()
                                       : std::string("(failed)");
    }));
  for (size_t i = 0; i < order.size(); ++i) {
    INFO(i << ": " << order[i]);
    CHECK(replies[i].get() == e.at(order[i])[0]);
  }

  // The model was last left on lora_b: the session's round must switch back to its own.
  CHECK(post_json(s, "/v1/chat/completions", request_for("lora_b"))["choices"][0]["message"]["content"] ==
        e.at("lora_b")[0]);
  const auto second = page_ask(s, id, kQuestions[1]);
  CHECK(second["text"] == e.at("lora_a")[1]);
  CHECK(second["reused_tokens"].get<int64_t>() > 8);  // its own cache, still valid for its adapter

  // The task selector: the session starts over on lora_b with its image encoded again.
  const auto switched = post_json(s, "/api/sessions/" + id + "/lora", {{"lora", "lora_b"}});
  CHECK(switched["lora"] == "lora_b");
  CHECK(switched["images"] == 1);
  const auto after = page_ask(s, id, kQuestions[0]);
  CHECK(after["text"] == e.at("lora_b")[0]);
  CHECK(after["lora"] == "lora_b");

  // Unknown names and malformed bodies are 400s naming the field.
  const auto unknown = post_json(s, "/api/sessions/" + id + "/lora", {{"lora", "nope"}}, 400)["error"];
  CHECK(unknown["param"] == "lora");
  CHECK_THAT(unknown["message"].get<std::string>(), Contains("original, lora_a, lora_b"));
  CHECK(post_json(s, "/api/sessions", {{"lora", "nope"}}, 400)["error"]["code"] == "unknown_adapter");
  CHECK(post_json(s, "/api/sessions/" + id + "/lora", json::object(), 400)["error"]["param"] == "lora");
  CHECK(post_json(s, "/api/sessions", {{"task", "x"}}, 400)["error"]["param"] == "task");
  // A session created without a task uses the server's default.
  CHECK(post_json(s, "/api/sessions", json::object())["lora"] == "original");
}
