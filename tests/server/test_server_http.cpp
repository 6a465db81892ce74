// The server end to end on the tiny fixture model: a real HTTP server on an ephemeral
// port in this process, spoken to over the loopback with httplib's client, as curl or the
// openai package would speak to it.
#include "minigpt4/chat/chat.h"
#include "minigpt4/common/config.h"
#include "minigpt4/generate/json_constraint.h"
#include "minigpt4/models/minigpt4.h"
#include "minigpt4/server/base64.h"
#include "minigpt4/server/server.h"
#include "minigpt4/tokenizer/tokenizer.h"
#include "tests/server/running_server.h"
#include "tests/support/fixtures.h"
#include "tests/support/json_schema_check.h"

#include <catch2/catch.hpp>
#include <httplib.h>
#include <opencv2/core.hpp>
#include <opencv2/imgcodecs.hpp>

#include <algorithm>
#include <fstream>
#include <sstream>
#include <thread>

using namespace minigpt4;
using json = nlohmann::json;
using Catch::Contains;

namespace {

std::shared_ptr<const ChatModel> tiny_model() { return test::tiny_chat_model(); }

std::string read_file(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

const std::string& png_bytes() {
  static const auto bytes =
      read_file(test::data_dir() / "parity/tiny_vicuna0/image_processor/arc_colors_rgba_357x200.png");
  return bytes;
}

std::string png_uri() { return "data:image/png;base64," + server::base64_encode(png_bytes()); }

// A server on a free loopback port, serving from a thread until the test ends.
struct Running : test::RunningServer {
  explicit Running(server::ServerOptions options = {}) : RunningServer(tiny_model(), std::move(options)) {}
};

json image_question(const std::string& question) {
  return {{"role", "user"},
          {"content",
           {{{"type", "image_url"}, {"image_url", {{"url", png_uri()}}}}, {{"type", "text"}, {"text", question}}}}};
}

json greedy_request(int max_tokens) {
  return {{"model", "tiny_vicuna0"},
          {"messages", {image_question("What is in this image?")}},
          {"max_tokens", max_tokens},
          {"temperature", 0}};
}

// The greedy answer ChatSession gives in-process for greedy_request.
std::string direct_answer(int max_tokens) {
  ChatSession session(tiny_model());
  session.upload_image(tiny_model()->encode_image_bytes(png_bytes(), "png"));
  session.ask("What is in this image?");
  AnswerOptions options;
  options.temperature = 0;
  options.max_new_tokens = max_tokens;
  return session.answer(options).text;
}

// A new page session: its path, /api/sessions/{id}.
std::string new_page_session(httplib::Client& client) {
  const auto created = client.Post("/api/sessions", "", "application/json");
  REQUIRE(created);
  REQUIRE(created->status == 200);
  return "/api/sessions/" + json::parse(created->body)["session_id"].get<std::string>();
}

struct Stream {
  int status = 0;
  std::string content_type, body;
  std::vector<std::string> data;  // the `data:` payloads in order
};

// POSTs and reads the body as it streams; `keep_reading` may end the connection early.
Stream post_stream(httplib::Client& client, const std::string& path, const std::string& body,
                   std::function<bool(const std::string&)> keep_reading = {}) {
  Stream out;
  httplib::Request req;
  req.method = "POST";
  req.path = path;
  req.body = body;
  req.set_header("Content-Type", "application/json");
  req.content_receiver = [&](const char* data, size_t n, uint64_t, uint64_t) {
    out.body.append(data, n);
    return !keep_reading || keep_reading(out.body);
  };
  const auto res = client.send(req);
  if (res) {
    out.status = res->status;
    out.content_type = res->get_header_value("Content-Type");
  }
  std::istringstream lines(out.body);
  for (std::string line; std::getline(lines, line);)
    if (line.rfind("data: ", 0) == 0) out.data.push_back(line.substr(6));
  return out;
}

json error_of(const httplib::Result& res) {
  REQUIRE(res);
  INFO(res->body);
  const auto j = json::parse(res->body);
  REQUIRE(j.contains("error"));
  CHECK(j["error"].contains("message"));
  CHECK(j["error"].contains("type"));
  CHECK(j["error"].contains("param"));
  CHECK(j["error"].contains("code"));
  return j["error"];
}

}  // namespace

TEST_CASE("GET /health and /v1/models answer", "[server]") {
  Running s;
  auto client = s.client();
  const auto health = client.Get("/health");
  REQUIRE(health);
  CHECK(health->status == 200);
  const auto h = json::parse(health->body);
  CHECK(h["status"] == "ok");
  CHECK(h["model"] == "tiny_vicuna0");
  CHECK(h["queue"]["running"] == 0);
  const auto models = client.Get("/v1/models");
  REQUIRE(models);
  CHECK(models->status == 200);
  CHECK(json::parse(models->body)["data"][0]["id"] == "tiny_vicuna0");
  const auto page = client.Get("/");
  REQUIRE(page);
  CHECK(page->status == 200);
  CHECK_THAT(page->body, Contains("<title>MiniGPT-4</title>"));
  CHECK_THAT(page->get_header_value("Content-Security-Policy"), Contains("default-src 'none'"));
}

TEST_CASE("a chat completion with a data-URI PNG answers as ChatSession does", "[server]") {
  Running s;
  auto client = s.client();
  const auto res = client.Post("/v1/chat/completions", greedy_request(12).dump(), "application/json");
  REQUIRE(res);
  INFO(res->body);
  REQUIRE(res->status == 200);
  const auto reply = json::parse(res->body);
  CHECK(reply["object"] == "chat.completion");
  CHECK(reply["model"] == "tiny_vicuna0");
  const auto& choice = reply["choices"][0];
  CHECK(choice["message"]["role"] == "assistant");
  CHECK(choice["message"]["content"] == direct_answer(12));
  CHECK((choice["finish_reason"] == "stop" || choice["finish_reason"] == "length"));
  CHECK(reply["usage"]["prompt_tokens"].get<int64_t>() > 8);  // text tokens + the image's 8 query positions
  CHECK(reply["usage"]["completion_tokens"].get<int64_t>() >= 1);
  CHECK(reply["usage"]["completion_tokens"].get<int64_t>() <= 12);

  // History with an assistant turn given by the client, and a second image mid-chat.
  json history = greedy_request(6);
  history["messages"].push_back({{"role", "assistant"}, {"content", "A picture."}});
  history["messages"].push_back(image_question("And this one?"));
  history["messages"].insert(history["messages"].begin(), json{{"role", "system"}, {"content", "Be brief."}});
  const auto second = client.Post("/v1/chat/completions", history.dump(), "application/json");
  REQUIRE(second);
  INFO(second->body);
  CHECK(second->status == 200);
  CHECK(json::parse(second->body)["usage"]["prompt_tokens"] > reply["usage"]["prompt_tokens"]);
}

TEST_CASE("stream: true sends chunks as server-sent events ending in [DONE]", "[server]") {
  Running s;
  auto client = s.client();
  auto request = greedy_request(12);
  request["stream"] = true;
  request["stream_options"] = {{"include_usage", true}};
  const auto stream = post_stream(client, "/v1/chat/completions", request.dump());
  INFO(stream.body);
  CHECK(stream.status == 200);
  CHECK_THAT(stream.content_type, Contains("text/event-stream"));
  REQUIRE(stream.data.size() >= 5);  // role, content..., finish, usage, [DONE]
  CHECK(stream.data.back() == "[DONE]");
  std::string text;
  int content_chunks = 0;
  for (size_t i = 0; i + 1 < stream.data.size(); ++i) {
    const auto chunk = json::parse(stream.data[i]);
    CHECK(chunk["object"] == "chat.completion.chunk");
    if (chunk["choices"].empty()) continue;
    const auto& delta = chunk["choices"][0]["delta"];
    if (i == 0) CHECK(delta["role"] == "assistant");
    if (delta.contains("content") && !delta["content"].get<std::string>().empty()) {
      text += delta["content"].get<std::string>();
      ++content_chunks;
    }
  }
  CHECK(content_chunks >= 2);
  CHECK(text == direct_answer(12));
  const auto finish = json::parse(stream.data[stream.data.size() - 3]);
  CHECK_FALSE(finish["choices"][0]["finish_reason"].is_null());
  const auto usage = json::parse(stream.data[stream.data.size() - 2]);
  CHECK(usage["usage"]["completion_tokens"].get<int64_t>() >= 1);
}

TEST_CASE("stop strings cut the answer, streamed or not", "[server]") {
  Running s;
  auto client = s.client();
  const auto full = direct_answer(12);
  REQUIRE(full.size() >= 6);
  const auto stop = full.substr(3, 2);
  const auto expected = full.substr(0, full.find(stop));
  auto request = greedy_request(12);
  request["stop"] = {stop};
  const auto res = client.Post("/v1/chat/completions", request.dump(), "application/json");
  REQUIRE(res);
  const auto reply = json::parse(res->body);
  CHECK(reply["choices"][0]["message"]["content"] == expected);
  CHECK(reply["choices"][0]["finish_reason"] == "stop");

  request["stream"] = true;
  const auto stream = post_stream(client, "/v1/chat/completions", request.dump());
  std::string text;
  for (const auto& d : stream.data)
    if (d != "[DONE]")
      if (const auto c = json::parse(d); !c["choices"].empty() && c["choices"][0]["delta"].contains("content"))
        text += c["choices"][0]["delta"]["content"].get<std::string>();
  CHECK(text == expected);
}

TEST_CASE("bad requests get 4xx with OpenAI-shaped JSON errors", "[server]") {
  server::ServerOptions options;
  options.max_body_bytes = 64 * 1024;
  Running s(options);
  auto client = s.client();

  auto res = client.Post("/v1/chat/completions", "{\"messages\": [", "application/json");
  REQUIRE(res);
  CHECK(res->status == 400);
  CHECK(error_of(res)["code"] == "invalid_json");

  json remote = greedy_request(4);
  remote["messages"][0]["content"][0]["image_url"]["url"] = "https://example.com/cat.png";
  const std::string small_remote = remote.dump();
  res = client.Post("/v1/chat/completions", small_remote, "application/json");
  REQUIRE(res);
  CHECK(res->status == 400);
  CHECK_THAT(error_of(res)["message"].get<std::string>(), Contains("not fetched"));
  CHECK(error_of(res)["param"] == "messages[0].content[0].image_url.url");

  res = client.Post("/v1/chat/completions", json{{"messages", {{{"role", "robot"}, {"content", "hi"}}}}}.dump(),
                    "application/json");
  REQUIRE(res);
  CHECK(res->status == 400);
  CHECK(error_of(res)["param"] == "messages[0].role");

  const std::string big = json{{"messages", {{{"role", "user"}, {"content", std::string(100 * 1024, 'a')}}}}}.dump();
  res = client.Post("/v1/chat/completions", big, "application/json");
  REQUIRE(res);
  CHECK(res->status == 413);
  CHECK(error_of(res)["code"] == "request_too_large");

  res = s.client().Get("/v1/nothing");
  REQUIRE(res);
  CHECK(res->status == 404);
  CHECK(error_of(res)["code"] == "not_found");

  res = s.client().Post("/api/sessions/0123456789abcdef0123456789abcdef/ask", "{\"text\": \"hi\"}", "application/json");
  REQUIRE(res);
  CHECK(res->status == 404);
  CHECK(error_of(res)["code"] == "session_not_found");
}

TEST_CASE("the page's session keeps the conversation and its KV cache across rounds", "[server]") {
  Running s;
  auto client = s.client();
  const std::string base = new_page_session(client);

  const auto image = client.Post(base + "/image", json{{"image", png_uri()}}.dump(), "application/json");
  REQUIRE(image);
  INFO(image->body);
  CHECK(image->status == 200);
  CHECK(json::parse(image->body)["images"] == 1);

  json done;
  for (const auto* question : {"What is in this image?", "Tell me more."}) {
    const auto stream =
        post_stream(client, base + "/ask",
                    json{{"text", question}, {"num_beams", 1}, {"temperature", 0.1}, {"max_new_tokens", 8}}.dump());
    INFO(stream.body);
    CHECK(stream.status == 200);
    REQUIRE(!stream.data.empty());
    done = json::parse(stream.data.back());
    CHECK(done["done"] == true);
    CHECK(done["completion_tokens"].get<int64_t>() >= 1);
  }
  CHECK(done["reused_tokens"].get<int64_t>() > 8);  // the second round reuses the first's cache

  const auto closed = client.Post(base + "/close", "", "application/json");
  REQUIRE(closed);
  CHECK(json::parse(closed->body)["closed"] == true);
  const auto gone = client.Post(base + "/ask", json{{"text", "Hello?"}}.dump(), "application/json");
  REQUIRE(gone);
  CHECK(gone->status == 404);
}

TEST_CASE("a client that disconnects mid-stream cancels its generation", "[server]") {
  server::ServerOptions options;
  options.limits.max_tokens = 1000;
  // The disconnect is noticed when a write fails. After its first words this answer shows
  // nothing new for a long while, so only heartbeats are written: at the default 1 s a fast
  // machine could finish the 1000 tokens before the first one.
  options.heartbeat = std::chrono::milliseconds(20);
  Running s(options);
  auto client = s.client();
  auto request = greedy_request(1000);
  request["stream"] = true;
  request["repetition_penalty"] = 0.5;  // greedy keeps repeating itself instead of ending: a long answer
  // Read until the first piece of content, then hang up.
  post_stream(client, "/v1/chat/completions", request.dump(), [](const std::string& body) {
    const std::string key = "\"content\":\"";
    for (size_t at = body.find(key); at != std::string::npos; at = body.find(key, at + 1))
      if (at + key.size() < body.size() && body[at + key.size()] != '"') return false;
    return true;
  });
  json health;
  for (int i = 0; i < 600; ++i) {
    health = json::parse(s.client().Get("/health")->body);
    if (health["answers"]["total"] == 1) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  INFO(health.dump());
  CHECK(health["answers"]["total"] == 1);
  CHECK(health["answers"]["client_gone"] == 1);
  // The model is free again.
  const auto next = s.client().Post("/v1/chat/completions", greedy_request(4).dump(), "application/json");
  REQUIRE(next);
  CHECK(next->status == 200);
}

TEST_CASE("a full queue answers 503 with Retry-After", "[server]") {
  server::ServerOptions options;
  options.parallel = 1;
  options.max_waiting = 1;
  options.limits.max_tokens = 1000;
  Running s(options);
  auto request = greedy_request(1000);
  request["repetition_penalty"] = 0.5;  // a long answer: the model stays busy while the others arrive
  std::vector<std::thread> clients;
  std::vector<int> statuses(3, 0);
  std::vector<std::string> retry_after(3);
  for (int i = 0; i < 3; ++i)
    clients.emplace_back([&, i] {
      const auto res = s.client().Post("/v1/chat/completions", request.dump(), "application/json");
      if (!res) return;
      statuses[i] = res->status;
      retry_after[i] = res->get_header_value("Retry-After");
      if (res->status == 503) CHECK(json::parse(res->body)["error"]["code"] == "server_busy");
    });
  for (auto& t : clients) t.join();
  // One runs, one waits, and at least the third finds the queue full.
  CHECK(std::count(statuses.begin(), statuses.end(), 200) >= 1);
  CHECK(std::count(statuses.begin(), statuses.end(), 503) >= 1);
  CHECK(std::count(statuses.begin(), statuses.end(), 200) + std::count(statuses.begin(), statuses.end(), 503) == 3);
  for (int i = 0; i < 3; ++i)
    if (statuses[i] == 503) CHECK(retry_after[i] == "5");
}

TEST_CASE("an answer that runs past the time limit ends with finish_reason length", "[server]") {
  server::ServerOptions options;
  options.max_generation_seconds = 1e-6;
  Running s(options);
  const auto res = s.client().Post("/v1/chat/completions", greedy_request(12).dump(), "application/json");
  REQUIRE(res);
  const auto reply = json::parse(res->body);
  CHECK(reply["choices"][0]["finish_reason"] == "length");
  CHECK(reply["usage"]["completion_tokens"].get<int64_t>() < 12);
  CHECK(json::parse(s.client().Get("/health")->body)["answers"]["time_limit"] == 1);
}

TEST_CASE("explain: the API adds what the answer looked at, as a PNG and the patch grid", "[server][explain]") {
  Running s;
  auto client = s.client();
  const int64_t grid = tiny_model()->model->config.vision.grid();
  auto request = greedy_request(8);
  request["explain"] = true;
  auto res = client.Post("/v1/chat/completions", request.dump(), "application/json");
  REQUIRE(res);
  INFO(res->body.substr(0, 500));
  REQUIRE(res->status == 200);
  auto reply = json::parse(res->body);
  CHECK(reply["choices"][0]["message"]["content"] == direct_answer(8));  // explaining changes no answer
  const auto e = reply["choices"][0]["message"]["explanation"];
  CHECK(e["grid"] == json::array({grid, grid}));
  REQUIRE(e["patches"].size() == static_cast<size_t>(grid));
  double total = 0;
  for (const auto& row : e["patches"]) {
    REQUIRE(row.size() == static_cast<size_t>(grid));
    for (const auto& v : row) total += v.get<double>();
  }
  CHECK(total == Approx(1.0).margin(1e-3));
  CHECK(e["words"].empty());  // per-word grids only with "words"
  const auto png = server::base64_decode(e["image_png"].get<std::string>());
  CHECK(png.rfind("\x89PNG\r\n\x1a\n", 0) == 0);

  request["explain"] = "words";
  request["stream"] = true;
  const auto stream = post_stream(client, "/v1/chat/completions", request.dump());
  INFO(stream.body.substr(0, 500));
  REQUIRE(stream.data.size() >= 3);
  const auto last = json::parse(stream.data[stream.data.size() - 2]);  // before [DONE]
  const auto streamed = last["choices"][0]["delta"]["explanation"];
  CHECK(streamed["words"].size() >= 1);
  for (const auto& w : streamed["words"]) {
    CHECK(w["word"].is_string());
    CHECK(w["patches"].size() == static_cast<size_t>(grid));
  }

  // Nothing to explain: said in the explanation, the answer still comes.
  json text_only = {{"messages", {{{"role", "user"}, {"content", "Hello?"}}}}, {"max_tokens", 4}, {"explain", true}};
  res = client.Post("/v1/chat/completions", text_only.dump(), "application/json");
  REQUIRE(res);
  REQUIRE(res->status == 200);
  CHECK_THAT(json::parse(res->body)["choices"][0]["message"]["explanation"]["error"].get<std::string>(),
             Contains("no image"));
  // A wrong value is a 400 naming the field.
  request = greedy_request(4);
  request["explain"] = 5;
  res = client.Post("/v1/chat/completions", request.dump(), "application/json");
  CHECK(error_of(res)["param"] == "explain");
}

TEST_CASE("explain: the page's answers carry a grid for the answer and each word when asked", "[server][explain]") {
  Running s;
  auto client = s.client();
  const std::string base = new_page_session(client);
  REQUIRE(client.Post(base + "/image", json{{"image", png_uri()}}.dump(), "application/json")->status == 200);
  for (const bool explain : {false, true}) {
    const auto stream = post_stream(
        client, base + "/ask",
        json{{"text", "What is in this image?"}, {"temperature", 0.1}, {"max_new_tokens", 6}, {"explain", explain}}
            .dump());
    INFO(stream.body.substr(0, 500));
    REQUIRE(!stream.data.empty());
    const auto done = json::parse(stream.data.back());
    CHECK(done["done"] == true);
    CHECK(done.contains("explanation") == explain);
    if (explain) {
      CHECK(done["explanation"]["patches"].size() == static_cast<size_t>(tiny_model()->model->config.vision.grid()));
      CHECK(done["explanation"]["words"].size() >= 1);
    }
  }
}

TEST_CASE(
    "a conversation longer than the model's context gets 400 context_length_exceeded; the answer gets the room left",
    "[server]") {
  server::ServerOptions options;
  options.limits.max_prompt_tokens = 100'000;  // past the cheap text check: the model's context decides
  Running s(options);
  auto client = s.client();
  const auto ask = [&](int words, int max_tokens) {
    std::string text;
    for (int i = 0; i < words; ++i) text += "cat ";
    return client.Post(
        "/v1/chat/completions",
        json{{"messages", {image_question(text)}}, {"max_tokens", max_tokens}, {"temperature", 0}}.dump(),
        "application/json");
  };
  // Words of one or more tokens each: sized from the tokenizer.
  std::string hundred;
  for (int i = 0; i < 100; ++i) hundred += "cat ";
  const auto per_hundred = static_cast<int>(tiny_model()->tokenizer->encode(hundred, false).size());
  REQUIRE(per_hundred >= 100);
  const auto over = ask(2100 * 100 / per_hundred, 4);  // the tiny model holds 2048 positions
  REQUIRE(over);
  CHECK(over->status == 400);
  const auto error = error_of(over);
  CHECK(error["code"] == "context_length_exceeded");
  CHECK(error["param"] == "messages");
  CHECK_THAT(error["message"].get<std::string>(), Contains("2048"));

  // Near the end of the context: answered, cut at the context's end.
  const auto near = ask(1950 * 100 / per_hundred, 200);
  REQUIRE(near);
  REQUIRE(near->status == 200);
  const auto reply = json::parse(near->body);
  const auto used = reply["usage"]["prompt_tokens"].get<int64_t>() + reply["usage"]["completion_tokens"].get<int64_t>();
  CHECK(used <= 2048);
  CHECK(reply["usage"]["completion_tokens"].get<int64_t>() < 200);
}

namespace {

// A PNG of 64x48 noise from `seed`: images of one size whose pixels differ.
std::string noise_png_uri(int seed) {
  cv::Mat image(48, 64, CV_8UC3);
  cv::randu(image, cv::Scalar::all(0), cv::Scalar::all(256));
  if (seed > 0) {
    cv::RNG rng(static_cast<uint64_t>(seed));
    rng.fill(image, cv::RNG::UNIFORM, 0, 256);
  }
  std::vector<uchar> bytes;
  REQUIRE(cv::imencode(".png", image, bytes));
  return "data:image/png;base64," + server::base64_encode(std::string(bytes.begin(), bytes.end()));
}

json image_message(const std::string& uri, const std::string& question) {
  return {
      {"role", "user"},
      {"content", {{{"type", "image_url"}, {"image_url", {{"url", uri}}}}, {{"type", "text"}, {"text", question}}}}};
}

json chat(httplib::Client& client, const json& messages, int max_tokens = 8) {
  const auto res = client.Post("/v1/chat/completions",
                               json{{"messages", messages}, {"max_tokens", max_tokens}, {"temperature", 0}}.dump(),
                               "application/json");
  REQUIRE(res);
  INFO(res->body);
  REQUIRE(res->status == 200);
  return json::parse(res->body);
}

std::string text_of(const json& reply) { return reply["choices"][0]["message"]["content"].get<std::string>(); }

}  // namespace

TEST_CASE("the prefix and image caches give a cold run's answers, and never another image's", "[server][cache]") {
  server::ServerOptions cold_options;
  cold_options.cache_mb = 0;
  cold_options.image_cache_mb = 0;
  Running cached, cold(cold_options);
  auto warm = cached.client(), fresh = cold.client();
  const auto x = noise_png_uri(1), y = noise_png_uri(2);
  REQUIRE(x != y);

  // Round 1, twice: the second is served from the caches, with the same answer.
  const json round1 = {image_message(x, "What is in this image?")};
  const auto first = chat(warm, round1), again = chat(warm, round1), reference = chat(fresh, round1);
  CHECK(text_of(first) == text_of(reference));
  CHECK(text_of(again) == text_of(reference));
  CHECK(first["timings"]["cache_n"] == 0);
  const int64_t prompt = again["usage"]["prompt_tokens"];
  CHECK(again["timings"]["cache_n"] == prompt - 1);  // all but the position that must be fed
  CHECK(again["timings"]["prompt_n"] == 1);
  CHECK(reference["timings"]["cache_n"] == 0);

  // Another image of the same size: the match ends where the image starts.
  const json other = {image_message(y, "What is in this image?")};
  const auto y_warm = chat(warm, other), y_cold = chat(fresh, other);
  CHECK(text_of(y_warm) == text_of(y_cold));
  CHECK(y_warm["timings"]["cache_n"].get<int64_t>() < prompt - 32);

  // Round 2 replays round 1 and its answer: only the new positions are computed.
  const json round2 = {image_message(x, "What is in this image?"),
                       {{"role", "assistant"}, {"content", text_of(first)}},
                       {{"role", "user"}, {"content", "And the colours?"}}};
  const auto second = chat(warm, round2), second_cold = chat(fresh, round2);
  CHECK(text_of(second) == text_of(second_cold));
  // Round 1's prompt, but where its last position and the answer meet: "Assistant:" and the
  // answer's first word may tokenize differently in the replayed text.
  CHECK(second["timings"]["cache_n"].get<int64_t>() >= prompt - 2);
  CHECK(second_cold["timings"]["cache_n"] == 0);
}

TEST_CASE("a finished answer is warmed as the next round replays it: that round computes only its question",
          "[server][cache]") {
  server::ServerOptions unwarmed_options, cold_options;
  unwarmed_options.warm_replays = false;
  cold_options.cache_mb = 0;
  cold_options.image_cache_mb = 0;
  Running warmed, unwarmed(unwarmed_options), cold(cold_options);
  auto a = warmed.client(), b = unwarmed.client(), c = cold.client();
  const auto x = noise_png_uri(3);
  const json round1 = {image_message(x, "What is in this image?")};
  const auto first = chat(a, round1), first_unwarmed = chat(b, round1);
  REQUIRE(text_of(first) == text_of(first_unwarmed));
  const auto answer = text_of(first);
  REQUIRE(!answer.empty());
  // The client's next round: its history with the answer given back as text. The warm-up was
  // queued before the reply ended, so it has run by the time this request is admitted (whole:
  // here it is about 27 positions, within its first chunk of 32, before it looks for waiting
  // requests).
  const json round2 = {image_message(x, "What is in this image?"),
                       {{"role", "assistant"}, {"content", answer}},
                       {{"role", "user"}, {"content", "And the colours?"}}};
  const auto second = chat(a, round2), second_unwarmed = chat(b, round2), second_cold = chat(c, round2);
  CHECK(text_of(second) == text_of(second_cold));  // the same numbers as a cold run
  CHECK(text_of(second_unwarmed) == text_of(second_cold));
  const int64_t warmed_reuse = second["timings"]["cache_n"], unwarmed_reuse = second_unwarmed["timings"]["cache_n"];
  const int64_t answer_tokens = static_cast<int64_t>(tiny_model()->tokenizer->encode(answer, false).size());
  INFO("cache_n warmed " << warmed_reuse << ", unwarmed " << unwarmed_reuse << ", answer tokens " << answer_tokens);
  // Unwarmed, the match ends before the answer; warmed, it also covers the answer and the
  // next turn's opening, up to the question.
  CHECK(warmed_reuse >= unwarmed_reuse + answer_tokens);
  const int64_t question_tokens =
      static_cast<int64_t>(tiny_model()->tokenizer->encode(" And the colours?###Assistant: ", false).size());
  CHECK(second["timings"]["prompt_n"].get<int64_t>() <= question_tokens + 4);
}

TEST_CASE("logprobs: each token's log-probability and its alternatives, plain and streamed; logit_bias steers",
          "[server]") {
  Running s;
  auto client = s.client();
  auto request = greedy_request(8);
  request["logprobs"] = true;
  request["top_logprobs"] = 3;
  const auto res = client.Post("/v1/chat/completions", request.dump(), "application/json");
  REQUIRE(res);
  REQUIRE(res->status == 200);
  const auto reply = json::parse(res->body);
  const auto& content = reply["choices"][0]["logprobs"]["content"];
  REQUIRE(content.size() == reply["usage"]["completion_tokens"].get<size_t>());
  for (const auto& entry : content) {
    INFO(entry.dump());
    const double logprob = entry["logprob"];
    CHECK(logprob <= 0);
    REQUIRE(entry["top_logprobs"].size() == 3);
    // Greedy: the chosen token is the most likely one.
    CHECK(entry["top_logprobs"][0]["token"] == entry["token"]);
    CHECK(entry["top_logprobs"][0]["logprob"].get<double>() == Approx(logprob));
    CHECK(entry["top_logprobs"][1]["logprob"].get<double>() <= entry["top_logprobs"][0]["logprob"].get<double>());
    CHECK(entry["top_logprobs"][2]["logprob"].get<double>() <= entry["top_logprobs"][1]["logprob"].get<double>());
    std::string bytes;
    for (const auto& b : entry["bytes"]) bytes.push_back(static_cast<char>(b.get<int>()));
    if (entry["bytes"].size() == 1 && entry["bytes"][0].get<int>() >= 0x80)  // a byte of a character
      CHECK_THAT(entry["token"].get<std::string>(), Catch::StartsWith("\\x"));
    else
      CHECK(bytes == entry["token"].get<std::string>());
  }

  // Streamed: the chunks' entries, in order, are the same list.
  request["stream"] = true;
  const auto stream = post_stream(client, "/v1/chat/completions", request.dump());
  json streamed = json::array();
  for (const auto& data : stream.data) {
    if (data == "[DONE]") continue;
    const auto chunk = json::parse(data);
    if (!chunk["choices"].empty() && chunk["choices"][0].contains("logprobs") &&
        chunk["choices"][0]["logprobs"].is_object())
      for (const auto& entry : chunk["choices"][0]["logprobs"]["content"]) streamed.push_back(entry);
  }
  // (The second request continues the first's cache: the same tokens, logprobs to rounding.)
  REQUIRE(streamed.size() == content.size());
  for (size_t i = 0; i < content.size(); ++i) {
    CHECK(streamed[i]["token"] == content[i]["token"]);
    CHECK(streamed[i]["logprob"].get<double>() == Approx(content[i]["logprob"].get<double>()).margin(1e-4));
    CHECK(streamed[i]["top_logprobs"].size() == content[i]["top_logprobs"].size());
  }

  // logit_bias: one token made all but certain.
  auto steer = greedy_request(4);
  steer["logprobs"] = true;
  const auto ids = json::parse(client.Post("/tokenize", json{{"content", "the"}}.dump(), "application/json")->body);
  REQUIRE(ids["tokens"].size() >= 1);
  const int64_t favourite = ids["tokens"].back();
  steer["logit_bias"] = {{std::to_string(favourite), 100}};
  const auto steered = json::parse(client.Post("/v1/chat/completions", steer.dump(), "application/json")->body);
  for (const auto& entry : steered["choices"][0]["logprobs"]["content"]) CHECK(entry["logprob"].get<double>() > -0.01);
  const auto text = json::parse(
      client.Post("/detokenize", json{{"tokens", {favourite}}}.dump(), "application/json")->body)["content"];
  CHECK_THAT(steered["choices"][0]["message"]["content"].get<std::string>(), Contains(text.get<std::string>()));

  auto outside = greedy_request(2);
  outside["logit_bias"] = {{"99999999", 1}};
  const auto refused = client.Post("/v1/chat/completions", outside.dump(), "application/json");
  REQUIRE(refused);
  CHECK(refused->status == 400);
  CHECK(error_of(refused)["param"] == "logit_bias");
}

TEST_CASE("/tokenize and /detokenize use the model's tokenizer", "[server]") {
  Running s;
  auto client = s.client();
  const auto tokens = json::parse(
      client.Post("/tokenize", json{{"content", "What is in this image?"}}.dump(), "application/json")->body)["tokens"];
  CHECK(tokens.get<std::vector<int64_t>>() == tiny_model()->tokenizer->encode("What is in this image?", false));
  const auto with_bos =
      json::parse(client
                      .Post("/tokenize", json{{"content", "Hi"}, {"add_special", true}, {"with_pieces", true}}.dump(),
                            "application/json")
                      ->body)["tokens"];
  CHECK(with_bos[0]["id"] == tiny_model()->tokenizer->bos_id());
  CHECK(with_bos[0].contains("piece"));
  const auto back =
      json::parse(client.Post("/detokenize", json{{"tokens", tokens}}.dump(), "application/json")->body)["content"];
  CHECK(back == "What is in this image?");
  json too_many = {{"tokens", std::vector<int64_t>(2048 + 1024 + 1, 5)}};  // the tiny model's context + --max-tokens
  const auto refused = client.Post("/detokenize", too_many.dump(), "application/json");
  REQUIRE(refused);
  CHECK(refused->status == 400);
  for (const auto* bad : {R"({"content": 5})", R"({"content": "x", "add_special": "yes"})", R"({"tokens": [-1]})",
                          R"({"tokens": ["a"]})", R"({"tokens": [99999999]})"}) {
    INFO(bad);
    const auto path = std::string(bad).find("tokens") != std::string::npos ? "/detokenize" : "/tokenize";
    const auto res = client.Post(path, bad, "application/json");
    REQUIRE(res);
    CHECK(res->status == 400);
  }
}

TEST_CASE("response_format json_object: the answer is a JSON object or, cut by max_tokens, its beginning", "[server]") {
  Running s;
  auto client = s.client();
  for (const bool stream : {false, true}) {
    auto request = greedy_request(30);
    request["response_format"] = {{"type", "json_object"}};
    request["stream"] = stream;
    std::string content, finish;
    if (stream) {
      const auto out = post_stream(client, "/v1/chat/completions", request.dump());
      REQUIRE(out.status == 200);
      for (const auto& data : out.data) {
        if (data == "[DONE]") continue;
        const auto chunk = json::parse(data);
        if (chunk["choices"].empty()) continue;
        const auto& choice = chunk["choices"][0];
        if (choice["delta"].contains("content")) content += choice["delta"]["content"].get<std::string>();
        if (choice["finish_reason"].is_string()) finish = choice["finish_reason"];
      }
    } else {
      const auto res = client.Post("/v1/chat/completions", request.dump(), "application/json");
      REQUIRE(res);
      REQUIRE(res->status == 200);
      const auto reply = json::parse(res->body);
      content = reply["choices"][0]["message"]["content"];
      finish = reply["choices"][0]["finish_reason"];
    }
    INFO(content);
    JsonPrefix prefix;
    CHECK(prefix.feed(content));
    CHECK((content.empty() || content[0] == '{'));
    if (finish == "stop") CHECK(json::parse(content).is_object());
  }
}

TEST_CASE("response_format json_schema: answers satisfy the schema; what it cannot take is a 400", "[server]") {
  Running s;
  auto client = s.client();
  // A finite language (white space is bounded too), so every answer must end within the budget.
  const json schema = json::parse(R"({
    "type": "object",
    "properties": {"animal": {"enum": ["cat", "dog"]}, "indoor": {"type": "boolean"},
                   "tags": {"type": "array", "items": {"enum": ["small", "old"]}, "maxItems": 2}},
    "required": ["animal", "indoor", "tags"], "additionalProperties": false})");
  for (const int seed : {1, 2, 3}) {
    auto request = greedy_request(256);
    request["temperature"] = 1.0;
    request["seed"] = seed;
    request["response_format"] = {{"type", "json_schema"}, {"json_schema", {{"name", "pet"}, {"schema", schema}}}};
    const auto res = client.Post("/v1/chat/completions", request.dump(), "application/json");
    REQUIRE(res);
    REQUIRE(res->status == 200);
    const auto reply = json::parse(res->body);
    const std::string content = reply["choices"][0]["message"]["content"];
    INFO(content);
    CHECK(reply["choices"][0]["finish_reason"] == "stop");
    CHECK(test::satisfies(json::parse(content), schema));
  }
  auto bad = greedy_request(5);
  bad["response_format"] = {{"type", "json_schema"},
                            {"json_schema", {{"name", "x"}, {"schema", {{"type", "number"}, {"multipleOf", 2}}}}}};
  const auto res = client.Post("/v1/chat/completions", bad.dump(), "application/json");
  REQUIRE(res);
  CHECK(res->status == 400);
  CHECK_THAT(res->body, Catch::Contains("multipleOf"));
}

TEST_CASE("n > 1: several choices, each the answer its own seed gives, plain and streamed", "[server]") {
  Running s;
  auto client = s.client();
  auto request = greedy_request(10);
  request["temperature"] = 1.0;
  request["seed"] = 11;
  request["n"] = 3;
  const auto res = client.Post("/v1/chat/completions", request.dump(), "application/json");
  REQUIRE(res);
  REQUIRE(res->status == 200);
  const auto reply = json::parse(res->body);
  REQUIRE(reply["choices"].size() == 3);
  int64_t completion = 0;
  for (size_t i = 0; i < 3; ++i) {
    INFO("choice " << i);
    const auto& choice = reply["choices"][i];
    CHECK(choice["index"] == i);
    // The same request alone with seed 11 + i (on a server with cold caches) samples the same.
    server::ServerOptions cold;
    cold.cache_mb = 0;
    Running alone(cold);
    auto single = greedy_request(10);
    single["temperature"] = 1.0;
    single["seed"] = 11 + static_cast<int>(i);
    const auto one = json::parse(alone.client().Post("/v1/chat/completions", single.dump(), "application/json")->body);
    CHECK(choice["message"]["content"] == one["choices"][0]["message"]["content"]);
    completion += one["usage"]["completion_tokens"].get<int64_t>();
  }
  CHECK(reply["usage"]["completion_tokens"] == completion);

  // Streamed: chunks name their choice; each choice ends with its own finish_reason.
  request["stream"] = true;
  request["stream_options"] = {{"include_usage", true}};
  const auto out = post_stream(client, "/v1/chat/completions", request.dump());
  REQUIRE(out.status == 200);
  std::vector<std::string> texts(3);
  std::vector<int> finishes(3, 0);
  bool usage = false;
  for (const auto& data : out.data) {
    if (data == "[DONE]") continue;
    const auto chunk = json::parse(data);
    if (chunk["choices"].empty()) {
      usage = chunk.contains("usage");
      continue;
    }
    const size_t i = chunk["choices"][0]["index"];
    REQUIRE(i < 3);
    const auto& delta = chunk["choices"][0]["delta"];
    if (delta.contains("content")) texts[i] += delta["content"].get<std::string>();
    if (chunk["choices"][0]["finish_reason"].is_string()) ++finishes[i];
  }
  CHECK(out.data.back() == "[DONE]");
  CHECK(usage);
  for (size_t i = 0; i < 3; ++i) {
    INFO("choice " << i);
    CHECK(finishes[i] == 1);
    CHECK(texts[i] == reply["choices"][i]["message"]["content"]);
  }
}

TEST_CASE("a slot ended by a stop string or the time limit frees its place for the request waiting", "[server]") {
  const auto full = direct_answer(12);
  REQUIRE(full.size() >= 6);
  const auto stop = full.substr(3, 2);
  for (const bool time_limit : {false, true}) {
    INFO((time_limit ? "time limit" : "stop string"));
    server::ServerOptions options;
    options.parallel = 1;  // the second request waits for the first's slot
    if (time_limit) options.max_generation_seconds = 1e-6;
    Running s(options);
    auto request = greedy_request(12);
    if (!time_limit) request["stop"] = {stop};
    std::vector<json> replies(2);
    std::vector<std::thread> clients;
    for (int i = 0; i < 2; ++i)
      clients.emplace_back([&, i] {
        const auto res = s.client().Post("/v1/chat/completions", request.dump(), "application/json");
        if (res && res->status == 200) replies[i] = json::parse(res->body);
      });
    for (auto& t : clients) t.join();
    for (const auto& reply : replies) {
      REQUIRE(reply.is_object());
      CHECK(reply["choices"][0]["finish_reason"] == (time_limit ? "length" : "stop"));
      if (!time_limit) CHECK(reply["choices"][0]["message"]["content"] == full.substr(0, full.find(stop)));
      CHECK(reply["usage"]["completion_tokens"].get<int64_t>() < 12);
    }
  }
}
