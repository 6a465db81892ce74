#pragma once
// What one `minigpt4 evaluate` run does, read from its config: the benchmark (the
// `evaluation:` section), how answers are generated, and where the outputs go (run.*).
//
//   evaluation.task            coco_caption | nocaps | vqav2 | okvqa | gqa
//   evaluation.annotations     the file `minigpt4 score --annotations` takes
//   evaluation.questions       vqav2 / okvqa: the questions file (question text, image ids)
//   evaluation.image_root      the folder the image file names are relative to
//   evaluation.image_file      vqav2 / okvqa / gqa: the image file name for an image id, as a
//                              Python/fmt format with {image_id}: COCO_val2014_{image_id:012d}.jpg
//   evaluation.prompt          the instruction put in the conversation template after the
//                              image; VQA prompts hold {question}
//   evaluation.vqa_evaluator   vqav2 / okvqa: 2021 (default) or legacy (eval/vqa_metrics.h)
//   evaluation.max_new_tokens, evaluation.num_beams, evaluation.length_penalty
//   run.batch_size_eval        items per generation batch (greedy: one left-padded batch)
//   run.output_dir             predictions_rank*.jsonl, results.json, metrics.json
#include "minigpt4/metrics/score.h"

#include <nlohmann/json.hpp>

#include <cstdint>
#include <string>

namespace minigpt4 {
class Config;
}

namespace minigpt4::evaluate {

struct EvalSettings {
  metrics::Task task = metrics::Task::coco_caption;
  std::string annotations, questions, image_root, image_file;
  std::string prompt;
  metrics::VqaEvaluator vqa_evaluator = metrics::VqaEvaluator::official_2021;
  int64_t max_new_tokens = 0;
  int num_beams = 1;
  double length_penalty = 1.0;
  int64_t batch_size = 8;
  std::string output_dir;

  // Checks every key it reads; a missing or wrong one is an Error naming the key and file.
  static EvalSettings from_config(const Config& config);

  bool short_answers() const;  // VQA and GQA: answers are lowercased and scored by exact match
  // What the predictions depend on (benchmark, prompt, generation, model files): a resumed
  // run must match the run that wrote the earlier predictions.
  nlohmann::json fingerprint(const Config& config) const;
};

// The instruction used when the config gives none.
std::string default_prompt(metrics::Task task);

}  // namespace minigpt4::evaluate
