// `minigpt4 vpgtrans-convert --source-llm DIR --target-llm DIR --source-ckpt PATH --captions
// FILE --out PATH`: VPGTrans' first step. Trains the word converter between the two LLMs'
// token embeddings and merges it with the source projector into the target's initial
// projector, saved as {"model": {"llama_proj.weight", "llama_proj.bias"}} (stage 1's model.ckpt).
#include "apps/commands.h"
#include "minigpt4/common/error.h"
#include "minigpt4/common/log.h"
#include "minigpt4/io/checkpoint.h"
#include "minigpt4/io/torch_checkpoint.h"
#include "minigpt4/tokenizer/tokenizer.h"
#include "minigpt4/train/vpgtrans.h"

#include <torch/torch.h>

namespace minigpt4::apps {

namespace {

torch::Tensor input_embeddings(const std::string& llm_dir) {
  const auto weights = io::load_state_dict(llm_dir);
  for (const auto& [name, tensor] : weights)
    if (name == "model.embed_tokens.weight" || name == "embed_tokens.weight") return tensor;
  fail("{}: no model.embed_tokens.weight (the LLM's input embeddings)", llm_dir);
}

torch::Tensor required(const StateDict& weights, const std::string& name, const std::string& path) {
  const auto it = weights.find(name);
  if (it == weights.end()) fail("{}: no '{}' (a MiniGPT-4 checkpoint with the trained projector is expected)", path, name);
  return it->second;
}

}  // namespace

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
      ->required()->check(CLI::ExistingDirectory);
  cmd->add_option("--target-llm", args->target_llm, "Hugging Face directory of the new LLM")
      ->required()->check(CLI::ExistingDirectory);
  cmd->add_option("--source-ckpt", args->source_ckpt, "checkpoint holding llama_proj.{weight,bias} for the source LLM")
      ->required()->check(CLI::ExistingFile);
  cmd->add_option("--captions", args->captions, "caption files (text lines, filter_cap.json or COCO JSON)")
      ->required()->check(CLI::ExistingFile);
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
    const auto source_tokenizer = load_tokenizer(args->source_llm);
    const auto target_tokenizer = load_tokenizer(args->target_llm);
    const auto pairs = train::token_pairs_from_captions(captions, *source_tokenizer, *target_tokenizer);
    log::info("{} captions: {} tokenise to equal lengths under both tokenizers ({} token pairs), {} do not",
              captions.size(), pairs.captions_used, pairs.source.size(), pairs.captions_skipped);
    const auto source = input_embeddings(args->source_llm), target = input_embeddings(args->target_llm);
    log::info("embeddings: source [{}], target [{}]", fmt::join(source.sizes(), ", "), fmt::join(target.sizes(), ", "));
    const auto converter = train::train_word_converter(source, target, pairs, args->options, [](int64_t epoch, double loss) {
      log::info("word converter epoch {}: mean 1 - cos {:.4f}", epoch + 1, loss);
    });
    const auto checkpoint = io::load_state_dict(args->source_ckpt);
    const auto [weight, bias] = train::merge_projector(converter, required(checkpoint, "llama_proj.weight", args->source_ckpt),
                                                       required(checkpoint, "llama_proj.bias", args->source_ckpt));
    io::save_torch_checkpoint(args->out, {{"llama_proj.weight", weight.contiguous()}, {"llama_proj.bias", bias.contiguous()}});
    log::info("wrote {}: llama_proj [{}] for the target LLM (use it as model.ckpt of the VPGTrans stage-1 config)",
              args->out, fmt::join(weight.sizes(), ", "));
  });
}

}  // namespace minigpt4::apps
