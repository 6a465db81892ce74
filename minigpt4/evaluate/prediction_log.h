#pragma once
// Predictions as they are produced: one JSON line {"id", "prediction"} per item, appended
// and flushed after every batch, one file per rank (predictions_rank{r}.jsonl). A killed run
// leaves every finished batch on disk; the next run reads them and skips those items.
#include <cstdio>
#include <map>
#include <string>
#include <vector>

namespace minigpt4::evaluate {

struct Prediction {
  std::string id;
  std::string text;
};

// predictions_rank{rank}.jsonl in `dir`.
std::string prediction_log_path(const std::string& dir, int rank);

// Every prediction of every predictions_rank*.jsonl in `dir` (any number of ranks wrote
// them), id -> text; an id found twice keeps its first text. A last line without its newline
// (the process died while writing it) is ignored; any other malformed line is an Error
// naming the file and line.
std::map<std::string, std::string> read_prediction_logs(const std::string& dir);

class PredictionLog {
 public:
  // Opens `path` for appending; first cuts off an unfinished last line left by a killed run.
  explicit PredictionLog(const std::string& path);
  ~PredictionLog();
  PredictionLog(const PredictionLog&) = delete;
  PredictionLog& operator=(const PredictionLog&) = delete;

  // Writes the lines and flushes them to the operating system.
  void append(const std::vector<Prediction>& predictions);

 private:
  std::string path_;
  std::FILE* file_ = nullptr;
};

}  // namespace minigpt4::evaluate
