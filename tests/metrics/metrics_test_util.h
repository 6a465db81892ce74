#pragma once
// Shared by the eval tests: the crafted sets and their golden values (tests/data/eval,
// written by make_golden.py), and scratch files for malformed inputs.
#include "tests/support/fixtures.h"

#include <nlohmann/json.hpp>

#include <filesystem>
#include <fstream>
#include <string>
#include <system_error>

#include <unistd.h>

namespace minigpt4::test {

inline fs::path eval_data(const std::string& name) { return data_dir() / "eval" / name; }

inline const nlohmann::json& eval_golden() {
  static const nlohmann::json golden = read_json(eval_data("golden.json"));
  return golden;
}

// Writes `content` to a file in this process's scratch directory (removed at exit) and
// returns its path.
inline std::string scratch_file(const std::string& name, const std::string& content) {
  struct ScratchDir {
    fs::path path = fs::temp_directory_path() / ("minigpt4_test_eval_" + std::to_string(::getpid()));
    ScratchDir() { fs::create_directories(path); }
    ~ScratchDir() {
      std::error_code ignored;
      fs::remove_all(path, ignored);
    }
  };
  static const ScratchDir dir;
  const auto path = dir.path / name;
  std::ofstream(path) << content;
  return path.string();
}

constexpr double kGoldenTolerance = 1e-6;

}  // namespace minigpt4::test
