#include "minigpt4/evaluate/prediction_log.h"

#include "minigpt4/common/error.h"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <regex>
#include <sstream>

namespace minigpt4::evaluate {

namespace fs = std::filesystem;

namespace {

std::string read_whole(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) fail("cannot read the predictions {}", path);
  std::stringstream text;
  text << in.rdbuf();
  return text.str();
}

// The length of the file's complete lines: everything up to its last newline.
size_t complete_length(const std::string& text) {
  const auto last = text.rfind('\n');
  return last == std::string::npos ? 0 : last + 1;
}

}  // namespace

std::string prediction_log_path(const std::string& dir, int rank) {
  return (fs::path(dir) / ("predictions_rank" + std::to_string(rank) + ".jsonl")).string();
}

std::map<std::string, std::string> read_prediction_logs(const std::string& dir) {
  std::map<std::string, std::string> predictions;
  if (!fs::is_directory(dir)) return predictions;
  static const std::regex kName(R"(predictions_rank\d+\.jsonl)");
  std::vector<fs::path> files;
  for (const auto& entry : fs::directory_iterator(dir))
    if (entry.is_regular_file() && std::regex_match(entry.path().filename().string(), kName))
      files.push_back(entry.path());
  std::sort(files.begin(), files.end());
  for (const auto& file : files) {
    const auto text = read_whole(file.string());
    std::istringstream lines(text.substr(0, complete_length(text)));
    size_t number = 0;
    for (std::string line; std::getline(lines, line);) {
      ++number;
      if (line.empty()) continue;
      try {
        const auto j = nlohmann::json::parse(line);
        predictions.emplace(j.at("id").get<std::string>(), j.at("prediction").get<std::string>());
      } catch (const nlohmann::json::exception& e) {
        fail("predictions {} line {}: expected {{\"id\": \"...\", \"prediction\": \"...\"}} ({})", file.string(),
             number, e.what());
      }
    }
  }
  return predictions;
}

PredictionLog::PredictionLog(const std::string& path) : path_(path) {
  if (fs::exists(path)) {
    const auto text = read_whole(path);
    if (const auto keep = complete_length(text); keep < text.size()) fs::resize_file(path, keep);
  }
  file_ = std::fopen(path.c_str(), "ab");
  if (!file_) fail("cannot append to the predictions {}: {}", path, std::strerror(errno));
}

PredictionLog::~PredictionLog() {
  if (file_) std::fclose(file_);
}

void PredictionLog::append(const std::vector<Prediction>& predictions) {
  std::string lines;
  // A generated answer may end inside a multi-byte character (byte fallback): written with
  // U+FFFD in its place rather than failing the run.
  for (const auto& p : predictions)
    lines += nlohmann::json{{"id", p.id}, {"prediction", p.text}}.dump(-1, ' ', false,
                                                                       nlohmann::json::error_handler_t::replace) +
             "\n";
  if (std::fwrite(lines.data(), 1, lines.size(), file_) != lines.size() || std::fflush(file_) != 0)
    fail("cannot write the predictions {}: {}", path_, std::strerror(errno));
}

}  // namespace minigpt4::evaluate
