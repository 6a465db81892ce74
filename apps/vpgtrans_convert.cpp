// `minigpt4 vpgtrans-convert --source-llm DIR --target-llm DIR --source-ckpt PATH --captions
// FILE --out PATH`: VPGTrans' first step. Trains the word converter between the two LLMs'
// token embeddings and merges it with the source projector into the target's initial
// projector, saved as {"model": {"llama_proj.weight", "llama_proj.bias"}} (stage 1's model.ckpt).
#include "apps/commands.h"
#include "minigpt4/common/log.h"
#include "minigpt4/io/torch_checkpoint.h"
#include "minigpt4/train/vpgtrans.h"

#include <fmt/ranges.h>
#include <torch/torch.h>

namespace minigpt4::apps {

void add_vpgtrans_convert_command(CLI::App& app) {
  struct Args {
    std::string source_llm, target_llm, source_ckpt, out;
    std::vector<std::string> captions;
    train::WordConverterOptions options;
  };
  auto args = std::make_shared<Args>();
  auto* cmd = app.add_subcommand("vpgtrans-convert",
                                 "VPGTrans: word converter between two LLMs, merged with a trained projector");
  cmd->add_option("--source-llm", args->source_llm, "Hugging Face directory of the LLM the projector was trained for")
      ->required()
      ->check(CLI::ExistingDirectory);
  cmd->add_option("--target-llm", args->target_llm, "Hugging Face directory of the new LLM")
      ->required()
      ->check(CLI::ExistingDirectory);
  cmd->add_option("--source-ckpt", args->source_ckpt, "checkpoint holding llama_proj.{weight,bias} for the source LLM")
      ->required()
      ->check(CLI::ExistingFile);
  cmd->add_option("--captions", args->captions, "caption files (text lines, filter_cap.json or COCO JSON)")
      ->required()
      ->check(CLI::ExistingFile);
  cmd->add_option("--out", args->out, "where to write the target's initial projector (.pth)")->required();
  cmd->add_option("--epochs", args->options.epochs, "passes over the token pairs")->capture_default_str();
  cmd->add_option("--lr", args->options.lr, "SGD learning rate")->capture_default_str();
  cmd->add_option("--batch-size", args->options.batch_size, "token pairs per step")->capture_default_str();
  cmd->add_option("--seed", args->options.seed, "shuffling and initialisation")->capture_default_str();
  cmd->callback([args] {
    std::vector<std::string> captions;
    for (const auto& file : args->captions) {
      auto more = train::read_captions(file);
      captions.insert(captions.end(), more.begin(), more.end());
    }
    const auto transfer = train::transfer_projector(
        args->source_llm, args->target_llm, args->source_ckpt, captions, args->options,
        [](int64_t epoch, double loss) { log::info("word converter epoch {}: mean 1 - cos {:.4f}", epoch + 1, loss); });
    log::info("{} captions: {} tokenised to equal lengths under both tokenizers ({} token pairs), {} did not",
              captions.size(), transfer.pairs.captions_used, transfer.pairs.source.size(),
              transfer.pairs.captions_skipped);
    io::save_torch_checkpoint(args->out, {{"llama_proj.weight", transfer.weight.contiguous()},
                                          {"llama_proj.bias", transfer.bias.contiguous()}});
    log::info("wrote {}: llama_proj [{}] for the target LLM (use it as model.ckpt of the VPGTrans stage-1 config)",
              args->out, fmt::join(transfer.weight.sizes(), ", "));
  });
}

}  // namespace minigpt4::apps
