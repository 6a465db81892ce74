// The server end to end on the tiny fixture model: a real HTTP server on an ephemeral
// port in this process, spoken to over the loopback with httplib's client, as curl or the
// openai package would speak to it.
#include "minigpt4/chat/chat.h"
#include "minigpt4/common/config.h"
#include "minigpt4/models/minigpt4.h"
#include "minigpt4/server/base64.h"
#include "minigpt4/server/server.h"
#include "tests/server/running_server.h"
#include "tests/support/fixtures.h"

#include <catch2/catch.hpp>
#include <httplib.h>

#include <algorithm>
#include <fstream>
#include <sstream>
#include <thread>

using namespace minigpt4;
using json = nlohmann::json;
using Catch::Contains;

namespace {

std::shared_ptr<const ChatModel> tiny_model() {
  static const auto model = [] {
    const auto dir = test::data_dir() / "parity/tiny_vicuna0";
    const auto config = Config::load(
        (test::source_dir() / "configs/tiny_vicuna0.yaml").string(),
        {"model.vit_model=" + (dir / "eva_vit_g.pth").string(),
         "model.q_former_model=" + (dir / "blip2_pretrained.pth").string(),
         "model.llama_model=" + (dir / "vicuna").string(), "model.ckpt=" + (dir / "pretrained_minigpt4.pth").string()});
    return ChatModel::load(config, torch::kCPU);
  }();
  return model;
}

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
  CHECK(h["queue"]["running"] == false);
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
