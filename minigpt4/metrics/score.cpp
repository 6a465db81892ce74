#include "minigpt4/metrics/score.h"

#include "minigpt4/common/error.h"
#include "minigpt4/metrics/caption_metrics.h"
#include "minigpt4/metrics/formats.h"
#include "minigpt4/metrics/ptb_tokenizer.h"
#include "minigpt4/metrics/vqa_metrics.h"

#include <array>
#include <set>

namespace minigpt4::metrics {

namespace {

using nlohmann::json;

constexpr std::array<std::pair<std::string_view, Task>, 5> kTasks{{{"coco_caption", Task::coco_caption},
                                                                   {"nocaps", Task::nocaps},
                                                                   {"vqav2", Task::vqav2},
                                                                   {"okvqa", Task::okvqa},
                                                                   {"gqa", Task::gqa}}};

std::string first_few(const std::vector<std::string>& ids) {
  constexpr size_t kShown = 5;
  std::vector<std::string> shown(ids.begin(), ids.begin() + static_cast<long>(std::min(ids.size(), kShown)));
  return fmt::format("{}{}", fmt::join(shown, ", "), ids.size() > kShown ? ", ..." : "");
}

// Exactly one prediction per annotated item: no unknown ids, none missing.
void check_prediction_ids(const std::vector<std::string>& annotated, const Predictions& predictions,
                          const ScoreFiles& files, std::string_view item) {
  const std::set<std::string> known(annotated.begin(), annotated.end());
  std::vector<std::string> unknown, missing;
  for (const auto& entry : predictions)
    if (!known.count(entry.first)) unknown.push_back(entry.first);
  for (const auto& id : annotated)
    if (!predictions.count(id)) missing.push_back(id);
  if (!unknown.empty())
    fail("predictions {}: {} {} id(s) are not in the annotations {} (first: {})", files.predictions, unknown.size(),
         item, files.annotations, first_few(unknown));
  if (!missing.empty())
    fail(
        "predictions {}: {} of the {} annotated {}s in {} have no prediction (first: {}); every one needs a "
        "prediction",
        files.predictions, missing.size(), annotated.size(), item, files.annotations, first_few(missing));
}

json caption_scores_json(const std::vector<TokenizedCaptions>& images) {
  const auto s = caption_scores(images);
  json out{{"images", images.size()}};
  for (size_t n = 0; n < s.bleu.size(); ++n) out[fmt::format("Bleu_{}", n + 1)] = s.bleu[n];
  out["ROUGE_L"] = s.rouge_l;
  out["CIDEr"] = s.cider;
  return out;
}

json score_captions(const ScoreFiles& files) {
  const auto images = read_caption_annotations(files.annotations);
  const auto predictions = read_caption_predictions(files.predictions);
  std::vector<std::string> ids;
  for (const auto& image : images) ids.push_back(image.image_id);
  check_prediction_ids(ids, predictions, files, "image");

  std::vector<TokenizedCaptions> tokenized;
  std::map<std::string, std::vector<TokenizedCaptions>> by_domain;
  for (const auto& image : images) {
    TokenizedCaptions t{tokenize_caption(predictions.at(image.image_id)), {}};
    for (const auto& reference : image.references) t.references.push_back(tokenize_caption(reference));
    if (!image.domain.empty()) by_domain[image.domain].push_back(t);
    tokenized.push_back(std::move(t));
  }
  json out = caption_scores_json(tokenized);
  for (const auto& [domain, subset] : by_domain) out["per_domain"][domain] = caption_scores_json(subset);
  return out;
}

json score_vqa(const ScoreFiles& files) {
  const auto questions = read_vqa_annotations(files.annotations);
  std::vector<std::string> ids;
  for (const auto& q : questions) ids.push_back(q.question_id);
  if (!files.questions.empty()) {
    const auto listed = read_vqa_question_ids(files.questions);
    const std::set<std::string> listed_set(listed.begin(), listed.end());
    std::vector<std::string> absent;
    for (const auto& id : ids)
      if (!listed_set.count(id)) absent.push_back(id);
    if (!absent.empty())
      fail(
          "VQA questions {}: {} question(s) of the annotations {} are not in it (first: {}); are the two files "
          "of the same split?",
          files.questions, absent.size(), files.annotations, first_few(absent));
  }
  const auto predictions = read_answer_predictions(files.predictions);
  check_prediction_ids(ids, predictions, files, "question");
  const auto s = vqa_scores(questions, predictions, files.vqa_evaluator);
  json out{{"questions", questions.size()},
           {"vqa_evaluator", vqa_evaluator_name(files.vqa_evaluator)},
           {"overall", s.overall}};
  if (!s.per_answer_type.empty()) out["perAnswerType"] = s.per_answer_type;
  if (!s.per_question_type.empty()) out["perQuestionType"] = s.per_question_type;
  return out;
}

json score_gqa(const ScoreFiles& files) {
  const auto questions = read_gqa_questions(files.annotations);
  std::vector<std::string> ids;
  for (const auto& q : questions) ids.push_back(q.question_id);
  const auto predictions = read_answer_predictions(files.predictions);
  check_prediction_ids(ids, predictions, files, "question");
  const auto s = gqa_scores(questions, predictions);
  json out{{"questions", questions.size()}, {"accuracy", s.accuracy}};
  if (!s.per_structural_type.empty()) out["accuracyPerStructuralType"] = s.per_structural_type;
  if (!s.per_semantic_type.empty()) out["accuracyPerSemanticType"] = s.per_semantic_type;
  return out;
}

}  // namespace

Task parse_task(std::string_view name) {
  for (const auto& [known, task] : kTasks)
    if (known == name) return task;
  std::vector<std::string_view> names;
  for (const auto& entry : kTasks) names.push_back(entry.first);
  fail("unknown task '{}' (known: {})", name, fmt::join(names, ", "));
}

std::string task_name(Task task) {
  for (const auto& [name, known] : kTasks)
    if (known == task) return std::string(name);
  fail("task_name: task {} is not in the task table", static_cast<int>(task));
}

json score(Task task, const ScoreFiles& files) {
  const bool vqa = task == Task::vqav2 || task == Task::okvqa;
  if (!files.questions.empty() && !vqa)
    fail("--questions is only read for vqav2 and okvqa; {} takes everything from --annotations", task_name(task));
  json metrics;
  switch (task) {
    case Task::coco_caption:
    case Task::nocaps: metrics = score_captions(files); break;
    case Task::vqav2:
    case Task::okvqa: metrics = score_vqa(files); break;
    case Task::gqa: metrics = score_gqa(files); break;
  }
  json out{{"task", task_name(task)}};
  out.update(metrics);
  return out;
}

}  // namespace minigpt4::metrics
