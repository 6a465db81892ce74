#include "minigpt4/evaluate/settings.h"

#include "minigpt4/common/config.h"
#include "minigpt4/common/error.h"
#include "minigpt4/common/run_settings.h"

#include <filesystem>

namespace minigpt4::evaluate {

namespace {

constexpr const char* kQuestionField = "{question}";

std::string required(const Config& config, const std::string& key, const std::string& why) {
  if (!config.has(key) || config.get_string(key).empty())
    fail("{}: '{}' is required ({})", config.path().empty() ? "the config" : config.path(), key, why);
  return config.get_string(key);
}

}  // namespace

std::string default_prompt(metrics::Task task) {
  switch (task) {
    case metrics::Task::coco_caption:
    case metrics::Task::nocaps: return "Briefly describe this image.";
    default: return std::string("Based on the image, respond to this question with a short answer: ") + kQuestionField;
  }
}

bool EvalSettings::short_answers() const {
  return task != metrics::Task::coco_caption && task != metrics::Task::nocaps;
}

EvalSettings EvalSettings::from_config(const Config& config) {
  EvalSettings s;
  s.task = metrics::parse_task(required(config, "evaluation.task", "coco_caption, nocaps, vqav2, okvqa or gqa"));
  s.annotations = required(config, "evaluation.annotations", "the benchmark's annotation file");
  s.image_root = required(config, "evaluation.image_root", "the folder of the benchmark's images");
  const bool vqa = s.task == metrics::Task::vqav2 || s.task == metrics::Task::okvqa;
  if (vqa)
    s.questions = required(config, "evaluation.questions", "the VQA questions file: question text and image ids");
  else if (config.has("evaluation.questions"))
    fail("{}: evaluation.questions is read only for vqav2 and okvqa ({} takes everything from evaluation.annotations)",
         config.source_of("evaluation.questions"), metrics::task_name(s.task));
  if (vqa) try {
      s.vqa_evaluator = metrics::parse_vqa_evaluator(config.get_string("evaluation.vqa_evaluator", "2021"));
    } catch (const Error& e) {
      fail("{}: evaluation.vqa_evaluator: {}", config.source_of("evaluation.vqa_evaluator"), e.what());
    }
  else if (config.has("evaluation.vqa_evaluator"))
    fail("{}: evaluation.vqa_evaluator is read only for vqav2 and okvqa", config.source_of("evaluation.vqa_evaluator"));
  if (s.short_answers())
    s.image_file = required(config, "evaluation.image_file",
                            "the image file name of an image id, e.g. COCO_val2014_{image_id:012d}.jpg");
  else
    s.image_file = config.get_string("evaluation.image_file", "");  // for annotations that name no files

  s.prompt = config.get_string("evaluation.prompt", default_prompt(s.task));
  const bool asks = s.prompt.find(kQuestionField) != std::string::npos;
  if (s.short_answers() && !asks)
    fail("{}: evaluation.prompt '{}' must hold {} (where each question goes)", config.source_of("evaluation.prompt"),
         s.prompt, kQuestionField);
  if (!s.short_answers() && asks)
    fail("{}: evaluation.prompt '{}' holds {}, but a caption benchmark has no questions",
         config.source_of("evaluation.prompt"), s.prompt, kQuestionField);

  s.max_new_tokens = config.get_int("evaluation.max_new_tokens", s.short_answers() ? 10 : 30);
  s.num_beams = static_cast<int>(config.get_int("evaluation.num_beams", s.num_beams));
  s.length_penalty = config.get_float("evaluation.length_penalty", s.length_penalty);
  if (s.max_new_tokens < 1) fail("evaluation.max_new_tokens must be >= 1, got {}", s.max_new_tokens);
  if (s.num_beams < 1 || s.num_beams > 10) fail("evaluation.num_beams must be in 1..10, got {}", s.num_beams);

  const EvaluationRunSettings run = RunSettings::from_config(config).evaluation;
  s.batch_size = run.batch_size_eval;
  const auto stem =
      config.path().empty() ? metrics::task_name(s.task) : std::filesystem::path(config.path()).stem().string();
  s.output_dir = run.output_dir.value_or("runs/evaluate/" + stem);
  return s;
}

nlohmann::json EvalSettings::fingerprint(const Config& config) const {
  return {{"task", metrics::task_name(task)}, {"annotations", annotations},
          {"questions", questions},           {"image_root", image_root},
          {"image_file", image_file},         {"prompt", prompt},
          {"max_new_tokens", max_new_tokens}, {"num_beams", num_beams},
          {"length_penalty", length_penalty}, {"model", config.tree().value("model", nlohmann::json::object())}};
}

}  // namespace minigpt4::evaluate
