#pragma once
// `minigpt4 evaluate`: a model's answers on one benchmark and their scores.
//
// Every process (one per rank under torchrun / `minigpt4 launch`) reads the benchmark and
// the predictions already in run.output_dir, then takes its share of the items still to do:
// the i-th of them goes to rank i % world_size. It answers them batch by batch, appending
// each batch to its own predictions_rank{r}.jsonl. After a barrier, rank 0 merges every
// rank's file, writes results.json in the benchmark's submission format and metrics.json
// (minigpt4/eval's scorer, the code `minigpt4 score` runs). A killed run is resumed by
// running the same command again: finished batches are not redone. The output directory must
// be one every rank sees (a shared file system across machines), as in LAVIS.
#include <c10/core/Device.h>
#include <nlohmann/json.hpp>

#include <cstdint>
#include <memory>
#include <string>

namespace minigpt4 {
class Config;
}
namespace minigpt4::distributed {
class Group;
}

namespace minigpt4::evaluate {

struct EvaluateOptions {
  c10::Device device = c10::kCPU;
  std::shared_ptr<distributed::Group> group;  // null: a single process
  // Answer at most this many items in this run (per rank), then stop without scoring; the
  // next run goes on from there (e.g. jobs with a time limit). -1: all.
  int64_t stop_after = -1;
  bool show_progress = true;
};

struct EvaluateResult {
  bool complete = false;  // every item has a prediction; results and metrics are written
  int64_t items = 0;      // in the benchmark
  int64_t resumed = 0;    // predicted by earlier runs
  int64_t evaluated = 0;  // answered by this process in this run
  double seconds = 0;     // this process' answering loop
  std::string results_path, metrics_path;
  nlohmann::json metrics;  // rank 0 of a complete run; null otherwise
};

EvaluateResult run_evaluation(const Config& config, const EvaluateOptions& options);

}  // namespace minigpt4::evaluate
