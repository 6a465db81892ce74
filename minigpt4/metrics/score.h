#pragma once
// `minigpt4 score`: one benchmark's annotations + a predictions file -> its metrics as JSON.
//   coco_caption, nocaps  BLEU-1..4, ROUGE-L, CIDEr-D (keys as pycocoevalcap: Bleu_1 ..
//                         Bleu_4, ROUGE_L, CIDEr); images with a "domain" (NoCaps) are also
//                         scored per domain, each domain on its own (its own CIDEr document
//                         frequencies), under "per_domain".
//   vqav2, okvqa          VQA accuracy x100: overall, perAnswerType, perQuestionType, by the
//                         official evaluator of 2021 or the legacy one (vqa_metrics.h), named
//                         under "vqa_evaluator".
//   gqa                   exact-match accuracy x100, accuracyPerStructuralType,
//                         accuracyPerSemanticType.
// Every annotated item needs exactly one prediction and every prediction an annotated item;
// anything else is an Error naming both files and the first offending ids. (pycocoevalcap
// would score only the predicted images; a partial score is too easy to mistake for a full
// one.)
#include "minigpt4/metrics/vqa_metrics.h"

#include <nlohmann/json.hpp>

#include <string>
#include <string_view>

namespace minigpt4::metrics {

enum class Task { coco_caption, nocaps, vqav2, okvqa, gqa };

Task parse_task(std::string_view name);  // an Error lists the known names
std::string task_name(Task task);

struct ScoreFiles {
  std::string annotations;  // captions / VQA annotations / GQA questions with answers
  std::string questions;    // VQAv2 / OK-VQA questions file (optional; checks the pairing)
  std::string predictions;
  VqaEvaluator vqa_evaluator = VqaEvaluator::official_2021;  // vqav2 / okvqa only
};

nlohmann::json score(Task task, const ScoreFiles& files);

}  // namespace minigpt4::metrics
