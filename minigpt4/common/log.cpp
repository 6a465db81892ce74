#include "minigpt4/common/log.h"

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <string>

namespace minigpt4::log {

namespace {
std::atomic<int> g_rank{-1};  // -1: not distributed
}

void set_rank(int rank, int world_size) { g_rank = world_size > 1 ? rank : -1; }

Level threshold() {
  static const Level from_env = [] {
    const char* env = std::getenv("MINIGPT4_LOG_LEVEL");
    if (!env) return Level::Info;
    if (!std::strcmp(env, "debug")) return Level::Debug;
    if (!std::strcmp(env, "warn")) return Level::Warn;
    if (!std::strcmp(env, "error")) return Level::Error;
    return Level::Info;
  }();
  return g_rank > 0 ? std::max(from_env, Level::Warn) : from_env;
}

void write(Level level, const std::string& message) {
  static std::mutex mutex;
  static const char* names[] = {"debug", "info", "warning", "error"};
  const int rank = g_rank;
  const std::string prefix = rank >= 0 ? "[rank " + std::to_string(rank) + "]" : "";
  std::lock_guard<std::mutex> lock(mutex);
  std::fprintf(stderr, "%s[%s] %s\n", prefix.c_str(), names[static_cast<int>(level)], message.c_str());
}

}  // namespace minigpt4::log
