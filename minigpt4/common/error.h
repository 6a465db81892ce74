#pragma once
// One error type for the whole library. It carries a complete sentence naming what went
// wrong and where (file, key, expected vs found); apps print it and exit non-zero.
#include <fmt/format.h>
#include <fmt/ranges.h>  // fmt::join in messages

#include <stdexcept>
#include <string>
#include <utility>

namespace minigpt4 {

class Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

template <typename... Args>
[[noreturn]] void fail(fmt::format_string<Args...> format, Args&&... args) {
  throw Error(fmt::format(format, std::forward<Args>(args)...));
}

}  // namespace minigpt4
