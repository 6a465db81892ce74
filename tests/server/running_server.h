#pragma once
// A server for a test: on a free loopback port, serving `model` from a thread until the
// object goes out of scope. And a raw TCP client, for requests no HTTP library would send.
#include "minigpt4/chat/chat.h"
#include "minigpt4/common/config.h"
#include "minigpt4/server/server.h"
#include "tests/support/fixtures.h"

#include <httplib.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <memory>
#include <string>
#include <thread>

namespace minigpt4::test {

// The tiny fixture model (configs/tiny_vicuna0.yaml over tests/data/parity/tiny_vicuna0),
// loaded once per test binary.
inline std::shared_ptr<const ChatModel> tiny_chat_model() {
  static const auto model = [] {
    const auto dir = data_dir() / "parity/tiny_vicuna0";
    const auto config = Config::load(
        (source_dir() / "configs/tiny_vicuna0.yaml").string(),
        {"model.vit_model=" + (dir / "eva_vit_g.pth").string(),
         "model.q_former_model=" + (dir / "blip2_pretrained.pth").string(),
         "model.llama_model=" + (dir / "vicuna").string(), "model.ckpt=" + (dir / "pretrained_minigpt4.pth").string()});
    return ChatModel::load(config, torch::kCPU);
  }();
  return model;
}

struct RunningServer {
  explicit RunningServer(std::shared_ptr<const ChatModel> model, server::ServerOptions options = {}) {
    options.host = "127.0.0.1";
    options.port = 0;
    server = std::make_unique<server::Server>(std::move(model), options);
    port = server->bind();
    thread = std::thread([this] { server->serve(); });
  }
  ~RunningServer() {
    server->stop();
    thread.join();
  }
  httplib::Client client() const {
    httplib::Client c("127.0.0.1", port);
    c.set_read_timeout(120, 0);
    return c;
  }
  std::unique_ptr<server::Server> server;
  int port = 0;
  std::thread thread;
};

// One TCP connection to 127.0.0.1:port that sends exactly the bytes it is given, from
// `source` if given (another loopback address, e.g. "127.0.0.2", plays another client).
class RawConnection {
 public:
  explicit RawConnection(int port, const char* source = nullptr) {
    fd_ = ::socket(AF_INET, SOCK_STREAM, 0);
    if (source && fd_ >= 0) {
      sockaddr_in from{};
      from.sin_family = AF_INET;
      ::inet_pton(AF_INET, source, &from.sin_addr);
      if (::bind(fd_, reinterpret_cast<sockaddr*>(&from), sizeof(from)) != 0) return;
    }
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_port = htons(static_cast<uint16_t>(port));
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    connected_ = fd_ >= 0 && ::connect(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0;
  }
  ~RawConnection() {
    if (fd_ >= 0) ::close(fd_);
  }
  RawConnection(const RawConnection&) = delete;
  RawConnection& operator=(const RawConnection&) = delete;

  bool connected() const { return connected_; }

  // False once the server has closed the connection (or it broke).
  bool send(const std::string& bytes) {
    size_t done = 0;
    while (done < bytes.size()) {
      const ssize_t n = ::send(fd_, bytes.data() + done, bytes.size() - done, MSG_NOSIGNAL);
      if (n <= 0) return false;
      done += static_cast<size_t>(n);
    }
    return true;
  }

  // What arrives within `timeout` (stops early at the end of the stream); `closed` tells
  // whether the server closed the connection.
  std::string receive(std::chrono::milliseconds timeout, bool* closed = nullptr, size_t enough = SIZE_MAX) {
    std::string out;
    bool eof = false;
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    while (!eof && out.size() < enough) {
      const auto left =
          std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
      pollfd p{fd_, POLLIN, 0};
      if (::poll(&p, 1, static_cast<int>(std::max<int64_t>(left.count(), 0))) <= 0) break;
      char buffer[65536];
      const ssize_t n = ::recv(fd_, buffer, sizeof(buffer), 0);
      if (n <= 0) {
        eof = true;
      } else {
        out.append(buffer, static_cast<size_t>(n));
      }
    }
    if (closed) *closed = eof;
    return out;
  }

  // Whether the server has closed the connection, waiting up to `timeout` (any bytes that
  // come first are read and dropped).
  bool closed_within(std::chrono::milliseconds timeout) {
    bool closed = false;
    receive(timeout, &closed);
    return closed;
  }

 private:
  int fd_ = -1;
  bool connected_ = false;
};

// The status code of a raw HTTP answer ("HTTP/1.1 413 ..."), 0 when there is none.
inline int http_status(const std::string& answer) {
  if (answer.rfind("HTTP/1.", 0) != 0 || answer.size() < 12) return 0;
  return std::atoi(answer.substr(9, 3).c_str());
}

}  // namespace minigpt4::test
