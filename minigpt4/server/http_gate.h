#pragma once
// The connection layer of `minigpt4 serve`: cpp-httplib (Debian's 0.11.4) parses requests,
// routes them and writes the responses, but its own connection handling cannot stand a
// hostile client, and the places are in its source (httplib.h, 0.11.4):
//   - Server::listen_internal hands each accepted socket to a ThreadPool task that keeps its
//     thread from the first byte to close (process_server_socket): N idle or slow
//     connections take all N threads, and nothing else is served, /health included;
//   - SocketStream::read waits `read_timeout` per recv(): a client sending a byte a second
//     keeps one request going forever (there is no whole-request deadline);
//   - detail::read_headers takes any number of header lines (8 KB each);
//   - detail::read_content: a Content-Length over set_payload_max_length is answered only
//     after skip_content_with_length has read the whole declared length (1 TiB: never);
//     chunked bodies and bodies without a length have no limit at all; Content-Encoding
//     gzip/deflate/br bodies are inflated with no limit (prepare_content_receiver);
//   - Range (parse_range_header / apply_ranges) takes any number of ranges, each a copy.
// GatedServer keeps httplib for everything after the request has arrived and replaces how
// it arrives. The accept loop hands each socket to one gate thread that reads every
// connection's request with poll(), with no thread per connection: the request line and
// headers must arrive within `header_timeout` and the whole request within
// `request_timeout` of the connection's turn (its accept, or the end of its previous
// answer), which no trickle extends; header count and size, the body (whatever its
// framing) and the bytes buffered by all connections together are limited; Content-Encoding
// on a request is refused (415) and Range is dropped (a 200 with the whole body). Framing
// errors are answered by the gate itself (400/408/411/413/414/415/417/431/501/505, JSON),
// so httplib only ever sees a complete request, held in memory, with a Content-Length.
// Complete requests run on worker threads, and GET/HEAD of `fast_paths` (/health) on
// threads of their own, so they answer however busy the others are. At `max_connections`
// the connection that has waited longest for its request is closed to make room (then a
// request still waiting for a worker gets 503), so a new client always gets in; the room is
// taken from the address holding the most connections, and an address at
// `max_connections_per_ip` makes room among its own (429 when all of them are being
// answered), so one client cannot push the others out.
#include <httplib.h>

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace minigpt4::server {

struct HttpLimits {
  size_t max_connections = 128;                       // open at once, idle ones included
  size_t max_connections_per_ip = 64;                 // of them from one client address; 0: no limit
  size_t max_header_bytes = 32 * 1024;                // request line + header lines
  size_t max_header_count = 100;                      // header lines
  size_t max_body_bytes = 20u << 20;                  // after chunked decoding
  size_t max_buffered_bytes = 256u << 20;             // request bytes held by all connections together
  std::chrono::milliseconds header_timeout{10'000};   // request line + headers, from the turn's start
  std::chrono::milliseconds request_timeout{60'000};  // the whole request, from the turn's start
  std::chrono::milliseconds keep_alive{5'000};        // a kept-alive connection's wait for its next request
  std::chrono::milliseconds write_timeout{30'000};    // one write of the answer
  size_t max_requests_per_connection = 100;
  size_t threads = 16;      // workers for every request but the fast ones
  size_t fast_threads = 2;  // workers for GET/HEAD of fast_paths
  std::vector<std::string> fast_paths = {"/health"};
};

struct HttpStats {
  size_t open = 0;         // connections now
  uint64_t accepted = 0;   // since the start
  uint64_t evicted = 0;    // closed to make room for a new one (connection limit)
  uint64_t refused = 0;    // turned away with 503 at the connection or buffer limit, or 429 per address
  uint64_t timed_out = 0;  // cut by header_timeout / request_timeout
  uint64_t rejected = 0;   // answered by the gate with a 4xx/5xx (framing, limits)
};

class GatedServer : public httplib::Server {
 public:
  explicit GatedServer(HttpLimits limits);
  ~GatedServer() override;

  // After bind_to_port / bind_to_any_port: a listen backlog for bursts of connections
  // (httplib's CPPHTTPLIB_LISTEN_BACKLOG is 5).
  void widen_backlog();
  HttpStats stats() const;
  const HttpLimits& limits() const;

  struct Gate;

 private:
  // Called by httplib's accept loop (through an inline task queue) for each new socket:
  // the gate takes it over and closes it in the end.
  bool process_and_close_socket(socket_t sock) override;
  // httplib's parsing, routing and response for one complete request.
  bool run_request(httplib::Stream& stream, bool close_connection, bool& connection_closed);

  std::shared_ptr<Gate> gate_;
};

}  // namespace minigpt4::server
