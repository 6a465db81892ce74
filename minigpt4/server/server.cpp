#include "minigpt4/server/server.h"

#include "minigpt4/common/error.h"
#include "minigpt4/common/log.h"
#include "minigpt4/common/untrusted.h"
#include "minigpt4/models/llama.h"
#include "minigpt4/models/minigpt4.h"
#include "minigpt4/models/phi.h"
#include "minigpt4/processors/image_decode.h"
#include "minigpt4/server/base64.h"
#include "minigpt4/server/http_gate.h"
#include "minigpt4/server/page.h"
#include "minigpt4/server/sessions.h"
#include "minigpt4/server/stop_strings.h"
#include "minigpt4/server/worker.h"
#include "minigpt4/tokenizer/tokenizer.h"

#include <c10/util/Exception.h>
#include <httplib.h>

#include <algorithm>
#include <atomic>
#include <csignal>
#include <future>
#include <random>
#include <thread>

namespace minigpt4::server {

using json = nlohmann::json;
using Clock = std::chrono::steady_clock;

namespace {

int64_t unix_time() {
  return std::chrono::duration_cast<std::chrono::seconds>(std::chrono::system_clock::now().time_since_epoch()).count();
}

uint64_t random_seed() {
  static thread_local std::mt19937_64 rng{std::random_device{}()};
  return rng();
}

void send_json(httplib::Response& res, int status, const json& body) {
  res.status = status;
  res.set_content(dump_json(body), "application/json");
}

void send_error(httplib::Response& res, const ApiError& e) {
  if (e.status == 503) {
    log::warn("503: {}", e.what());
    res.set_header("Retry-After", "5");
  } else if (e.status >= 500) {
    log::error("{}: {}", e.status, e.what());
  }
  send_json(res, e.status, error_json(e));
}

// What a client is told about an exception: its own ApiError, or a 500 for anything else
// (a failure of the model or the server, not of the request, which was validated before).
ApiError as_api_error(const std::exception_ptr& error) {
  try {
    std::rethrow_exception(error);
  } catch (const ApiError& e) {
    return e;
  } catch (const c10::Error& e) {
    return ApiError(500, fmt::format("internal error: {}", e.what_without_backtrace()), "", "internal_error");
  } catch (const std::exception& e) {
    return ApiError(500, fmt::format("internal error: {}", e.what()), "", "internal_error");
  } catch (...) {
    return ApiError(500, "internal error", "", "internal_error");
  }
}

template <typename F>
httplib::Server::Handler guarded(F handler) {
  return [handler](const httplib::Request& req, httplib::Response& res) {
    try {
      handler(req, res);
    } catch (...) {
      send_error(res, as_api_error(std::current_exception()));
    }
  };
}

// Sends a channel's pieces as server-sent events until its end. While nothing comes, a
// comment line goes out every `heartbeat`: writes to a closed connection fail, so a client
// that left (even while its request waited in the queue) is noticed and its work cancelled.
void stream_events(httplib::Response& res, std::shared_ptr<ReplyChannel> channel, std::string first,
                   std::chrono::milliseconds heartbeat, std::function<std::string(const std::string&)> piece_event,
                   std::function<std::string(const ReplyChannel::Batch&)> end_events) {
  res.set_header("Cache-Control", "no-cache");
  res.set_header("X-Accel-Buffering", "no");
  res.set_chunked_content_provider(
      "text/event-stream",
      [channel, first, heartbeat, piece_event, end_events](size_t, httplib::DataSink& sink) {
        const auto write = [&](const std::string& s) { return sink.write(s.data(), s.size()); };
        bool ok = first.empty() || write(first);
        while (ok) {
          const auto batch = channel->take(heartbeat);
          if (batch.pieces.empty() && !batch.ended) ok = write(": waiting\n\n");
          for (const auto& piece : batch.pieces) ok = ok && write(piece_event(piece));
          if (ok && batch.ended) {
            if (!write(end_events(batch))) break;
            sink.done();
            return true;
          }
        }
        channel->cancel();
        return false;
      },
      [channel](bool) { channel->cancel(); });
}

ReplyChannel::Batch wait_for_end(ReplyChannel& channel) {
  for (;;)
    if (auto batch = channel.take(std::chrono::seconds(1)); batch.ended) return batch;
}

// A page conversation: its ChatSession, the adapter it talks with (the page's task
// selector), and its latest image, kept to encode it again when the adapter changes and for
// the size the answer's boxes are drawn on. Touched only by model jobs once created.
struct PageSession {
  PageSession(std::shared_ptr<const ChatModel> model, std::string lora)
      : chat(std::move(model)), adapter(std::move(lora)) {}
  ChatSession chat;
  std::string adapter;
  std::string image;  // the latest image's bytes
  int64_t width = 0, height = 0;
};

// What an answer's end event needs from the model thread: the adapter, the image size and,
// when asked for, the explanation (or {"error": why not}).
struct AnswerContext {
  std::string adapter;
  int64_t width = 0, height = 0;
  nlohmann::json explanation;  // null: not asked for
};

// The context a prompt may fill: Chat.answer's max_length (2000), or the LLM's positions
// when it has fewer.
int64_t context_length(const ChatModel& model) {
  int64_t n = AnswerOptions{}.max_length;
  const auto& llm = model.model->llama_model;
  if (const auto* llama = dynamic_cast<const LlamaForCausalLM*>(llm.get()))
    n = std::min(n, llama->config.max_position_embeddings);
  else if (const auto* phi = dynamic_cast<const PhiForCausalLM*>(llm.get()))
    n = std::min(n, phi->config.max_position_embeddings);
  return n;
}

// The text tokens of the prompt a request's steps make (template and messages; the images'
// embedding positions come on top), counted as ChatSession::answer will tokenize it. The
// parser has bounded the text to max_prompt_tokens * kPromptBytesPerToken bytes, so this is
// cheap, and it runs on the request's own thread, before any model work.
int64_t prompt_text_tokens(const ChatModel& model, const std::vector<ChatStep>& steps) {
  auto conversation = model.new_conversation();
  for (const auto& step : steps) {
    if (step.kind == ChatStep::Kind::Image) conversation.upload_image();
    if (step.kind == ChatStep::Kind::Ask) conversation.ask(step.text);
    if (step.kind == ChatStep::Kind::Answer) {
      conversation.start_answer();
      conversation.set_answer(step.text);
    }
  }
  conversation.start_answer();
  const auto segments = split_image_placeholder(conversation.get_prompt());
  int64_t tokens = 0;
  for (size_t i = 0; i < segments.size(); ++i)
    tokens += static_cast<int64_t>(model.tokenizer->encode(segments[i], /*add_special_tokens=*/i == 0).size());
  return tokens;
}

HttpLimits http_limits(const ServerOptions& o) {
  HttpLimits l;
  l.max_connections = o.max_connections;
  l.max_connections_per_ip = o.max_connections_per_ip;
  l.max_header_bytes = o.max_header_bytes;
  l.max_header_count = o.max_header_count;
  l.max_body_bytes = o.max_body_bytes;
  l.max_buffered_bytes = o.max_buffered_bytes;
  l.header_timeout = o.header_timeout;
  l.request_timeout = o.request_timeout;
  l.keep_alive = o.keep_alive;
  l.write_timeout = std::chrono::seconds(o.io_timeout_seconds);
  // Every request waiting for the model holds a thread: enough for a full queue plus the
  // running job, and some left for the page and the API's other routes.
  l.threads = o.http_threads > 0 ? o.http_threads : o.max_waiting + 8;
  l.fast_threads = 2;
  l.fast_paths = {"/health"};
  return l;
}

// ServerOptions as the server runs them: the prompt limit from the model when not given, the
// decode budget shared by every request.
ServerOptions resolved(ServerOptions o, const ChatModel& model) {
  if (o.limits.max_prompt_tokens <= 0) o.limits.max_prompt_tokens = context_length(model);
  o.limits.image.decode_budget =
      std::make_shared<PixelBudget>(std::max(o.max_decode_pixels, o.limits.image.max_pixels));
  return o;
}

}  // namespace

struct Server::Impl {
  Impl(std::shared_ptr<const ChatModel> chat_model, ServerOptions server_options)
      : model(std::move(chat_model)),
        options(resolved(std::move(server_options), *model)),
        adapters(model->adapter_choices()),
        default_adapter(options.lora.empty() ? model->active_adapter() : options.lora),
        worker(options.max_waiting),
        sessions(options.max_sessions, options.session_idle),
        http(http_limits(options)) {
    if (!held(default_adapter))
      fail("unknown LoRA adapter '{}'; the model holds: {} (model.lora_path names them)", excerpt(default_adapter),
           fmt::join(adapters, ", "));
    // httplib writes with plain send(): a client that closed its connection would kill the
    // process with SIGPIPE instead of failing the write.
    std::signal(SIGPIPE, SIG_IGN);
    configure();
    routes();
  }

  std::shared_ptr<const ChatModel> model;
  ServerOptions options;
  const std::vector<std::string> adapters;  // "original" + the model's adapters (fixed after loading)
  const std::string default_adapter;
  const int64_t created = unix_time();
  std::atomic<bool> stopping{false}, serving{false};
  std::atomic<uint64_t> answers{0}, answers_cancelled{0}, answers_timed_out{0};  // for /health
  ModelWorker worker;
  SessionStore<PageSession> sessions;
  GatedServer http;

  bool held(const std::string& adapter) const {
    return std::find(adapters.begin(), adapters.end(), adapter) != adapters.end();
  }
  bool has_adapters() const { return adapters.size() > 1; }
  json connections_json() const {
    const auto st = http.stats();
    return {{"open", st.open},         {"max", http.limits().max_connections},
            {"accepted", st.accepted}, {"evicted", st.evicted},
            {"refused", st.refused},   {"timed_out", st.timed_out},
            {"rejected", st.rejected}};
  }
  // A page request's adapter: known, or a 400 listing them.
  std::string checked_adapter(const std::string& name) const {
    if (!held(name))
      throw ApiError(
          400,
          fmt::format("unknown LoRA adapter '{}'; this server holds: {}", excerpt(name), fmt::join(adapters, ", ")),
          "lora", "unknown_adapter");
    return name;
  }

  void configure();
  void routes();
  void chat_completions(const httplib::Request& req, httplib::Response& res);
  void session_image(const httplib::Request& req, httplib::Response& res);
  void session_ask(const httplib::Request& req, httplib::Response& res);
  void session_lora(const httplib::Request& req, httplib::Response& res);
  std::shared_ptr<PageSession> session(const httplib::Request& req);
  void check_prompt_tokens(int64_t tokens, const std::string& param) const;
  at::Tensor encode_image(const std::string& bytes, const std::string& name, at::Tensor* vision_tokens = nullptr) const;
  std::shared_ptr<ReplyChannel> queue_answer(std::function<void(ReplyChannel&)> work);
  // `before_finish` runs on the model thread after the answer, before its end is sent.
  void answer(ChatSession& session, const AnswerOptions& answer_options, const std::vector<std::string>& stop,
              ReplyChannel& channel, const char* label,
              const std::function<void(const ChatReply&)>& before_finish = {});
  // The explanation of a session's last answer as JSON, with the overlay over `image_bytes`
  // (the explained image's) as a base64 PNG when given; {"error": ...} when it cannot be made.
  nlohmann::json explanation(ChatSession& session, bool per_word,
                             const std::vector<const std::string*>& image_bytes) const;
  void run_and_wait(std::function<void()> work);
};

void Server::Impl::configure() {
  // Connections, their limits and deadlines, and the threads: GatedServer (http_gate.h).
  // httplib's default sets SO_REUSEPORT, with which a second server on the same port would
  // start without complaint and take half the connections; SO_REUSEADDR only allows a quick
  // restart.
  http.set_socket_options([](socket_t sock) {
    const int yes = 1;
    setsockopt(sock, SOL_SOCKET, SO_REUSEADDR, &yes, sizeof(yes));
  });
  http.set_logger([](const httplib::Request& req, const httplib::Response& res) {
    log::debug("{} {} {} -> {}", req.remote_addr, req.method, req.path, res.status);
  });
  // httplib's own errors (unknown route, bad HTTP) in OpenAI's shape; the gate answers
  // framing and limit errors itself, in the same shape.
  // (Declared with its type: a lambda fits both set_error_handler overloads.)
  const httplib::Server::HandlerWithResponse on_error = [this](const httplib::Request& req, httplib::Response& res) {
    if (!res.body.empty()) return httplib::Server::HandlerResponse::Unhandled;  // our own JSON error
    std::string message = fmt::format("HTTP {}", res.status), code;
    if (res.status == 404) message = fmt::format("no route for {} {}", req.method, req.path), code = "not_found";
    if (res.status == 413)
      message = fmt::format("the request body is larger than this server's limit of {} bytes (--max-upload-mb)",
                            options.max_body_bytes),
      code = "request_too_large";
    send_json(res, res.status, error_json(ApiError(res.status, message, "", code)));
    return httplib::Server::HandlerResponse::Handled;
  };
  http.set_error_handler(on_error);
  http.set_exception_handler([](const httplib::Request&, httplib::Response& res, std::exception_ptr error) {
    send_error(res, as_api_error(error));
  });
}

void Server::Impl::routes() {
  http.Get("/", [](const httplib::Request&, httplib::Response& res) {
    // The page loads nothing from elsewhere, and the browser is told to hold it to that.
    res.set_header("Content-Security-Policy",
                   "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
                   "img-src data: blob:; connect-src 'self'; base-uri 'none'; form-action 'none'");
    res.set_content(page_html(), "text/html; charset=utf-8");
  });
  http.Get("/health", [this](const httplib::Request&, httplib::Response& res) {
    send_json(
        res, 200,
        {{"status", stopping ? "stopping" : "ok"},
         {"model", model->name},
         {"device", model->device.str()},
         {"queue", {{"running", worker.busy()}, {"waiting", worker.waiting()}, {"max_waiting", options.max_waiting}}},
         {"answers",
          {{"total", answers.load()},
           {"client_gone", answers_cancelled.load()},
           {"time_limit", answers_timed_out.load()}}},
         {"sessions", sessions.size()},
         {"connections", connections_json()}});
  });
  http.Get("/v1/models", [this](const httplib::Request&, httplib::Response& res) {
    send_json(res, 200, models_json(model->name, created, adapters, default_adapter));
  });
  http.Post("/v1/chat/completions",
            guarded([this](const httplib::Request& req, httplib::Response& res) { chat_completions(req, res); }));
  // A new page conversation, optionally with its task adapter ({"lora": name}); the reply
  // lists the adapters for the page's task selector (just ["original"] without any).
  http.Post(
      "/api/sessions", guarded([this](const httplib::Request& req, httplib::Response& res) {
        const auto lora = parse_page_lora(req.body, /*required=*/false);
        const auto adapter = lora ? checked_adapter(*lora) : default_adapter;
        const auto id = sessions.add(std::make_shared<PageSession>(model, adapter));
        send_json(res, 200, {{"session_id", id}, {"model", model->name}, {"adapters", adapters}, {"lora", adapter}});
      }));
  const std::string session_path = R"(/api/sessions/([0-9a-f]{32}))";
  http.Post(session_path + "/image",
            guarded([this](const httplib::Request& req, httplib::Response& res) { session_image(req, res); }));
  http.Post(session_path + "/ask",
            guarded([this](const httplib::Request& req, httplib::Response& res) { session_ask(req, res); }));
  http.Post(session_path + "/lora",
            guarded([this](const httplib::Request& req, httplib::Response& res) { session_lora(req, res); }));
  // The page's Restart (and leaving the page): the conversation, its images and cache go.
  http.Post(session_path + "/close", guarded([this](const httplib::Request& req, httplib::Response& res) {
              send_json(res, 200, {{"closed", sessions.erase(req.matches[1].str())}});
            }));
}

// On the model thread: one answer, its text into `channel` piece by piece, cut at the
// client's stop strings and ended by the time limit, a cancel from the client's side or the
// server stopping.
void Server::Impl::answer(ChatSession& session, const AnswerOptions& answer_options,
                          const std::vector<std::string>& stop, ReplyChannel& channel, const char* label,
                          const std::function<void(const ChatReply&)>& before_finish) {
  StopStrings stops(stop);
  const auto deadline = Clock::now() + std::chrono::duration<double>(options.max_generation_seconds);
  bool timed_out = false;
  ChatReply reply = session.answer(answer_options, [&](const std::string& piece) {
    if (auto shown = stops.feed(piece); !shown.empty()) channel.send(std::move(shown));
    if (stops.stopped() || channel.cancelled() || stopping) return false;
    if (Clock::now() > deadline) timed_out = true;
    return !timed_out;
  });
  if (auto rest = stops.flush(); !rest.empty() && reply.finish_reason != "cancelled") channel.send(std::move(rest));
  reply.text = stops.cut(reply.text);
  if (stops.stopped()) reply.finish_reason = "stop";
  ++answers;
  if (timed_out) ++answers_timed_out;
  const bool client_gone = reply.finish_reason == "cancelled" && channel.cancelled();
  if (client_gone) ++answers_cancelled;
  log::info("{}: {} prompt positions ({} cached), {} tokens in {:.2f} s, {}{}", label, reply.prompt_tokens,
            reply.reused_tokens, reply.tokens.size(), reply.prefill_seconds + reply.decode_seconds, reply.finish_reason,
            timed_out     ? " (time limit)"
            : client_gone ? " (client gone)"
                          : "");
  if (before_finish && !client_gone) before_finish(reply);
  channel.finish(std::move(reply));
}

nlohmann::json Server::Impl::explanation(ChatSession& session, bool per_word,
                                         const std::vector<const std::string*>& image_bytes) const {
  try {
    const auto start = Clock::now();
    const auto e = session.explain(per_word);
    auto j = explanation_json(e);
    if (e.image_index < image_bytes.size() && image_bytes[e.image_index]) {
      const auto& bytes = *image_bytes[e.image_index];
      const auto info = image_header_info(bytes);
      const auto& budget = options.limits.image.decode_budget;
      const auto lease = budget->acquire(info ? info->width * info->height : 1, options.limits.image.decode_wait);
      if (!lease) throw Error("the server is busy decoding other images");
      j["image_png"] =
          base64_encode(explanation_png(decode_image_rgb_bytes(bytes, "the explained image"), e.answer_map));
    }
    log::info("explain: the answer{}, {:.2f} s", per_word ? fmt::format(" and {} words", e.words.size()) : "",
              std::chrono::duration<double>(Clock::now() - start).count());
    return j;
  } catch (const Error& e) {
    return {{"error", e.what()}};
  }
}

std::shared_ptr<ReplyChannel> Server::Impl::queue_answer(std::function<void(ReplyChannel&)> work) {
  auto channel = std::make_shared<ReplyChannel>();
  const bool queued = worker.submit([channel, work = std::move(work)](bool run) {
    if (!run) {
      channel->fail(ApiError(503, "the server is shutting down", "", "shutting_down"));
    } else if (channel->cancelled()) {
      channel->fail(ApiError(499, "the client closed the connection"));  // nobody to answer
    } else {
      try {
        work(*channel);
      } catch (...) {
        channel->fail(as_api_error(std::current_exception()));
      }
    }
  });
  if (!queued)
    throw ApiError(503,
                   fmt::format("the server is busy ({} requests wait for the model); retry later", worker.waiting()),
                   "", "server_busy");
  return channel;
}

void Server::Impl::run_and_wait(std::function<void()> work) {
  auto done = std::make_shared<std::promise<void>>();
  auto finished = done->get_future();
  const bool queued = worker.submit([done, work = std::move(work)](bool run) {
    try {
      if (!run) throw ApiError(503, "the server is shutting down", "", "shutting_down");
      work();
      done->set_value();
    } catch (...) {
      done->set_exception(std::current_exception());
    }
  });
  if (!queued)
    throw ApiError(503,
                   fmt::format("the server is busy ({} requests wait for the model); retry later", worker.waiting()),
                   "", "server_busy");
  finished.get();
}

void Server::Impl::chat_completions(const httplib::Request& req, httplib::Response& res) {
  auto request = std::make_shared<const ChatRequest>([&] {
    auto r = parse_chat_request(req.body, options.limits);
    if (!r.seeded) r.options.seed = random_seed();
    return r;
  }());
  const auto adapter = resolve_adapter(*request, adapters, default_adapter);
  check_prompt_tokens(prompt_text_tokens(*model, request->steps), "messages");
  // The boxes of the answer are placed on the last image of the request.
  int64_t width = 0, height = 0;
  for (const auto& step : request->steps)
    if (step.kind == ChatStep::Kind::Image)
      if (const auto info = image_header_info(step.image)) width = info->width, height = info->height;
  const CompletionMeta meta{new_completion_id(), unix_time(), model->name, has_adapters() ? adapter : ""};
  auto context = std::make_shared<AnswerContext>();  // written on the model thread before the end is sent
  auto channel = queue_answer([this, request, adapter, context](ReplyChannel& out) {
    model->use_adapter(adapter);  // on the model thread, before any of this request's model work
    const bool explain = request->explain != ChatRequest::Explain::No;
    ChatSession session(model);
    std::vector<const std::string*> images;
    for (const auto& step : request->steps) {
      if (step.kind == ChatStep::Kind::Image) {
        at::Tensor vision_tokens;
        const auto embeds = encode_image(step.image, step.param, explain ? &vision_tokens : nullptr);
        session.upload_image(embeds, vision_tokens);
        images.push_back(&step.image);
      }
      if (step.kind == ChatStep::Kind::Ask) session.ask(step.text);
      if (step.kind == ChatStep::Kind::Answer) session.add_answer(step.text);
    }
    answer(session, request->options, request->stop, out, "api", [&](const ChatReply&) {
      if (explain) context->explanation = explanation(session, request->explain == ChatRequest::Explain::Words, images);
    });
  });

  if (!request->stream) {
    const auto end = wait_for_end(*channel);
    if (end.error) throw *end.error;
    const auto& reply = *end.reply;
    auto body = completion_json(meta, reply.text, openai_finish_reason(reply.finish_reason), reply.prompt_tokens,
                                static_cast<int64_t>(reply.tokens.size()), boxes_json(reply.text, width, height));
    if (!context->explanation.is_null()) body["choices"][0]["message"]["explanation"] = context->explanation;
    send_json(res, 200, body);
    return;
  }
  const bool include_usage = request->include_usage;
  stream_events(
      res, channel, sse_event(chunk_json(meta, {{"role", "assistant"}, {"content", ""}})), options.heartbeat,
      [meta](const std::string& piece) {
        return sse_event(chunk_json(meta, {{"content", piece}}));
      },
      [meta, include_usage, width, height, context](const ReplyChannel::Batch& end) {
        if (end.error) return sse_event(error_json(*end.error)) + "data: [DONE]\n\n";
        const auto& reply = *end.reply;
        // The last chunk's delta carries the answer's boxes, if any, and its explanation.
        json delta = json::object();
        if (auto boxes = boxes_json(reply.text, width, height); !boxes.empty()) delta["boxes"] = std::move(boxes);
        if (!context->explanation.is_null()) delta["explanation"] = context->explanation;
        std::string events = sse_event(chunk_json(meta, delta, openai_finish_reason(reply.finish_reason)));
        if (include_usage)
          events += sse_event(usage_chunk_json(meta, reply.prompt_tokens, static_cast<int64_t>(reply.tokens.size())));
        return events + "data: [DONE]\n\n";
      });
}

void Server::Impl::check_prompt_tokens(int64_t tokens, const std::string& param) const {
  const int64_t limit = options.limits.max_prompt_tokens;
  if (tokens > limit)
    throw ApiError(400,
                   fmt::format("'{}': the prompt's text is {} tokens; this server takes at most {} prompt tokens "
                               "(--max-prompt-tokens)",
                               param, tokens, limit),
                   param, "context_length_exceeded");
}

// On the model thread: the image's embeddings. Its decode takes its pixels from the same
// budget as the requests' check decodes, so the server never holds more decoded pixels at
// once than --max-decode-pixels, wherever the decoding happens.
at::Tensor Server::Impl::encode_image(const std::string& bytes, const std::string& name,
                                      at::Tensor* vision_tokens) const {
  const auto info = image_header_info(bytes);
  const auto& budget = options.limits.image.decode_budget;
  const auto lease = budget->acquire(info ? info->width * info->height : 1, options.limits.image.decode_wait);
  if (!lease)
    throw ApiError(503, fmt::format("{}: the server is busy decoding other images; retry later", name), name,
                   "server_busy");
  return model->encode_image_bytes(bytes, name, vision_tokens);
}

std::shared_ptr<PageSession> Server::Impl::session(const httplib::Request& req) {
  auto found = sessions.find(req.matches[1].str());
  if (!found)
    throw ApiError(404, "unknown or expired session (the server keeps a limited number); start a new one", "session_id",
                   "session_not_found");
  return found;
}

void Server::Impl::session_image(const httplib::Request& req, httplib::Response& res) {
  const auto bytes = parse_page_image(req.body, options.limits);
  const auto info = image_header_info(bytes);
  const auto page = session(req);
  size_t images = 0;
  run_and_wait([&] {
    model->use_adapter(page->adapter);
    // The page may ask for explanations later: its images keep the ViT's output (memory only).
    at::Tensor vision_tokens;
    const auto embeds = encode_image(bytes, "the uploaded image", &vision_tokens);
    page->chat.upload_image(embeds, vision_tokens);
    page->image = bytes;
    page->width = info ? info->width : 0;
    page->height = info ? info->height : 0;
    images = page->chat.image_count();
  });
  send_json(res, 200, {{"images", images}});
}

// The page's task selector: the conversation starts over under the new adapter, with its
// latest image encoded again (ConLoRA chooses the adapter before the image is encoded).
void Server::Impl::session_lora(const httplib::Request& req, httplib::Response& res) {
  const auto adapter = checked_adapter(*parse_page_lora(req.body, /*required=*/true));
  const auto page = session(req);
  size_t images = 0;
  run_and_wait([&] {
    model->use_adapter(adapter);
    page->adapter = adapter;
    page->chat.reset();
    if (!page->image.empty()) {
      at::Tensor vision_tokens;
      const auto embeds = encode_image(page->image, "the session's image", &vision_tokens);
      page->chat.upload_image(embeds, vision_tokens);
    }
    images = page->chat.image_count();
  });
  send_json(res, 200, {{"lora", adapter}, {"images", images}});
}

void Server::Impl::session_ask(const httplib::Request& req, httplib::Response& res) {
  auto ask = parse_page_ask(req.body, options.limits);
  check_prompt_tokens(static_cast<int64_t>(model->tokenizer->encode(ask.text, /*add_special_tokens=*/false).size()),
                      "text");
  ask.options.seed = random_seed();
  const auto page = session(req);
  auto context = std::make_shared<AnswerContext>();  // written on the model thread before the end is sent
  auto channel = queue_answer([this, page, ask, context](ReplyChannel& out) {
    model->use_adapter(page->adapter);
    *context = {page->adapter, page->width, page->height, nullptr};
    page->chat.ask(ask.text);
    answer(page->chat, ask.options, {}, out, "page", [&](const ChatReply&) {
      // Grids only: the page draws them over its own preview.
      if (ask.explain) context->explanation = explanation(page->chat, /*per_word=*/true, {});
    });
  });
  const bool adapters_held = has_adapters();
  stream_events(
      res, channel, "", options.heartbeat,
      [](const std::string& piece) {
        return sse_event({{"text", piece}});
      },
      [context, adapters_held](const ReplyChannel::Batch& end) {
        if (end.error) return sse_event(error_json(*end.error));
        const auto& reply = *end.reply;
        json done = {{"done", true},
                     {"finish_reason", reply.finish_reason},
                     {"prompt_tokens", reply.prompt_tokens},
                     {"reused_tokens", reply.reused_tokens},
                     {"completion_tokens", reply.tokens.size()},
                     {"seconds", reply.prefill_seconds + reply.decode_seconds}};
        if (adapters_held) done["lora"] = context->adapter;
        // Boxes in the answer, in pixels of the session's latest image (the page draws them).
        if (auto boxes = boxes_json(reply.text, context->width, context->height); !boxes.empty())
          done["boxes"] = std::move(boxes);
        if (!context->explanation.is_null()) done["explanation"] = context->explanation;
        return sse_event(done);
      });
}

Server::Server(std::shared_ptr<const ChatModel> model, ServerOptions options)
    : impl_(std::make_unique<Impl>(std::move(model), std::move(options))) {}

Server::~Server() { stop(); }

int Server::bind() {
  const auto& o = impl_->options;
  const int port =
      o.port == 0 ? impl_->http.bind_to_any_port(o.host) : (impl_->http.bind_to_port(o.host, o.port) ? o.port : -1);
  if (port <= 0)
    fail("cannot listen on {}:{}: the port is in use, or the host is not an address of this machine", o.host, o.port);
  impl_->http.widen_backlog();
  return port;
}

void Server::serve() {
  impl_->serving = true;
  const bool ok = impl_->stopping || impl_->http.listen_after_bind();
  impl_->serving = false;
  if (!ok && !impl_->stopping) fail("the HTTP server stopped unexpectedly");
}

void Server::stop() {
  impl_->stopping = true;  // running answers see it at their next piece
  impl_->worker.stop();
  // httplib's stop() does nothing until its loop runs: a serve() just starting is waited for.
  while (impl_->serving && !impl_->http.is_running()) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  impl_->http.stop();
}

}  // namespace minigpt4::server
