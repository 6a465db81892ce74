#include "minigpt4/server/http_gate.h"

#include "minigpt4/common/log.h"
#include "minigpt4/common/untrusted.h"
#include "minigpt4/server/openai.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cctype>
#include <cerrno>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <functional>
#include <mutex>
#include <optional>
#include <thread>
#include <tuple>
#include <unordered_map>

namespace minigpt4::server {

namespace {

using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;

constexpr size_t kMaxTargetBytes = 8192;      // httplib's CPPHTTPLIB_REQUEST_URI_MAX_LENGTH
constexpr size_t kMaxHeaderLineBytes = 8192;  // httplib's CPPHTTPLIB_HEADER_MAX_LENGTH
constexpr size_t kMaxChunkLineBytes = 1024;   // a chunk size with its extensions
constexpr size_t kReadBytes = 64 * 1024;      // per recv()
constexpr milliseconds kLinger{2000};         // draining a connection being closed
constexpr size_t kMaxDrainBytes = 64u << 20;

// ------------------------------------------------------------------ sockets

void set_nonblocking(int fd) {
  const int flags = fcntl(fd, F_GETFL, 0);
  if (flags >= 0) fcntl(fd, F_SETFL, flags | O_NONBLOCK);
  const int yes = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &yes, sizeof(yes));  // server-sent events go out at once
}

// Writes what fits now and gives up on the rest: the gate's own answers are small and go to
// sockets whose send buffers are empty.
void send_now(int fd, const std::string& bytes) {
  size_t done = 0;
  while (done < bytes.size()) {
    const ssize_t n = ::send(fd, bytes.data() + done, bytes.size() - done, MSG_NOSIGNAL | MSG_DONTWAIT);
    if (n > 0) {
      done += static_cast<size_t>(n);
    } else if (n < 0 && errno == EINTR) {
      continue;
    } else {
      return;
    }
  }
}

// Whether the peer is still there: no FIN or error waiting on the socket.
bool peer_alive(int fd) {
  pollfd p{fd, POLLIN, 0};
  const int r = ::poll(&p, 1, 0);
  if (r == 0) return true;
  if (r < 0) return errno == EINTR;
  if (p.revents & (POLLERR | POLLNVAL)) return false;
  char c;
  const ssize_t n = ::recv(fd, &c, 1, MSG_PEEK | MSG_DONTWAIT);
  if (n > 0) return true;
  if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)) return true;
  return false;
}

void address_of(int fd, bool peer, std::string& ip, int& port) {
  sockaddr_storage addr{};
  socklen_t len = sizeof(addr);
  const int r = peer ? ::getpeername(fd, reinterpret_cast<sockaddr*>(&addr), &len)
                     : ::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len);
  if (r != 0) return;
  char text[INET6_ADDRSTRLEN] = {};
  if (addr.ss_family == AF_INET) {
    const auto* a = reinterpret_cast<const sockaddr_in*>(&addr);
    inet_ntop(AF_INET, &a->sin_addr, text, sizeof(text));
    port = ntohs(a->sin_port);
  } else if (addr.ss_family == AF_INET6) {
    const auto* a = reinterpret_cast<const sockaddr_in6*>(&addr);
    inet_ntop(AF_INET6, &a->sin6_addr, text, sizeof(text));
    port = ntohs(a->sin6_port);
  }
  ip = text;
}

// ------------------------------------------------------------------ answers of the gate

const char* reason(int status) {
  switch (status) {
    case 100: return "Continue";
    case 400: return "Bad Request";
    case 408: return "Request Timeout";
    case 413: return "Payload Too Large";
    case 414: return "URI Too Long";
    case 415: return "Unsupported Media Type";
    case 417: return "Expectation Failed";
    case 431: return "Request Header Fields Too Large";
    case 501: return "Not Implemented";
    case 503: return "Service Unavailable";
    case 505: return "HTTP Version Not Supported";
    default: return "Error";
  }
}

// A complete answer that closes the connection, its body OpenAI's error JSON.
std::string error_response(int status, const std::string& message, const std::string& code) {
  const std::string body = dump_json(error_json(ApiError(status, message, "", code)));
  return fmt::format(
      "HTTP/1.1 {} {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n{}\r\n{}", status,
      reason(status), body.size(), status == 503 ? "Retry-After: 5\r\n" : "", body);
}

struct Refusal {
  int status;
  std::string message, code;
};

// ------------------------------------------------------------------ request heads

bool iequals(std::string_view a, std::string_view b) {
  return a.size() == b.size() && std::equal(a.begin(), a.end(), b.begin(), [](char x, char y) {
           return std::tolower(static_cast<unsigned char>(x)) == std::tolower(static_cast<unsigned char>(y));
         });
}

std::string_view trim(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t')) s.remove_suffix(1);
  return s;
}

bool is_tchar(unsigned char c) { return std::isalnum(c) || (c != 0 && std::strchr("!#$%&'*+-.^_`|~", c) != nullptr); }

enum class BodyMode { None, Length, Chunked };

struct Head {
  std::string forwarded;  // the head httplib gets: framing, Range and Expect taken out
  BodyMode mode = BodyMode::None;
  uint64_t length = 0;
  bool expect_continue = false;
  bool takes_body = false;  // POST, PUT, PATCH, DELETE: httplib reads a body (Content-Length, 0 when none came)
  bool fast = false;
};

// The request line and headers (`text` ends with the blank line), checked and rewritten.
std::optional<Refusal> parse_head(std::string_view text, const HttpLimits& limits, Head& head) {
  const auto bad = [](std::string message) { return Refusal{400, std::move(message), "bad_request"}; };
  const size_t line_end = text.find("\r\n");
  const std::string_view line = text.substr(0, line_end);
  const size_t sp1 = line.find(' ');
  const size_t sp2 = sp1 == std::string_view::npos ? sp1 : line.find(' ', sp1 + 1);
  if (sp2 == std::string_view::npos || line.find(' ', sp2 + 1) != std::string_view::npos)
    return bad(fmt::format("malformed request line '{}' (expected METHOD TARGET HTTP/1.1)", excerpt(line)));
  const std::string_view method = line.substr(0, sp1), target = line.substr(sp1 + 1, sp2 - sp1 - 1),
                         version = line.substr(sp2 + 1);
  if (method.empty() || !std::all_of(method.begin(), method.end(), [](char c) { return c >= 'A' && c <= 'Z'; }))
    return bad(fmt::format("malformed request method '{}'", excerpt(method)));
  if (version != "HTTP/1.1" && version != "HTTP/1.0") {
    if (version.substr(0, 5) == "HTTP/")
      return Refusal{505, fmt::format("HTTP version '{}' is not supported (HTTP/1.1 and 1.0 are)", excerpt(version)),
                     "bad_request"};
    return bad(fmt::format("malformed request line '{}' (expected METHOD TARGET HTTP/1.1)", excerpt(line)));
  }
  if (target.size() > kMaxTargetBytes)
    return Refusal{
        414,
        fmt::format("the request target is {} bytes; this server takes at most {}", target.size(), kMaxTargetBytes),
        "uri_too_long"};
  if (target.empty() || std::any_of(target.begin(), target.end(), [](char c) {
        const auto u = static_cast<unsigned char>(c);
        return u < 0x21 || u == 0x7f;
      }))
    return bad("malformed request target");

  std::string forwarded(line);
  forwarded += "\r\n";
  std::optional<std::string_view> content_length, transfer_encoding;
  bool length_conflict = false;
  size_t count = 0;
  for (size_t at = line_end + 2; at < text.size();) {
    const size_t end = text.find("\r\n", at);
    const std::string_view field = text.substr(at, end - at);
    at = end + 2;
    if (field.empty()) break;  // the blank line
    if (++count > limits.max_header_count)
      return Refusal{431, fmt::format("more than {} header lines (--max-headers)", limits.max_header_count),
                     "headers_too_large"};
    if (field.size() > kMaxHeaderLineBytes)
      return Refusal{431,
                     fmt::format("a header line is {} bytes; this server takes at most {} per line", field.size(),
                                 kMaxHeaderLineBytes),
                     "headers_too_large"};
    if (field.front() == ' ' || field.front() == '\t') return bad("folded header lines (obs-fold) are not accepted");
    const size_t colon = field.find(':');
    if (colon == std::string_view::npos || colon == 0)
      return bad(fmt::format("malformed header line '{}'", excerpt(field)));
    const std::string_view name = field.substr(0, colon), value = trim(field.substr(colon + 1));
    if (!std::all_of(name.begin(), name.end(), [](char c) { return is_tchar(static_cast<unsigned char>(c)); }))
      return bad(fmt::format("malformed header name '{}'", excerpt(name)));
    if (std::any_of(value.begin(), value.end(), [](char c) {
          const auto u = static_cast<unsigned char>(c);
          return (u < 0x20 && u != '\t') || u == 0x7f;
        }))
      return bad(fmt::format("header '{}' holds control characters", excerpt(name)));

    if (iequals(name, "Content-Length")) {
      if (content_length && *content_length != value) length_conflict = true;
      content_length = value;
      continue;
    }
    if (iequals(name, "Transfer-Encoding")) {
      if (transfer_encoding) return bad("more than one Transfer-Encoding header");
      transfer_encoding = value;
      continue;
    }
    if (iequals(name, "Content-Encoding")) {
      if (!iequals(value, "identity"))
        return Refusal{
            415,
            fmt::format("request bodies with Content-Encoding '{}' are not accepted; send the body uncompressed",
                        excerpt(value)),
            "unsupported_content_encoding"};
      continue;
    }
    if (iequals(name, "Expect")) {
      if (!iequals(value, "100-continue"))
        return Refusal{417, fmt::format("Expect '{}' is not supported (only 100-continue)", excerpt(value)),
                       "bad_request"};
      head.expect_continue = true;
      continue;
    }
    // Ranges of our answers are not served: the answer is whole (RFC 9110 lets a server ignore
    // Range), so `bytes=0-,0-,...` cannot multiply it.
    if (iequals(name, "Range") || iequals(name, "If-Range")) continue;
    forwarded.append(field);
    forwarded += "\r\n";
  }

  const bool takes_body = method == "POST" || method == "PUT" || method == "PATCH" || method == "DELETE";
  if (transfer_encoding) {
    if (content_length) return bad("a request with both Transfer-Encoding and Content-Length is ambiguous; send one");
    if (!iequals(*transfer_encoding, "chunked"))
      return Refusal{501,
                     fmt::format("Transfer-Encoding '{}' is not supported (only chunked)", excerpt(*transfer_encoding)),
                     "bad_request"};
    if (version == "HTTP/1.0") return bad("chunked transfer coding is not allowed in HTTP/1.0");
    head.mode = BodyMode::Chunked;
  } else if (content_length) {
    if (length_conflict) return bad("Content-Length headers disagree");
    const auto digits = *content_length;
    if (digits.empty() || !std::all_of(digits.begin(), digits.end(), [](char c) { return c >= '0' && c <= '9'; }))
      return bad(fmt::format("Content-Length '{}' is not a number of bytes", excerpt(digits)));
    const auto significant = digits.substr(std::min(digits.find_first_not_of('0'), digits.size()));
    uint64_t length = 0;
    if (significant.size() > 19 ||
        (length = std::stoull(std::string(significant.empty() ? "0" : significant))) > limits.max_body_bytes)
      return Refusal{413,
                     fmt::format("the request body is larger than this server's limit of {} bytes (--max-upload-mb)",
                                 limits.max_body_bytes),
                     "request_too_large"};
    head.length = length;
    head.mode = length > 0 ? BodyMode::Length : BodyMode::None;
  }
  if (!takes_body && head.mode != BodyMode::None) return bad(fmt::format("a {} request has no body", excerpt(method)));
  if (head.mode == BodyMode::None) head.expect_continue = false;
  head.takes_body = takes_body;
  head.forwarded = std::move(forwarded);

  if (method == "GET" || method == "HEAD") {
    const auto path = target.substr(0, target.find('?'));
    head.fast = std::find(limits.fast_paths.begin(), limits.fast_paths.end(), path) != limits.fast_paths.end();
  }
  return std::nullopt;
}

// ------------------------------------------------------------------ connections

enum class Phase { Head, Body, Queued, Running, Closing };
enum class ChunkStep { Size, Data, DataEnd, Trailer };

struct Conn {
  int fd = -1;
  std::string ip;  // the client's address, for max_connections_per_ip
  Phase phase = Phase::Head;
  std::string in;  // received and not yet consumed
  Clock::time_point turn_start, deadline;
  bool any_byte = false;  // of this turn's request
  size_t requests = 0;
  size_t scanned = 0;  // Head: bytes of `in` searched for the blank line
  Head head;
  std::string body;
  ChunkStep chunk = ChunkStep::Size;
  uint64_t chunk_left = 0;
  size_t trailer_bytes = 0;
  int64_t held = 0;  // bytes counted against max_buffered_bytes
  size_t drained = 0;
};

// A request in memory for httplib: its head, then its body; the answer goes to the socket,
// each write within `write_timeout`.
class RequestStream : public httplib::Stream {
 public:
  RequestStream(int fd, std::string head, const std::string& body, milliseconds write_timeout)
      : fd_(fd), head_(std::move(head)), body_(body), write_timeout_(write_timeout) {}

  bool is_readable() const override { return at_ < head_.size() + body_.size(); }
  bool is_writable() const override { return !failed_ && peer_alive(fd_); }
  ssize_t read(char* ptr, size_t size) override {
    size_t n = 0;
    while (n < size && at_ < head_.size() + body_.size()) {
      const bool in_head = at_ < head_.size();
      const std::string& part = in_head ? head_ : body_;
      const size_t offset = in_head ? at_ : at_ - head_.size();
      const size_t take = std::min(size - n, part.size() - offset);
      std::memcpy(ptr + n, part.data() + offset, take);
      n += take;
      at_ += take;
    }
    return static_cast<ssize_t>(n);
  }
  ssize_t write(const char* ptr, size_t size) override {
    if (failed_ || !peer_alive(fd_)) return fail();
    const auto deadline = Clock::now() + write_timeout_;
    size_t done = 0;
    while (done < size) {
      const ssize_t n = ::send(fd_, ptr + done, size - done, MSG_NOSIGNAL | MSG_DONTWAIT);
      if (n > 0) {
        done += static_cast<size_t>(n);
        continue;
      }
      if (n < 0 && errno == EINTR) continue;
      if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
        const auto left = std::chrono::duration_cast<milliseconds>(deadline - Clock::now()).count();
        if (left <= 0) return fail();
        pollfd p{fd_, POLLOUT, 0};
        if (::poll(&p, 1, static_cast<int>(std::min<int64_t>(left, 1000))) < 0 && errno != EINTR) return fail();
        if (p.revents & (POLLERR | POLLHUP | POLLNVAL)) return fail();
        continue;
      }
      return fail();
    }
    return static_cast<ssize_t>(size);
  }
  void get_remote_ip_and_port(std::string& ip, int& port) const override { address_of(fd_, true, ip, port); }
  void get_local_ip_and_port(std::string& ip, int& port) const override { address_of(fd_, false, ip, port); }
  socket_t socket() const override { return fd_; }
  bool failed() const { return failed_; }

 private:
  ssize_t fail() {
    failed_ = true;
    return -1;
  }
  int fd_;
  std::string head_;
  const std::string& body_;
  milliseconds write_timeout_;
  size_t at_ = 0;
  bool failed_ = false;
};

// Worker threads over a FIFO of complete requests.
class Lane {
 public:
  using Run = std::function<void(std::unique_ptr<Conn>)>;

  void start(size_t threads, Run run) {
    run_ = std::move(run);
    stopping_ = false;
    for (size_t i = 0; i < std::max<size_t>(threads, 1); ++i) threads_.emplace_back([this] { loop(); });
  }
  void push(std::unique_ptr<Conn> conn) {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      queue_.push_back(std::move(conn));
    }
    ready_.notify_one();
  }
  // The request that has waited longest for a worker, from `only_ip` if given, taken back
  // (nullptr: none waits).
  std::unique_ptr<Conn> take_oldest(const std::string* only_ip) {
    std::lock_guard<std::mutex> lock(mutex_);
    const auto it = std::find_if(queue_.begin(), queue_.end(),
                                 [&](const std::unique_ptr<Conn>& c) { return !only_ip || c->ip == *only_ip; });
    if (it == queue_.end()) return nullptr;
    auto conn = std::move(*it);
    queue_.erase(it);
    return conn;
  }
  // Joins the workers; returns the requests that never got one.
  std::deque<std::unique_ptr<Conn>> stop() {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      stopping_ = true;
    }
    ready_.notify_all();
    for (auto& t : threads_) t.join();
    threads_.clear();
    std::lock_guard<std::mutex> lock(mutex_);
    return std::move(queue_);
  }

 private:
  void loop() {
    for (;;) {
      std::unique_ptr<Conn> conn;
      {
        std::unique_lock<std::mutex> lock(mutex_);
        ready_.wait(lock, [this] { return stopping_ || !queue_.empty(); });
        if (stopping_) return;
        conn = std::move(queue_.front());
        queue_.pop_front();
      }
      run_(std::move(conn));
    }
  }

  Run run_;
  std::mutex mutex_;
  std::condition_variable ready_;
  std::deque<std::unique_ptr<Conn>> queue_;
  bool stopping_ = false;
  std::vector<std::thread> threads_;
};

}  // namespace

// ------------------------------------------------------------------ the gate

struct GatedServer::Gate {
  Gate(GatedServer& owner, HttpLimits gate_limits) : server(owner), limits(std::move(gate_limits)) {
    limits.max_connections = std::max(limits.max_connections, limits.threads + limits.fast_threads + 2);
    limits.max_header_bytes = std::max<size_t>(limits.max_header_bytes, 256);
    limits.max_buffered_bytes = std::max(limits.max_buffered_bytes, limits.max_body_bytes + limits.max_header_bytes);
  }

  GatedServer& server;
  HttpLimits limits;

  std::mutex mutex;  // incoming, returned, running, stopping
  std::vector<int> incoming;
  std::vector<std::unique_ptr<Conn>> returned;
  bool running = false, stopping = false;
  int wake[2] = {-1, -1};
  std::thread thread;
  Lane main, fast;

  std::vector<std::unique_ptr<Conn>> conns;  // the gate thread's own: reading a request or closing
  std::atomic<size_t> open{0};
  std::mutex ip_mutex;  // per_ip: connections close on the gate thread and, when stopping, on others
  std::unordered_map<std::string, size_t> per_ip;
  std::atomic<int64_t> held{0};
  std::atomic<uint64_t> accepted{0}, evicted{0}, refused{0}, timed_out{0}, rejected{0};

  void start() {
    std::lock_guard<std::mutex> lock(mutex);
    if (running) return;
    if (::pipe(wake) != 0) throw std::runtime_error("cannot create the HTTP gate's wake pipe");
    set_nonblocking(wake[0]);
    set_nonblocking(wake[1]);
    running = true;
    stopping = false;
    main.start(limits.threads, [this](std::unique_ptr<Conn> c) { serve(std::move(c), false); });
    fast.start(limits.fast_threads, [this](std::unique_ptr<Conn> c) { serve(std::move(c), true); });
    thread = std::thread([this] { loop(); });
  }

  void stop() {
    {
      std::lock_guard<std::mutex> lock(mutex);
      if (!running || stopping) return;
      stopping = true;
    }
    poke();
    thread.join();
    for (auto* lane : {&main, &fast})
      for (auto& conn : lane->stop()) close_conn(*conn);
    std::lock_guard<std::mutex> lock(mutex);
    for (int fd : incoming) ::close(fd);
    incoming.clear();
    for (auto& conn : returned) close_conn(*conn);
    returned.clear();
    ::close(wake[0]);
    ::close(wake[1]);
    running = false;
  }

  void poke() {
    const char c = 1;
    [[maybe_unused]] const auto n = ::write(wake[1], &c, 1);
  }

  // From the accept thread.
  void adopt(int fd) {
    {
      std::lock_guard<std::mutex> lock(mutex);
      if (!running || stopping) {
        ::close(fd);
        return;
      }
      incoming.push_back(fd);
    }
    poke();
  }

  // From a worker, after the answer: back to wait for the next request, or to be closed.
  void give_back(std::unique_ptr<Conn> conn) {
    {
      std::lock_guard<std::mutex> lock(mutex);
      if (!stopping) {
        returned.push_back(std::move(conn));
        conn = nullptr;
      }
    }
    if (conn)
      close_conn(*conn);
    else
      poke();
  }

  // ---------------------------------------------------------------- accounting

  void account(Conn& c) {
    const auto now_held = static_cast<int64_t>(c.in.size() + c.body.size() + c.head.forwarded.size());
    held += now_held - c.held;
    c.held = now_held;
  }

  void close_conn(Conn& c) {
    if (c.fd < 0) return;
    ::close(c.fd);
    c.fd = -1;
    c.in.clear();
    c.body.clear();
    c.head = Head{};
    account(c);
    --open;
    std::lock_guard<std::mutex> lock(ip_mutex);
    if (auto it = per_ip.find(c.ip); it != per_ip.end() && --it->second == 0) per_ip.erase(it);
  }

  size_t connections_from(const std::string& ip) {
    std::lock_guard<std::mutex> lock(ip_mutex);
    const auto it = per_ip.find(ip);
    return it == per_ip.end() ? 0 : it->second;
  }

  // ---------------------------------------------------------------- the gate thread

  void loop() {
    std::vector<pollfd> fds;
    std::vector<Conn*> polled;
    for (;;) {
      std::vector<int> new_fds;
      std::vector<std::unique_ptr<Conn>> back;
      {
        std::lock_guard<std::mutex> lock(mutex);
        if (stopping) break;
        new_fds.swap(incoming);
        back.swap(returned);
      }
      for (int fd : new_fds) admit(fd);
      for (auto& conn : back) resume(std::move(conn));
      expire(Clock::now());
      compact();

      fds.assign(1, pollfd{wake[0], POLLIN, 0});
      polled.assign(1, nullptr);
      auto next = Clock::now() + milliseconds(1000);
      for (auto& c : conns) {
        fds.push_back(pollfd{c->fd, POLLIN, 0});
        polled.push_back(c.get());
        next = std::min(next, c->deadline);
      }
      const auto wait = std::chrono::duration_cast<milliseconds>(next - Clock::now()).count();
      const int ready = ::poll(fds.data(), fds.size(), static_cast<int>(std::clamp<int64_t>(wait + 1, 0, 1000)));
      if (ready < 0 && errno != EINTR) {
        log::error("HTTP gate: poll failed: {}", std::strerror(errno));
        std::this_thread::sleep_for(milliseconds(10));
        continue;
      }
      if (ready <= 0) continue;
      if (fds[0].revents) {
        char buffer[256];
        while (::read(wake[0], buffer, sizeof(buffer)) > 0) {}
      }
      for (size_t i = 1; i < fds.size(); ++i)
        if (fds[i].revents && polled[i]->fd >= 0) readable(*polled[i]);
      compact();
    }
    for (auto& c : conns)
      if (c) close_conn(*c);
    conns.clear();
  }

  // Drops closed connections and those handed to a worker from the gate's list.
  void compact() {
    conns.erase(
        std::remove_if(conns.begin(), conns.end(), [](const std::unique_ptr<Conn>& c) { return !c || c->fd < 0; }),
        conns.end());
  }

  void admit(int fd) {
    ++accepted;
    set_nonblocking(fd);
    std::string ip;
    int port = 0;
    address_of(fd, /*peer=*/true, ip, port);
    if (limits.max_connections_per_ip && connections_from(ip) >= limits.max_connections_per_ip && !make_room(&ip)) {
      ++refused;
      send_now(fd,
               error_response(429,
                              fmt::format("this client address has {} connections open, the limit per address "
                                          "(--max-connections-per-ip), and all of them are being answered; retry later",
                                          limits.max_connections_per_ip),
                              "too_many_connections"));
      ::close(fd);
      return;
    }
    if (open >= limits.max_connections && !make_room(nullptr)) {
      ++refused;
      send_now(fd, error_response(
                       503,
                       fmt::format("the server is at its limit of {} connections (--max-connections); retry later",
                                   limits.max_connections),
                       "too_many_connections"));
      ::close(fd);
      return;
    }
    ++open;
    {
      std::lock_guard<std::mutex> lock(ip_mutex);
      ++per_ip[ip];
    }
    auto conn = std::make_unique<Conn>();
    conn->fd = fd;
    conn->ip = std::move(ip);
    begin_turn(*conn, Clock::now(), limits.header_timeout);
    conns.push_back(std::move(conn));
  }

  void begin_turn(Conn& c, Clock::time_point now, milliseconds idle_limit) {
    c.phase = Phase::Head;
    c.turn_start = now;
    c.deadline = now + idle_limit;
    c.any_byte = false;
    c.scanned = 0;
    c.head = Head{};
    c.body.clear();
    c.chunk = ChunkStep::Size;
    c.chunk_left = 0;
    c.trailer_bytes = 0;
  }

  // At a connection limit: closes one connection for a newcomer, from `only_ip` (its
  // address, at max_connections_per_ip) or from anyone (at max_connections). First one
  // already being closed, then of those waiting for their request, from the address holding
  // the most connections, the one that has waited longest: idle ones (not a byte yet) before
  // those sending their headers, and those before those sending a body (the likeliest to be
  // a real client's upload); then the request that has waited longest for a worker (503).
  // False when every candidate is being answered.
  bool make_room(const std::string* only_ip) {
    const auto eligible = [&](const Conn& c) { return c.fd >= 0 && (!only_ip || c.ip == *only_ip); };
    Conn* victim = nullptr;
    for (auto& c : conns)
      if (c && eligible(*c) && c->phase == Phase::Closing && (!victim || c->deadline < victim->deadline))
        victim = c.get();
    if (victim) {
      close_conn(*victim);
      return true;
    }
    {
      std::lock_guard<std::mutex> lock(ip_mutex);  // the counts are read, not copied
      const auto held_by = [&](const Conn& c) {
        const auto it = per_ip.find(c.ip);
        return it == per_ip.end() ? size_t{0} : it->second;
      };
      const auto rank = [&](const Conn& c) {
        return std::make_tuple(-static_cast<int64_t>(held_by(c)),
                               c.phase == Phase::Body ? 2
                               : c.any_byte           ? 1
                                                      : 0,
                               c.turn_start);
      };
      for (auto& c : conns) {
        if (!c || !eligible(*c)) continue;
        if (!victim || rank(*c) < rank(*victim)) victim = c.get();
      }
    }
    const std::string limit_name = only_ip ? "its address's connection limit (--max-connections-per-ip)"
                                           : "the server's connection limit (--max-connections)";
    if (victim) {
      ++evicted;
      if (victim->any_byte)
        send_now(victim->fd,
                 error_response(503,
                                "a new connection reached " + limit_name +
                                    " and this one, which had waited longest for its request, was closed; retry",
                                "too_many_connections"));
      close_conn(*victim);
      return true;
    }
    if (auto queued = main.take_oldest(only_ip)) {
      ++evicted;
      send_now(queued->fd,
               error_response(503,
                              "a new connection reached " + limit_name +
                                  " and this request, which had waited longest for a worker, was dropped; retry later",
                              "too_many_connections"));
      close_conn(*queued);
      return true;
    }
    return false;
  }

  // A connection back from a worker.
  void resume(std::unique_ptr<Conn> conn) {
    if (conn->phase == Phase::Closing) {
      start_closing(*conn);
      conns.push_back(std::move(conn));
      return;
    }
    begin_turn(*conn, Clock::now(), limits.keep_alive);
    Conn& c = *conn;
    conns.push_back(std::move(conn));
    if (!c.in.empty()) {  // a pipelined request is already here
      c.any_byte = true;
      c.deadline = c.turn_start + limits.header_timeout;
      progress(c);
    }
  }

  void expire(Clock::time_point now) {
    for (auto& c : conns) {
      if (!c || c->fd < 0 || c->deadline > now) continue;
      if (c->phase == Phase::Closing || !c->any_byte) {  // done lingering, or idle
        close_conn(*c);
      } else if (c->phase == Phase::Head) {
        ++timed_out;
        refuse(*c, Refusal{408,
                           fmt::format("the request line and headers did not arrive within {} s (--header-timeout)",
                                       limits.header_timeout.count() / 1000.0),
                           "request_timeout"});
      } else {
        ++timed_out;
        refuse(*c, Refusal{408,
                           fmt::format("the request did not arrive within {} s (--request-timeout)",
                                       limits.request_timeout.count() / 1000.0),
                           "request_timeout"});
      }
    }
  }

  // Answers with an error and closes, reading (and dropping) what the client still sends
  // for a moment, so that the answer is not lost to a reset.
  void refuse(Conn& c, const Refusal& r) {
    if (r.status != 408 && r.status != 503) ++rejected;
    log::debug("HTTP gate: {} {}", r.status, r.message);
    send_now(c.fd, error_response(r.status, r.message, r.code));
    start_closing(c);
  }

  void start_closing(Conn& c) {
    ::shutdown(c.fd, SHUT_WR);
    c.phase = Phase::Closing;
    c.deadline = Clock::now() + kLinger;
    c.drained = 0;
    c.in.clear();
    c.in.shrink_to_fit();
    c.body.clear();
    c.body.shrink_to_fit();
    c.head = Head{};
    account(c);
  }

  void readable(Conn& c) {
    char buffer[kReadBytes];
    if (c.phase == Phase::Closing) {
      for (;;) {
        const ssize_t n = ::recv(c.fd, buffer, sizeof(buffer), MSG_DONTWAIT);
        if (n > 0 && (c.drained += static_cast<size_t>(n)) < kMaxDrainBytes) continue;
        if (n < 0 && errno == EINTR) continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return;
        close_conn(c);
        return;
      }
    }
    const ssize_t n = ::recv(c.fd, buffer, sizeof(buffer), MSG_DONTWAIT);
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)) return;
    if (n <= 0) {  // the client closed or the connection broke: nobody to answer
      close_conn(c);
      return;
    }
    if (!c.any_byte) {
      c.any_byte = true;
      c.deadline = c.turn_start + limits.header_timeout;  // a kept-alive connection's idle limit ends
    }
    c.in.append(buffer, static_cast<size_t>(n));
    account(c);
    progress(c);  // (may hand `c` to a worker: not to be touched after)
  }

  // A body still arriving while the requests held by all connections are over the budget.
  // Heads are never refused for it (they are small and bounded by the connection count), so
  // /health gets through whatever the uploads hold.
  bool over_budget() const { return held > static_cast<int64_t>(limits.max_buffered_bytes); }
  Refusal busy() {
    ++refused;
    return Refusal{
        503,
        fmt::format("the server holds {} KiB of requests still arriving or being answered (--max-buffered-mb); "
                    "retry later",
                    limits.max_buffered_bytes >> 10),
        "server_busy"};
  }

  // Moves a connection's request forward with the bytes it has.
  void progress(Conn& c) {
    if (c.phase == Phase::Head) {
      // Empty lines before a request line are allowed (RFC 9112 2.2).
      size_t skip = 0;
      while (c.scanned == 0 && c.in.compare(skip, 2, "\r\n") == 0) skip += 2;
      if (skip) c.in.erase(0, skip);
      const size_t from = c.scanned >= 3 ? c.scanned - 3 : 0;
      const size_t blank = c.in.find("\r\n\r\n", from);
      const size_t head_bytes = blank == std::string::npos ? c.in.size() : blank + 4;
      if (head_bytes > limits.max_header_bytes)
        return refuse(c, Refusal{431,
                                 fmt::format("the request line and headers exceed {} bytes (--max-header-bytes)",
                                             limits.max_header_bytes),
                                 "headers_too_large"});
      if (blank == std::string::npos) {
        // Count lines as they come: a head of countless tiny lines is cut before its end.
        if (std::count(c.in.begin(), c.in.end(), '\n') > static_cast<std::ptrdiff_t>(limits.max_header_count + 1))
          return refuse(c,
                        Refusal{431, fmt::format("more than {} header lines (--max-headers)", limits.max_header_count),
                                "headers_too_large"});
        c.scanned = c.in.size();
        return;
      }
      if (auto refusal = parse_head(std::string_view(c.in).substr(0, head_bytes), limits, c.head))
        return refuse(c, *refusal);
      c.in.erase(0, head_bytes);
      if (c.head.mode == BodyMode::None) return dispatch(c);
      c.phase = Phase::Body;
      c.deadline = c.turn_start + limits.request_timeout;
      if (c.head.expect_continue) send_now(c.fd, "HTTP/1.1 100 Continue\r\n\r\n");
    }
    if (c.phase != Phase::Body) return;
    if (c.head.mode == BodyMode::Length) {
      const size_t take = static_cast<size_t>(std::min<uint64_t>(c.head.length - c.body.size(), c.in.size()));
      c.body.append(c.in, 0, take);
      c.in.erase(0, take);
      account(c);
      if (c.body.size() == c.head.length) return dispatch(c);
      if (over_budget()) return refuse(c, busy());
      return;
    }
    if (auto refusal = dechunk(c)) return refuse(c, *refusal);
  }

  // Chunked transfer coding, decoded as it arrives; dispatches once the last chunk and the
  // trailers are in.
  std::optional<Refusal> dechunk(Conn& c) {
    const auto too_large = [&] {
      return Refusal{413,
                     fmt::format("the request body is larger than this server's limit of {} bytes (--max-upload-mb)",
                                 limits.max_body_bytes),
                     "request_too_large"};
    };
    size_t at = 0;
    std::optional<Refusal> result;
    bool done = false;
    while (!done && !result) {
      if (c.chunk == ChunkStep::Data) {
        const size_t take = static_cast<size_t>(std::min<uint64_t>(c.chunk_left, c.in.size() - at));
        if (take == 0) break;
        c.body.append(c.in, at, take);
        at += take;
        c.chunk_left -= take;
        if (c.chunk_left == 0) c.chunk = ChunkStep::DataEnd;
        continue;
      }
      if (c.chunk == ChunkStep::DataEnd) {
        if (c.in.size() - at < 2) break;
        if (c.in.compare(at, 2, "\r\n") != 0) {
          result = Refusal{400, "malformed chunked body: a chunk does not end with CRLF", "bad_request"};
          break;
        }
        at += 2;
        c.chunk = ChunkStep::Size;
        continue;
      }
      const size_t eol = c.in.find("\r\n", at);
      if (eol == std::string::npos) {
        if (c.chunk == ChunkStep::Size && c.in.size() - at > kMaxChunkLineBytes)
          result = Refusal{400, "malformed chunked body: a chunk-size line is too long", "bad_request"};
        if (c.chunk == ChunkStep::Trailer && c.trailer_bytes + (c.in.size() - at) > limits.max_header_bytes)
          result =
              Refusal{431, fmt::format("the trailers exceed {} bytes (--max-header-bytes)", limits.max_header_bytes),
                      "headers_too_large"};
        break;
      }
      const std::string_view line(c.in.data() + at, eol - at);
      at = eol + 2;
      if (c.chunk == ChunkStep::Trailer) {
        c.trailer_bytes += line.size() + 2;
        if (c.trailer_bytes > limits.max_header_bytes) {
          result =
              Refusal{431, fmt::format("the trailers exceed {} bytes (--max-header-bytes)", limits.max_header_bytes),
                      "headers_too_large"};
        } else if (line.empty()) {
          done = true;
        }
        continue;
      }
      // chunk-size [; extensions]
      const auto size_text = trim(line.substr(0, line.find(';')));
      if (line.size() > kMaxChunkLineBytes || size_text.empty() ||
          !std::all_of(size_text.begin(), size_text.end(),
                       [](char ch) { return std::isxdigit(static_cast<unsigned char>(ch)); })) {
        result = Refusal{400, fmt::format("malformed chunked body: chunk size '{}'", excerpt(line)), "bad_request"};
        break;
      }
      const auto significant = size_text.substr(std::min(size_text.find_first_not_of('0'), size_text.size()));
      if (significant.size() > 15) {
        result = too_large();
        break;
      }
      const uint64_t size = significant.empty() ? 0 : std::stoull(std::string(significant), nullptr, 16);
      if (c.body.size() + size > limits.max_body_bytes) {
        result = too_large();
        break;
      }
      if (size == 0) {
        c.chunk = ChunkStep::Trailer;
      } else {
        c.chunk_left = size;
        c.chunk = ChunkStep::Data;
      }
    }
    c.in.erase(0, at);
    account(c);
    if (!result && done)
      dispatch(c);
    else if (!result && over_budget())
      result = busy();
    return result;
  }

  // The request is complete: to a worker.
  void dispatch(Conn& c) {
    if (c.head.takes_body) c.head.forwarded += fmt::format("Content-Length: {}\r\n", c.body.size());
    c.head.forwarded += "\r\n";
    c.phase = Phase::Queued;
    account(c);
    for (auto& owned : conns)
      if (owned.get() == &c) {
        auto conn = std::move(owned);  // its slot is dropped by compact()
        (conn->head.fast ? fast : main).push(std::move(conn));
        return;
      }
  }

  // On a worker: httplib answers the request.
  void serve(std::unique_ptr<Conn> conn, bool fast_lane) {
    conn->phase = Phase::Running;
    bool closed = false;
    const bool last = ++conn->requests >= limits.max_requests_per_connection;
    const auto timeout = fast_lane ? std::min(limits.write_timeout, milliseconds(2000)) : limits.write_timeout;
    bool failed = true;
    {
      RequestStream stream(conn->fd, conn->head.forwarded, conn->body, timeout);
      try {
        server.run_request(stream, last, closed);
        failed = stream.failed();
      } catch (const std::exception& e) {
        log::error("HTTP: request failed: {}", e.what());
      }
    }
    conn->body.clear();
    conn->body.shrink_to_fit();
    conn->head = Head{};
    account(*conn);
    if (closed || last || failed) conn->phase = Phase::Closing;
    give_back(std::move(conn));
  }

  HttpStats stats() const {
    HttpStats s;
    s.open = open;
    s.accepted = accepted;
    s.evicted = evicted;
    s.refused = refused;
    s.timed_out = timed_out;
    s.rejected = rejected;
    return s;
  }
};

namespace {

// httplib's accept loop enqueues each new socket here; the gate takes it at once.
class GateQueue : public httplib::TaskQueue {
 public:
  explicit GateQueue(std::shared_ptr<GatedServer::Gate> gate) : gate_(std::move(gate)) { gate_->start(); }
  void enqueue(std::function<void()> fn) override { fn(); }  // -> process_and_close_socket: gate->adopt
  void shutdown() override { gate_->stop(); }

 private:
  std::shared_ptr<GatedServer::Gate> gate_;
};

}  // namespace

GatedServer::GatedServer(HttpLimits limits) : gate_(std::make_shared<Gate>(*this, std::move(limits))) {
  new_task_queue = [gate = gate_] { return new GateQueue(gate); };
  set_payload_max_length(gate_->limits.max_body_bytes);  // never reached: the gate has checked it
  set_keep_alive_max_count(gate_->limits.max_requests_per_connection);
  set_keep_alive_timeout(std::max<time_t>(1, static_cast<time_t>(gate_->limits.keep_alive.count() / 1000)));
}

GatedServer::~GatedServer() {
  stop();
  gate_->stop();
}

void GatedServer::widen_backlog() {
  const socket_t sock = svr_sock_;
  if (sock != INVALID_SOCKET) ::listen(sock, SOMAXCONN);
}

HttpStats GatedServer::stats() const { return gate_->stats(); }

const HttpLimits& GatedServer::limits() const { return gate_->limits; }

bool GatedServer::process_and_close_socket(socket_t sock) {
  gate_->adopt(sock);
  return true;
}

bool GatedServer::run_request(httplib::Stream& stream, bool close_connection, bool& connection_closed) {
  return process_request(stream, close_connection, connection_closed, nullptr);
}

}  // namespace minigpt4::server
