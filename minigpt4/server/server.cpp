#include "minigpt4/server/server.h"

#include "minigpt4/common/error.h"
#include "minigpt4/common/log.h"
#include "minigpt4/common/strings.h"
#include "minigpt4/common/untrusted.h"
#include "minigpt4/models/llama.h"
#include "minigpt4/models/minigpt4.h"
#include "minigpt4/models/phi.h"
#include "minigpt4/processors/image_decode.h"
#include "minigpt4/server/base64.h"
#include "minigpt4/server/caches.h"
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
                   std::chrono::milliseconds heartbeat,
                   std::function<std::string(const ReplyChannel::Piece&)> piece_event,
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
  bool answering = false;  // an answer holds the session (model thread only)
};

// What an answer's end event needs from the model thread: the adapter, the image size and,
// when asked for, the explanation (or {"error": why not}).
struct AnswerContext {
  std::string adapter;
  int64_t width = 0, height = 0;
  nlohmann::json explanation;  // null: not asked for
};

// The context a conversation and its answer may fill: the LLM's positions (Chat.answer's
// max_length, 2000, for a family that does not say).
int64_t context_length(const ChatModel& model) {
  const auto& llm = model.model->llama_model;
  if (const auto* llama = dynamic_cast<const LlamaForCausalLM*>(llm.get()))
    return llama->config.max_position_embeddings;
  if (const auto* phi = dynamic_cast<const PhiForCausalLM*>(llm.get())) return phi->config.max_position_embeddings;
  return AnswerOptions{}.max_length;
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
  l.threads = o.http_threads > 0 ? o.http_threads : o.max_waiting + o.parallel + 8;
  l.fast_threads = 2;
  l.fast_paths = {"/health"};
  return l;
}

// ServerOptions as the server runs them: the decode budget shared by every request (the
// prompt limit comes from the model once it is loaded).
ServerOptions resolved(ServerOptions o) {
  o.limits.image.decode_budget =
      std::make_shared<PixelBudget>(std::max(o.max_decode_pixels, o.limits.image.max_pixels));
  return o;
}

}  // namespace

struct Server::Impl {
  Impl(ModelLoader loader, ServerOptions server_options)
      : load_model(std::move(loader)),
        options(resolved(std::move(server_options))),
        sessions(options.max_sessions, options.session_idle),
        http(http_limits(options)) {
    // httplib writes with plain send(): a client that closed its connection would kill the
    // process with SIGPIPE instead of failing the write.
    std::signal(SIGPIPE, SIG_IGN);
    configure();
    routes();
  }

  // Loads the model and opens the model routes; throws minigpt4::Error when the model cannot
  // be loaded or options.lora names no adapter of it.
  void load() {
    auto loaded = load_model();
    if (!loaded) fail("the model loader returned no model");
    // Read by requests only once ready (the gate answers 503 until then), so written here.
    if (options.limits.max_prompt_tokens <= 0) options.limits.max_prompt_tokens = context_length(*loaded);
    adapters = loaded->adapter_choices();
    default_adapter = options.lora.empty() ? loaded->active_adapter() : options.lora;
    if (!held(default_adapter))
      fail("unknown LoRA adapter '{}'; the model holds: {} (model.lora_path names them)", excerpt(default_adapter),
           fmt::join(adapters, ", "));
    worker_ = std::make_unique<ModelWorker>(
        loaded, WorkerOptions{options.max_waiting, options.parallel, options.prefill_chunk});
    model = std::move(loaded);
    ready.store(true, std::memory_order_release);
  }

  ModelLoader load_model;
  // Set once by load(), before `ready` (with options.limits.max_prompt_tokens); requests read
  // them only once ready (the pre-routing handler answers 503 until then).
  std::shared_ptr<const ChatModel> model;
  ServerOptions options;
  std::vector<std::string> adapters;  // "original" + the model's adapters
  std::string default_adapter;
  std::unique_ptr<ModelWorker> worker_;
  std::atomic<bool> ready{false};
  const int64_t created = unix_time();
  std::atomic<bool> stopping{false}, serving{false};
  std::atomic<uint64_t> answers{0}, answers_cancelled{0}, answers_timed_out{0};  // for /health
  SessionStore<PageSession> sessions;
  ImageCache image_cache{options.image_cache_mb << 20};
  PrefixCache prefix_cache{options.cache_mb << 20};
  GatedServer http;
  ModelWorker& worker() const { return *worker_; }

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
  // Before any route: CORS, 503 while the model loads, the API key.
  bool gate(const httplib::Request& req, httplib::Response& res) const;
  std::string metrics_text() const;
  nlohmann::json slots_json() const;
  void chat_completions(const httplib::Request& req, httplib::Response& res);
  std::optional<RunningAnswer> api_answer(const std::shared_ptr<const ChatRequest>& request, const std::string& adapter,
                                          const std::shared_ptr<AnswerContext>& context,
                                          const std::shared_ptr<ReplyChannel>& out, bool share_prompt);
  void warm_replay(const std::shared_ptr<const ChatRequest>& request, const std::string& adapter,
                   const std::string& answer_text);
  void warm_replay_now(const ChatRequest& request, const std::string& adapter, const std::string& answer_text);
  // n > 1 choices as one event stream: every chunk names its choice (`index`), each choice
  // ends with its own finish_reason chunk, then the usage (when asked for) and [DONE].
  void stream_choices(httplib::Response& res, std::vector<std::shared_ptr<ReplyChannel>> channels,
                      const CompletionMeta& meta, bool include_usage, bool with_logprobs) const;
  void session_image(const httplib::Request& req, httplib::Response& res);
  void session_ask(const httplib::Request& req, httplib::Response& res);
  void session_lora(const httplib::Request& req, httplib::Response& res);
  std::shared_ptr<PageSession> session(const httplib::Request& req);
  void check_prompt_tokens(int64_t tokens, const std::string& param) const;
  at::Tensor encode_image(const std::string& bytes, const std::string& name, at::Tensor* vision_tokens = nullptr) const;
  // Queues `work`, which runs on the model thread and returns the answer it started (or
  // nothing, having answered by itself); its errors go to the channel.
  using AnswerWork = std::function<std::optional<RunningAnswer>(const std::shared_ptr<ReplyChannel>&)>;
  std::shared_ptr<ReplyChannel> queue_answer(AnswerWork work);
  // On the model thread: `session`'s answer, to run in a slot, its text into `channel` piece
  // by piece, cut at the client's stop strings and ended by the time limit, a cancel from the
  // client's side or the server stopping. `owner` keeps the session alive; `before_finish`
  // runs after the answer, before its end is sent; `after` runs last (success or not).
  // Beam search answers whole, here, while the other slots wait.
  std::optional<RunningAnswer> start_answer(std::shared_ptr<void> owner, ChatSession& session,
                                            const AnswerOptions& answer_options, const std::vector<std::string>& stop,
                                            const std::shared_ptr<ReplyChannel>& channel, const char* label,
                                            const std::string& adapter,
                                            std::function<void(const ChatReply&)> before_finish = {},
                                            std::function<void()> after = {});
  // The explanation of a session's last answer as JSON, with the overlay over `image_bytes`
  // (the explained image's) as a base64 PNG when given; {"error": ...} when it cannot be made.
  nlohmann::json explanation(ChatSession& session, bool per_word,
                             const std::vector<const std::string*>& image_bytes) const;
  void run_and_wait(std::function<void()> work);
  // On the model thread: a page session changes only between its answers.
  static void check_idle(const PageSession& page) {
    if (page.answering)
      throw ApiError(409, "this conversation is still answering; wait for the answer's end", "session_id",
                     "session_busy");
  }
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
  http.set_pre_routing_handler([this](const httplib::Request& req, httplib::Response& res) {
    return gate(req, res) ? httplib::Server::HandlerResponse::Handled : httplib::Server::HandlerResponse::Unhandled;
  });
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
    if (!ready.load(std::memory_order_acquire)) {
      send_json(res, 503,
                {{"status", "loading"},
                 {"error", {{"code", 503}, {"message", "Loading model"}, {"type", "unavailable_error"}}}});
      return;
    }
    send_json(res, 200,
              {{"status", stopping ? "stopping" : "ok"},
               {"model", model->name},
               {"device", model->device.str()},
               {"queue",
                {{"running", worker().running()},
                 {"slots", options.parallel},
                 {"waiting", worker().waiting()},
                 {"max_waiting", options.max_waiting}}},
               {"answers",
                {{"total", answers.load()},
                 {"client_gone", answers_cancelled.load()},
                 {"time_limit", answers_timed_out.load()}}},
               {"sessions", sessions.size()},
               {"connections", connections_json()}});
  });
  // llama.cpp server's tokenizer routes, with the model's tokenizer, on the request's thread.
  http.Post("/tokenize", guarded([this](const httplib::Request& req, httplib::Response& res) {
              const auto body = parse_request_json(req.body);
              const auto* content = body.is_object() && body.contains("content") ? &body["content"] : nullptr;
              if (!content || !content->is_string())
                throw ApiError(400, "'content' must be the text to tokenize", "content");
              const auto& text = content->get_ref<const std::string&>();
              if (static_cast<int64_t>(text.size()) > options.limits.max_prompt_tokens * kPromptBytesPerToken)
                throw ApiError(400, "'content' is longer than any prompt this server takes", "content",
                               "context_length_exceeded");
              const auto flag = [&](const char* key) {
                if (!body.contains(key)) return false;
                if (!body[key].is_boolean()) throw ApiError(400, fmt::format("'{}' must be a boolean", key), key);
                return body[key].get<bool>();
              };
              const bool special = flag("add_special"), pieces = flag("with_pieces");
              json tokens = json::array();
              for (const int64_t id : model->tokenizer->encode(text, special)) {
                if (pieces)
                  tokens.push_back({{"id", id}, {"piece", model->tokenizer->id_to_piece(id)}});
                else
                  tokens.push_back(id);
              }
              send_json(res, 200, {{"tokens", std::move(tokens)}});
            }));
  http.Post("/detokenize", guarded([this](const httplib::Request& req, httplib::Response& res) {
              const auto body = parse_request_json(req.body);
              const auto* tokens = body.is_object() && body.contains("tokens") ? &body["tokens"] : nullptr;
              if (!tokens || !tokens->is_array())
                throw ApiError(400, "'tokens' must be an array of token ids", "tokens");
              // No more than a prompt and an answer can hold (decoding runs on this thread).
              const auto most = static_cast<size_t>(options.limits.max_prompt_tokens + options.limits.max_tokens);
              if (tokens->size() > most)
                throw ApiError(400, fmt::format("'tokens' holds {} ids; at most {}", tokens->size(), most), "tokens");
              const int64_t vocab = model->model->llama_model->vocab_size();
              std::vector<int64_t> ids;
              for (const auto& t : *tokens) {
                if (!t.is_number_integer() || t.get<int64_t>() < 0 || t.get<int64_t>() >= vocab)
                  throw ApiError(400, fmt::format("'tokens' must hold token ids in 0..{}", vocab - 1), "tokens");
                ids.push_back(t.get<int64_t>());
              }
              send_json(res, 200, {{"content", model->tokenizer->decode(ids)}});
            }));
  http.Get("/slots", [this](const httplib::Request&, httplib::Response& res) { send_json(res, 200, slots_json()); });
  http.Get("/metrics", [this](const httplib::Request&, httplib::Response& res) {
    if (!options.metrics)
      throw ApiError(501, "this server does not serve metrics; start it with --metrics", "", "not_supported");
    res.set_content(metrics_text(), "text/plain; version=0.0.4");
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

std::optional<RunningAnswer> Server::Impl::start_answer(
    std::shared_ptr<void> owner, ChatSession& session, const AnswerOptions& answer_options,
    const std::vector<std::string>& stop, const std::shared_ptr<ReplyChannel>& channel, const char* label,
    const std::string& adapter, std::function<void(const ChatReply&)> before_finish, std::function<void()> after) {
  struct State {
    StopStrings stops;
    Clock::time_point deadline;
    bool timed_out = false;
    const AnswerInProgress* answer = nullptr;  // for its logprobs, once started
    size_t logprobs_sent = 0;
    // The logprobs of the tokens since the previous piece (none unless asked for).
    std::vector<TokenLogprob> new_logprobs() {
      if (!answer) return {};
      const auto& all = answer->logprobs();
      std::vector<TokenLogprob> out(all.begin() + static_cast<std::ptrdiff_t>(logprobs_sent), all.end());
      logprobs_sent = all.size();
      return out;
    }
  };
  auto state =
      std::make_shared<State>(State{StopStrings(stop),
                                    Clock::now() + std::chrono::duration_cast<Clock::duration>(
                                                       std::chrono::duration<double>(options.max_generation_seconds)),
                                    false, nullptr, 0});
  auto on_text = [this, state, channel](const std::string& piece) {
    if (auto shown = state->stops.feed(piece); !shown.empty()) channel->send({std::move(shown), state->new_logprobs()});
    if (state->stops.stopped() || channel->cancelled() || stopping) return false;
    if (Clock::now() > state->deadline) state->timed_out = true;
    return !state->timed_out;
  };
  // The end of an answer, generated in a slot or here.
  auto end = [this, state, channel, label = std::string(label), before_finish, after](ChatReply reply) {
    auto& stops = state->stops;
    if (auto rest = stops.flush(); !rest.empty() && reply.finish_reason != "cancelled")
      channel->send({std::move(rest), state->new_logprobs()});
    state->answer = nullptr;  // finished: the rest of the logprobs go with the end
    reply.text = stops.cut(reply.text);
    if (stops.stopped()) reply.finish_reason = "stop";
    ++answers;
    if (state->timed_out) ++answers_timed_out;
    const bool client_gone = reply.finish_reason == "cancelled" && channel->cancelled();
    if (client_gone) ++answers_cancelled;
    log::info("{}: {} prompt positions ({} cached), {} tokens in {:.2f} s, {}{}", label, reply.prompt_tokens,
              reply.reused_tokens, reply.tokens.size(), reply.prefill_seconds + reply.decode_seconds,
              reply.finish_reason,
              state->timed_out ? " (time limit)"
              : client_gone    ? " (client gone)"
                               : "");
    if (before_finish && !client_gone) before_finish(reply);
    if (after) after();
    channel->finish(std::move(reply));
  };
  if (answer_options.num_beams > 1) {
    try {
      end(session.answer(answer_options, on_text));
    } catch (...) {
      if (after) after();
      throw;
    }
    return std::nullopt;
  }
  RunningAnswer run;
  run.owner = std::move(owner);
  run.answer = session.start_answer(answer_options, on_text);
  state->answer = run.answer.get();
  run.adapter = adapter;
  run.label = label;
  run.keep_going = [this, channel] { return !channel->cancelled() && !stopping; };
  run.done = [end, after, channel](AnswerInProgress& answer, std::exception_ptr error) {
    // Whatever fails here (recording the answer, an explanation, the prefix cache) still
    // ends the client's reply, with the error.
    try {
      if (error) std::rethrow_exception(error);
      end(answer.finish());
    } catch (...) {
      if (after) after();
      channel->fail(as_api_error(std::current_exception()));
    }
  };
  return run;
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

std::shared_ptr<ReplyChannel> Server::Impl::queue_answer(AnswerWork work) {
  auto channel = std::make_shared<ReplyChannel>();
  const bool queued = worker().submit([channel, work = std::move(work)](bool run) -> std::optional<RunningAnswer> {
    if (!run) {
      channel->fail(ApiError(503, "the server is shutting down", "", "shutting_down"));
    } else if (channel->cancelled()) {
      channel->fail(ApiError(499, "the client closed the connection"));  // nobody to answer
    } else {
      try {
        return work(channel);
      } catch (...) {
        channel->fail(as_api_error(std::current_exception()));
      }
    }
    return std::nullopt;
  });
  if (!queued)
    throw ApiError(503,
                   fmt::format("the server is busy ({} requests wait for the model); retry later", worker().waiting()),
                   "", "server_busy");
  return channel;
}

void Server::Impl::run_and_wait(std::function<void()> work) {
  auto done = std::make_shared<std::promise<void>>();
  auto finished = done->get_future();
  const bool queued = worker().submit([done, work = std::move(work)](bool run) -> std::optional<RunningAnswer> {
    try {
      if (!run) throw ApiError(503, "the server is shutting down", "", "shutting_down");
      work();
      done->set_value();
    } catch (...) {
      done->set_exception(std::current_exception());
    }
    return std::nullopt;
  });
  if (!queued)
    throw ApiError(503,
                   fmt::format("the server is busy ({} requests wait for the model); retry later", worker().waiting()),
                   "", "server_busy");
  finished.get();
}

namespace {

// An API request's messages onto `session` as Chat's operations, in order: each image through
// `upload_image`, questions and the answers the client gives back.
void replay_messages(ChatSession& session, const ChatRequest& request,
                     const std::function<void(const ChatStep&)>& upload_image) {
  for (const auto& step : request.steps) {
    if (step.kind == ChatStep::Kind::Image) upload_image(step);
    if (step.kind == ChatStep::Kind::Ask) session.ask(step.text);
    if (step.kind == ChatStep::Kind::Answer) session.add_answer(step.text);
  }
}

}  // namespace

// On the model thread: an API request's conversation replayed on a fresh session (images
// from the image cache, the longest known prefix from the prefix cache) and its answer
// started. `share_prompt` (the first of n > 1 choices): the prompt runs now, whole, and goes
// into the prefix cache, so that the other choices start from it.
std::optional<RunningAnswer> Server::Impl::api_answer(const std::shared_ptr<const ChatRequest>& request,
                                                      const std::string& adapter,
                                                      const std::shared_ptr<AnswerContext>& context,
                                                      const std::shared_ptr<ReplyChannel>& out, bool share_prompt) {
  model->use_adapter(adapter);  // on the model thread, before any of this request's model work
  const bool explain = request->explain != ChatRequest::Explain::No;
  auto owned = std::make_shared<ChatSession>(model);
  auto& session = *owned;
  auto images = std::make_shared<std::vector<const std::string*>>();
  replay_messages(session, *request, [&](const ChatStep& step) {
    images->push_back(&step.image);
    if (explain) {  // needs the ViT's output: encoded afresh, kept out of the caches
      at::Tensor vision_tokens;
      const auto embeds = encode_image(step.image, step.param, &vision_tokens);
      session.upload_image(embeds, vision_tokens);
      return;
    }
    auto cached = image_cache.find(adapter, step.image);
    if (!cached) cached = image_cache.add(adapter, step.image, encode_image(step.image, step.param));
    session.upload_image(cached->embeds, {}, cached->identity);
  });
  // The whole conversation must fit the model's context (OpenAI and llama.cpp answer 400 so
  // that the client trims it; MiniGPT-4's page cuts from the left instead); the answer
  // then gets the room that is left, at most.
  auto answer_options = request->options;
  const auto keys = session.prompt_keys();
  const int64_t room = context_length(*model), positions = static_cast<int64_t>(keys.size());
  if (positions >= room)
    throw ApiError(400,
                   fmt::format("the conversation takes {} positions (its text tokens and image embeddings), "
                               "but this model's context holds {}: leave out earlier messages",
                               positions, room),
                   "messages", "context_length_exceeded");
  answer_options.max_new_tokens = std::min(answer_options.max_new_tokens, room - positions);
  answer_options.max_length = room;
  // The longest prefix an earlier request computed (a replayed conversation's history).
  if (!explain)
    if (auto prefix = prefix_cache.find(adapter, keys))
      session.adopt_cache(std::move(prefix->keys), std::move(prefix->cache));
  auto run = start_answer(owned, session, answer_options, request->stop, out, "api", adapter,
                          [this, request, context, owned, images, explain, adapter](const ChatReply& reply) {
                            if (explain) {
                              context->explanation =
                                  explanation(*owned, request->explain == ChatRequest::Explain::Words, *images);
                              return;
                            }
                            auto [cached_keys, cache] = owned->release_cache();
                            prefix_cache.add(adapter, std::move(cached_keys), cache);
                            if (options.warm_replays && request->n == 1) warm_replay(request, adapter, reply.text);
                          });
  if (run && share_prompt) {
    run->answer->prefill();
    prefix_cache.add(adapter, keys, run->answer->cache());
  }
  return run;
}

// Positions a warm-up computes before it looks for requests that arrived meanwhile.
constexpr int64_t kWarmChunk = 32;

// Queued as a finished answer ends, before its client hears of the end (so before the
// client's next round): the conversation as that round will replay it, the answer given back
// as text, computed into the prefix cache. The answer's own positions cannot be reused for
// it: they were generated after the template's trailing `▁` token, and the text sent back
// tokenises differently (docs/serving.md, Caches). The warm-up runs only while no other answer
// is in a slot, so that no stream waits for it; then the next round computes only its new
// question. A client that does not come back has cost the model time it had free.
void Server::Impl::warm_replay(const std::shared_ptr<const ChatRequest>& request, const std::string& adapter,
                               const std::string& answer_text) {
  // Under load there is no idle time to use, and a queued warm-up must not take a waiting
  // request's place in the queue (1: the answer that is ending).
  if (worker().waiting() > 0 || worker().occupied() > 1) return;
  worker().submit([this, request, adapter, answer_text](bool run) -> std::optional<RunningAnswer> {
    if (!run || stopping || worker().occupied() > 1) return std::nullopt;  // 1: this job
    try {
      warm_replay_now(*request, adapter, answer_text);
    } catch (const std::exception& e) {  // nothing is lost: the next round computes it
      log::warn("api: warming a replay failed: {}", e.what());
    }
    return std::nullopt;
  });
}

void Server::Impl::warm_replay_now(const ChatRequest& request, const std::string& adapter,
                                   const std::string& answer_text) {
  model->use_adapter(adapter);
  ChatSession session(model);
  bool evicted = false;  // an image left the image cache: the next round encodes it anyway
  replay_messages(session, request, [&](const ChatStep& step) {
    const auto cached = image_cache.find(adapter, step.image);
    if (cached) session.upload_image(cached->embeds, {}, cached->identity);
    evicted = evicted || !cached;
  });
  if (evicted) return;
  session.add_answer(answer_text);
  session.ask("");  // the next question's turn, up to its text
  const auto keys = session.prompt_keys();
  const int64_t room = context_length(*model);
  if (static_cast<int64_t>(keys.size()) + 1 >= room) return;
  auto prefix = prefix_cache.find(adapter, keys, 1, /*counted=*/false);
  if (!prefix || prefix->keys.size() + 1 >= keys.size()) return;
  session.adopt_cache(std::move(prefix->keys), std::move(prefix->cache));
  AnswerOptions warm;
  warm.max_new_tokens = 1;
  warm.min_length = 0;
  warm.temperature = 0;
  warm.max_length = room;
  auto answer = session.start_answer(warm);
  const auto start = std::chrono::steady_clock::now();
  // In chunks, so that a request arriving meanwhile (a client that replays at once) waits for
  // one chunk at most; what was computed by then is kept, and the request computes the rest.
  do {
    answer->prefill(kWarmChunk);
  } while (answer->prompt_left() > 0 && worker().waiting() == 0 && !stopping);
  prefix_cache.add(adapter, keys, answer->cache());
  log::info("api: warmed the replay of an answer: {} of {} prompt positions ({} cached) in {:.2f} s",
            answer->prompt_positions() - answer->prompt_left(), answer->prompt_positions(), answer->reused_positions(),
            std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
}

void Server::Impl::chat_completions(const httplib::Request& req, httplib::Response& res) {
  auto request = std::make_shared<const ChatRequest>([&] {
    auto r = parse_chat_request(req.body, options.limits);
    if (!r.seeded) r.options.seed = random_seed();
    return r;
  }());
  const auto adapter = resolve_adapter(*request, adapters, default_adapter);
  check_prompt_tokens(prompt_text_tokens(*model, request->steps), "messages");
  const int64_t vocab = model->model->llama_model->vocab_size();
  for (const auto& [id, bias] : request->options.logit_bias)
    if (id >= vocab)
      throw ApiError(400,
                     fmt::format("'logit_bias': token {} is not in this model's vocabulary (0..{})", id, vocab - 1),
                     "logit_bias");
  const bool with_logprobs = request->options.top_logprobs >= 0;
  // The boxes of the answer are placed on the last image of the request.
  int64_t width = 0, height = 0;
  for (const auto& step : request->steps)
    if (step.kind == ChatStep::Kind::Image)
      if (const auto info = image_header_info(step.image)) width = info->width, height = info->height;
  const CompletionMeta meta{new_completion_id(), unix_time(), model->name, has_adapters() ? adapter : ""};

  // One answer per choice (n), each in its own slot; choice i samples with seed + i.
  std::vector<std::shared_ptr<ReplyChannel>> channels;
  std::vector<std::shared_ptr<AnswerContext>> contexts;  // written on the model thread before each end
  try {
    for (int i = 0; i < request->n; ++i) {
      auto choice = request;
      if (i > 0) {
        auto copy = std::make_shared<ChatRequest>(*request);
        copy->options.seed += static_cast<uint64_t>(i);
        choice = copy;
      }
      auto context = std::make_shared<AnswerContext>();
      const bool share_prompt = request->n > 1 && i == 0;
      channels.push_back(queue_answer([this, choice, adapter, context, share_prompt](const auto& out) {
        return api_answer(choice, adapter, context, out, share_prompt);
      }));
      contexts.push_back(context);
    }
  } catch (...) {
    for (auto& channel : channels) channel->cancel();  // the choices already queued answer nobody
    throw;
  }

  if (!request->stream) {
    json choices = json::array();
    int64_t prompt_tokens = 0, completion_tokens = 0;
    json timings;
    for (size_t i = 0; i < channels.size(); ++i) {
      const auto end = wait_for_end(*channels[i]);
      if (end.error) {
        for (auto& channel : channels) channel->cancel();
        throw *end.error;
      }
      const auto& reply = *end.reply;
      auto body = completion_json(meta, reply.text, openai_finish_reason(reply.finish_reason), reply.prompt_tokens,
                                  static_cast<int64_t>(reply.tokens.size()), boxes_json(reply.text, width, height));
      auto choice = body["choices"][0];
      choice["index"] = i;
      if (!contexts[i]->explanation.is_null()) choice["message"]["explanation"] = contexts[i]->explanation;
      if (with_logprobs) choice["logprobs"] = logprobs_json(reply.logprobs, *model->tokenizer);
      choices.push_back(std::move(choice));
      prompt_tokens = reply.prompt_tokens;
      completion_tokens += static_cast<int64_t>(reply.tokens.size());
      if (i == 0) timings = timings_json(reply);
    }
    auto body = completion_json(meta, "", "stop", prompt_tokens, completion_tokens);
    body["choices"] = std::move(choices);
    body["timings"] = std::move(timings);
    send_json(res, 200, body);
    return;
  }
  if (request->n > 1) {
    stream_choices(res, channels, meta, request->include_usage, with_logprobs);
    return;
  }
  const auto& channel = channels[0];
  const auto& context = contexts[0];
  const bool include_usage = request->include_usage;
  const auto tokenizer = model->tokenizer;
  auto logprobs_streamed = std::make_shared<size_t>(0);  // entries already sent with pieces
  stream_events(
      res, channel, sse_event(chunk_json(meta, {{"role", "assistant"}, {"content", ""}})), options.heartbeat,
      [meta, with_logprobs, tokenizer, logprobs_streamed](const ReplyChannel::Piece& piece) {
        auto chunk = chunk_json(meta, {{"content", piece.text}});
        if (with_logprobs) {
          chunk["choices"][0]["logprobs"] = logprobs_json(piece.logprobs, *tokenizer);
          *logprobs_streamed += piece.logprobs.size();
        }
        return sse_event(chunk);
      },
      [meta, include_usage, width, height, context, with_logprobs, tokenizer,
       logprobs_streamed](const ReplyChannel::Batch& end) {
        if (end.error) return sse_event(error_json(*end.error)) + "data: [DONE]\n\n";
        const auto& reply = *end.reply;
        // The last chunk's delta carries the answer's boxes, if any, and its explanation.
        json delta = json::object();
        if (auto boxes = boxes_json(reply.text, width, height); !boxes.empty()) delta["boxes"] = std::move(boxes);
        if (!context->explanation.is_null()) delta["explanation"] = context->explanation;
        auto last = chunk_json(meta, delta, openai_finish_reason(reply.finish_reason));
        if (with_logprobs) {  // the tokens no piece carried (eos, the template's stop)
          const auto first = std::min(*logprobs_streamed, reply.logprobs.size());
          last["choices"][0]["logprobs"] = logprobs_json(
              {reply.logprobs.begin() + static_cast<std::ptrdiff_t>(first), reply.logprobs.end()}, *tokenizer);
        }
        last["timings"] = timings_json(reply);
        std::string events = sse_event(last);
        if (include_usage)
          events += sse_event(usage_chunk_json(meta, reply.prompt_tokens, static_cast<int64_t>(reply.tokens.size())));
        return events + "data: [DONE]\n\n";
      });
}

void Server::Impl::stream_choices(httplib::Response& res, std::vector<std::shared_ptr<ReplyChannel>> channels,
                                  const CompletionMeta& meta, bool include_usage, bool with_logprobs) const {
  res.set_header("Cache-Control", "no-cache");
  res.set_header("X-Accel-Buffering", "no");
  const auto tokenizer = model->tokenizer;
  const auto heartbeat = options.heartbeat;
  const auto cancel_all = [channels] {
    for (const auto& channel : channels) channel->cancel();
  };
  res.set_chunked_content_provider(
      "text/event-stream",
      [channels, meta, include_usage, with_logprobs, tokenizer, heartbeat, cancel_all](size_t,
                                                                                       httplib::DataSink& sink) {
        const auto write = [&](const json& chunk) {
          const auto event = sse_event(chunk);
          return sink.write(event.data(), event.size());
        };
        const auto indexed = [](json chunk, size_t i) {
          chunk["choices"][0]["index"] = i;
          return chunk;
        };
        bool ok = true;
        for (size_t i = 0; ok && i < channels.size(); ++i)
          ok = write(indexed(chunk_json(meta, {{"role", "assistant"}, {"content", ""}}), i));
        std::vector<bool> ended(channels.size(), false);
        int64_t prompt_tokens = 0, completion_tokens = 0;
        auto quiet_since = Clock::now();
        while (ok) {
          bool sent = false;
          for (size_t i = 0; ok && i < channels.size(); ++i) {
            if (ended[i]) continue;
            const auto batch = channels[i]->take(std::chrono::milliseconds(1));
            for (const auto& piece : batch.pieces) {
              auto chunk = indexed(chunk_json(meta, {{"content", piece.text}}), i);
              if (with_logprobs) chunk["choices"][0]["logprobs"] = logprobs_json(piece.logprobs, *tokenizer);
              ok = ok && write(chunk);
              sent = true;
            }
            if (!ok || !batch.ended) continue;
            ended[i] = true, sent = true;
            if (batch.error) {  // one choice failed: the request did
              ok = write(error_json(*batch.error)) && sink.write("data: [DONE]\n\n", 14);
              cancel_all();
              if (ok) sink.done();
              return ok;
            }
            const auto& reply = *batch.reply;
            auto last = indexed(chunk_json(meta, json::object(), openai_finish_reason(reply.finish_reason)), i);
            last["timings"] = timings_json(reply);
            ok = write(last);
            prompt_tokens = reply.prompt_tokens;
            completion_tokens += static_cast<int64_t>(reply.tokens.size());
          }
          if (ok && std::all_of(ended.begin(), ended.end(), [](bool e) { return e; })) {
            if (include_usage) ok = write(usage_chunk_json(meta, prompt_tokens, completion_tokens));
            if (ok && sink.write("data: [DONE]\n\n", 14)) {
              sink.done();
              return true;
            }
            ok = false;
          }
          if (sent) quiet_since = Clock::now();
          if (ok && Clock::now() - quiet_since > heartbeat) {
            ok = sink.write(": waiting\n\n", 12);
            quiet_since = Clock::now();
          }
        }
        cancel_all();
        return false;
      },
      [cancel_all](bool) { cancel_all(); });
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
    check_idle(*page);
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
    check_idle(*page);
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
  auto channel = queue_answer([this, page, ask, context](const std::shared_ptr<ReplyChannel>& out) {
    check_idle(*page);
    model->use_adapter(page->adapter);
    *context = {page->adapter, page->width, page->height, nullptr};
    page->chat.ask(ask.text);
    auto answer_options = ask.options;
    answer_options.max_length = std::min(answer_options.max_length, context_length(*model));
    page->answering = true;
    try {
      return start_answer(
          page, page->chat, answer_options, {}, out, "page", page->adapter,
          [this, page, ask, context](const ChatReply&) {
            // Grids only: the page draws them over its own preview.
            if (ask.explain) context->explanation = explanation(page->chat, /*per_word=*/true, {});
          },
          [page] { page->answering = false; });
    } catch (...) {
      page->answering = false;
      throw;
    }
  });
  const bool adapters_held = has_adapters();
  stream_events(
      res, channel, "", options.heartbeat,
      [](const ReplyChannel::Piece& piece) {
        return sse_event({{"text", piece.text}});
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

namespace {

// Equal keys, compared without stopping at the first difference (a timing side channel).
bool same_key(const std::string& a, const std::string& b) {
  if (a.size() != b.size()) return false;
  unsigned char diff = 0;
  for (size_t i = 0; i < a.size(); ++i) diff |= static_cast<unsigned char>(a[i] ^ b[i]);
  return diff == 0;
}

}  // namespace

bool Server::Impl::gate(const httplib::Request& req, httplib::Response& res) const {
  // CORS, for the origins the operator named only: their pages may then read our answers.
  const auto origin = req.get_header_value("Origin");
  const auto& allowed = options.cors_origins;
  if (!origin.empty() &&
      std::any_of(allowed.begin(), allowed.end(), [&](const std::string& o) { return o == "*" || o == origin; })) {
    res.set_header("Access-Control-Allow-Origin", origin);
    res.set_header("Vary", "Origin");
    if (req.method == "OPTIONS") {  // the preflight
      res.set_header("Access-Control-Allow-Methods", "GET, POST, OPTIONS");
      res.set_header("Access-Control-Allow-Headers", "Authorization, Content-Type");
      res.set_header("Access-Control-Max-Age", "600");
      res.status = 204;
      return true;
    }
  }
  if (req.path == "/health") return false;  // open, and it says itself whether the model is loaded
  if (!ready.load(std::memory_order_acquire)) {
    send_error(res, ApiError(503, "Loading model", "", "loading"));
    return true;
  }
  // The API key guards everything but the health check and the page itself (whose script
  // sends the key the user enters with each of its requests).
  if (!options.api_keys.empty() && req.path != "/") {
    const auto header = req.get_header_value("Authorization");
    const std::string bearer = "Bearer ";
    const bool ok = starts_with(header, bearer) &&
                    std::any_of(options.api_keys.begin(), options.api_keys.end(),
                                [&](const std::string& key) { return same_key(header.substr(bearer.size()), key); });
    if (!ok) {
      send_json(res, 401,
                error_json(ApiError(401,
                                    "invalid or missing API key: send the header 'Authorization: Bearer <key>' "
                                    "with a key given to this server's --api-key",
                                    "", "invalid_api_key")));
      return true;
    }
  }
  return false;
}

nlohmann::json Server::Impl::slots_json() const {
  const auto st = worker().stats();
  json slots = json::array();
  for (const auto& s : st.slots)
    slots.push_back({{"id", s.id},
                     {"state", s.state},
                     {"label", s.label},
                     {"lora", s.adapter},
                     {"prompt_positions", s.prompt_positions},
                     {"reused_positions", s.reused_positions},
                     {"prefilled", s.prefilled},
                     {"generated", s.generated},
                     {"kv_positions", s.kv_positions}});
  return {{"parallel", st.parallel},
          {"waiting", st.waiting},
          {"prefill_chunk", st.prefill_chunk},
          {"prefill_chunk_auto", worker().options().prefill_chunk == kAutoPrefillChunk},
          {"slots", std::move(slots)}};
}

// Prometheus' text format (version 0.0.4), with llama.cpp server's metric names under our
// prefix.
std::string Server::Impl::metrics_text() const {
  const auto st = worker().stats();
  std::string out;
  const auto metric = [&](const char* name, const char* type, const char* help, double value) {
    out += fmt::format("# HELP minigpt4:{} {}\n# TYPE minigpt4:{} {}\nminigpt4:{} {}\n", name, help, name, type, name,
                       value);
  };
  metric("prompt_tokens_total", "counter", "Prompt positions run through the LLM (image positions included).",
         static_cast<double>(st.prompt_positions_total));
  metric("prompt_seconds_total", "counter", "Time spent running prompts.", st.prefill_seconds);
  metric("tokens_predicted_total", "counter", "Tokens generated.", static_cast<double>(st.generated_tokens_total));
  metric("tokens_predicted_seconds_total", "counter", "Time spent in decode steps.", st.decode_seconds);
  metric("prompt_tokens_seconds", "gauge", "Average prompt throughput in positions/s.",
         st.prefill_seconds > 0 ? static_cast<double>(st.prompt_positions_total) / st.prefill_seconds : 0.0);
  metric("predicted_tokens_seconds", "gauge", "Average generation throughput in tokens/s (all slots together).",
         st.decode_seconds > 0 ? static_cast<double>(st.decode_rows) / st.decode_seconds : 0.0);
  metric("n_decode_total", "counter", "Decode steps run.", static_cast<double>(st.decode_steps));
  metric("n_busy_slots_per_decode", "gauge", "Average answers per decode step.",
         st.decode_steps > 0 ? static_cast<double>(st.decode_rows) / static_cast<double>(st.decode_steps) : 0.0);
  metric("requests_processing", "gauge", "Answers in slots.", static_cast<double>(st.slots.size()));
  metric("requests_deferred", "gauge", "Requests waiting for a slot.", static_cast<double>(st.waiting));
  metric("slots_total", "gauge", "Slots (--parallel).", static_cast<double>(st.parallel));
  metric("kv_cache_tokens", "gauge", "Positions held in the KV caches of the answers in slots.",
         static_cast<double>(st.kv_positions));
  metric("kv_cache_bytes", "gauge", "Bytes of those KV caches' buffers.", static_cast<double>(st.kv_bytes));
  metric("prefill_chunk", "gauge", "Prompt positions the next joining prompt runs per round (0: whole prompts).",
         static_cast<double>(st.prefill_chunk));
  const auto images = image_cache.stats(), prefixes = prefix_cache.stats();
  metric("image_cache_hits_total", "counter", "Images whose embeddings came from the image cache.",
         static_cast<double>(images.hits));
  metric("image_cache_misses_total", "counter", "Images encoded (ViT and Q-Former).",
         static_cast<double>(images.misses));
  metric("image_cache_bytes", "gauge", "Bytes held by the image cache.", static_cast<double>(images.bytes));
  metric("prefix_cache_hits_total", "counter", "Requests that continued an earlier request's KV cache.",
         static_cast<double>(prefixes.hits));
  metric("prefix_cache_tokens_total", "counter", "Prompt positions taken from the prefix cache.",
         static_cast<double>(prefixes.reused));
  metric("prefix_cache_bytes", "gauge", "Bytes held by the prefix cache.", static_cast<double>(prefixes.bytes));
  metric("answers_total", "counter", "Answers finished.", static_cast<double>(answers.load()));
  metric("answers_client_gone_total", "counter", "Answers ended because the client left.",
         static_cast<double>(answers_cancelled.load()));
  metric("answers_time_limit_total", "counter", "Answers ended by the time limit.",
         static_cast<double>(answers_timed_out.load()));
  return out;
}

Server::Server(std::shared_ptr<const ChatModel> model, ServerOptions options)
    : impl_(std::make_unique<Impl>([model] { return model; }, std::move(options))) {
  impl_->load();
}

Server::Server(ModelLoader loader, ServerOptions options)
    : impl_(std::make_unique<Impl>(std::move(loader), std::move(options))) {}

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
  // The port is open while the model loads: /health answers 503 until it is ready.
  std::exception_ptr load_error;
  std::thread loader;
  if (!impl_->ready)
    loader = std::thread([this, &load_error] {
      try {
        impl_->load();
        log::info("model {} loaded: ready", impl_->model->name);
      } catch (...) {
        load_error = std::current_exception();
        stop();
      }
    });
  const bool ok = impl_->stopping || impl_->http.listen_after_bind();
  impl_->serving = false;
  if (loader.joinable()) loader.join();
  if (load_error) std::rethrow_exception(load_error);
  if (!ok && !impl_->stopping) fail("the HTTP server stopped unexpectedly");
}

void Server::stop() {
  impl_->stopping = true;  // running answers see it at their next piece
  if (impl_->ready) impl_->worker().stop();
  // httplib's stop() does nothing until its loop runs: a serve() just starting is waited for.
  while (impl_->serving && !impl_->http.is_running()) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  impl_->http.stop();
}

}  // namespace minigpt4::server
