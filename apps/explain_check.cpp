// `minigpt4 explain-check --cfg-path EVAL.yaml --heldout WORLD/heldout [--limit N]
// [--pictures DIR]`: do the quickstart model's explanations point at the objects its words
// name? Prints the share of each colour/shape word's map inside the objects' boxes against
// the boxes' area share, for the model and for a shuffled-projector control, as JSON
// (docs/explain.md).
#include "apps/commands.h"
#include "minigpt4/chat/chat.h"
#include "minigpt4/common/config.h"
#include "minigpt4/common/device.h"
#include "minigpt4/common/error.h"
#include "minigpt4/common/limits.h"
#include "minigpt4/common/run_settings.h"
#include "minigpt4/quickstart/explain_check.h"

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include <fstream>
#include <memory>

namespace minigpt4::apps {

void add_explain_check_command(CLI::App& app) {
  struct Args {
    std::string cfg_path, out;
    std::vector<std::string> options;
    quickstart::ExplainCheckOptions check;
  };
  auto args = std::make_shared<Args>();
  auto* cmd = app.add_subcommand("explain-check",
                                 "Measure whether answers' explanations point at the objects their "
                                 "words name, on a synthetic world's held-out pictures (JSON)");
  cmd->add_option("--cfg-path", args->cfg_path, "eval config of the model (the quickstart writes one)")
      ->required()
      ->check(CLI::ExistingFile);
  cmd->add_option("--options", args->options, "config overrides, key=value");
  cmd->add_option("--heldout", args->check.heldout_root,
                  "held-out folder of a `minigpt4 synth` world (annotations.json with boxes)")
      ->required()
      ->check(CLI::ExistingDirectory);
  cmd->add_option("--limit", args->check.limit, "first N pictures (-1: all)")->capture_default_str();
  cmd->add_option("--question", args->check.question, "what to ask about each picture")->capture_default_str();
  cmd->add_option("--max-new-tokens", args->check.max_new_tokens, "answer length limit")->capture_default_str();
  cmd->add_option("--pictures", args->check.pictures_dir,
                  "write overlays of the first pictures here (and of the control under shuffled/)");
  cmd->add_option("--picture-count", args->check.pictures, "how many pictures to draw")->capture_default_str();
  cmd->add_option("--out", args->out, "also write the JSON here");
  cmd->callback([args] {
    const auto config = Config::load(args->cfg_path, args->options);
    apply_input_limits(config);
    const auto device = select_device(RunSettings::from_config(config).device, 0);
    const auto model = ChatModel::load(config, device);
    const auto control = ChatModel::load(config, device);
    const auto result = quickstart::check_explanations(*model, *control, args->check).to_json();
    fmt::print("{}\n", result.dump(2));
    if (!args->out.empty()) {
      std::ofstream out(args->out);
      out << result.dump(2) << "\n";
      if (!out) fail("explain-check: cannot write {}", args->out);
    }
  });
}

}  // namespace minigpt4::apps
