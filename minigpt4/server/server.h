#pragma once
// `minigpt4 serve`: the web demo (MiniGPT-4's gradio page, rebuilt as one HTML page) and an
// OpenAI-compatible chat-completions API, over one model loaded once.
//
// Routes: GET / (the page), GET /health, GET /v1/models, POST /v1/chat/completions, and the
// page's own POST /api/sessions, /api/sessions/{id}/image|ask|lora|close.
// LoRA task adapters (ConLoRA): each request (`lora` in the API, the session's choice on the
// page) names its adapter, and the model thread switches to it before that request's model
// work, so no request ever runs with another's adapter.
// The model runs on one thread (worker.h) that generates up to `parallel` answers at once
// (continuous batching); requests wait FIFO for a slot, a full queue answers 503 with
// Retry-After. Streams go out as server-sent events; a client that disconnects makes
// its next write fail, which cancels its generation; every answer also has a time limit.
#include "minigpt4/chat/chat.h"
#include "minigpt4/server/openai.h"
#include "minigpt4/server/worker.h"

#include <chrono>
#include <functional>
#include <memory>
#include <string>
#include <vector>

namespace minigpt4::server {

struct ServerOptions {
  std::string host = "127.0.0.1";     // loopback only, unless the user says otherwise
  int port = 7860;                    // gradio's port; 0: any free port (bind() says which)
  size_t max_body_bytes = 20u << 20;  // after chunked decoding; compressed bodies are refused (415)
  // Per request: text, images, pixels, prompt tokens (limits.max_prompt_tokens 0: the
  // model's context length, see Server's constructor), numbers.
  RequestLimits limits;
  // Pixels being decoded at once by all requests together (each upload is decoded once as a
  // check on its connection's thread, and again on the model thread to encode it): bounds
  // the memory of parallel large images. At least limits.image.max_pixels.
  int64_t max_decode_pixels = 40'000'000;
  size_t parallel = 4;                        // answers generated at once (continuous batching, worker.h)
  int64_t prefill_chunk = kAutoPrefillChunk;  // prompt positions per round at most (0: whole prompts; worker.h)
  size_t max_waiting = 8;                     // model jobs waiting for a slot
  double max_generation_seconds = 300;        // per answer; then it ends with finish_reason "length"
  size_t max_sessions = 8;                    // page conversations kept (each holds a KV cache)
  std::chrono::seconds session_idle{1800};
  int io_timeout_seconds = 30;  // one write of an answer to a client that does not read
  // Connections (http_gate.h): open at once (at the limit the one waiting longest for its
  // request is closed for a newcomer), header size and lines, the time the request line and
  // headers, and the whole request, may take from the connection's turn (its accept or its
  // previous answer) however slowly they trickle in, and the request bytes held by all
  // connections together. /health has threads of its own and none of these waits.
  size_t max_connections = 128;
  size_t max_connections_per_ip = 64;  // 0: no limit (e.g. behind a reverse proxy)
  size_t max_header_bytes = 32 * 1024;
  size_t max_header_count = 100;
  std::chrono::milliseconds header_timeout{10'000};
  std::chrono::milliseconds request_timeout{60'000};
  std::chrono::milliseconds keep_alive{5'000};
  size_t max_buffered_bytes = 256u << 20;
  size_t http_threads = 0;  // threads answering requests; 0: max_waiting + 8
  // A stream that has had nothing to send for this long gets a comment line: writes to a
  // closed connection fail, which is how a client that left is noticed while its answer
  // waits in the queue or holds back text (a partial stop string or UTF-8 character).
  std::chrono::milliseconds heartbeat{1000};
  // Bearer keys the API takes (--api-key, --api-key-file); empty: no authentication. GET /
  // and /health stay open.
  std::vector<std::string> api_keys;
  // Origins whose pages may call the API from a browser (CORS; "*": any); empty: none.
  std::vector<std::string> cors_origins;
  bool metrics = false;  // GET /metrics in Prometheus' text format
  // caches.h: the KV caches of finished API conversations (a replayed history costs only its
  // new tokens) and images' embeddings, in MiB each.
  size_t cache_mb = 512;
  size_t image_cache_mb = 64;
  // As an API answer ends, compute its conversation as the client's next round will replay
  // it (the answer given back as text) into the prefix cache, while the model is otherwise
  // idle (Server::Impl::warm_replay).
  bool warm_replays = true;
  // The adapter of requests that name none ("" = the one active when the server starts,
  // i.e. model.lora_active); must be "original" or an adapter the model holds.
  std::string lora;
};

// Loads the model the server serves (may take minutes; the port is open meanwhile).
using ModelLoader = std::function<std::shared_ptr<const ChatModel>()>;

class Server {
 public:
  // Over a loaded model. Throws minigpt4::Error when options.lora names no adapter of it.
  Server(std::shared_ptr<const ChatModel> model, ServerOptions options);
  // Loads the model in serve(), after the port is open: until it is ready /health answers
  // 503 {"status": "loading"} and every other route 503. A failed load ends serve() with its
  // error.
  Server(ModelLoader loader, ServerOptions options);
  ~Server();  // stop()
  Server(const Server&) = delete;
  Server& operator=(const Server&) = delete;

  // Binds host:port and returns the port; throws minigpt4::Error when it cannot.
  int bind();
  // Serves until stop(); call after bind().
  void serve();
  // From any thread: ends running answers, drops queued ones (503), closes the socket.
  void stop();

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace minigpt4::server
