#include "minigpt4/tokenizer/llama_tokenizer.h"

#include <sentencepiece_processor.h>

#include <algorithm>
#include <climits>
#include <map>
#include <nlohmann/json.hpp>
#include <optional>

#include "minigpt4/common/error.h"
#include "minigpt4/common/limits.h"
#include "minigpt4/common/untrusted.h"
#include "minigpt4/io/gguf.h"
#include "minigpt4/tokenizer/gguf_vocab.h"

namespace minigpt4 {

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

// Python's str.isspace(): HF strips with str.lstrip()/rstrip(), which know Unicode spaces.
bool is_py_space(uint32_t c) {
  return (c >= 0x09 && c <= 0x0d) || (c >= 0x1c && c <= 0x20) || c == 0x85 || c == 0xa0 || c == 0x1680 ||
         (c >= 0x2000 && c <= 0x200a) || c == 0x2028 || c == 0x2029 || c == 0x202f || c == 0x205f || c == 0x3000;
}

// The code point starting at s[i] and its byte length (malformed bytes count as one
// non-space character, so they are never stripped).
std::pair<uint32_t, size_t> code_point_at(const std::string& s, size_t i) {
  const auto b = static_cast<unsigned char>(s[i]);
  size_t len = b < 0x80 ? 1 : (b >> 5) == 0x6 ? 2 : (b >> 4) == 0xe ? 3 : (b >> 3) == 0x1e ? 4 : 0;
  if (len == 0 || i + len > s.size()) return {0xfffd, 1};
  uint32_t c = len == 1 ? b : b & (0xff >> (len + 1));
  for (size_t k = 1; k < len; ++k) c = (c << 6) | (static_cast<unsigned char>(s[i + k]) & 0x3f);
  return {c, len};
}

std::string lstrip(const std::string& s) {
  size_t i = 0;
  while (i < s.size()) {
    auto [c, len] = code_point_at(s, i);
    if (!is_py_space(c)) break;
    i += len;
  }
  return s.substr(i);
}

std::string rstrip(const std::string& s) {
  size_t end = s.size();
  while (end > 0) {
    size_t start = end - 1;  // back up to the first byte of the last code point
    while (start > 0 && (static_cast<unsigned char>(s[start]) & 0xc0) == 0x80 && end - start < 4) --start;
    auto [c, len] = code_point_at(s, start);
    if (start + len != end || !is_py_space(c)) break;
    end = start;
  }
  return s.substr(0, end);
}

// The JSON files next to tokenizer.model, read with the limits of common/limits.h (size,
// nesting) like any file a stranger may hand us.
std::optional<json> read_json_if_exists(const fs::path& path) {
  std::error_code ec;
  if (!fs::exists(path, ec)) return std::nullopt;
  const std::string text = read_text_file(path, "LlamaTokenizer");
  try {
    return parse_json(text, path.string());
  } catch (const Error& e) {
    fail("LlamaTokenizer: {} is not valid JSON ({})", path.string(), e.what());
  }
}

// A boolean flag of an AddedToken object (absent: false).
bool flag(const json& v, const char* key, const fs::path& file, const std::string& token_key) {
  if (!v.contains(key)) return false;
  if (!v.at(key).is_boolean())
    fail("LlamaTokenizer: {}.{} in {} must be true or false, not {}", token_key, key, file.string(),
         describe_json(v.at(key)));
  return v.at(key).get<bool>();
}

using Token = LlamaTokenizer::NoSplitToken;

// A token from tokenizer_config.json. LlamaTokenizer.__init__ wraps a plain string in
// AddedToken(lstrip=False, rstrip=False), so only the dict form can ask for stripping.
Token token_from_config(const json& v, const std::string& key, const fs::path& file) {
  if (v.is_string()) return Token{v.get<std::string>(), -1, true, false, false, false};
  if (v.is_object() && v.contains("content") && v.at("content").is_string())
    return Token{v.at("content").get<std::string>(), -1, true, false, flag(v, "lstrip", file, key),
                 flag(v, "rstrip", file, key)};
  fail("LlamaTokenizer: {} in {} must be a string or an AddedToken object with a string \"content\", not {}", key,
       file.string(), describe_json(v));
}

// A token from special_tokens_map.json: HF setattr()s the value as is, and a plain string
// (not an AddedToken) makes tokenize() strip the whitespace on both sides of it.
Token token_from_map(const json& v, const std::string& key, const fs::path& file) {
  if (v.is_string()) return Token{v.get<std::string>(), -1, true, false, true, true};
  return token_from_config(v, key, file);
}

// additional_special_tokens: __init__ does not wrap these, so plain strings stay str (and
// strip) whichever file they come from.
std::vector<Token> token_list(const json& v, const std::string& key, const fs::path& file) {
  if (!v.is_array()) fail("LlamaTokenizer: {} in {} must be a list", key, file.string());
  std::vector<Token> out;
  for (const auto& item : v) out.push_back(token_from_map(item, key, file));
  return out;
}

bool get_bool(const json& config, const char* key, bool fallback) {
  return config.contains(key) && config.at(key).is_boolean() ? config.at(key).get<bool>() : fallback;
}

}  // namespace

std::shared_ptr<const sentencepiece::SentencePieceProcessor> LlamaTokenizer::load_model_file(
    const fs::path& model_path) {
  std::error_code ec;
  if (!fs::is_regular_file(model_path, ec))
    fail("LlamaTokenizer: sentencepiece model {} not found", model_path.string());
  // sentencepiece reads the whole file into memory: a real model is under a few MB.
  const auto size = fs::file_size(model_path, ec);
  if (!ec && size > static_cast<uintmax_t>(input_limits().max_text_file_bytes))
    fail(
        "LlamaTokenizer: sentencepiece model {} is {} bytes, more than the {} a tokenizer file may have "
        "(limits.max_text_file_bytes)",
        model_path.string(), size, input_limits().max_text_file_bytes);
  auto sp = std::make_shared<sentencepiece::SentencePieceProcessor>();
  if (const auto status = sp->Load(model_path.string()); !status.ok())
    fail("LlamaTokenizer: cannot load sentencepiece model {}: {}", model_path.string(),
         excerpt(status.ToString(), 300));
  return sp;
}

LlamaTokenizer::LlamaTokenizer(std::shared_ptr<const sentencepiece::SentencePieceProcessor> sp,
                               const fs::path& model_path, bool add_bos, bool add_eos, std::vector<NoSplitToken> tokens,
                               const std::string& bos, const std::string& eos, const std::string& unk)
    : sp_(std::move(sp)), model_path_(model_path), add_bos_(add_bos), add_eos_(add_eos) {
  const int64_t sp_size = sp_->GetPieceSize();
  const int64_t sp_unk = sp_->PieceToId(unk);
  // HF loads added_tokens.json before it adds missing special tokens, so those come after.
  int64_t next_added = sp_size;
  for (const auto& t : tokens) next_added = std::max(next_added, t.id + 1);
  for (const auto& t : tokens) {
    if (t.content.empty() || by_content_.count(t.content)) continue;  // first definition wins
    NoSplitToken tok = t;
    if (tok.id < 0) {
      // HF: a token the vocabulary does not know (piece_to_id gives unk) gets the next id.
      const int64_t id = sp_->PieceToId(tok.content);
      tok.id = (id == sp_unk && tok.content != unk) ? next_added++ : id;
    }
    tok.added = tok.id >= sp_size;
    by_content_[tok.content] = no_split_.size();
    if (tok.added) added_by_id_[tok.id] = no_split_.size();
    no_split_.push_back(tok);
  }
  bos_id_ = piece_to_id(bos);
  eos_id_ = piece_to_id(eos);
  unk_id_ = piece_to_id(unk);
}

LlamaTokenizer LlamaTokenizer::from_model_file(const fs::path& model_path) {
  // LlamaTokenizer's defaults: AddedToken("<s>"/"</s>"/"<unk>") without stripping.
  std::vector<NoSplitToken> tokens = {{"<s>", -1, true, false, false, false},
                                      {"</s>", -1, true, false, false, false},
                                      {"<unk>", -1, true, false, false, false}};
  return LlamaTokenizer(load_model_file(model_path), model_path, true, false, tokens, "<s>", "</s>", "<unk>");
}

LlamaTokenizer LlamaTokenizer::from_gguf(const fs::path& gguf_path) {
  const auto gguf = io::read_gguf(gguf_path.string());
  auto sp = std::make_shared<sentencepiece::SentencePieceProcessor>();
  if (const auto status = sp->LoadFromSerializedProto(sentencepiece_model_from_gguf(gguf)); !status.ok())
    fail("LlamaTokenizer: the vocabulary of {} is not a sentencepiece model: {}", gguf_path.string(),
         excerpt(status.ToString(), 300));
  const auto piece = [&](const char* key, int64_t fallback) {
    const auto id = gguf.metadata.contains(key) ? gguf.metadata.at(key).get<int64_t>() : fallback;
    return sp->IdToPiece(static_cast<int>(id));  // in range: sentencepiece_model_from_gguf checked it
  };
  const auto bos = piece("tokenizer.ggml.bos_token_id", 1), eos = piece("tokenizer.ggml.eos_token_id", 2);
  const auto unk = sp->IdToPiece(sp->unk_id());
  const auto flag = [&](const char* key, bool fallback) {
    return gguf.metadata.contains(key) && gguf.metadata.at(key).is_boolean() ? gguf.metadata.at(key).get<bool>()
                                                                             : fallback;
  };
  std::vector<NoSplitToken> tokens = {
      {bos, -1, true, false, false, false}, {eos, -1, true, false, false, false}, {unk, -1, true, false, false, false}};
  return LlamaTokenizer(std::move(sp), gguf_path, flag("tokenizer.ggml.add_bos_token", true),
                        flag("tokenizer.ggml.add_eos_token", false), tokens, bos, eos, unk);
}

LlamaTokenizer LlamaTokenizer::from_pretrained(const fs::path& hf_dir) {
  std::error_code ec;
  if (!fs::is_directory(hf_dir, ec)) fail("LlamaTokenizer: tokenizer directory {} does not exist", hf_dir.string());
  const fs::path model = hf_dir / "tokenizer.model";
  if (!fs::is_regular_file(model, ec))
    fail("LlamaTokenizer: {} not found (the slow LLaMA tokenizer needs the sentencepiece model)", model.string());

  // The same order as transformers 4.28: __init__ kwargs from tokenizer_config.json, then
  // special_tokens_map.json overrides, then added_tokens.json.
  const fs::path config_path = hf_dir / "tokenizer_config.json";
  const json config = read_json_if_exists(config_path).value_or(json::object());
  if (!config.is_object())
    fail("LlamaTokenizer: {} must be a JSON object, not {}", config_path.string(), describe_json(config));
  Token bos{"<s>", -1, true, false, false, false};
  Token eos{"</s>", -1, true, false, false, false};
  Token unk{"<unk>", -1, true, false, false, false};
  std::optional<Token> pad;
  std::vector<Token> additional;
  auto apply = [&](const json& j, bool from_map, const fs::path& file) {
    auto one = [&](const char* key, Token& slot) {
      if (!j.contains(key) || j.at(key).is_null()) return;
      slot = from_map ? token_from_map(j.at(key), key, file) : token_from_config(j.at(key), key, file);
    };
    one("bos_token", bos);
    one("eos_token", eos);
    one("unk_token", unk);
    if (j.contains("pad_token") && !j.at("pad_token").is_null()) {
      pad = Token{};
      one("pad_token", *pad);
    }
    if (j.contains("additional_special_tokens") && !j.at("additional_special_tokens").is_null())
      additional = token_list(j.at("additional_special_tokens"), "additional_special_tokens", file);
  };
  apply(config, false, config_path);
  const fs::path map_path = hf_dir / "special_tokens_map.json";
  if (auto map = read_json_if_exists(map_path)) {
    if (!map->is_object())
      fail("LlamaTokenizer: {} must be a JSON object, not {}", map_path.string(), describe_json(*map));
    apply(*map, true, map_path);
  }

  std::vector<Token> tokens = {bos, eos, unk};
  tokens.insert(tokens.end(), additional.begin(), additional.end());
  // MiniGPT-4 replaces pad with eos, so the configured pad string is no longer special; HF
  // still never splits it and, as a plain no-split string, strips around it.
  if (pad) tokens.push_back(Token{pad->content, -1, false, false, true, true});

  const fs::path added_path = hf_dir / "added_tokens.json";
  if (auto added = read_json_if_exists(added_path)) {
    if (!added->is_object()) fail("LlamaTokenizer: {} must map strings to ids", added_path.string());
    std::map<int64_t, std::string> by_id;
    for (const auto& item : added->items()) {
      const json& id = item.value();
      if (!id.is_number_integer() || id.get<int64_t>() < 0 || id.get<int64_t>() > INT32_MAX)
        fail("LlamaTokenizer: {}: the id of '{}' is {}, not an integer from 0 to {}", added_path.string(),
             excerpt(item.key()), describe_json(id), INT32_MAX);
      by_id[id.get<int64_t>()] = item.key();
    }
    for (const auto& [id, content] : by_id) {
      // Specials listed here keep their special role (earlier entries win); others are
      // ordinary added tokens, which HF strips around like any plain string.
      for (auto& t : tokens)
        if (t.content == content) t.id = id;
      tokens.push_back(Token{content, id, false, false, true, true});
    }
  }
  return LlamaTokenizer(load_model_file(model), model, get_bool(config, "add_bos_token", true),
                        get_bool(config, "add_eos_token", false), tokens, bos.content, eos.content, unk.content);
}

const LlamaTokenizer::NoSplitToken* LlamaTokenizer::find_no_split(const std::string& content) const {
  auto it = by_content_.find(content);
  return it == by_content_.end() ? nullptr : &no_split_[it->second];
}

const LlamaTokenizer::NoSplitToken* LlamaTokenizer::find_added_id(int64_t id) const {
  auto it = added_by_id_.find(id);
  return it == added_by_id_.end() ? nullptr : &no_split_[it->second];
}

bool LlamaTokenizer::is_special_id(int64_t id) const {
  return std::any_of(no_split_.begin(), no_split_.end(),
                     [&](const NoSplitToken& t) { return t.special && t.id == id; });
}

std::vector<LlamaTokenizer::Chunk> LlamaTokenizer::split_on_no_split_tokens(const std::string& text) const {
  std::vector<Chunk> chunks;
  size_t start = 0;
  for (size_t i = 0; i < text.size();) {
    const NoSplitToken* best = nullptr;
    for (const auto& t : no_split_)
      if (text.compare(i, t.content.size(), t.content) == 0 && (!best || t.content.size() > best->content.size()))
        best = &t;
    if (!best) {
      ++i;
      continue;
    }
    if (i > start) chunks.push_back({text.substr(start, i - start), nullptr});
    chunks.push_back({best->content, best});
    i += best->content.size();
    start = i;
  }
  if (start < text.size()) chunks.push_back({text.substr(start), nullptr});

  // rstrip: the token eats the whitespace on its right; lstrip: on its left.
  for (size_t i = 0; i < chunks.size(); ++i) {
    const NoSplitToken* t = chunks[i].token;
    if (!t) continue;
    if (t->rstrip && i + 1 < chunks.size() && !chunks[i + 1].token) chunks[i + 1].text = lstrip(chunks[i + 1].text);
    if (t->lstrip && i > 0 && !chunks[i - 1].token) chunks[i - 1].text = rstrip(chunks[i - 1].text);
  }
  return chunks;
}

std::vector<std::string> LlamaTokenizer::tokenize(const std::string& text) const {
  std::vector<std::string> out;
  for (const auto& chunk : split_on_no_split_tokens(text)) {
    if (chunk.token) {
      out.push_back(chunk.token->content);
      continue;
    }
    if (chunk.text.empty()) continue;  // fully stripped
    // Each chunk is its own sentencepiece call, so each gets the dummy-prefix space.
    std::vector<std::string> pieces;
    if (const auto status = sp_->Encode(chunk.text, &pieces); !status.ok())
      fail("LlamaTokenizer: sentencepiece cannot encode text: {}", status.ToString());
    out.insert(out.end(), pieces.begin(), pieces.end());
  }
  return out;
}

std::vector<int64_t> LlamaTokenizer::encode(const std::string& text, bool add_special_tokens) const {
  std::vector<int64_t> ids;
  if (add_special_tokens && add_bos_) ids.push_back(bos_id_);
  for (const auto& piece : tokenize(text)) ids.push_back(piece_to_id(piece));
  if (add_special_tokens && add_eos_) ids.push_back(eos_id_);
  return ids;
}

std::string LlamaTokenizer::decode_run(const std::vector<std::string>& pieces) const {
  std::string text;
  if (pieces.empty()) return text;
  if (const auto status = sp_->Decode(pieces, &text); !status.ok())
    fail("LlamaTokenizer: sentencepiece cannot decode: {}", status.ToString());
  return text;
}

// LlamaTokenizer.convert_tokens_to_string: special tokens verbatim, the rest through the
// sentencepiece decoder run by run (so each run loses its leading dummy-prefix space), and a
// space before a special token unless it is first or follows another special token.
std::string LlamaTokenizer::tokens_to_string(const std::vector<std::string>& tokens) const {
  std::string out;
  std::vector<std::string> run;
  bool prev_special = false;
  for (size_t i = 0; i < tokens.size(); ++i) {
    const NoSplitToken* t = find_no_split(tokens[i]);
    if (t && t->special) {
      if (!prev_special && i != 0) out += ' ';
      out += decode_run(run) + tokens[i];
      run.clear();
      prev_special = true;
    } else {
      run.push_back(tokens[i]);
      prev_special = false;
    }
  }
  return out + decode_run(run);
}

// PreTrainedTokenizer._decode: tokens outside the sentencepiece vocabulary (added tokens)
// split the text into parts that are joined with single spaces.
std::string LlamaTokenizer::decode(const std::vector<int64_t>& ids, bool skip_special_tokens) const {
  std::vector<std::string> parts, current;
  for (int64_t id : ids) {
    if (skip_special_tokens && is_special_id(id)) continue;
    if (const NoSplitToken* added = find_added_id(id)) {
      if (!current.empty()) parts.push_back(tokens_to_string(current));
      current.clear();
      parts.push_back(added->content);
    } else {
      current.push_back(id_to_piece(id));
    }
  }
  if (!current.empty()) parts.push_back(tokens_to_string(current));
  std::string text;
  for (size_t i = 0; i < parts.size(); ++i) text += (i ? " " : "") + parts[i];
  return text;
}

std::string LlamaTokenizer::id_to_piece(int64_t id) const {
  if (id >= 0 && id < vocab_size()) return sp_->IdToPiece(static_cast<int>(id));
  if (const NoSplitToken* added = find_added_id(id)) return added->content;
  fail("LlamaTokenizer: token id {} is outside the vocabulary of {} ({} pieces)", id, model_path_.string(),
       vocab_size());
}

int64_t LlamaTokenizer::piece_to_id(const std::string& piece) const {
  if (const NoSplitToken* t = find_no_split(piece); t && t->added) return t->id;
  return sp_->PieceToId(piece);  // unknown pieces give the unk id, as in HF
}

int64_t LlamaTokenizer::vocab_size() const { return sp_->GetPieceSize(); }

}  // namespace minigpt4
