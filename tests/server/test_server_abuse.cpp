// The server under abuse, over the loopback as an attacker would speak to it (raw sockets
// where no HTTP library would send such bytes): slow and idle connections, huge and endless
// headers, compressed, chunked and mis-sized bodies, Range, numbers and types no parser
// expects, too many images, too long a prompt. Each ends in a clean, early answer (or a
// closed connection), and /health keeps answering meanwhile. No wall-time asserts: bounds
// are client timeouts, generous against the limits the test sets.
#include "minigpt4/chat/chat.h"
#include "minigpt4/common/config.h"
#include "minigpt4/server/base64.h"
#include "minigpt4/server/server.h"
#include "tests/server/running_server.h"
#include "tests/support/fixtures.h"

#include <catch2/catch.hpp>
#include <httplib.h>

#include <fstream>
#include <sstream>
#include <thread>

using namespace minigpt4;
using json = nlohmann::json;
using Catch::Contains;
using std::chrono::milliseconds;
using test::http_status;
using test::RawConnection;

namespace {

std::shared_ptr<const ChatModel> tiny_model() { return test::tiny_chat_model(); }

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

struct Running : test::RunningServer {
  explicit Running(server::ServerOptions options = {}) : RunningServer(tiny_model(), std::move(options)) {}
  // /health with a client that gives up after 5 s: an answer means the server is responsive.
  httplib::Result health() const {
    httplib::Client c("127.0.0.1", port);
    c.set_connection_timeout(5, 0);
    c.set_read_timeout(5, 0);
    c.set_write_timeout(5, 0);
    return c.Get("/health");
  }
  json health_json() const {
    const auto res = health();
    REQUIRE(res);
    REQUIRE(res->status == 200);
    return json::parse(res->body);
  }
};

json error_of(const std::string& raw_answer) {
  const auto body = raw_answer.substr(raw_answer.find("\r\n\r\n") + 4);
  INFO(raw_answer.substr(0, 400));
  const auto j = json::parse(body);
  REQUIRE(j.contains("error"));
  return j["error"];
}

json error_of(const httplib::Result& res) {
  REQUIRE(res);
  INFO(res->body.substr(0, 400));
  const auto j = json::parse(res->body);
  REQUIRE(j.contains("error"));
  return j["error"];
}

// One raw request, its whole answer (the server closes or answers within 5 s).
std::string raw_exchange(int port, const std::string& bytes) {
  RawConnection c(port);
  REQUIRE(c.connected());
  c.send(bytes);
  return c.receive(milliseconds(5000));
}

std::string post_head(const std::string& path, const std::string& headers) {
  return "POST " + path + " HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n" + headers + "\r\n";
}

httplib::Result post(const Running& s, const std::string& path, const json& body) {
  auto client = s.client();
  return client.Post(path.c_str(), body.dump(), "application/json");
}

// gzip of 1 MiB of spaces: 1052 bytes (the trailer says 1048576).
std::string gzip_bomb() {
  std::string gz(1052, '\0');
  const std::pair<int, int> bytes[] = {
      {0, 31},   {1, 139},    {2, 8},    {8, 2},      {9, 3},    {10, 237}, {11, 193},   {12, 49},  {13, 1},
      {17, 194}, {18, 160},   {19, 42},  {20, 235},   {21, 159}, {22, 210}, {23, 16},    {24, 190}, {25, 64},
      {26, 1},   {1042, 124}, {1043, 6}, {1044, 167}, {1045, 2}, {1046, 3}, {1047, 241}, {1050, 16}};
  for (const auto& [at, value] : bytes) gz[static_cast<size_t>(at)] = static_cast<char>(value);
  return gz;
}

}  // namespace

TEST_CASE("abuse: headers trickled a byte at a time are cut at the header deadline while /health answers",
          "[server][abuse]") {
  server::ServerOptions options;
  options.header_timeout = milliseconds(1000);
  Running s(options);
  RawConnection slow(s.port);
  REQUIRE(slow.connected());
  REQUIRE(slow.send("GET /health HTTP/1.1\r\nHost: test\r\nX-Slow: "));
  std::string answer;
  bool cut = false;
  int sent = 0;
  // httplib alone waits 30 s (its read timeout) per byte: this would go on for all 100.
  for (; sent < 100 && !cut; ++sent) {
    std::this_thread::sleep_for(milliseconds(100));
    answer += slow.receive(milliseconds(0), &cut);
    if (!cut && !slow.send("a")) cut = true;
    if (sent == 3) {
      const auto h = s.health();
      REQUIRE(h);
      CHECK(h->status == 200);
    }
  }
  if (!cut) answer += slow.receive(milliseconds(1000), &cut);
  INFO("bytes trickled: " << sent);
  CHECK(cut);
  CHECK(sent < 100);
  CHECK(http_status(answer) == 408);
  CHECK(error_of(answer)["code"] == "request_timeout");
  CHECK(s.health_json()["connections"]["timed_out"] == 1);
}

TEST_CASE("abuse: a body trickled a byte at a time is cut at the whole-request deadline", "[server][abuse]") {
  server::ServerOptions options;
  options.request_timeout = milliseconds(1500);
  Running s(options);
  RawConnection slow(s.port);
  REQUIRE(slow.send(post_head("/v1/chat/completions", "Content-Length: 1000\r\n") + "{"));
  std::string answer;
  bool cut = false;
  int sent = 0;
  for (; sent < 100 && !cut; ++sent) {
    std::this_thread::sleep_for(milliseconds(100));
    answer += slow.receive(milliseconds(0), &cut);
    if (!cut && !slow.send(" ")) cut = true;
    if (sent == 5) CHECK(s.health());
  }
  if (!cut) answer += slow.receive(milliseconds(1000), &cut);
  CHECK(cut);
  CHECK(sent < 100);
  CHECK(http_status(answer) == 408);
  CHECK_THAT(error_of(answer)["message"].get<std::string>(), Contains("--request-timeout"));
}

TEST_CASE("abuse: more idle connections than the limit cannot take the server offline", "[server][abuse]") {
  server::ServerOptions options;
  options.max_connections = 24;  // (the threads, 8 + 8 + 2 for /health, need at least 20)
  Running s(options);
  std::vector<std::unique_ptr<RawConnection>> idle;
  for (int i = 0; i < 80; ++i) {
    idle.push_back(std::make_unique<RawConnection>(s.port));
    if (i % 2) idle.back()->send("POST /v1/chat/completions HTTP/1.1\r\n");  // half a head
  }
  // httplib alone: its 16 threads each sit on an idle connection for 30 s, and this waits.
  for (int i = 0; i < 3; ++i) {
    const auto res = s.health();
    REQUIRE(res);
    CHECK(res->status == 200);
  }
  // The oldest ones made room for the newer.
  CHECK(idle.front()->closed_within(milliseconds(5000)));
  const auto health = s.health_json();
  INFO(health.dump());
  CHECK(health["connections"]["open"].get<int>() <= 24);
  CHECK(health["connections"]["evicted"].get<int>() >= 50);
  // An ordinary request still works.
  const auto models = s.client().Get("/v1/models");
  REQUIRE(models);
  CHECK(models->status == 200);
}

TEST_CASE("abuse: one client address cannot push the others out", "[server][abuse]") {
  server::ServerOptions options;
  options.max_connections = 24;
  options.max_connections_per_ip = 16;
  Running s(options);
  const auto open_idle = [&](const char* source, int count) {
    std::vector<std::unique_ptr<RawConnection>> conns;
    for (int i = 0; i < count; ++i) {
      conns.push_back(std::make_unique<RawConnection>(s.port, source));
      REQUIRE(conns.back()->connected());
    }
    return conns;
  };
  // At the address limit a newcomer from it closes that address's own oldest connection
  // (B's are older, and stay).
  auto b = open_idle("127.0.0.3", 6);
  auto a = open_idle("127.0.0.2", 16);
  auto a_more = open_idle("127.0.0.2", 4);
  for (int i = 0; i < 4; ++i) CHECK(a[i]->closed_within(milliseconds(5000)));
  for (auto& conn : b) CHECK_FALSE(conn->closed_within(milliseconds(200)));
  CHECK_FALSE(a[4]->closed_within(milliseconds(200)));
  // At the server's limit (22 open, 24 allowed) the room comes from the busiest address,
  // not simply the oldest connections (B's): a third client's four close two of A's.
  auto c = open_idle("127.0.0.4", 4);
  CHECK(a[4]->closed_within(milliseconds(5000)));
  CHECK(a[5]->closed_within(milliseconds(5000)));
  for (auto& conn : b) CHECK_FALSE(conn->closed_within(milliseconds(200)));
  for (auto& conn : c) CHECK_FALSE(conn->closed_within(milliseconds(200)));
  const auto health = s.health_json();
  INFO(health.dump());
  CHECK(health["connections"]["open"].get<int>() <= 24);
  CHECK(health["connections"]["evicted"].get<int>() >= 6);
}

TEST_CASE("abuse: an address whose connections are all being answered gets 429", "[server][abuse]") {
  server::ServerOptions options;
  options.max_connections_per_ip = 2;
  options.limits.max_tokens = 1000;
  options.max_generation_seconds = 20;  // bounds the test if a client-gone check were missed
  Running s(options);
  json request = {{"messages", {{{"role", "user"}, {"content", "describe"}}}},
                  {"max_tokens", 1000},
                  {"temperature", 0},
                  {"repetition_penalty", 0.5}};
  const auto body = request.dump();
  const auto busy_request =
      post_head("/v1/chat/completions", fmt::format("Content-Length: {}\r\n", body.size())) + body;
  // Two long answers from one address: one runs on the model, one waits for it; both are
  // with workers, so neither is idle and neither can be closed for a newcomer.
  RawConnection first(s.port, "127.0.0.5"), second(s.port, "127.0.0.5");
  REQUIRE(first.send(busy_request));
  REQUIRE(second.send(busy_request));
  for (int i = 0; i < 100; ++i) {
    const auto queue = s.health_json()["queue"];
    if (queue["running"].get<int>() + queue["waiting"].get<int>() == 2) break;
    std::this_thread::sleep_for(milliseconds(50));
  }
  const auto queue = s.health_json()["queue"];
  INFO(queue.dump());
  REQUIRE(queue["running"].get<int>() + queue["waiting"].get<int>() == 2);

  RawConnection third(s.port, "127.0.0.5");
  REQUIRE(third.connected());
  const auto answer = third.receive(milliseconds(5000));
  CHECK(http_status(answer) == 429);
  CHECK(error_of(answer)["code"] == "too_many_connections");
  CHECK_THAT(error_of(answer)["message"].get<std::string>(), Contains("--max-connections-per-ip"));
  // Another address is not affected, and the two answers go on.
  RawConnection other(s.port, "127.0.0.6");
  REQUIRE(other.send("GET /health HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n"));
  CHECK(http_status(other.receive(milliseconds(5000))) == 200);
  CHECK_FALSE(first.closed_within(milliseconds(100)));
  CHECK(s.health_json()["connections"]["refused"].get<int>() >= 1);
}

TEST_CASE("abuse: header lines are limited in number and size", "[server][abuse]") {
  server::ServerOptions options;
  options.max_header_bytes = 16 * 1024;
  options.max_header_count = 50;
  Running s(options);

  std::string many = "GET /health HTTP/1.1\r\n";
  for (int i = 0; i < 600; ++i) many += "X-A: b\r\n";
  auto answer = raw_exchange(s.port, many + "\r\n");
  CHECK(http_status(answer) == 431);
  CHECK_THAT(error_of(answer)["message"].get<std::string>(), Contains("--max-headers"));

  answer = raw_exchange(s.port, "GET /health HTTP/1.1\r\nX-Big: " + std::string(20000, 'a') + "\r\n\r\n");
  CHECK(http_status(answer) == 431);
  CHECK_THAT(error_of(answer)["message"].get<std::string>(), Contains("--max-header-bytes"));

  // A head that never ends is cut once it is too long, not when it ends.
  answer = raw_exchange(s.port, "GET /health HTTP/1.1\r\nX-Big: " + std::string(40000, 'a'));
  CHECK(http_status(answer) == 431);

  answer = raw_exchange(s.port, "GET /" + std::string(9000, 'a') + " HTTP/1.1\r\n\r\n");
  CHECK(http_status(answer) == 414);
  answer = raw_exchange(s.port, "GET /health HTTP/1.1\r\nBad Header\r\n\r\n");
  CHECK(http_status(answer) == 400);
  answer = raw_exchange(s.port, "GET /health HTTP/2.0\r\n\r\n");
  CHECK(http_status(answer) == 505);
  // Long paths reach httplib's routing (std::regex) without harm.
  answer = raw_exchange(s.port, "POST /api/sessions/" + std::string(8000, 'a') +
                                    "/ask HTTP/1.1\r\nConnection: close\r\nContent-Length: 2\r\n\r\n{}");
  CHECK(http_status(answer) == 404);
  CHECK(s.health());
}

TEST_CASE("abuse: compressed request bodies are refused before anything is inflated", "[server][abuse]") {
  server::ServerOptions options;
  options.max_body_bytes = 64 * 1024;
  Running s(options);
  const auto bomb = gzip_bomb();
  for (const char* encoding : {"gzip", "deflate", "br", "GZIP"}) {
    const auto answer = raw_exchange(
        s.port, post_head("/v1/chat/completions",
                          fmt::format("Content-Encoding: {}\r\nContent-Length: {}\r\n", encoding, bomb.size())) +
                    bomb);
    INFO(encoding);
    CHECK(http_status(answer) == 415);
    CHECK(error_of(answer)["code"] == "unsupported_content_encoding");
  }
  // identity is no encoding at all.
  const std::string body = "{}";
  const auto answer = raw_exchange(
      s.port,
      post_head("/api/sessions", "Content-Encoding: identity\r\nContent-Length: 2\r\nConnection: close\r\n") + body);
  CHECK(http_status(answer) == 200);
}

TEST_CASE("abuse: chunked bodies are held to the body limit and decoded for the handlers", "[server][abuse]") {
  server::ServerOptions options;
  options.max_body_bytes = 64 * 1024;
  Running s(options);

  // 100 KB in 8 KB chunks: refused at the chunk that crosses the limit, not after reading it all.
  RawConnection big(s.port);
  REQUIRE(big.send(post_head("/v1/chat/completions", "Transfer-Encoding: chunked\r\n")));
  std::string answer;
  for (int i = 0; i < 13 && answer.empty(); ++i) {
    const std::string chunk(8192, ' ');
    big.send(fmt::format("{:x}\r\n{}\r\n", chunk.size(), chunk));
    answer = big.receive(milliseconds(100));
  }
  answer += big.receive(milliseconds(5000));
  CHECK(http_status(answer) == 413);
  CHECK(error_of(answer)["code"] == "request_too_large");

  // A chunk that claims more than the limit is refused from its size line.
  answer =
      raw_exchange(s.port, post_head("/v1/chat/completions", "Transfer-Encoding: chunked\r\n") + "ffffffffffff\r\nabc");
  CHECK(http_status(answer) == 413);
  answer = raw_exchange(s.port, post_head("/v1/chat/completions", "Transfer-Encoding: chunked\r\n") + "zz\r\n");
  CHECK(http_status(answer) == 400);
  answer = raw_exchange(s.port, post_head("/v1/chat/completions", "Transfer-Encoding: gzip, chunked\r\n"));
  CHECK(http_status(answer) == 501);
  answer = raw_exchange(
      s.port, post_head("/v1/chat/completions", "Transfer-Encoding: chunked\r\nContent-Length: 5\r\n") + "0\r\n\r\n");
  CHECK(http_status(answer) == 400);

  // Within the limit the handler gets the decoded body: a page session from {"lora": "original"}.
  answer = raw_exchange(s.port, post_head("/api/sessions", "Transfer-Encoding: chunked\r\nConnection: close\r\n") +
                                    "5;ext=1\r\n{\"lor\r\n" + "e\r\na\": \"original\"\r\n" + "1\r\n}\r\n" +
                                    "0\r\nX-Trailer: 1\r\n\r\n");
  INFO(answer);
  CHECK(http_status(answer) == 200);
  CHECK_THAT(answer, Contains("\"lora\":\"original\""));
}

TEST_CASE("abuse: Range is not served: the answer is whole", "[server][abuse]") {
  Running s;
  const auto page = s.client().Get("/");
  REQUIRE(page);
  std::string ranges = "bytes=0-";
  for (int i = 0; i < 1000; ++i) ranges += ",0-";
  for (const char* path : {"/", "/v1/models", "/health"}) {
    INFO(path);
    auto client = s.client();
    const auto res = client.Get(path, httplib::Headers{{"Range", ranges}, {"If-Range", "x"}});
    REQUIRE(res);
    CHECK(res->status == 200);
    CHECK_THAT(res->get_header_value("Content-Type"), !Contains("multipart/byteranges"));
    if (std::string(path) == "/") CHECK(res->body.size() == page->body.size());
  }
}

TEST_CASE("abuse: a bad or huge Content-Length is answered at once, without waiting for the body", "[server][abuse]") {
  server::ServerOptions options;
  options.max_body_bytes = 64 * 1024;
  Running s(options);
  const auto with_length = [&](const std::string& length) {
    return raw_exchange(s.port, post_head("/v1/chat/completions", "Content-Length: " + length + "\r\n"));
  };
  CHECK(http_status(with_length("-1")) == 400);
  CHECK(http_status(with_length("12abc")) == 400);
  CHECK(http_status(with_length("")) == 400);
  CHECK(http_status(with_length("100000000000000000000000")) == 413);  // 10^23
  CHECK(http_status(with_length("99999999999999999999999999999999999999")) == 413);
  const auto tib = with_length("1099511627776");  // 1 TiB, and no body at all
  CHECK(http_status(tib) == 413);
  CHECK_THAT(error_of(tib)["message"].get<std::string>(), Contains("--max-upload-mb"));
  CHECK(http_status(raw_exchange(
            s.port, post_head("/v1/chat/completions", "Content-Length: 5\r\nContent-Length: 6\r\n"))) == 400);
  CHECK(http_status(raw_exchange(s.port, "GET /health HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello")) == 400);
}

TEST_CASE("abuse: keep-alive, pipelining and Expect: 100-continue still work behind the gate", "[server][abuse]") {
  Running s;
  RawConnection c(s.port);
  // Two requests in one write: both answered, in order, on the same connection.
  REQUIRE(c.send("GET /health HTTP/1.1\r\nHost: t\r\n\r\nGET /v1/models HTTP/1.1\r\nHost: t\r\n\r\n"));
  std::string both;
  for (int i = 0; i < 50 && both.find("\"object\":\"list\"") == std::string::npos; ++i)
    both += c.receive(milliseconds(100));
  CHECK_THAT(both, Contains("\"status\":\"ok\""));
  CHECK_THAT(both, Contains("\"object\":\"list\""));
  CHECK(both.find("\"status\":\"ok\"") < both.find("\"object\":\"list\""));

  RawConnection e(s.port);
  REQUIRE(e.send(post_head("/api/sessions", "Expect: 100-continue\r\nContent-Length: 2\r\nConnection: close\r\n")));
  const auto interim = e.receive(milliseconds(5000), nullptr, 25);
  CHECK(http_status(interim) == 100);
  REQUIRE(e.send("{}"));
  const auto answer = e.receive(milliseconds(5000));
  CHECK_THAT(answer, Contains("HTTP/1.1 200"));
  CHECK_THAT(answer, Contains("session_id"));
}

TEST_CASE("abuse: numbers out of range and wrong types are 400s naming the field", "[server][abuse]") {
  Running s;
  const auto message = json::array({{{"role", "user"}, {"content", "hi"}}});
  const std::string messages = message.dump();
  const auto send = [&](const std::string& body) {
    auto client = s.client();
    return client.Post("/v1/chat/completions", body, "application/json");
  };
  const std::string digits(400, '7');
  for (const auto& [body, param] : std::vector<std::pair<std::string, std::string>>{
           {"{\"messages\": " + messages + ", \"max_tokens\": " + digits + "}", "max_tokens"},
           {"{\"messages\": " + messages + ", \"temperature\": 1e309}", "temperature"},
           {"{\"messages\": " + messages + ", \"top_p\": -1e400}", "top_p"},
           {"{\"messages\": " + messages + ", \"stop\": [\"a\", 1e999]}", "stop[1]"},
           {"{\"messages\": " + messages + ", \"response_format\": {\"type\": 5}}", "response_format"},
           {"{\"messages\": " + messages + ", \"max_tokens\": 18446744073709551615}", "max_tokens"},
           {"{\"messages\": " + messages + ", \"seed\": 1e20}", "seed"},
           {"{\"messages\": " + messages + ", \"temperature\": \"hot\"}", "temperature"},
           {"{\"messages\": " + messages + ", \"stream\": 1}", "stream"},
           {"{\"messages\": \"hi\"}", "messages"},
           {"{\"messages\": [{\"role\": 5, \"content\": \"hi\"}]}", "messages[0].role"},
           {"{\"messages\": [{\"role\": \"user\", \"content\": [{\"type\": \"text\", \"text\": 5}]}]}",
            "messages[0].content[0].text"},
       }) {
    INFO(body.substr(0, 200));
    const auto res = send(body);
    REQUIRE(res);
    CHECK(res->status == 400);
    CHECK(error_of(res)["param"] == param);
  }
  // Nesting too deep for any walker: refused while parsing.
  const auto deep = send("{\"messages\": " + std::string(100000, '[') + std::string(100000, ']') + "}");
  REQUIRE(deep);
  CHECK(deep->status == 400);
  CHECK_THAT(error_of(deep)["message"].get<std::string>(), Contains("deeper than"));

  // The page's fields too.
  const auto created = post(s, "/api/sessions", json::object());
  REQUIRE(created);
  const auto base = "/api/sessions/" + json::parse(created->body)["session_id"].get<std::string>();
  for (const auto& [body, param] : std::vector<std::pair<std::string, std::string>>{
           {"{\"text\": \"hi\", \"num_beams\": 1e400}", "num_beams"},
           {"{\"text\": \"hi\", \"num_beams\": 18446744073709551615}", "num_beams"},
           {"{\"text\": \"hi\", \"max_new_tokens\": \"5\"}", "max_new_tokens"},
           {"{\"text\": \"hi\", \"temperature\": 1e309}", "temperature"},
           {"{\"text\": 5}", "text"},
       }) {
    INFO(body);
    auto client = s.client();
    const auto res = client.Post((base + "/ask").c_str(), body, "application/json");
    REQUIRE(res);
    CHECK(res->status == 400);
    CHECK(error_of(res)["param"] == param);
  }
}

TEST_CASE("abuse: images are counted and their pixels budgeted per request", "[server][abuse]") {
  const json image = {{"type", "image_url"}, {"image_url", {{"url", png_uri()}}}};
  json request = {
      {"messages", {{{"role", "user"}, {"content", {image, image, image, {{"type", "text"}, {"text", "?"}}}}}}},
      {"max_tokens", 2}};
  server::ServerOptions options;
  options.limits.max_images = 2;
  {
    Running s(options);
    const auto res = post(s, "/v1/chat/completions", request);
    REQUIRE(res);
    CHECK(res->status == 400);
    CHECK(error_of(res)["param"] == "messages[0].content[2]");
    CHECK_THAT(error_of(res)["message"].get<std::string>(), Contains("--max-images-per-request"));
  }
  options.limits.max_request_pixels = 100'000;  // one 357x200 image (71,400 pixels), not two
  Running s(options);
  request["messages"][0]["content"] = {image, image, {{"type", "text"}, {"text", "?"}}};
  auto res = post(s, "/v1/chat/completions", request);
  REQUIRE(res);
  CHECK(res->status == 400);
  CHECK(error_of(res)["param"] == "messages[0].content[1].image_url.url");
  CHECK_THAT(error_of(res)["message"].get<std::string>(), Contains("--max-request-pixels"));

  request["messages"][0]["content"] = {image, {{"type", "text"}, {"text", "?"}}};
  res = post(s, "/v1/chat/completions", request);
  REQUIRE(res);
  CHECK(res->status == 200);
}

TEST_CASE("abuse: a prompt over --max-prompt-tokens is refused before any model work", "[server][abuse]") {
  server::ServerOptions options;
  options.limits.max_prompt_tokens = 400;
  Running s(options);
  const auto ask = [&](const std::string& text) {
    return post(s, "/v1/chat/completions", {{"messages", {{{"role", "user"}, {"content", text}}}}, {"max_tokens", 2}});
  };
  // Over 400 * 32 bytes: refused without tokenizing (a 14 MB prompt costs no more).
  auto res = ask(std::string(14'000, 'a'));
  REQUIRE(res);
  CHECK(res->status == 400);
  CHECK(error_of(res)["code"] == "context_length_exceeded");
  CHECK_THAT(error_of(res)["message"].get<std::string>(), Contains("--max-prompt-tokens"));
  // Few bytes, many tokens: counted with the tokenizer.
  std::string words;
  for (int i = 0; i < 1000; ++i) words += "cat ";
  res = ask(words);
  REQUIRE(res);
  CHECK(res->status == 400);
  CHECK(error_of(res)["param"] == "messages");
  CHECK_THAT(error_of(res)["message"].get<std::string>(), Contains("tokens") && Contains("--max-prompt-tokens"));
  // Within the limit it is answered.
  res = ask("cat cat");
  REQUIRE(res);
  CHECK(res->status == 200);
  CHECK(json::parse(s.client().Get("/health")->body)["answers"]["total"] ==
        1);  // the refused ones never reached the model

  // The page's questions too.
  const auto created = post(s, "/api/sessions", json::object());
  REQUIRE(created);
  const auto base = "/api/sessions/" + json::parse(created->body)["session_id"].get<std::string>();
  res = post(s, base + "/ask", {{"text", words}});
  REQUIRE(res);
  CHECK(res->status == 400);
  CHECK(error_of(res)["param"] == "text");
  res = post(s, base + "/ask", {{"text", std::string(14'000, 'a')}});
  REQUIRE(res);
  CHECK(res->status == 400);
  CHECK_THAT(error_of(res)["message"].get<std::string>(), Contains("--max-prompt-tokens"));
}

TEST_CASE("abuse: the default prompt limit comes from the model's context", "[server][abuse]") {
  Running s;
  // 2000 tokens (Chat.answer's max_length; the tiny LLaMA has 2048 positions): 64,000 bytes.
  const auto res =
      post(s, "/v1/chat/completions", {{"messages", {{{"role", "user"}, {"content", std::string(70'000, 'a')}}}}});
  REQUIRE(res);
  CHECK(res->status == 400);
  CHECK_THAT(error_of(res)["message"].get<std::string>(), Contains("at most 2048 prompt tokens"));
}

TEST_CASE("abuse: request bytes held at once are bounded; heads (and /health) still get through", "[server][abuse]") {
  server::ServerOptions options;
  options.max_body_bytes = 64 * 1024;
  options.max_header_bytes = 16 * 1024;
  options.max_buffered_bytes = 100 * 1024;
  Running s(options);
  const std::string head = post_head("/v1/chat/completions", "Content-Length: 65536\r\n");
  RawConnection first(s.port), second(s.port);
  REQUIRE(first.send(head + std::string(60 * 1024, ' ')));  // held, never finished
  std::this_thread::sleep_for(milliseconds(200));
  CHECK(first.receive(milliseconds(0)).empty());
  second.send(head + std::string(60 * 1024, ' '));
  const auto answer = second.receive(milliseconds(5000));
  CHECK(http_status(answer) == 503);
  CHECK(error_of(answer)["code"] == "server_busy");
  const auto health = s.health();
  REQUIRE(health);
  CHECK(health->status == 200);
}
