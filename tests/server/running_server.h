#pragma once
// A server for a test: on a free loopback port, serving `model` from a thread until the
// object goes out of scope.
#include "minigpt4/server/server.h"

#include <httplib.h>

#include <memory>
#include <thread>

namespace minigpt4::test {

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

}  // namespace minigpt4::test
