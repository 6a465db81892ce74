// `minigpt4 vpgtrans-demo [--from runs/quickstart]`: VPGTrans on the embedded default. The
// quickstart's trained visual part moves to a second tiny LLM of another width and
// vocabulary, against training it from scratch for that LLM; both scored on the held-out
// set at step checkpoints (minigpt4/quickstart/vpgtrans_experiment.h, docs/vpgtrans.md).
#include "apps/commands.h"
#include "minigpt4/quickstart/vpgtrans_experiment.h"

#include <fmt/format.h>

namespace minigpt4::apps {

namespace {

void add_experiment_options(CLI::App& cmd, quickstart::VpgtransExperimentOptions& opt) {
  cmd.add_option("--target-hidden", opt.target.hidden, "the second LLM's width")->capture_default_str();
  cmd.add_option("--target-intermediate", opt.target.intermediate, "the second LLM's MLP width")->capture_default_str();
  cmd.add_option("--target-vocab", opt.target.vocab_size, "the second LLM's tokenizer vocabulary")
      ->capture_default_str();
  cmd.add_option("--scratch-eval-every", opt.scratch_eval_every,
                 "steps between scored checkpoints of the from-scratch run")
      ->capture_default_str();
  cmd.add_option("--transfer-eval-every", opt.transfer_eval_every, "steps between scored checkpoints of the transfer")
      ->capture_default_str();
  cmd.add_option("--converter-epochs", opt.converter.epochs, "word converter passes over the token pairs")
      ->capture_default_str();
  cmd.add_flag("--converter-span-only", opt.converter.span_only,
               "keep the word converter only on the span of the paired source embeddings (not in the original)");
  cmd.add_option("--eval-limit", opt.eval_limit, "held-out pictures scored per checkpoint (-1: all)")
      ->capture_default_str();
}

void print_vpgtrans_summary(const nlohmann::json& summary, const std::string& path) {
  fmt::print(
      "\nVPGTrans on the embedded default: LLM hidden {} / vocabulary {} -> hidden {} / vocabulary {}; "
      "held-out attributes right (n = {}) and caption loss\n{}summary: {}\n",
      summary["source"]["llm_hidden"].get<int64_t>(), summary["source"]["llm_vocab_size"].get<int64_t>(),
      summary["target"]["llm_hidden"].get<int64_t>(), summary["target"]["llm_vocab_size"].get<int64_t>(),
      summary["n_heldout"].get<int64_t>(), quickstart::format_vpgtrans_table(summary), path);
}

}  // namespace

void add_vpgtrans_demo_command(CLI::App& app) {
  auto opt = std::make_shared<quickstart::VpgtransExperimentOptions>();
  auto* cmd = app.add_subcommand(
      "vpgtrans-demo", "VPGTrans on the quickstart: transfer its visual part to another tiny LLM vs from scratch");
  cmd->add_option("--from", opt->from_dir, "a finished `minigpt4 quickstart --out` directory")->capture_default_str();
  cmd->add_option("--out", opt->out_dir, "working directory (default: <from>/vpgtrans)");
  cmd->add_option("--summary", opt->summary_path, "summary JSON (default: <from>/vpgtrans_summary.json)");
  cmd->add_option("--config-dir", opt->config_dir, "where quickstart_*.yaml are")->capture_default_str();
  cmd->add_option("--prompt-dir", opt->prompt_dir, "where image_only.txt is")->capture_default_str();
  cmd->add_option("--seed", opt->seed, "the second LLM's fresh weights")->capture_default_str();
  cmd->add_option("--iterations-scale", opt->iterations_scale, "multiply every run's iters_per_epoch")
      ->capture_default_str();
  add_experiment_options(*cmd, *opt);
  cmd->add_flag(
      "--reuse", opt->reuse,
      "keep the second LLM and the from-scratch curve of an earlier run with the same settings; redo the transfer");
  cmd->add_option("--options", opt->options, "overrides for every run, key=value");
  cmd->callback([opt] {
    const auto summary = quickstart::run_vpgtrans_experiment(*opt);
    print_vpgtrans_summary(summary,
                           opt->summary_path.empty() ? opt->from_dir + "/vpgtrans_summary.json" : opt->summary_path);
  });
}

}  // namespace minigpt4::apps
