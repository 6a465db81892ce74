#pragma once
// Logging to stderr. (spdlog from Debian is built against fmt 9, while LibTorch ships and
// exposes fmt 12 in its include directory; two fmt versions cannot share a translation
// unit, so the library uses LibTorch's fmt and this small logger.)
// MINIGPT4_LOG_LEVEL=debug|info|warn|error selects what is printed (default info).
#include <fmt/format.h>

#include <cstdio>
#include <utility>

namespace minigpt4::log {

enum class Level { Debug = 0, Info = 1, Warn = 2, Error = 3 };

Level threshold();
// In a distributed job: lines carry "[rank r]", and ranks other than 0 print only
// warnings and errors (only the main process logs, as in the original runner).
void set_rank(int rank, int world_size);
void write(Level level, const std::string& message);

template <typename... Args>
void debug(fmt::format_string<Args...> f, Args&&... args) {
  if (threshold() <= Level::Debug) write(Level::Debug, fmt::format(f, std::forward<Args>(args)...));
}
template <typename... Args>
void info(fmt::format_string<Args...> f, Args&&... args) {
  if (threshold() <= Level::Info) write(Level::Info, fmt::format(f, std::forward<Args>(args)...));
}
template <typename... Args>
void warn(fmt::format_string<Args...> f, Args&&... args) {
  if (threshold() <= Level::Warn) write(Level::Warn, fmt::format(f, std::forward<Args>(args)...));
}
template <typename... Args>
void error(fmt::format_string<Args...> f, Args&&... args) {
  write(Level::Error, fmt::format(f, std::forward<Args>(args)...));
}

}  // namespace minigpt4::log
