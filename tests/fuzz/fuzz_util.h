#pragma once
// Shared by the io / config / tokenizer harnesses: a scratch folder of this process's own
// (harnesses run in parallel, each input overwriting the files of the last), and the one
// rule every harness applies: a minigpt4::Error is a clean refusal, anything else escapes
// and fails the run.
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>

namespace minigpt4::fuzz {

// <temp>/minigpt4_fuzz_<name>_<pid>, created on first use and removed at exit.
inline const std::filesystem::path& scratch_dir(const char* name) {
  static const std::filesystem::path dir = [&] {
    auto d = std::filesystem::temp_directory_path() /
             ("minigpt4_fuzz_" + std::string(name) + "_" + std::to_string(::getpid()));
    std::filesystem::create_directories(d);
    return d;
  }();
  static const struct Cleanup {
    ~Cleanup() {
      std::error_code ec;
      std::filesystem::remove_all(dir, ec);
    }
  } cleanup;
  return dir;
}

inline void write_file(const std::filesystem::path& path, const uint8_t* data, size_t size) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(reinterpret_cast<const char*>(data), static_cast<std::streamsize>(size));
}

}  // namespace minigpt4::fuzz
