#pragma once
// The training input pipeline. Each dataset is an endless stream of samples (webdataset
// shards, or cc_sbu_align's annotations); each batch is drawn whole from ONE dataset chosen
// with probability proportional to its sample_ratio (the original's MultiIterLoader), with
// that dataset's batch size. Images are decoded and processed on worker threads ahead of
// time, but batches come out in stream order, so a seed fixes the batch sequence whatever
// the number of workers or their timing. Each rank reads a disjoint part of the data, and
// a run can resume at a saved position and see exactly the batches it would have seen.
#include <ATen/core/Tensor.h>
#include <nlohmann/json.hpp>

#include "minigpt4/common/instruction.h"
#include "minigpt4/datasets/stats.h"

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace minigpt4 {
class Config;
struct TrainerSettings;
}  // namespace minigpt4

namespace minigpt4::datasets {

struct Sample {
  at::Tensor image;         // float32 [3,S,S], processed; undefined for text-only samples
  std::string caption;      // processed as the dataset's text processor says
  std::string source;       // "<shard>:<key>.<ext>" or the image path
  Instruction instruction;  // MiniGPT-v2's datasets: the turns (caption empty); else empty
};

struct Batch {
  at::Tensor images;  // float32 [B,3,S,S] on the CPU; undefined for a text-only dataset
  std::vector<std::string> captions;
  std::string dataset;               // the dataset this batch was drawn from
  std::vector<std::string> sources;  // each sample's Sample::source
  // An instruction dataset's batch (MiniGPT-v2's multi-task data): one per sample, and
  // `captions` is empty. Empty for caption datasets.
  std::vector<Instruction> instructions;
  size_t size() const { return sources.size(); }
};

enum class DatasetKind {
  WebDataset,   // laion, cc_sbu: tar shards
  CcSbuAlign,   // stage 2: filter_cap.json + image/
  TextLines,    // data_type: text, a text file with one training text per line (no images)
  Instruction,  // MiniGPT-v2's multi-task datasets (instruction_datasets.h), chosen by name
};

struct DatasetSpec {
  std::string name;
  DatasetKind kind = DatasetKind::WebDataset;
  std::string storage;  // shard spec (see expand_shard_spec), or the cc_sbu_align root
  int batch_size = 64;
  double sample_ratio = 1.0;  // relative chance of drawing a batch from this dataset
  int image_size = 224;
  bool random_crop = true;  // blip2_image_train; false: blip2_image_eval (plain resize)
  double min_scale = 0.5;   // random crop area range
  double max_scale = 1.0;
  int max_words = 50;  // blip_caption, applied to webdataset captions only
  std::string prompt;  // blip_caption's prompt, likewise
  // Instruction datasets (build_info keys of the original configs): the annotation file(s)
  // (ann_path, or annotations.train.storage), the image folder (image_path, images.storage,
  // or refvg's data_dir), and the RefCOCO family's dataset / splitBy. `max_words` is then
  // blip_caption's limit wherever the original runs its text processor.
  std::vector<std::string> ann_paths;
  std::string image_root;
  std::string refer_dataset;
  std::string split_by;
};

struct LoaderOptions {
  std::vector<DatasetSpec> datasets;
  uint64_t seed = 42;
  int num_workers = 4;           // decoding threads; 0 decodes on the thread calling next()
  size_t shuffle_buffer = 1000;  // webdataset sample shuffle buffer (the original's shuffle(1000))
  int prefetch_batches = 2;      // finished batches kept ready ahead of next()
  int rank = 0;
  int world_size = 1;
};

// From a run config: every `datasets.<name>` with its build_info.storage, batch_size
// (else the run's batch_size_train), sample_ratio (1), vis_processor.train (name,
// image_size, min_scale, max_scale) and text_processor.train (max_words, prompt); the
// run's seed and num_workers. `cc_sbu_align` (or a storage directory holding filter_cap.json) is the
// stage-2 layout, `data_type: text` a text file (language warm-up), MiniGPT-v2's dataset
// names (is_instruction_dataset) their own layouts, any other dataset webdataset shards.
// Errors name the key.
LoaderOptions loader_options_from_config(const Config& config, const TrainerSettings& run, int rank, int world_size);

// Where a loader is in its streams: enough to rebuild it there. `records` counts
// everything taken from a dataset's stream, skipped records included; `pass` is the pass
// over that dataset's data the last of them came from (its "epoch").
struct LoaderPosition {
  struct PerDataset {
    uint64_t records = 0;
    uint64_t batches = 0;
    uint64_t pass = 0;
  };
  uint64_t batches = 0;  // batches handed out, over all datasets
  std::map<std::string, PerDataset> datasets;
  uint64_t seed = 0;
  int rank = 0;
  int world_size = 1;

  nlohmann::json to_json() const;
  static LoaderPosition from_json(const nlohmann::json& j);  // errors name the missing key
};

class DataLoader {
 public:
  // With `resume`, the streams and the dataset choice are replayed (reading, not decoding)
  // up to that position, so the next batch is the one the saved run would have got next;
  // it must come from a loader with the same datasets, seed, rank and world size.
  explicit DataLoader(LoaderOptions options, const std::optional<LoaderPosition>& resume = std::nullopt);
  ~DataLoader();
  DataLoader(const DataLoader&) = delete;
  DataLoader& operator=(const DataLoader&) = delete;

  Batch next();  // blocks until the batch is ready; rethrows a pipeline error

  // Both as of the last batch next() returned (work done ahead is not counted), so they
  // too are the same for a seed whatever the thread timing. Stats count what this loader
  // read since it was built (a resumed loader starts from zero).
  LoaderPosition position() const;
  DataStats stats() const;
  const LoaderOptions& options() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace minigpt4::datasets
