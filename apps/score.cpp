// `minigpt4 score --task T --annotations FILE [--questions FILE] --predictions FILE`: score a
// benchmark's predictions (COCO / NoCaps captions, VQAv2, OK-VQA, GQA) and print the metrics
// as JSON (docs/evaluation.md).
#include "apps/commands.h"
#include "minigpt4/metrics/score.h"

#include <fmt/format.h>

#include <memory>

namespace minigpt4::apps {

void add_score_command(CLI::App& app) {
  struct ScoreArgs {
    std::string task;
    metrics::ScoreFiles files;
    std::string vqa_evaluator;
  };
  auto args = std::make_shared<ScoreArgs>();
  auto* cmd = app.add_subcommand("score",
                                 "Score predictions against a benchmark's annotations and print the "
                                 "metrics as JSON (captions: BLEU, ROUGE-L, CIDEr; VQA/GQA accuracy)");
  cmd->add_option("--task", args->task, "coco_caption | nocaps | vqav2 | okvqa | gqa")->required();
  cmd->add_option("--annotations", args->files.annotations,
                  "captions (Karpathy list or COCO captions_*.json), VQA annotations, or GQA questions with answers")
      ->required();
  cmd->add_option("--questions", args->files.questions,
                  "vqav2/okvqa questions file (checks that it pairs with the annotations)");
  cmd->add_option("--predictions", args->files.predictions,
                  "[{\"image_id\", \"caption\"}] or [{\"question_id\", \"answer\"}]")
      ->required();
  cmd->add_option("--vqa-evaluator", args->vqa_evaluator,
                  "vqav2/okvqa: 2021 (the official evaluator since GT-Vision-Lab/VQA a013f00: a prediction must "
                  "equal ten agreeing answers exactly) or legacy (the earlier one LAVIS and MiniGPT-4 copy, which "
                  "normalises every prediction)")
      ->default_val("2021");
  cmd->callback([args] {
    const auto task = metrics::parse_task(args->task);
    args->files.vqa_evaluator = metrics::parse_vqa_evaluator(args->vqa_evaluator);
    fmt::print("{}\n", metrics::score(task, args->files).dump(2));
  });
}

}  // namespace minigpt4::apps
