#pragma once
// One model, many clients: every job that touches the model (encoding an image, answering)
// runs on one worker thread, first come first served, and at most `max_waiting` jobs wait.
// HTTP threads never run the model; they wait on a ReplyChannel, which also carries a
// client's disconnect back to the generation (cancel()).
#include "minigpt4/chat/chat.h"
#include "minigpt4/server/openai.h"

#include <chrono>
#include <condition_variable>
#include <deque>
#include <functional>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

namespace minigpt4::server {

class ModelWorker {
 public:
  // run = true: the job's turn has come; false: it is dropped unrun (the server stops).
  using Job = std::function<void(bool run)>;

  explicit ModelWorker(size_t max_waiting);
  ~ModelWorker();  // stop()
  ModelWorker(const ModelWorker&) = delete;
  ModelWorker& operator=(const ModelWorker&) = delete;

  // Queues a job; false (the job is not taken) when max_waiting jobs already wait.
  bool submit(Job job);
  // Drops the waiting jobs (each called with false), lets the running one finish, joins.
  void stop();

  size_t waiting() const;
  bool busy() const;
  uint64_t completed() const;

 private:
  void loop();

  const size_t max_waiting_;
  mutable std::mutex mutex_;
  std::condition_variable wake_;
  std::deque<Job> jobs_;
  bool stopping_ = false, busy_ = false;
  uint64_t completed_ = 0;
  std::thread thread_;
};

// From a job on the worker to the HTTP thread answering the client: the answer's text
// pieces as they come, then the end (a reply or an error). The HTTP side cancels when its
// client is gone; the job sees cancelled() and stops generating.
class ReplyChannel {
 public:
  struct Batch {
    std::vector<std::string> pieces;
    bool ended = false;
    std::optional<ChatReply> reply;  // when ended without error
    std::optional<ApiError> error;   // when ended with one
  };

  void send(std::string piece);
  void finish(ChatReply reply);
  void fail(ApiError error);
  // Waits up to `timeout` for pieces or the end and takes them.
  Batch take(std::chrono::milliseconds timeout);

  void cancel();
  bool cancelled() const;

 private:
  mutable std::mutex mutex_;
  std::condition_variable ready_;
  std::vector<std::string> pieces_;
  std::optional<ChatReply> reply_;
  std::optional<ApiError> error_;
  bool ended_ = false, cancelled_ = false;
};

}  // namespace minigpt4::server
