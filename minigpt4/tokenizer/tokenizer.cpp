#include "minigpt4/tokenizer/tokenizer.h"

#include "minigpt4/common/error.h"
#include "minigpt4/io/gguf.h"
#include "minigpt4/tokenizer/bpe_tokenizer.h"
#include "minigpt4/tokenizer/llama_tokenizer.h"

#include <algorithm>

namespace minigpt4 {

namespace fs = std::filesystem;

BatchEncoding Tokenizer::encode_batch(const std::vector<std::string>& texts, bool add_special_tokens, int max_length,
                                      int64_t pad_id) const {
  BatchEncoding out;
  const size_t n_special = add_special_tokens ? size_t(add_bos_token()) + size_t(add_eos_token()) : 0;
  size_t longest = 0;
  for (const auto& text : texts) {
    std::vector<int64_t> body = encode(text, false);
    // HF truncates the text (right side) so that text + special tokens fit; when even that
    // is impossible it only logs an error and leaves the text whole.
    if (max_length > 0 && body.size() + n_special > size_t(max_length)) {
      const size_t remove = body.size() + n_special - size_t(max_length);
      if (body.size() > remove) body.resize(body.size() - remove);
    }
    std::vector<int64_t> ids;
    if (add_special_tokens && add_bos_token()) ids.push_back(bos_id());
    ids.insert(ids.end(), body.begin(), body.end());
    if (add_special_tokens && add_eos_token()) ids.push_back(eos_id());
    longest = std::max(longest, ids.size());
    out.ids.push_back(std::move(ids));
  }
  for (auto& ids : out.ids) {
    std::vector<int64_t> mask(ids.size(), 1);
    mask.resize(longest, 0);
    ids.resize(longest, pad_id);
    out.attention_mask.push_back(std::move(mask));
  }
  return out;
}

std::shared_ptr<Tokenizer> load_tokenizer(const fs::path& path) {
  std::error_code ec;  // a path the system refuses (too long, no permission) counts as absent
  auto hf_dir = path;
  // A GGUF file (llama.cpp's): its own vocabulary, as llama.cpp reads it; a file without one
  // (tokenizer.ggml.tokens) takes the sentencepiece model beside it.
  if (path.extension() == ".gguf" && fs::is_regular_file(path, ec)) {
    if (io::read_gguf(path.string()).metadata.contains("tokenizer.ggml.tokens"))
      return std::make_shared<LlamaTokenizer>(LlamaTokenizer::from_gguf(path));
    hf_dir = path.parent_path().empty() ? fs::path(".") : path.parent_path();
    if (!fs::is_regular_file(hf_dir / "tokenizer.model", ec))
      fail("{}: this GGUF holds no vocabulary (tokenizer.ggml.tokens) and there is no tokenizer.model beside it in {}",
           path.string(), hf_dir.string());
  }
  if (!fs::is_directory(hf_dir, ec)) fail("tokenizer directory {} does not exist", hf_dir.string());
  if (fs::is_regular_file(hf_dir / "tokenizer.model", ec))
    return std::make_shared<LlamaTokenizer>(LlamaTokenizer::from_pretrained(hf_dir));
  // Byte-level BPE (GPT-2, CodeGen, Phi-2): the slow tokenizer's files or a tokenizer.json,
  // whose model type BpeTokenizer checks (naming the file when it is not BPE).
  if ((fs::is_regular_file(hf_dir / "vocab.json", ec) && fs::is_regular_file(hf_dir / "merges.txt", ec)) ||
      fs::is_regular_file(hf_dir / "tokenizer.json", ec))
    return std::make_shared<BpeTokenizer>(BpeTokenizer::from_pretrained(hf_dir));
  fail(
      "{} holds no tokenizer this build reads: expected tokenizer.model (sentencepiece, LLaMA), "
      "vocab.json + merges.txt or a BPE tokenizer.json (GPT-2 byte-level BPE: CodeGen, Phi-2)",
      hf_dir.string());
}

}  // namespace minigpt4
