#pragma once
// Training a LLaMA-style sentencepiece tokenizer on a text corpus, for models built from
// scratch (the quickstart's tiny LLM). Same settings as LLaMA's: BPE, byte fallback (no
// <unk> in practice), split digits, a dummy-prefix space, no normalisation, unk=0 bos=1
// eos=2, no pad. BPE training on the whole corpus is deterministic. The result is a Hugging Face tokenizer directory
// LlamaTokenizer reads.
#include <cstdint>
#include <string>

namespace minigpt4 {

struct TokenizerTrainOptions {
  std::string corpus_path;  // UTF-8 text, one sentence per line
  std::string out_dir;      // gets tokenizer.model, tokenizer_config.json, special_tokens_map.json
  int vocab_size = 512;     // includes the 3 specials and the 256 byte pieces
};

// Trains and writes the files (atomically). An unreadable corpus, a vocabulary too small
// for the byte pieces, or a sentencepiece failure is an Error naming the corpus.
void train_llama_tokenizer(const TokenizerTrainOptions& options);

}  // namespace minigpt4
