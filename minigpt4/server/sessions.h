#pragma once
// The web page's conversations, one per browser tab, kept on the server so a ChatSession
// keeps its KV cache and encoded images between rounds. A session's cache can hold a large
// part of the GPU's memory, so only `capacity` sessions live at once (the least recently
// used one goes first) and one unused for `idle_limit` is dropped.
#include <chrono>
#include <cstdint>
#include <functional>
#include <iterator>
#include <list>
#include <memory>
#include <mutex>
#include <random>
#include <string>
#include <unordered_map>

#include <fmt/format.h>

namespace minigpt4::server {

template <typename T>
class SessionStore {
 public:
  using Clock = std::chrono::steady_clock;

  SessionStore(size_t capacity, std::chrono::seconds idle_limit, std::function<Clock::time_point()> now = Clock::now)
      : capacity_(capacity), idle_limit_(idle_limit), now_(std::move(now)) {}

  // Stores `value` under a new unguessable id (128 random bits, hex), making room first.
  std::string add(std::shared_ptr<T> value) {
    std::lock_guard<std::mutex> lock(mutex_);
    expire_locked();
    while (!order_.empty() && order_.size() >= capacity_) drop_locked(std::prev(order_.end()));
    std::string id;
    do id = fmt::format("{:08x}{:08x}{:08x}{:08x}", random_(), random_(), random_(), random_());
    while (index_.count(id));
    order_.push_front({id, std::move(value), now_()});
    index_[id] = order_.begin();
    return id;
  }

  // The session, marked as just used; nullptr when unknown, evicted or expired.
  std::shared_ptr<T> find(const std::string& id) {
    std::lock_guard<std::mutex> lock(mutex_);
    expire_locked();
    const auto it = index_.find(id);
    if (it == index_.end()) return nullptr;
    it->second->last_used = now_();
    order_.splice(order_.begin(), order_, it->second);
    return order_.front().value;
  }

  bool erase(const std::string& id) {
    std::lock_guard<std::mutex> lock(mutex_);
    const auto it = index_.find(id);
    if (it == index_.end()) return false;
    drop_locked(it->second);
    return true;
  }

  size_t size() {
    std::lock_guard<std::mutex> lock(mutex_);
    expire_locked();
    return order_.size();
  }

 private:
  struct Entry {
    std::string id;
    std::shared_ptr<T> value;  // a job still using a dropped session keeps it alive until it ends
    Clock::time_point last_used;
  };
  using Iterator = typename std::list<Entry>::iterator;

  void drop_locked(Iterator it) {
    index_.erase(it->id);
    order_.erase(it);
  }
  void expire_locked() {
    const auto now = now_();
    while (!order_.empty() && now - order_.back().last_used > idle_limit_) drop_locked(std::prev(order_.end()));
  }

  const size_t capacity_;
  const std::chrono::seconds idle_limit_;
  std::function<Clock::time_point()> now_;
  std::mutex mutex_;
  std::list<Entry> order_;  // most recently used first
  std::unordered_map<std::string, Iterator> index_;
  std::random_device random_;  // the OS's generator: ids are not predictable from earlier ones
};

}  // namespace minigpt4::server
