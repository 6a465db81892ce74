#include "minigpt4/evaluate/runner.h"

#include "minigpt4/chat/chat.h"
#include "minigpt4/common/config.h"
#include "minigpt4/common/error.h"
#include "minigpt4/common/log.h"
#include "minigpt4/distributed/group.h"
#include "minigpt4/evaluate/items.h"
#include "minigpt4/evaluate/prediction_log.h"
#include "minigpt4/evaluate/predictor.h"
#include "minigpt4/evaluate/progress.h"
#include "minigpt4/io/file_util.h"

#include <fmt/ranges.h>

#include <algorithm>
#include <chrono>
#include <filesystem>
#include <fstream>

namespace minigpt4::evaluate {

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

template <typename Json>
void write_json(const fs::path& path, const Json& value) {
  const auto text = value.dump(2, ' ', false, Json::error_handler_t::replace) + "\n";
  io::AtomicWriter out(path.string());
  out.write(text.data(), text.size());
  out.commit();
}

fs::path settings_path(const EvalSettings& s) { return fs::path(s.output_dir) / "evaluation.json"; }

// Earlier predictions count only when they were made the same way.
void check_earlier_settings(const EvalSettings& s, const json& fingerprint, bool has_predictions) {
  const auto path = settings_path(s);
  if (!has_predictions || !fs::is_regular_file(path)) return;
  json earlier;
  try {
    earlier = json::parse(std::ifstream(path));
  } catch (const json::exception& e) {
    fail("{}: not valid JSON ({}); it records how the predictions beside it were made", path.string(), e.what());
  }
  std::vector<std::string> differing;
  for (const auto& [key, value] : fingerprint.items())
    if (!earlier.contains(key) || earlier.at(key) != value) differing.push_back(key);
  if (!differing.empty())
    fail("{} holds predictions made with other settings (different: {}); remove them or choose another run.output_dir",
         s.output_dir, fmt::join(differing, ", "));
}

// Ids as the benchmark's submission files write them: integers for COCO, NoCaps, VQAv2 and
// OK-VQA; GQA's question ids are the text keys of its question file.
nlohmann::ordered_json submission_id(const std::string& id, metrics::Task task) {
  const bool number = !id.empty() && id.size() <= 18 && id.find_first_not_of("0123456789") == std::string::npos &&
                      (id == "0" || id[0] != '0');
  if (task == metrics::Task::gqa || !number) return id;
  return std::stoll(id);
}

// Rank 0, once every rank is done: results.json and metrics.json, or nothing while items
// are still missing.
void merge_and_score(const EvalSettings& s, const std::vector<EvalItem>& items, bool may_stop_early,
                     EvaluateResult& result) {
  const auto predictions = read_prediction_logs(s.output_dir);
  nlohmann::ordered_json submission = nlohmann::ordered_json::array();  // keys in the submission format's order
  size_t missing = 0;
  for (const auto& item : items) {
    const auto it = predictions.find(item.id);
    if (it == predictions.end()) {
      ++missing;
      continue;
    }
    if (s.short_answers())
      submission.push_back({{"question_id", submission_id(item.id, s.task)}, {"answer", it->second}});
    else
      submission.push_back({{"image_id", submission_id(item.id, s.task)}, {"caption", it->second}});
  }
  if (missing > 0) {
    if (!may_stop_early)
      fail(
          "{}: {} of the {} items have no prediction after every rank finished; is run.output_dir on a file system "
          "every rank shares?",
          s.output_dir, missing, items.size());
    log::info("stopped early (--stop-after): {} of {} items predicted; run the same command again to continue",
              items.size() - missing, items.size());
    return;
  }
  result.results_path = (fs::path(s.output_dir) / "results.json").string();
  write_json(result.results_path, submission);
  result.metrics = metrics::score(s.task, {s.annotations, s.questions, result.results_path, s.vqa_evaluator});
  result.metrics_path = (fs::path(s.output_dir) / "metrics.json").string();
  write_json(result.metrics_path, result.metrics);
  result.complete = true;
}

// Answers this rank's items batch by batch, appending each batch to its predictions file.
void answer_items(const Config& config, const EvalSettings& s, const std::vector<EvalItem>& mine,
                  const EvaluateOptions& options, int rank, int world, EvaluateResult& result) {
  const Predictor predictor(ChatModel::load(config, options.device), s);
  PredictionLog log_file(prediction_log_path(s.output_dir, rank));
  const bool show = options.show_progress && rank == 0;
  Progress progress(static_cast<int64_t>(mine.size()));
  const auto start = std::chrono::steady_clock::now();
  const auto batch_size = static_cast<size_t>(s.batch_size);
  for (size_t first = 0; first < mine.size(); first += batch_size) {
    const std::vector<EvalItem> batch(
        mine.begin() + static_cast<std::ptrdiff_t>(first),
        mine.begin() + static_cast<std::ptrdiff_t>(std::min(mine.size(), first + batch_size)));
    const auto answers = predictor.predict(batch);
    std::vector<Prediction> lines;
    for (size_t i = 0; i < batch.size(); ++i) lines.push_back({batch[i].id, answers[i]});
    log_file.append(lines);
    result.evaluated += static_cast<int64_t>(batch.size());
    if (show) progress.advance(static_cast<int64_t>(batch.size()));
  }
  if (show) progress.finish();
  result.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  log::info("answered {} items in {:.1f} s ({:.2f} items/s{})", result.evaluated, result.seconds,
            static_cast<double>(result.evaluated) / std::max(result.seconds, 1e-9), world > 1 ? " on rank 0" : "");
}

}  // namespace

EvaluateResult run_evaluation(const Config& config, const EvaluateOptions& options) {
  const int rank = options.group ? options.group->rank() : 0;
  const int world = options.group ? options.group->world_size() : 1;
  const auto settings = EvalSettings::from_config(config);
  const auto items = load_items(settings);
  fs::create_directories(settings.output_dir);
  const auto fingerprint = settings.fingerprint(config);

  // Every rank must see the same earlier predictions to split the rest the same way, so
  // nobody appends before everyone has read them.
  const auto earlier = read_prediction_logs(settings.output_dir);
  check_earlier_settings(settings, fingerprint, !earlier.empty());
  if (options.group) options.group->barrier("evaluate: reading the earlier predictions");
  if (rank == 0) write_json(settings_path(settings), fingerprint);

  EvaluateResult result;
  result.items = static_cast<int64_t>(items.size());
  std::vector<EvalItem> mine;
  int64_t pending = 0;
  for (const auto& item : items) {
    if (earlier.count(item.id)) continue;
    if (pending++ % world == rank) mine.push_back(item);
  }
  result.resumed = result.items - pending;
  if (options.stop_after >= 0 && options.stop_after < static_cast<int64_t>(mine.size()))
    mine.resize(static_cast<size_t>(options.stop_after));
  log::info("{}: {} items in {}, {} predicted earlier, {} to do{}", metrics::task_name(settings.task), items.size(),
            settings.annotations, result.resumed, pending, world > 1 ? fmt::format(" over {} ranks", world) : "");

  if (!mine.empty()) answer_items(config, settings, mine, options, rank, world, result);

  if (options.group) options.group->barrier("evaluate: waiting for every rank to finish its items");
  if (rank == 0) merge_and_score(settings, items, options.stop_after >= 0, result);
  return result;
}

}  // namespace minigpt4::evaluate
