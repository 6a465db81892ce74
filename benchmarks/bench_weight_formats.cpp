// How much each LLM weight format (docs/weights.md) costs a trained model, measured on the
// quickstart's (scripts/quickstart.sh; its run folder holds the config and the held-out set):
//
//   bench_weight_formats --cfg-path runs/quickstart/minigpt4_quickstart_eval.yaml
//                        --heldout runs/quickstart/world/heldout [--limit 300] [--answers 100]
//
// For each format the model is loaded again (the same files, `--options` as a user would set
// them) and measured on the same held-out pictures:
//   perplexity  exp of the mean over pictures of each one's caption loss (per token), its
//               fixed-phrasing caption ("two red circles on the left.") after the image wrapped
//               as the quickstart's stage 1 wraps it (--prompt), the training forward;
//   attributes  the share of shape / colour / count / position its greedy chat answers get
//               right (the quickstart's own measure, quickstart/heldout.h), on the first
//               --answers pictures.
// Ratios are against the unquantised row (the config's llm_precision) of the same run. Nothing is asserted.
#include "minigpt4/common/config.h"
#include "minigpt4/common/limits.h"
#include "minigpt4/models/memory.h"
#include "minigpt4/models/minigpt4.h"
#include "minigpt4/processors/image_processor.h"
#include "minigpt4/quickstart/heldout.h"
#include "minigpt4/tokenizer/tokenizer.h"

#include <CLI/CLI.hpp>
#include <fmt/format.h>
#include <torch/torch.h>

#include <cmath>
#include <string>
#include <vector>

using namespace minigpt4;

int main(int argc, char** argv) {
  CLI::App app{"Perplexity and held-out accuracy of a quickstart model per LLM weight format"};
  std::string cfg_path, heldout_root;
  int64_t limit = 300, answers = 100;
  std::string prompt = "<Img><ImageHere></Img>";
  app.add_option("--cfg-path", cfg_path, "the quickstart's evaluation config")->required();
  app.add_option("--heldout", heldout_root, "the held-out folder (world/heldout)")->required();
  app.add_option("--limit", limit, "held-out pictures for the perplexity")->capture_default_str();
  app.add_option("--answers", answers, "held-out pictures answered per format")->capture_default_str();
  app.add_option("--prompt", prompt, "the image's wrapping before the caption")->capture_default_str();
  CLI11_PARSE(app, argc, argv);
  try {
    torch::NoGradGuard no_grad;
    struct Format {
      std::string name;
      std::vector<std::string> options;
    };
    const std::vector<Format> formats = {
        {"unquantised", {}},
        {"int8/channel", {"model.low_resource=True"}},
        {"8-bit g32", {"model.llm_weight_bits=8", "model.llm_weight_group_size=32"}},
        {"4-bit g32", {"model.llm_weight_bits=4", "model.llm_weight_group_size=32"}},
        {"4-bit g64", {"model.llm_weight_bits=4", "model.llm_weight_group_size=64"}},
        {"4-bit g128", {"model.llm_weight_bits=4", "model.llm_weight_group_size=128"}},
    };
    auto items = quickstart::read_heldout(heldout_root);
    if (limit >= 0 && static_cast<int64_t>(items.size()) > limit) items.resize(static_cast<size_t>(limit));
    fmt::print("{} held-out pictures, {} answered per format\n", items.size(),
               std::min<int64_t>(answers, items.size()));
    fmt::print("{:<14} {:>11} {:>8} {:>11} {:>9} {:>12}\n", "format", "perplexity", "ratio", "attributes", "ratio",
               "LLM bytes");
    double base_ppl = 0, base_acc = 0;
    for (const auto& f : formats) {
      auto options = f.options;
      options.push_back("model.freeze_llm=True");
      const auto config = Config::load(cfg_path, options);
      apply_input_limits(config);
      const auto model_config = MiniGPT4Config::from_config(config);
      const auto model = load_minigpt4(model_config, torch::kCPU);
      const auto tokenizer = load_tokenizer(model_config.llama_model);
      const ImageEvalProcessor processor(static_cast<int>(model->config.vision.image_size));
      double loss_sum = 0;
      for (const auto& item : items) {
        const auto image = processor.from_file(item.image_path).unsqueeze(0);
        loss_sum +=
            model->forward(image, {quickstart::canonical_caption(item.truth)}, prompt, *tokenizer).loss.item<double>();
      }
      const double ppl = std::exp(loss_sum / static_cast<double>(items.size()));
      quickstart::HeldoutOptions ho;
      ho.limit = answers;
      ho.blind = false;
      const auto result = quickstart::evaluate_heldout(*model, *tokenizer, items, ho);
      const double acc = result.seeing.accuracy();
      if (f.name == "unquantised") base_ppl = ppl, base_acc = acc;
      fmt::print("{:<14} {:>11.4f} {:>8.4f} {:>10.1f}% {:>9.3f} {:>12}\n", f.name, ppl, ppl / base_ppl, 100 * acc,
                 acc / base_acc, format_bytes(tensor_bytes(*model->llama_model).total));
      std::fflush(stdout);
    }
  } catch (const std::exception& e) {
    fmt::print(stderr, "error: {}\n", e.what());
    return 1;
  }
  return 0;
}
