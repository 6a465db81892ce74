#pragma once
// VPGTrans (Zhang et al. 2023): reuse a visual prompt generator (ViT + Q-Former + projector)
// trained for one LLM with another LLM. The projector maps into the source LLM's input
// embedding space; a "word converter", a linear map from the source's token embeddings to
// the target's, carries it over:
//   - token pairs: captions that tokenise to the same number of tokens under both
//     tokenizers, paired position by position;
//   - the converter Wc, bc minimises 1 - cos(Wc e_src + bc, e_tgt) over those pairs (SGD);
//   - merged with the source projector (Wp, bp): W = Wc Wp, b = Wc bp + bc, the target's
//     initial projector, then warmed up and fine-tuned (train_configs/vpgtrans_stage*.yaml).
#include <ATen/core/Tensor.h>

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

namespace minigpt4 {
class Tokenizer;
}

namespace minigpt4::train {

struct TokenPairs {
  std::vector<int64_t> source, target;              // source[i] pairs with target[i]
  int64_t captions_used = 0, captions_skipped = 0;  // skipped: different token counts
};

// Pairs from captions that tokenise (without special tokens) to equally many tokens.
TokenPairs token_pairs_from_captions(const std::vector<std::string>& captions, const Tokenizer& source,
                                     const Tokenizer& target);

struct WordConverterOptions {
  double lr = 5.0;  // plain SGD, as the original
  int64_t batch_size = 4096;
  int64_t epochs = 8;
  uint64_t seed = 42;  // pair shuffling and the converter's initialisation
  // Not in the original: keep the converter only on the span of the paired source
  // embeddings (Wc <- Wc P). Outside it the pairs never constrain Wc, which keeps its random
  // initialisation there; with a small vocabulary (a synthetic world's) that span is a
  // fraction of the embedding space, and a projector's outputs mostly lie outside it.
  bool span_only = false;
};

struct WordConverter {
  at::Tensor weight;        // [target_dim, source_dim]
  at::Tensor bias;          // [target_dim]
  double final_loss = 0;    // mean 1 - cos over the pairs after training
  int64_t source_span = 0;  // rank of the paired source embeddings
};

// Trains the converter on rows of the two embedding matrices ([V_src, d_src], [V_tgt,
// d_tgt]) picked by `pairs`; `on_epoch(epoch, mean_loss)` is called after each epoch.
WordConverter train_word_converter(const at::Tensor& source_embeddings, const at::Tensor& target_embeddings,
                                   const TokenPairs& pairs, const WordConverterOptions& options,
                                   const std::function<void(int64_t, double)>& on_epoch = {});

// The target's initial projector: W = Wc Wp, b = Wc bp + bc.
std::pair<at::Tensor, at::Tensor> merge_projector(const WordConverter& converter, const at::Tensor& projector_weight,
                                                  const at::Tensor& projector_bias);

// VPGTrans' first step on files: the word converter between two Hugging Face LLM
// directories (input embeddings and tokenizers), trained on token pairs from `captions`,
// merged with llama_proj.{weight,bias} of `source_checkpoint` (a training checkpoint or a
// state dict). `minigpt4 vpgtrans-convert` and the quickstart's transfer experiment.
struct ProjectorTransfer {
  at::Tensor weight, bias;  // the target's initial llama_proj
  TokenPairs pairs;
  WordConverter converter;
  int64_t sgd_steps = 0;  // the converter's optimizer steps (epochs x batches)
};
ProjectorTransfer transfer_projector(const std::string& source_llm, const std::string& target_llm,
                                     const std::string& source_checkpoint, const std::vector<std::string>& captions,
                                     const WordConverterOptions& options,
                                     const std::function<void(int64_t, double)>& on_epoch = {});

// Captions from a file: a text file (one per line), a cc_sbu_align filter_cap.json
// ({"annotations": [{"caption"}]}) or a COCO-style caption JSON (a list of {"caption": str
// or [str]}, or {"annotations": [{"caption"}]}).
std::vector<std::string> read_captions(const std::string& path);

}  // namespace minigpt4::train
