// `minigpt4 quickstart [--out runs/quickstart]`: the whole recipe on a generated world, on
// the CPU (language warm-up, stage 1, stage 2, held-out answers against a blind baseline,
// `minigpt4 evaluate` on a synthetic captioning and VQA set).
#include "apps/commands.h"
#include "minigpt4/common/log.h"
#include "minigpt4/quickstart/pipeline.h"

#include <fmt/format.h>

#include <thread>

namespace minigpt4::apps {

void add_quickstart_command(CLI::App& app) {
  auto opt = std::make_shared<quickstart::QuickstartOptions>();
  auto* cmd = app.add_subcommand("quickstart", "Train a tiny MiniGPT-4 end to end on a synthetic world (CPU, minutes)");
  cmd->add_option("--out", opt->out_dir, "output directory (replaced parts: world/, model/, warmup/, stage1/, stage2/)")
      ->capture_default_str();
  cmd->add_option("--config-dir", opt->config_dir, "where quickstart_{warmup,stage1,stage2}.yaml are")->capture_default_str();
  cmd->add_option("--prompt-path", opt->prompt_path, "stage-2 prompts")->capture_default_str();
  cmd->add_option("--seed", opt->seed, "seed of the world and the fresh model")->capture_default_str();
  cmd->add_option("--stage1-samples", opt->stage1_samples, "stage-1 image-caption pairs")->capture_default_str();
  cmd->add_option("--heldout-samples", opt->heldout_samples, "held-out pictures")->capture_default_str();
  cmd->add_option("--iterations-scale", opt->iterations_scale, "multiply every stage's iters_per_epoch (a smoke run: 0.05)")
      ->capture_default_str();
  cmd->add_option("--eval-limit", opt->eval_limit, "evaluate only the first N held-out pictures (-1: all)")
      ->capture_default_str();
  cmd->add_option("--options", opt->options, "overrides for every stage, key=value");
  cmd->callback([opt] {
    const auto summary = quickstart::run_quickstart(*opt);
    fmt::print("\nquickstart done in {:.0f} s: held-out attributes right {:.1f} % with the image, {:.1f} % blind "
               "(n = {})\n",
               summary["wall_seconds"].get<double>(), 100 * summary["accuracy"].get<double>(),
               100 * summary["blind_accuracy"].get<double>(), summary["n_heldout"].get<int64_t>());
    if (const auto& b = summary["benchmarks"]; b.contains("caption_CIDEr"))
      fmt::print("benchmark path ({} held-out pictures): captions CIDEr {:.3f}, BLEU-4 {:.3f}; VQA accuracy {:.1f} % "
                 "({})\n",
                 b["items"].get<int64_t>(), b["caption_CIDEr"].get<double>(), b["caption_Bleu_4"].get<double>(),
                 b["vqa_accuracy"].get<double>(), b["metrics"].get<std::string>());
    fmt::print("summary: {}/quickstart_summary.json\n", opt->out_dir);
    fmt::print("chat with it:  ./build/minigpt4 chat --cfg-path {} --image {}/world/heldout/image/00000.jpg "
               "--prompt \"Describe this image in detail.\"\n",
               summary["eval_config"].get<std::string>(), opt->out_dir);
    fmt::print("serve it:      ./build/minigpt4 serve --cfg-path {}\n", summary["eval_config"].get<std::string>());
  });
}

}  // namespace minigpt4::apps
