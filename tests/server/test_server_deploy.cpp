// What a deployment needs, in llama.cpp server's conventions: /health 503 while the model
// loads, API keys, CORS, /metrics in Prometheus' text format, /slots.
#include "minigpt4/chat/chat.h"
#include "minigpt4/common/config.h"
#include "minigpt4/server/server.h"
#include "tests/server/running_server.h"
#include "tests/support/fixtures.h"

#include <catch2/catch.hpp>
#include <httplib.h>

#include <future>
#include <map>
#include <regex>
#include <set>
#include <sstream>

using namespace minigpt4;
using json = nlohmann::json;

namespace {

std::shared_ptr<const ChatModel> tiny_model() { return test::tiny_chat_model(); }

json text_request(int max_tokens) {
  return {
      {"messages", {{{"role", "user"}, {"content", "Hello there"}}}}, {"max_tokens", max_tokens}, {"temperature", 0}};
}

}  // namespace

TEST_CASE("the port opens before the model loads: /health and every route answer 503 until it is ready", "[server]") {
  std::promise<void> release;
  auto loaded = release.get_future().share();
  server::ServerOptions options;
  options.host = "127.0.0.1";
  options.port = 0;
  server::Server server(
      [loaded]() -> std::shared_ptr<const ChatModel> {
        loaded.wait();
        return tiny_model();
      },
      options);
  const int port = server.bind();
  std::thread serving([&] { server.serve(); });
  httplib::Client client("127.0.0.1", port);
  client.set_read_timeout(120, 0);

  auto health = client.Get("/health");
  REQUIRE(health);
  CHECK(health->status == 503);
  const auto body = json::parse(health->body);
  CHECK(body["status"] == "loading");
  CHECK(body["error"]["message"] == "Loading model");
  const auto early = client.Post("/v1/chat/completions", text_request(2).dump(), "application/json");
  REQUIRE(early);
  CHECK(early->status == 503);
  CHECK(json::parse(early->body)["error"]["code"] == "loading");

  release.set_value();
  for (int i = 0; i < 400 && health->status != 200; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(25));
    health = client.Get("/health");
    REQUIRE(health);
  }
  CHECK(health->status == 200);
  CHECK(json::parse(health->body)["status"] == "ok");
  const auto answered = client.Post("/v1/chat/completions", text_request(2).dump(), "application/json");
  REQUIRE(answered);
  CHECK(answered->status == 200);
  server.stop();
  serving.join();
}

TEST_CASE("a model that fails to load ends serve() with its error", "[server]") {
  server::ServerOptions options;
  options.host = "127.0.0.1";
  options.port = 0;
  server::Server server([]() -> std::shared_ptr<const ChatModel> { throw Error("no such checkpoint"); }, options);
  server.bind();
  CHECK_THROWS_WITH(server.serve(), Catch::Contains("no such checkpoint"));
}

TEST_CASE("--api-key: requests without the key get 401 in OpenAI's shape; /health and the page stay open", "[server]") {
  server::ServerOptions options;
  options.api_keys = {"sk-first", "sk-second"};
  test::RunningServer s(tiny_model(), options);
  auto client = s.client();
  const auto path = "/v1/chat/completions";
  const auto request = text_request(2).dump();

  const auto none = client.Post(path, request, "application/json");
  REQUIRE(none);
  CHECK(none->status == 401);
  const auto error = json::parse(none->body)["error"];
  CHECK(error["code"] == "invalid_api_key");
  CHECK(error.contains("message"));
  CHECK(error.contains("type"));

  for (const auto* wrong : {"Bearer sk-firs", "Bearer sk-first2", "sk-first", "Basic sk-first"}) {
    INFO(wrong);
    const auto res = client.Post(path, httplib::Headers{{"Authorization", wrong}}, request, "application/json");
    REQUIRE(res);
    CHECK(res->status == 401);
  }
  for (const auto* key : {"sk-first", "sk-second"}) {
    const auto res = client.Post(path, httplib::Headers{{"Authorization", std::string("Bearer ") + key}}, request,
                                 "application/json");
    REQUIRE(res);
    CHECK(res->status == 200);
  }
  CHECK(client.Get("/health")->status == 200);
  CHECK(client.Get("/")->status == 200);
  CHECK(client.Get("/v1/models")->status == 401);
  CHECK(client.Post("/api/sessions", "", "application/json")->status == 401);
}

TEST_CASE("--cors-origins: a named origin's preflight and requests are allowed, others are not", "[server]") {
  server::ServerOptions options;
  options.cors_origins = {"https://app.example.com"};
  test::RunningServer s(tiny_model(), options);
  auto client = s.client();
  const auto preflight = client.Options(
      "/v1/chat/completions",
      httplib::Headers{{"Origin", "https://app.example.com"}, {"Access-Control-Request-Method", "POST"}});
  REQUIRE(preflight);
  CHECK(preflight->status == 204);
  CHECK(preflight->get_header_value("Access-Control-Allow-Origin") == "https://app.example.com");
  CHECK_THAT(preflight->get_header_value("Access-Control-Allow-Headers"), Catch::Contains("Authorization"));

  const auto allowed = client.Get("/v1/models", httplib::Headers{{"Origin", "https://app.example.com"}});
  REQUIRE(allowed);
  CHECK(allowed->get_header_value("Access-Control-Allow-Origin") == "https://app.example.com");
  const auto other = client.Get("/v1/models", httplib::Headers{{"Origin", "https://evil.example.com"}});
  REQUIRE(other);
  CHECK_FALSE(other->has_header("Access-Control-Allow-Origin"));

  // Off by default.
  test::RunningServer plain(tiny_model());
  const auto none = plain.client().Get("/v1/models", httplib::Headers{{"Origin", "https://app.example.com"}});
  REQUIRE(none);
  CHECK_FALSE(none->has_header("Access-Control-Allow-Origin"));
}

TEST_CASE("/metrics parses as Prometheus text and counts the work; /slots lists the slots", "[server]") {
  {
    test::RunningServer off(tiny_model());
    const auto res = off.client().Get("/metrics");
    REQUIRE(res);
    CHECK(res->status == 501);
  }
  server::ServerOptions options;
  options.metrics = true;
  options.parallel = 3;
  test::RunningServer s(tiny_model(), options);
  auto client = s.client();
  REQUIRE(client.Post("/v1/chat/completions", text_request(5).dump(), "application/json")->status == 200);

  // The reply goes out before the slot's state is published: wait for the slot to be free.
  for (int i = 0; i < 200 && json::parse(client.Get("/slots")->body)["slots"].size() > 0; ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  const auto res = client.Get("/metrics");
  REQUIRE(res);
  CHECK(res->status == 200);
  CHECK_THAT(res->get_header_value("Content-Type"), Catch::StartsWith("text/plain"));
  // Every line: a HELP or TYPE comment of a metric, or "name value"; every sample typed.
  const std::regex help(R"(# HELP ([a-zA-Z_:][a-zA-Z0-9_:]*) .+)"),
      type(R"(# TYPE ([a-zA-Z_:][a-zA-Z0-9_:]*) (counter|gauge))"),
      sample(R"(([a-zA-Z_:][a-zA-Z0-9_:]*) (-?[0-9.]+(e[+-]?[0-9]+)?|NaN|[+-]Inf))");
  std::map<std::string, double> values;
  std::set<std::string> typed;
  std::istringstream lines(res->body);
  for (std::string line; std::getline(lines, line);) {
    INFO(line);
    std::smatch m;
    if (std::regex_match(line, m, type)) {
      typed.insert(m[1]);
    } else if (!std::regex_match(line, help)) {
      REQUIRE(std::regex_match(line, m, sample));
      CHECK(typed.count(m[1]) == 1);
      values[m[1]] = std::stod(m[2]);
    }
  }
  CHECK(values.at("minigpt4:tokens_predicted_total") >= 5);
  CHECK(values.at("minigpt4:prompt_tokens_total") > 0);
  CHECK(values.at("minigpt4:answers_total") == 1);
  CHECK(values.at("minigpt4:requests_processing") == 0);
  CHECK(values.at("minigpt4:slots_total") == 3);
  CHECK(values.count("minigpt4:kv_cache_tokens") == 1);
  CHECK(values.at("minigpt4:prefill_chunk") >= server::PrefillPacer::kMinChunk);  // automatic by default

  const auto slots = json::parse(client.Get("/slots")->body);
  CHECK(slots["parallel"] == 3);
  CHECK(slots["prefill_chunk_auto"] == true);
  CHECK(slots["prefill_chunk"].get<int64_t>() >= server::PrefillPacer::kMinChunk);
  CHECK(slots["slots"].is_array());
  CHECK(slots["waiting"] == 0);
}
