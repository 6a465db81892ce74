#pragma once
// The LLaMA tokenizer exactly as MiniGPT-4 uses it: Hugging Face's SLOW `LlamaTokenizer`
// (transformers 4.28) over a sentencepiece model, with pad = eos.
//
// Hugging Face adds three things on top of raw sentencepiece, all reproduced here:
//  - special-token strings in the text ("<s>", "</s>", "<unk>") are cut out and mapped to
//    their ids; every remaining chunk is encoded on its own, so each one gets
//    sentencepiece's dummy-prefix space;
//  - `add_special_tokens` prepends bos (and appends eos when the config asks for it);
//  - decoding writes special tokens verbatim and runs the sentencepiece decoder on each run
//    of ordinary pieces; a special token that follows such a run puts a space in front of
//    the run (not of itself) unless the run opens the string.
#include "minigpt4/tokenizer/tokenizer.h"

#include <cstdint>
#include <filesystem>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

namespace sentencepiece {
class SentencePieceProcessor;
}

namespace minigpt4 {

class LlamaTokenizer final : public Tokenizer {
 public:
  // A bare model file with Hugging Face's defaults: "<s>"/"</s>"/"<unk>", bos added, no eos.
  static LlamaTokenizer from_model_file(const std::filesystem::path& model_path);
  // A Hugging Face directory: tokenizer.model plus, when present, tokenizer_config.json,
  // special_tokens_map.json and added_tokens.json (read the way transformers 4.28 does).
  static LlamaTokenizer from_pretrained(const std::filesystem::path& hf_dir);
  // A GGUF file's own vocabulary (tokenizer.ggml.*: pieces, scores, types, bos/eos/unk and
  // add_bos/add_eos), written back as the sentencepiece model llama.cpp's converter read.
  static LlamaTokenizer from_gguf(const std::filesystem::path& gguf_path);

  // Ids of `text`; with add_special_tokens, bos first (if add_bos_token) and eos last (if
  // add_eos_token).
  std::vector<int64_t> encode(const std::string& text, bool add_special_tokens = true) const override;
  // The pieces of `text` (HF `tokenize`): special tokens appear as their own strings.
  std::vector<std::string> tokenize(const std::string& text) const override;
  // HF slow decode with clean_up_tokenization_spaces=False.
  std::string decode(const std::vector<int64_t>& ids, bool skip_special_tokens = false) const override;

  std::string id_to_piece(int64_t id) const override;
  int64_t piece_to_id(const std::string& piece) const override;
  int64_t vocab_size() const override;  // the sentencepiece vocabulary (no added tokens)
  int64_t bos_id() const override { return bos_id_; }
  int64_t eos_id() const override { return eos_id_; }
  int64_t unk_id() const { return unk_id_; }
  bool add_bos_token() const override { return add_bos_; }
  bool add_eos_token() const override { return add_eos_; }

  // A string the tokenizer never splits (a special or added token), and whether whitespace
  // next to it is swallowed: HF strips both sides of plain-string tokens and follows the
  // lstrip/rstrip flags of AddedToken ones.
  struct NoSplitToken {
    std::string content;
    int64_t id = 0;
    bool special = false;  // decode: in all_special_tokens (skippable, sp-run boundary)
    bool added = false;    // outside the sentencepiece vocab (from added_tokens.json)
    bool lstrip = false;
    bool rstrip = false;
  };

 private:
  // `tokens` lists every no-split token in HF's precedence (specials first); ids < 0 are
  // resolved against the vocabulary, as `sanitize_special_tokens` would.
  LlamaTokenizer(std::shared_ptr<const sentencepiece::SentencePieceProcessor> sp,
                 const std::filesystem::path& model_path, bool add_bos, bool add_eos, std::vector<NoSplitToken> tokens,
                 const std::string& bos, const std::string& eos, const std::string& unk);
  static std::shared_ptr<const sentencepiece::SentencePieceProcessor> load_model_file(
      const std::filesystem::path& model_path);
  const NoSplitToken* find_no_split(const std::string& content) const;
  const NoSplitToken* find_added_id(int64_t id) const;
  bool is_special_id(int64_t id) const;
  // Cuts `text` at no-split tokens (leftmost-longest, like HF's Trie) and applies their
  // whitespace stripping; chunks with token == nullptr are plain text.
  struct Chunk {
    std::string text;
    const NoSplitToken* token = nullptr;
  };
  std::vector<Chunk> split_on_no_split_tokens(const std::string& text) const;
  std::string decode_run(const std::vector<std::string>& pieces) const;
  std::string tokens_to_string(const std::vector<std::string>& tokens) const;

  std::shared_ptr<const sentencepiece::SentencePieceProcessor> sp_;
  std::filesystem::path model_path_;
  std::vector<NoSplitToken> no_split_;  // bos, eos, unk, additional specials, added tokens
  std::unordered_map<std::string, size_t> by_content_;
  std::unordered_map<int64_t, size_t> added_by_id_;
  bool add_bos_ = true;
  bool add_eos_ = false;
  int64_t bos_id_ = 1, eos_id_ = 2, unk_id_ = 0;
};

}  // namespace minigpt4
