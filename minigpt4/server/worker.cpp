#include "minigpt4/server/worker.h"

#include "minigpt4/common/log.h"

namespace minigpt4::server {

ModelWorker::ModelWorker(size_t max_waiting) : max_waiting_(max_waiting), thread_([this] { loop(); }) {}

ModelWorker::~ModelWorker() { stop(); }

bool ModelWorker::submit(Job job) {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    if (stopping_ || jobs_.size() >= max_waiting_) return false;
    jobs_.push_back(std::move(job));
  }
  wake_.notify_one();
  return true;
}

void ModelWorker::stop() {
  std::deque<Job> dropped;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stopping_ = true;
    dropped.swap(jobs_);
  }
  wake_.notify_all();
  for (auto& job : dropped) job(false);
  if (thread_.joinable()) thread_.join();
}

size_t ModelWorker::waiting() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return jobs_.size();
}

bool ModelWorker::busy() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return busy_;
}

uint64_t ModelWorker::completed() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return completed_;
}

void ModelWorker::loop() {
  for (;;) {
    Job job;
    {
      std::unique_lock<std::mutex> lock(mutex_);
      wake_.wait(lock, [this] { return stopping_ || !jobs_.empty(); });
      if (jobs_.empty()) return;  // stopping
      job = std::move(jobs_.front());
      jobs_.pop_front();
      busy_ = true;
    }
    // Jobs report their own errors to their clients; anything escaping is a bug, but it
    // must not take the server's only model thread with it.
    try {
      job(true);
    } catch (const std::exception& e) {
      log::error("model job failed: {}", e.what());
    }
    std::lock_guard<std::mutex> lock(mutex_);
    busy_ = false;
    ++completed_;
  }
}

void ReplyChannel::send(std::string piece) {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    pieces_.push_back(std::move(piece));
  }
  ready_.notify_all();
}

void ReplyChannel::finish(ChatReply reply) {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    if (ended_) return;
    reply_ = std::move(reply);
    ended_ = true;
  }
  ready_.notify_all();
}

void ReplyChannel::fail(ApiError error) {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    if (ended_) return;
    error_ = std::move(error);
    ended_ = true;
  }
  ready_.notify_all();
}

ReplyChannel::Batch ReplyChannel::take(std::chrono::milliseconds timeout) {
  std::unique_lock<std::mutex> lock(mutex_);
  ready_.wait_for(lock, timeout, [this] { return ended_ || !pieces_.empty(); });
  Batch batch;
  batch.pieces.swap(pieces_);
  batch.ended = ended_;
  if (ended_) batch.reply = reply_, batch.error = error_;
  return batch;
}

void ReplyChannel::cancel() {
  std::lock_guard<std::mutex> lock(mutex_);
  cancelled_ = true;
}

bool ReplyChannel::cancelled() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return cancelled_;
}

}  // namespace minigpt4::server
