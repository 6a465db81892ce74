// `minigpt4 evaluate --cfg-path eval_configs/<benchmark>.yaml [--options k=v ...] [--gpu-id N]
// [--stop-after N]`: answer a benchmark (COCO / NoCaps captions, VQAv2, OK-VQA, GQA) and
// score the answers (docs/evaluation.md). Under torchrun or `minigpt4 launch` each process
// answers its share; rank 0 writes results.json and metrics.json and prints the metrics.
#include "apps/commands.h"
#include "minigpt4/common/config.h"
#include "minigpt4/common/limits.h"
#include "minigpt4/common/device.h"
#include "minigpt4/common/log.h"
#include "minigpt4/common/run_settings.h"
#include "minigpt4/distributed/environment.h"
#include "minigpt4/distributed/group.h"
#include "minigpt4/distributed/init.h"
#include "minigpt4/evaluate/runner.h"

#include <fmt/format.h>

namespace minigpt4::apps {

void add_evaluate_command(CLI::App& app) {
  struct Args {
    std::string cfg_path;
    std::vector<std::string> options;
    int gpu_id = 0;
    int64_t stop_after = -1;
  };
  auto args = std::make_shared<Args>();
  auto* cmd = app.add_subcommand("evaluate",
                                 "Answer a benchmark's images/questions with a model and score them "
                                 "(results.json, metrics.json); resumes where a killed run stopped");
  cmd->add_option("--cfg-path", args->cfg_path, "eval config with an evaluation: section (eval_configs/*.yaml)")
      ->required()
      ->check(CLI::ExistingFile);
  cmd->add_option("--options", args->options, "overrides, key=value (e.g. evaluation.image_root=/data/coco)");
  cmd->add_option("--gpu-id", args->gpu_id, "CUDA device index (run.device: cuda); launched ranks use LOCAL_RANK")
      ->capture_default_str();
  cmd->add_option("--stop-after", args->stop_after,
                  "answer at most N items (per rank) in this run, then stop; running again continues (-1: all)")
      ->capture_default_str();
  cmd->callback([args] {
    const auto config = Config::load(args->cfg_path, args->options);
    apply_input_limits(config);  // limits.*: what input files may make us allocate
    const auto launch = distributed::launch_environment_from_env();
    const RunSettings run = RunSettings::from_config(config);
    evaluate::EvaluateOptions options;
    options.device = select_device(run.device, distributed::gpu_for_rank(launch, args->gpu_id));
    options.group = distributed::init_distributed(run.distributed, launch, options.device);
    options.stop_after = args->stop_after;
    log::info("device: {}", describe_device(options.device));
    const auto result = evaluate::run_evaluation(config, options);
    if (!result.complete) return;
    log::info("results: {}; metrics: {}", result.results_path, result.metrics_path);
    fmt::print("{}\n", result.metrics.dump(2));
  });
}

}  // namespace minigpt4::apps
