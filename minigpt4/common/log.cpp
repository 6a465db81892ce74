#include "minigpt4/common/log.h"

#include <cstdlib>
#include <cstring>
#include <mutex>

namespace minigpt4::log {

Level threshold() {
  static const Level level = [] {
    const char* env = std::getenv("MINIGPT4_LOG_LEVEL");
    if (!env) return Level::Info;
    if (!std::strcmp(env, "debug")) return Level::Debug;
    if (!std::strcmp(env, "warn")) return Level::Warn;
    if (!std::strcmp(env, "error")) return Level::Error;
    return Level::Info;
  }();
  return level;
}

void write(Level level, const std::string& message) {
  static std::mutex mutex;
  static const char* names[] = {"debug", "info", "warning", "error"};
  std::lock_guard<std::mutex> lock(mutex);
  std::fprintf(stderr, "[%s] %s\n", names[static_cast<int>(level)], message.c_str());
}

}  // namespace minigpt4::log
