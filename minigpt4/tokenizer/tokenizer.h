#pragma once
// What models, chat, training and evaluation need from a tokenizer, whatever the LLM family:
// LLaMA/Vicuna's sentencepiece model (llama_tokenizer.h) or the GPT-2 byte-level BPE that
// Phi-2 and TinyGPT-V use (bpe_tokenizer.h). `load_tokenizer` picks one from the files of a
// Hugging Face directory.
#include <cstdint>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

namespace minigpt4 {

// What `tokenizer(texts, padding='longest', truncation=True, max_length=...)` returns.
struct BatchEncoding {
  std::vector<std::vector<int64_t>> ids;             // right-padded to the longest row
  std::vector<std::vector<int64_t>> attention_mask;  // 1 = token, 0 = padding
};

class Tokenizer {
 public:
  virtual ~Tokenizer() = default;

  // Ids of `text`; with add_special_tokens, bos first (if add_bos_token) and eos last (if
  // add_eos_token).
  virtual std::vector<int64_t> encode(const std::string& text, bool add_special_tokens = true) const = 0;
  // The pieces of `text` (HF `tokenize`): special tokens appear as their own strings.
  virtual std::vector<std::string> tokenize(const std::string& text) const = 0;
  // HF decode with clean_up_tokenization_spaces left to each tokenizer's own setting:
  // BpeTokenizer follows tokenizer_config.json (Phi-2 / TinyGPT-V: true, so " ." -> "."
  // and the like); LlamaTokenizer always decodes with False (HF LlamaTokenizer's default,
  // which its parity fixtures match).
  virtual std::string decode(const std::vector<int64_t>& ids, bool skip_special_tokens = false) const = 0;

  virtual std::string id_to_piece(int64_t id) const = 0;
  virtual int64_t piece_to_id(const std::string& piece) const = 0;
  virtual int64_t vocab_size() const = 0;  // HF `vocab_size`: the base vocabulary, no added tokens
  virtual int64_t bos_id() const = 0;
  virtual int64_t eos_id() const = 0;
  virtual int64_t pad_id() const { return eos_id(); }  // MiniGPT-4 and TinyGPT-V: pad = eos
  virtual bool add_bos_token() const = 0;
  virtual bool add_eos_token() const = 0;

  // MiniGPT-4's training call: no padding beyond the longest row, truncation to
  // max_length (<= 0: none) counting the special tokens, padding on the right.
  BatchEncoding encode_batch(const std::vector<std::string>& texts, bool add_special_tokens, int max_length,
                             int64_t pad_id) const;
};

// The tokenizer of a Hugging Face model directory: `tokenizer.model` is sentencepiece
// (LLaMA); `vocab.json` + `merges.txt` or a BPE `tokenizer.json` is byte-level BPE (GPT-2,
// CodeGen, Phi). A `.gguf` file (llama.cpp's) takes its own vocabulary (tokenizer/gguf_vocab.h),
// or the tokenizer.model beside it when it holds none. Throws minigpt4::Error naming the
// directory or file when there is no tokenizer.
std::shared_ptr<Tokenizer> load_tokenizer(const std::filesystem::path& hf_dir_or_gguf);

}  // namespace minigpt4
