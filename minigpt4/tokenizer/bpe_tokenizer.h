#pragma once
// GPT-2's byte-level BPE tokenizer as Phi-2 (microsoft/phi-2, susnato/phi-2) and TinyGPT-V
// use it: Hugging Face's SLOW `CodeGenTokenizer` / `GPT2Tokenizer` (transformers 4.37),
// reproduced exactly (tests/data/tokenizer/bpe/golden.json):
//  - added and special tokens are cut out of the text first (HF's Trie, leftmost-longest)
//    and never split; their lstrip / rstrip / single_word flags act on the neighbours;
//  - the rest is pre-tokenised by GPT-2's regex (PCRE2, UTF + UCP), each piece's UTF-8
//    bytes mapped to printable characters (`bytes_to_unicode`) and merged by BPE rank;
//  - decoding maps the characters back to bytes and decodes them as UTF-8 with
//    errors="replace" (a partial sequence becomes U+FFFD); non-special added tokens are
//    written verbatim and, as in HF, joined to their neighbours with single spaces;
//  - when tokenizer_config.json's clean_up_tokenization_spaces is true (transformers 4.37's
//    default when the key is absent; Phi-2 sets it true), decode then applies HF's
//    clean_up_tokenization to the whole string (" ." -> ".", " n't" -> "n't", ...).
//
// Files: vocab.json + merges.txt (the slow tokenizer's) or, when those are absent,
// tokenizer.json (model.type "BPE" with a ByteLevel pre-tokenizer; merges as "a b" strings
// or ["a", "b"] pairs); plus tokenizer_config.json, special_tokens_map.json, added_tokens.json
// and tokenizer.json's added_tokens, combined the way transformers 4.37 combines them.
#include "minigpt4/tokenizer/tokenizer.h"

#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <string>
#include <unordered_map>
#include <unordered_set>
#include <vector>

namespace minigpt4 {

struct BpePairHash {
  size_t operator()(const std::pair<std::string, std::string>& p) const {
    return std::hash<std::string>()(p.first) * 31 + std::hash<std::string>()(p.second);
  }
};
using BpeMergeRanks = std::unordered_map<std::pair<std::string, std::string>, int64_t, BpePairHash>;

// GPT-2's BPE on one word's symbols: while some adjacent pair has a rank, take the pair of
// lowest rank and merge each of its occurrences, left to right. The slow tokenizer rescans
// the word after every merge, which is quadratic (a hostile megabyte-long word would take
// hours); this keeps the candidate pairs in a heap, O(n log n), and gives the same pieces:
// all occurrences of one pair are merged before any pair made by those merges is looked at,
// and a merge never makes another occurrence of its own pair.
std::vector<std::string> bpe_merge(std::vector<std::string> symbols, const BpeMergeRanks& ranks);

class BpeTokenizer final : public Tokenizer {
 public:
  // A Hugging Face directory (see above). Throws minigpt4::Error naming the file and the
  // problem for missing or malformed files.
  static BpeTokenizer from_pretrained(const std::filesystem::path& hf_dir);

  // Ids of `text` (HF `encode`); with add_special_tokens, bos first when add_bos_token.
  // Invalid UTF-8 in `text` is read as U+FFFD, as Python's errors="replace" would.
  std::vector<int64_t> encode(const std::string& text, bool add_special_tokens = true) const override;
  // HF `tokenize`: byte-level pieces ("Ġworld"), added and special tokens as themselves.
  std::vector<std::string> tokenize(const std::string& text) const override;
  // HF slow decode with clean_up_tokenization_spaces=None: cleaned up when the config says so.
  std::string decode(const std::vector<int64_t>& ids, bool skip_special_tokens = false) const override;
  // HF slow decode with an explicit clean_up_tokenization_spaces.
  std::string decode(const std::vector<int64_t>& ids, bool skip_special_tokens,
                     bool clean_up_tokenization_spaces) const;
  // tokenizer_config.json's clean_up_tokenization_spaces (absent: true, as transformers 4.37's
  // PreTrainedTokenizerBase defaults it; null: false).
  bool clean_up_tokenization_spaces() const { return clean_up_tokenization_spaces_; }
  // HF's PreTrainedTokenizerBase.clean_up_tokenization: Python str.replace of " .", " ?",
  // " !", " ,", " ' ", " n't", " 'm", " 's", " 've", " 're" (in that order, one after the
  // other, each over the whole string) by the same text without the leading space (" ' " -> "'").
  static std::string clean_up_tokenization(std::string text);

  std::string id_to_piece(int64_t id) const override;            // HF convert_ids_to_tokens
  int64_t piece_to_id(const std::string& piece) const override;  // unknown pieces give unk
  int64_t vocab_size() const override { return static_cast<int64_t>(vocab_.size()); }
  int64_t bos_id() const override { return bos_id_; }
  int64_t eos_id() const override { return eos_id_; }
  int64_t unk_id() const { return unk_id_; }
  // The configured pad token's id, -1 when there is none (Phi-2 has none). pad_id() stays
  // the interface's pad = eos, which is what TinyGPT-V pads with.
  int64_t configured_pad_id() const { return pad_token_id_; }
  bool add_bos_token() const override { return add_bos_; }
  bool add_eos_token() const override { return false; }  // GPT-2 style tokenizers never add eos
  bool add_prefix_space() const { return add_prefix_space_; }
  // Ids of HF's `all_special_ids` (bos, eos, unk, sep, pad, cls, mask, additional specials):
  // the ones decode(skip_special_tokens=true) drops.
  const std::vector<int64_t>& special_ids() const { return special_ids_; }
  // HF `len(tokenizer)`: the base vocabulary plus the added tokens outside it.
  int64_t size() const { return size_; }

  // An added token (HF AddedToken): never split; lstrip/rstrip swallow the whitespace next
  // to it, single_word glues it to a neighbour that is not separated by a space.
  struct AddedToken {
    std::string content;
    bool special = false;
    bool lstrip = false;
    bool rstrip = false;
    bool single_word = false;
  };

 private:
  BpeTokenizer() = default;
  std::vector<std::string> split_on_added_tokens(const std::string& text) const;
  std::vector<std::string> bpe(const std::string& word) const;
  std::string tokens_to_string(const std::vector<std::string>& tokens) const;
  void build_added_token_trie();

  struct TrieNode {
    std::unordered_map<uint32_t, int> next;  // code point -> node index
    bool terminal = false;
  };
  struct Regex;  // the compiled GPT-2 pre-tokenisation pattern (PCRE2)
  struct Cache;  // word -> BPE pieces, shared by copies

  std::unordered_map<std::string, int64_t> vocab_;        // HF `encoder`
  std::unordered_map<int64_t, std::string> id_to_token_;  // HF `decoder`
  BpeMergeRanks ranks_;
  std::map<int64_t, AddedToken> added_by_id_;           // HF `_added_tokens_decoder`
  std::unordered_map<std::string, int64_t> added_ids_;  // HF `_added_tokens_encoder`
  std::vector<TrieNode> trie_;                          // over every added token's content
  std::unordered_set<std::string> verbatim_;            // decoded outside the byte map (HF "legacy" added tokens)
  std::unordered_set<int64_t> special_id_set_;
  std::vector<int64_t> special_ids_;
  std::shared_ptr<const Regex> regex_;
  std::shared_ptr<Cache> cache_;
  std::string unk_token_;
  std::filesystem::path source_;  // for messages
  bool add_bos_ = false;
  bool add_prefix_space_ = false;
  bool split_special_tokens_ = false;
  bool clean_up_tokenization_spaces_ = true;
  int64_t bos_id_ = -1, eos_id_ = -1, unk_id_ = -1, pad_token_id_ = -1, size_ = 0;
};

}  // namespace minigpt4
