// `minigpt4 serve --cfg-path EVAL.yaml [--gpu-id N] [--host 127.0.0.1] [--port 7860] [--lora NAME]`:
// demo.py's web page and an OpenAI-compatible API over one model (docs/serving.md).
#include "apps/commands.h"
#include "minigpt4/chat/chat.h"
#include "minigpt4/common/config.h"
#include "minigpt4/common/limits.h"
#include "minigpt4/common/device.h"
#include "minigpt4/common/log.h"
#include "minigpt4/common/error.h"
#include "minigpt4/common/run_settings.h"
#include "minigpt4/common/strings.h"
#include "minigpt4/server/server.h"

#include <atomic>
#include <chrono>
#include <ATen/Parallel.h>

#include <csignal>
#include <fstream>
#include <thread>

namespace minigpt4::apps {

namespace {

struct ServeArgs {
  std::string cfg_path;
  std::vector<std::string> options;
  int gpu_id = 0;
  server::ServerOptions server;
  double max_upload_mb = 20;
  int64_t session_idle_minutes = 30;
  double header_timeout = 10, request_timeout = 60, keep_alive = 5;
  double max_buffered_mb = 256;
  std::string api_key_file;
  int threads = 0;
};

// --api-key-file: one key per line; blank lines and lines starting with '#' are skipped.
std::vector<std::string> read_api_keys(const std::string& path) {
  std::ifstream in(path);
  if (!in) fail("--api-key-file {}: cannot read it", path);
  std::vector<std::string> keys;
  for (std::string line; std::getline(in, line);) {
    const auto key = std::string(strip(line));
    if (!key.empty() && key[0] != '#') keys.push_back(key);
  }
  if (keys.empty()) fail("--api-key-file {}: no key in it (one per line)", path);
  return keys;
}

// Ctrl-C / SIGTERM: the handler only raises a flag (all a signal handler may do); a watcher
// thread sees it and stops the server, which ends running answers and closes the socket.
std::atomic<bool> stop_requested{false};
void request_stop(int) { stop_requested = true; }

void run_serve(ServeArgs& args) {
  const auto config = Config::load(args.cfg_path, args.options);
  apply_input_limits(config);  // limits.*: what input files may make us allocate
  const auto device = select_device(RunSettings::from_config(config).device, args.gpu_id);
  log::info("device: {}", describe_device(device));
  if (args.threads > 0) at::set_num_threads(args.threads);

  auto options = args.server;
  if (!args.api_key_file.empty())
    for (auto& key : read_api_keys(args.api_key_file)) options.api_keys.push_back(std::move(key));
  options.max_body_bytes = static_cast<size_t>(args.max_upload_mb * 1024 * 1024);
  options.session_idle = std::chrono::minutes(args.session_idle_minutes);
  const auto ms = [](double seconds) { return std::chrono::milliseconds(static_cast<int64_t>(seconds * 1000)); };
  options.header_timeout = ms(args.header_timeout);
  options.request_timeout = ms(args.request_timeout);
  options.keep_alive = ms(args.keep_alive);
  options.max_buffered_bytes = static_cast<size_t>(args.max_buffered_mb * 1024 * 1024);
  // The port opens first and /health answers 503 while the model loads (as llama.cpp's server).
  server::Server server(
      [&config, device, lora = options.lora]() -> std::shared_ptr<const ChatModel> {
        auto model = ChatModel::load(config, device);
        if (model->adapter_choices().size() > 1)
          log::info("LoRA adapters: {}; requests without 'lora' use {}", fmt::join(model->adapter_choices(), ", "),
                    lora.empty() ? model->active_adapter() : lora);
        return model;
      },
      options);
  const int port = server.bind();
  log::info(
      "listening on http://{}:{}/ (OpenAI API at /v1/chat/completions), {} slots, {} threads; loading the "
      "model; Ctrl-C stops",
      options.host, port, options.parallel, at::get_num_threads());
  if (options.host != "127.0.0.1" && options.host != "localhost" && options.host != "::1" && options.api_keys.empty())
    log::warn("listening on {}: anyone who can reach this address can use the model (no --api-key)", options.host);

  std::signal(SIGINT, request_stop);
  std::signal(SIGTERM, request_stop);
  std::atomic<bool> served{false};
  std::thread watcher([&] {
    while (!stop_requested && !served) std::this_thread::sleep_for(std::chrono::milliseconds(100));
    if (stop_requested) {
      log::info("stopping");
      server.stop();
    }
  });
  try {
    server.serve();
  } catch (...) {
    served = true;
    watcher.join();
    throw;
  }
  served = true;
  watcher.join();
}

}  // namespace

void add_serve_command(CLI::App& app) {
  auto args = std::make_shared<ServeArgs>();
  auto& s = args->server;
  auto* cmd = app.add_subcommand("serve", "Web demo and OpenAI-compatible API (demo.py as a server)");
  cmd->add_option("--cfg-path", args->cfg_path, "eval config (YAML), e.g. eval_configs/minigpt4_eval.yaml")
      ->required()
      ->check(CLI::ExistingFile);
  cmd->add_option("--options", args->options, "config overrides, key=value");
  cmd->add_option("--gpu-id", args->gpu_id, "CUDA device index (run.device: cuda)")->capture_default_str();
  cmd->add_option("--host", s.host, "address to listen on (0.0.0.0: every interface; no authentication!)")
      ->capture_default_str();
  cmd->add_option("--port", s.port, "TCP port (0: any free port)")->capture_default_str()->check(CLI::Range(0, 65535));
  cmd->add_option("--max-upload-mb", args->max_upload_mb, "largest request body (images come base64-encoded inside)")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  cmd->add_option("--max-image-pixels", s.limits.image.max_pixels, "largest image, width x height")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  cmd->add_option("--max-image-side", s.limits.image.max_side, "longest image side in pixels")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  cmd->add_option("--max-tokens", s.limits.max_tokens, "most new tokens one request may ask for")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  cmd->add_option("--default-max-tokens", s.limits.default_max_tokens, "new tokens when a request does not say")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  cmd->add_option("--parallel", s.parallel,
                  "answers generated at once (continuous batching: they share each decode step)")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  cmd->add_option_function<std::string>(
         "--prefill-chunk",
         [&s](const std::string& value) {
           if (value == "auto") {
             s.prefill_chunk = server::kAutoPrefillChunk;
             return;
           }
           int64_t n = 0;
           if (!CLI::detail::lexical_cast(value, n) || n < 0)
             throw CLI::ValidationError("--prefill-chunk",
                                        "takes 'auto' or a number of positions >= 0, not '" + value + "'");
           s.prefill_chunk = n;
         },
         "prompt positions a joining request runs per round at most, so that it stalls the running answers by one "
         "chunk: auto (each chunk costing about 0.6 of a decode step, learnt as the server runs; chunks of up to 32 "
         "ride in the decode step), a number, or 0 (whole prompts)")
      ->default_str("auto");
  cmd->add_option("--max-queue", s.max_waiting, "requests that may wait for the model (more get 503)")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  cmd->add_option("--max-generation-seconds", s.max_generation_seconds, "time limit of one answer")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  cmd->add_option("--max-sessions", s.max_sessions, "web-page conversations kept (each holds a KV cache)")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  cmd->add_option("--session-idle-minutes", args->session_idle_minutes,
                  "a page conversation unused this long is dropped")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  cmd->add_option("--io-timeout", s.io_timeout_seconds,
                  "seconds one write of an answer may wait for a client that does not read")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  // Abuse limits (docs/serving.md, "Limits and safety").
  cmd->add_option("--max-prompt-tokens", s.limits.max_prompt_tokens,
                  "most text tokens in a request's prompt (0: the model's context length); longer text is refused "
                  "before it is tokenized")
      ->capture_default_str()
      ->check(CLI::NonNegativeNumber);
  cmd->add_option("--max-images-per-request", s.limits.max_images, "images one request may carry")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  cmd->add_option("--max-request-pixels", s.limits.max_request_pixels,
                  "pixels of one request's images together (from their headers)")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  cmd->add_option("--max-decode-pixels", s.max_decode_pixels, "pixels being decoded at once by all requests together")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  cmd->add_option("--max-connections", s.max_connections,
                  "open connections (at the limit the one waiting longest for its request is closed for a newcomer)")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  cmd->add_option("--max-connections-per-ip", s.max_connections_per_ip,
                  "open connections from one client address (at the limit its own longest-waiting one is closed; "
                  "429 when all are being answered); 0: no limit, e.g. behind a reverse proxy")
      ->capture_default_str()
      ->check(CLI::NonNegativeNumber);
  cmd->add_option("--max-header-bytes", s.max_header_bytes, "request line and headers, in bytes (more: 431)")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  cmd->add_option("--max-headers", s.max_header_count, "header lines of a request (more: 431)")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  cmd->add_option("--header-timeout", args->header_timeout,
                  "seconds for the request line and headers to arrive, from the connection's start or its previous "
                  "answer (then 408)")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  cmd->add_option("--request-timeout", args->request_timeout,
                  "seconds for the whole request, body included, to arrive, however slowly it trickles (then 408)")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  cmd->add_option("--keep-alive-timeout", args->keep_alive, "seconds an idle kept-alive connection stays open")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  cmd->add_option("--max-buffered-mb", args->max_buffered_mb,
                  "request bytes held at once by requests still arriving or being answered (more: 503)")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  cmd->add_option("--http-threads", s.http_threads,
                  "threads answering requests (0: --max-queue + --parallel + 8); /health has its own")
      ->capture_default_str()
      ->check(CLI::NonNegativeNumber);
  cmd->add_option("--api-key", s.api_keys,
                  "API key clients must send as 'Authorization: Bearer KEY' (repeatable); / and /health stay open");
  cmd->add_option("--api-key-file", args->api_key_file, "file of API keys, one per line")->check(CLI::ExistingFile);
  cmd->add_option("--cors-origins", s.cors_origins,
                  "origins whose web pages may call the API (CORS), e.g. https://app.example.com; * for any");
  cmd->add_flag("--metrics", s.metrics, "serve GET /metrics in Prometheus' text format");
  cmd->add_option("--cache-mb", s.cache_mb,
                  "MiB of finished API conversations' KV caches kept, so that a replayed history costs only its new "
                  "tokens (0: none)")
      ->capture_default_str()
      ->check(CLI::NonNegativeNumber);
  cmd->add_flag("!--no-warm-replays", s.warm_replays,
                "do not compute a finished API answer's conversation, as the next round replays it, into the prefix "
                "cache while the model is idle");
  cmd->add_option("--image-cache-mb", s.image_cache_mb,
                  "MiB of image embeddings kept, so that an image seen before skips the ViT and Q-Former (0: none)")
      ->capture_default_str()
      ->check(CLI::NonNegativeNumber);
  cmd->add_option("-t,--threads", args->threads, "CPU threads for the model (0: PyTorch's default, the cores)")
      ->capture_default_str()
      ->check(CLI::NonNegativeNumber);
  cmd->add_option("--lora", s.lora,
                  "LoRA task adapter of requests that name none (a name of model.lora_path, or original); default: "
                  "model.lora_active. Requests choose their own with \"lora\" (API) or the page's task selector");
  cmd->callback([args] { run_serve(*args); });
}

}  // namespace minigpt4::apps
