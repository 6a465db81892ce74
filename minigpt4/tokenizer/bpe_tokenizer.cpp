#include "minigpt4/tokenizer/bpe_tokenizer.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include <algorithm>
#include <array>
#include <fstream>
#include <limits>
#include <mutex>
#include <nlohmann/json.hpp>
#include <optional>
#include <queue>
#include <sstream>

#include "minigpt4/common/error.h"
#include "minigpt4/common/untrusted.h"

namespace minigpt4 {

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

constexpr const char* kEndOfText = "<|endoftext|>";  // GPT2Tokenizer's default bos/eos/unk
const std::string kReplacement = "\xef\xbf\xbd";     // U+FFFD

// ---------------------------------------------------------------- UTF-8

void append_utf8(std::string& out, uint32_t c) {
  if (c < 0x80) {
    out += static_cast<char>(c);
  } else if (c < 0x800) {
    out += static_cast<char>(0xc0 | (c >> 6));
    out += static_cast<char>(0x80 | (c & 0x3f));
  } else if (c < 0x10000) {
    out += static_cast<char>(0xe0 | (c >> 12));
    out += static_cast<char>(0x80 | ((c >> 6) & 0x3f));
    out += static_cast<char>(0x80 | (c & 0x3f));
  } else {
    out += static_cast<char>(0xf0 | (c >> 18));
    out += static_cast<char>(0x80 | ((c >> 12) & 0x3f));
    out += static_cast<char>(0x80 | ((c >> 6) & 0x3f));
    out += static_cast<char>(0x80 | (c & 0x3f));
  }
}

// Python's bytes.decode("utf-8", errors="replace"): well-formed sequences (Unicode table
// 3-7: no overlongs, no surrogates, nothing above U+10FFFF) are kept, and each maximal
// prefix of an ill-formed one (or a lone bad byte) becomes one U+FFFD.
std::string utf8_replace(const std::string& in) {
  std::string out;
  out.reserve(in.size());
  const size_t n = in.size();
  size_t i = 0;
  while (i < n) {
    const auto b = static_cast<unsigned char>(in[i]);
    if (b < 0x80) {
      out += static_cast<char>(b);
      ++i;
      continue;
    }
    int need = 0;
    unsigned char lo = 0x80, hi = 0xbf;  // the allowed range of the second byte
    if (b >= 0xc2 && b <= 0xdf) {
      need = 1;
    } else if (b == 0xe0) {
      need = 2, lo = 0xa0;
    } else if ((b >= 0xe1 && b <= 0xec) || b == 0xee || b == 0xef) {
      need = 2;
    } else if (b == 0xed) {
      need = 2, hi = 0x9f;
    } else if (b == 0xf0) {
      need = 3, lo = 0x90;
    } else if (b >= 0xf1 && b <= 0xf3) {
      need = 3;
    } else if (b == 0xf4) {
      need = 3, hi = 0x8f;
    } else {
      out += kReplacement;
      ++i;
      continue;
    }
    size_t j = i + 1;
    int k = 0;
    for (; k < need && j < n; ++k, ++j) {
      const auto c = static_cast<unsigned char>(in[j]);
      if (c < (k == 0 ? lo : 0x80) || c > (k == 0 ? hi : 0xbf)) break;
    }
    if (k == need)
      out.append(in, i, j - i);
    else
      out += kReplacement;
    i = j;
  }
  return out;
}

// Code points of valid UTF-8 (utf8_replace's output) and the byte offset of each, plus the end.
void code_points(const std::string& s, std::vector<uint32_t>& cps, std::vector<size_t>& offsets) {
  cps.clear();
  offsets.clear();
  for (size_t i = 0; i < s.size();) {
    const auto b = static_cast<unsigned char>(s[i]);
    const size_t len = b < 0x80 ? 1 : b < 0xe0 ? 2 : b < 0xf0 ? 3 : 4;
    uint32_t c = len == 1 ? b : b & (0xff >> (len + 1));
    for (size_t k = 1; k < len && i + k < s.size(); ++k) c = (c << 6) | (static_cast<unsigned char>(s[i + k]) & 0x3f);
    cps.push_back(c);
    offsets.push_back(i);
    i += len;
  }
  offsets.push_back(s.size());
}

// Python's str.isspace(), which str.lstrip()/rstrip() use.
bool is_py_space(uint32_t c) {
  return (c >= 0x09 && c <= 0x0d) || (c >= 0x1c && c <= 0x20) || c == 0x85 || c == 0xa0 || c == 0x1680 ||
         (c >= 0x2000 && c <= 0x200a) || c == 0x2028 || c == 0x2029 || c == 0x202f || c == 0x205f || c == 0x3000;
}

std::string py_lstrip(const std::string& s) {
  std::vector<uint32_t> cps;
  std::vector<size_t> at;
  code_points(s, cps, at);
  size_t k = 0;
  while (k < cps.size() && is_py_space(cps[k])) ++k;
  return s.substr(at[k]);
}

std::string py_rstrip(const std::string& s) {
  std::vector<uint32_t> cps;
  std::vector<size_t> at;
  code_points(s, cps, at);
  size_t k = cps.size();
  while (k > 0 && is_py_space(cps[k - 1])) --k;
  return s.substr(0, at[k]);
}

// Python's str.split() with no argument: runs of whitespace separate, none at the ends.
std::vector<std::string> py_split(const std::string& s) {
  std::vector<uint32_t> cps;
  std::vector<size_t> at;
  code_points(s, cps, at);
  std::vector<std::string> out;
  size_t k = 0;
  while (k < cps.size()) {
    while (k < cps.size() && is_py_space(cps[k])) ++k;
    if (k == cps.size()) break;
    const size_t start = k;
    while (k < cps.size() && !is_py_space(cps[k])) ++k;
    out.push_back(s.substr(at[start], at[k] - at[start]));
  }
  return out;
}

// ---------------------------------------------------------------- GPT-2's byte map

// bytes_to_unicode(): printable bytes stand for themselves, the other 68 (controls, space,
// 0x7f-0xa0, 0xad) for U+0100.. in byte order, so no piece holds whitespace or a control.
struct ByteMap {
  std::array<std::string, 256> to_unicode;
  std::unordered_map<uint32_t, unsigned char> to_byte;
};

const ByteMap& byte_map() {
  static const ByteMap map = [] {
    ByteMap m;
    uint32_t next = 256;
    for (uint32_t b = 0; b < 256; ++b) {
      const bool printable = (b >= '!' && b <= '~') || (b >= 0xa1 && b <= 0xac) || (b >= 0xae && b <= 0xff);
      const uint32_t c = printable ? b : next++;
      append_utf8(m.to_unicode[b], c);
      m.to_byte[c] = static_cast<unsigned char>(b);
    }
    return m;
  }();
  return map;
}

// ---------------------------------------------------------------- files

// The tokenizer's files, read with the limits of common/limits.h (size, nesting) like any
// file a stranger may hand us.
std::string read_text(const fs::path& path) { return read_text_file(path, "BpeTokenizer"); }

json read_json(const fs::path& path) {
  const std::string text = read_text(path);
  try {
    return parse_json(text, path.string());
  } catch (const Error& e) {
    fail("BpeTokenizer: {} is not valid JSON ({})", path.string(), e.what());
  }
}

std::optional<json> read_json_if_exists(const fs::path& path) {
  std::error_code ec;
  if (!fs::exists(path, ec)) return std::nullopt;
  return read_json(path);
}

// A piece or token text from a file, quoted for a message.
std::string quote_piece(const std::string& text) { return "\"" + excerpt(text) + "\""; }

// A string field of a JSON object, or `fallback` when absent; another type is an error.
std::string text_field(const json& v, const char* key, const std::string& fallback, const std::string& where) {
  if (!v.is_object() || !v.contains(key) || v.at(key).is_null()) return fallback;
  if (!v.at(key).is_string())
    fail("BpeTokenizer: {}: \"{}\" must be a string, not {}", where, key, describe_json(v.at(key)));
  return v.at(key).get<std::string>();
}

std::unordered_map<std::string, int64_t> parse_vocab(const json& v, const std::string& where) {
  if (!v.is_object()) fail("BpeTokenizer: {} must be a JSON object mapping pieces to ids", where);
  if (v.empty()) fail("BpeTokenizer: {} is empty", where);
  std::unordered_map<std::string, int64_t> vocab;
  for (const auto& [piece, id] : v.items()) {
    if (!id.is_number_integer() || id.get<int64_t>() < 0)
      fail("BpeTokenizer: {}: the id of {} is {}, not a non-negative integer", where, quote_piece(piece),
           describe_json(id));
    vocab[piece] = id.get<int64_t>();
  }
  return vocab;
}

bool get_bool(const json& config, const char* key, bool fallback) {
  return config.contains(key) && config.at(key).is_boolean() ? config.at(key).get<bool>() : fallback;
}

// A special-token value as transformers holds it before the class wraps it: a plain string
// or an AddedToken (with flags).
struct Spec {
  std::string content;
  bool added_token = false;
  BpeTokenizer::AddedToken flags;
};

BpeTokenizer::AddedToken token_from_json(const json& v, bool special_default) {
  BpeTokenizer::AddedToken t;
  if (!v.is_object() || !v.contains("content") || !v.at("content").is_string())
    fail("BpeTokenizer: an AddedToken needs a string \"content\", not {}", describe_json(v));
  t.content = v.at("content").get<std::string>();
  t.special = v.contains("special") && v.at("special").is_boolean() ? v.at("special").get<bool>() : special_default;
  t.lstrip = get_bool(v, "lstrip", false);
  t.rstrip = get_bool(v, "rstrip", false);
  t.single_word = get_bool(v, "single_word", false);
  return t;
}

// A string or an AddedToken object ({"content": ..., flags}, with or without "__type").
Spec spec_from_json(const json& v, const std::string& key, const fs::path& file, bool special_default) {
  if (v.is_string()) return Spec{v.get<std::string>(), false, {}};
  if (v.is_object() && v.contains("content") && v.at("content").is_string()) {
    Spec s{v.at("content").get<std::string>(), true, token_from_json(v, special_default)};
    return s;
  }
  fail("BpeTokenizer: {} in {} must be a string or an AddedToken object, not {}", key, file.string(), describe_json(v));
}

const std::array<const char*, 7> kSpecialKeys = {"bos_token", "eos_token", "unk_token", "sep_token",
                                                 "pad_token", "cls_token", "mask_token"};

// tokenizer.json's pre_tokenizer must be GPT-2's ByteLevel with its regex; returns its
// add_prefix_space.
bool check_byte_level(const json& doc, const fs::path& path) {
  const std::string where = path.string();
  if (doc.contains("normalizer") && !doc.at("normalizer").is_null())
    fail("BpeTokenizer: {} has a normalizer ({}); only GPT-2 style byte-level BPE without one is supported", where,
         excerpt(text_field(doc.at("normalizer"), "type", "?", where + " normalizer")));
  json pre = doc.contains("pre_tokenizer") ? doc.at("pre_tokenizer") : json();
  if (text_field(pre, "type", "", where + " pre_tokenizer") == "Sequence" && pre.contains("pretokenizers") &&
      pre.at("pretokenizers").is_array() && pre.at("pretokenizers").size() == 1)
    pre = json(pre.at("pretokenizers").at(0));
  if (!pre.is_object() || text_field(pre, "type", "", where + " pre_tokenizer") != "ByteLevel" ||
      !get_bool(pre, "use_regex", true))
    fail(
        "BpeTokenizer: {}: the pre_tokenizer is {}, not GPT-2's ByteLevel with its regex; only GPT-2 style "
        "byte-level BPE is supported",
        where,
        pre.is_null()     ? std::string("missing")
        : pre.is_object() ? fmt::format("of type \"{}\"", excerpt(text_field(pre, "type", "?", where)))
                          : describe_json(pre));
  return get_bool(pre, "add_prefix_space", false);
}

// vocab.json + merges.txt (the slow tokenizer's files, preferred as transformers' slow
// class reads them) or tokenizer.json's BPE model.
struct BpeModelFiles {
  std::unordered_map<std::string, int64_t> vocab;
  BpeMergeRanks ranks;
  std::optional<json> tokenizer_json;  // read when it was the source
  bool slow_files = false;
  bool json_prefix_space = false;  // tokenizer.json's ByteLevel add_prefix_space
};

BpeModelFiles read_model_files(const fs::path& hf_dir) {
  std::error_code ec;
  const fs::path vocab_path = hf_dir / "vocab.json", merges_path = hf_dir / "merges.txt",
                 json_path = hf_dir / "tokenizer.json";
  BpeModelFiles m;
  m.slow_files = fs::is_regular_file(vocab_path, ec) && fs::is_regular_file(merges_path, ec);

  // Each merge: both halves and their concatenation must be pieces (as `tokenizers` checks);
  // a later duplicate takes the later rank (as the slow tokenizer's dict does).
  auto add_merge = [&](const std::string& a, const std::string& b, int64_t rank, const std::string& where) {
    for (const std::string& piece : {a, b, a + b})
      if (!m.vocab.count(piece))
        fail("BpeTokenizer: {}: the merge \"{} {}\" uses {}, which is not in the vocabulary", where, excerpt(a),
             excerpt(b), quote_piece(piece));
    m.ranks[{a, b}] = rank;
  };

  if (m.slow_files) {
    m.vocab = parse_vocab(read_json(vocab_path), vocab_path.string());
    // GPT2Tokenizer: read().split("\n")[1:-1]: the first line (#version) and whatever follows
    // the last newline are dropped; each line is split on whitespace.
    const std::string text = read_text(merges_path);
    std::vector<std::string> lines;
    size_t start = 0;
    for (size_t nl; (nl = text.find('\n', start)) != std::string::npos; start = nl + 1)
      lines.push_back(text.substr(start, nl - start));
    for (size_t i = 1; i < lines.size(); ++i) {
      const std::vector<std::string> parts = py_split(lines[i]);
      if (parts.empty()) continue;
      const std::string where = fmt::format("{} line {}", merges_path.string(), i + 1);
      if (parts.size() != 2)
        fail("BpeTokenizer: {} is {}, not two pieces separated by a space", where, quote_piece(lines[i]));
      add_merge(parts[0], parts[1], static_cast<int64_t>(i - 1), where);
    }
  } else if (fs::is_regular_file(json_path, ec)) {
    m.tokenizer_json = read_json(json_path);
    const json& doc = *m.tokenizer_json;
    if (!doc.is_object() || !doc.contains("model") || !doc.at("model").is_object())
      fail("BpeTokenizer: {} has no \"model\" object", json_path.string());
    const json& model = doc.at("model");
    const std::string type = text_field(model, "type", "BPE", json_path.string() + " model");
    if (type != "BPE")
      fail("BpeTokenizer: {}: model.type is \"{}\"; only BPE (GPT-2 style byte-level) is supported", json_path.string(),
           excerpt(type));
    for (const char* key : {"continuing_subword_prefix", "end_of_word_suffix"})
      if (model.contains(key) && model.at(key).is_string() && !model.at(key).get<std::string>().empty())
        fail("BpeTokenizer: {}: model.{} is set; GPT-2 style byte-level BPE has none", json_path.string(), key);
    if (get_bool(model, "ignore_merges", false))
      fail("BpeTokenizer: {}: model.ignore_merges is not supported", json_path.string());
    m.json_prefix_space = check_byte_level(doc, json_path);
    if (!model.contains("vocab")) fail("BpeTokenizer: {} has no model.vocab", json_path.string());
    m.vocab = parse_vocab(model.at("vocab"), json_path.string() + " model.vocab");
    if (!model.contains("merges") || !model.at("merges").is_array())
      fail("BpeTokenizer: {}: model.merges must be a list", json_path.string());
    const json& merges = model.at("merges");
    for (size_t i = 0; i < merges.size(); ++i) {
      const json& m = merges[i];
      const std::string where = fmt::format("{} model.merges[{}]", json_path.string(), i);
      if (m.is_string()) {
        const std::string s = m.get<std::string>();
        const size_t space = s.find(' ');
        if (space == std::string::npos || s.find(' ', space + 1) != std::string::npos)
          fail("BpeTokenizer: {} is {}, not two pieces separated by one space", where, describe_json(m));
        add_merge(s.substr(0, space), s.substr(space + 1), static_cast<int64_t>(i), where);
      } else if (m.is_array() && m.size() == 2 && m[0].is_string() && m[1].is_string()) {
        add_merge(m[0].get<std::string>(), m[1].get<std::string>(), static_cast<int64_t>(i), where);
      } else {
        fail("BpeTokenizer: {} is {}, neither \"a b\" nor [\"a\", \"b\"]", where, describe_json(m));
      }
    }
  } else if (fs::exists(vocab_path, ec) || fs::exists(merges_path, ec)) {
    fail("BpeTokenizer: {} not found (vocab.json and merges.txt go together) and there is no tokenizer.json",
         (fs::exists(vocab_path, ec) ? merges_path : vocab_path).string());
  } else {
    fail("BpeTokenizer: {} holds neither vocab.json + merges.txt nor tokenizer.json", hf_dir.string());
  }
  return m;
}

// The special and added tokens as transformers 4.37's _from_pretrained + __init__ gather them:
// tokenizer_config.json, then (in older directories) special_tokens_map.json,
// added_tokens.json and tokenizer.json's added_tokens.
struct SpecialTokenFiles {
  json config;  // tokenizer_config.json ({} when absent)
  fs::path config_path;
  std::map<std::string, std::optional<Spec>> slots;                     // bos_token ... mask_token; nullopt: None
  std::unordered_set<std::string> in_kwargs;                            // the slots a file set (__init__'s kwargs)
  std::vector<Spec> additional;                                         // additional_special_tokens
  std::map<int64_t, BpeTokenizer::AddedToken> decoder;                  // _added_tokens_decoder
  std::unordered_map<std::string, BpeTokenizer::AddedToken> added_map;  // content -> AddedToken
};

SpecialTokenFiles read_special_tokens(const fs::path& hf_dir, std::optional<json>& tokenizer_json) {
  std::error_code ec;
  const fs::path json_path = hf_dir / "tokenizer.json";
  SpecialTokenFiles t;
  t.config_path = hf_dir / "tokenizer_config.json";
  const fs::path& config_path = t.config_path;
  t.config = read_json_if_exists(config_path).value_or(json::object());
  const json& config = t.config;
  if (!config.is_object()) fail("BpeTokenizer: {} must be a JSON object", config_path.string());

  // The class's defaults, then the __init__ kwargs (`in_kwargs`): the config's values,
  // overridden by special_tokens_map.json's in older directories.
  for (const char* key : {"bos_token", "eos_token", "unk_token"}) t.slots[key] = Spec{kEndOfText, false, {}};
  auto set_slot = [&](const std::string& key, const json& value, const fs::path& file, bool special_default) {
    t.in_kwargs.insert(key);
    if (value.is_null())
      t.slots[key] = std::nullopt;
    else
      t.slots[key] = spec_from_json(value, key, file, special_default);
  };
  auto spec_list = [&](const json& value, const fs::path& file, bool special_default) {
    if (!value.is_array()) fail("BpeTokenizer: additional_special_tokens in {} must be a list", file.string());
    std::vector<Spec> out;
    for (const auto& item : value)
      out.push_back(spec_from_json(item, "additional_special_tokens", file, special_default));
    return out;
  };
  for (const char* key : kSpecialKeys)
    if (config.contains(key)) set_slot(key, config.at(key), config_path, false);
  if (config.contains("additional_special_tokens") && !config.at("additional_special_tokens").is_null())
    t.additional = spec_list(config.at("additional_special_tokens"), config_path, false);

  if (config.contains("added_tokens_decoder")) {
    // Saved by transformers >= 4.34 (Phi-2's files): the only source of added tokens.
    const json& d = config.at("added_tokens_decoder");
    if (!d.is_object()) fail("BpeTokenizer: added_tokens_decoder in {} must be an object", config_path.string());
    for (const auto& [key, value] : d.items()) {
      int64_t id = -1;
      if (!parse_int64(key, id)) id = -1;
      if (id < 0 || !value.is_object() || !value.contains("content") || !value.at("content").is_string())
        fail("BpeTokenizer: added_tokens_decoder in {}: entry {} must map an id to an AddedToken object",
             config_path.string(), quote_piece(key));
      t.decoder[id] = token_from_json(value, false);
      t.added_map[t.decoder[id].content] = t.decoder[id];
    }
  } else {
    // Older directories: special_tokens_map.json overrides the config, then added_tokens.json,
    // then tokenizer.json's added_tokens (with their flags).
    const fs::path map_path = hf_dir / "special_tokens_map.json";
    if (auto map = read_json_if_exists(map_path)) {
      if (!map->is_object()) fail("BpeTokenizer: {} must be a JSON object", map_path.string());
      for (const auto& [key, value] : map->items()) {
        if (key == "additional_special_tokens" && value.is_array()) {
          for (const Spec& s : spec_list(value, map_path, true)) {
            const bool known = std::any_of(t.additional.begin(), t.additional.end(), [&](const Spec& a) {
              return a.content == s.content && a.added_token == s.added_token;
            });
            if (!known) t.additional.push_back(s);
          }
        } else if (std::find(kSpecialKeys.begin(), kSpecialKeys.end(), key) != kSpecialKeys.end()) {
          set_slot(key, value, map_path, true);
        }
      }
    }
    const fs::path added_path = hf_dir / "added_tokens.json";
    if (auto added = read_json_if_exists(added_path)) {
      if (!added->is_object()) fail("BpeTokenizer: {} must map strings to ids", added_path.string());
      std::unordered_set<std::string> specials;
      for (const auto& [key, slot] : t.slots)
        if (slot && t.in_kwargs.count(key)) specials.insert(slot->content);
      for (const Spec& s : t.additional) specials.insert(s.content);
      for (const auto& [content, id] : added->items()) {
        if (!id.is_number_integer() || id.get<int64_t>() < 0)
          fail("BpeTokenizer: {}: the id of {} is {}, not a non-negative integer", added_path.string(),
               quote_piece(content), describe_json(id));
        BpeTokenizer::AddedToken token;
        token.content = content;
        token.special = specials.count(content) > 0;
        t.decoder[id.get<int64_t>()] = token;
        t.added_map[content] = token;
      }
    }
    if (!tokenizer_json && fs::is_regular_file(json_path, ec)) tokenizer_json = read_json(json_path);
    if (tokenizer_json && tokenizer_json->is_object() && tokenizer_json->contains("added_tokens")) {
      const json& list = tokenizer_json->at("added_tokens");
      if (!list.is_array()) fail("BpeTokenizer: added_tokens in {} must be a list", json_path.string());
      for (const auto& item : list) {
        if (!item.is_object() || !item.contains("id") || !item.at("id").is_number_integer() ||
            !item.contains("content") || !item.at("content").is_string())
          fail("BpeTokenizer: {}: added token {} needs an integer id and a string content", json_path.string(),
               describe_json(item));
        const BpeTokenizer::AddedToken token = token_from_json(item, false);
        t.decoder[item.at("id").get<int64_t>()] = token;
        t.added_map[token.content] = token;
      }
    }
  }
  // A special token given to __init__ gets the added token of that content (and its flags).
  for (auto& [key, slot] : t.slots)
    if (slot && t.in_kwargs.count(key) && !t.added_map.empty())
      if (auto it = t.added_map.find(slot->content); it != t.added_map.end()) slot = Spec{it->first, true, it->second};
  return t;
}

}  // namespace

// ---------------------------------------------------------------- regex and cache

struct BpeTokenizer::Regex {
  pcre2_code* code = nullptr;
  ~Regex() { pcre2_code_free(code); }

  Regex() {
    // GPT-2's pattern. Python's `regex` (which HF uses) and PCRE2 agree on \s except for
    // U+180E, which PCRE2 counts as space and `regex` does not: it is moved to the
    // "other" class by hand. \p{L} / \p{N} follow PCRE2's Unicode tables.
    static const char* pattern = R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?(?:[^\s\p{L}\p{N}]|\x{180E})+)"
                                 R"(|[^\S\x{180E}]+(?!\S|\x{180E})|[^\S\x{180E}]+)";
    int error = 0;
    PCRE2_SIZE offset = 0;
    code = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(pattern), PCRE2_ZERO_TERMINATED, PCRE2_UTF | PCRE2_UCP, &error,
                         &offset, nullptr);
    if (!code) {
      PCRE2_UCHAR message[256];
      pcre2_get_error_message(error, message, sizeof(message));
      fail("BpeTokenizer: PCRE2 cannot compile GPT-2's pattern at offset {}: {}", offset,
           reinterpret_cast<const char*>(message));
    }
    pcre2_jit_compile(code, PCRE2_JIT_COMPLETE);  // optional: pcre2_match uses it when it worked
  }

  // re.findall(pattern, text) on valid UTF-8.
  std::vector<std::string> find_all(const std::string& text) const {
    std::vector<std::string> out;
    std::unique_ptr<pcre2_match_data, decltype(&pcre2_match_data_free)> match(
        pcre2_match_data_create_from_pattern(code, nullptr), &pcre2_match_data_free);
    const auto* subject = reinterpret_cast<PCRE2_SPTR>(text.data());
    size_t offset = 0;
    while (offset < text.size()) {
      const int rc = pcre2_match(code, subject, text.size(), offset, PCRE2_NO_UTF_CHECK, match.get(), nullptr);
      if (rc == PCRE2_ERROR_NOMATCH) break;
      if (rc < 0) {
        PCRE2_UCHAR message[256];
        pcre2_get_error_message(rc, message, sizeof(message));
        fail("BpeTokenizer: PCRE2 match failed: {}", reinterpret_cast<const char*>(message));
      }
      const PCRE2_SIZE* ov = pcre2_get_ovector_pointer(match.get());
      if (ov[1] == ov[0]) {  // cannot happen (every branch eats a character); never loop
        ++offset;
        while (offset < text.size() && (static_cast<unsigned char>(text[offset]) & 0xc0) == 0x80) ++offset;
        continue;
      }
      out.push_back(text.substr(ov[0], ov[1] - ov[0]));
      offset = ov[1];
    }
    return out;
  }
};

struct BpeTokenizer::Cache {
  std::mutex mutex;
  std::unordered_map<std::string, std::vector<std::string>> words;
};

// ---------------------------------------------------------------- loading

// The trie over every added token's content (split_on_added_tokens walks it).
void BpeTokenizer::build_added_token_trie() {
  trie_.emplace_back();
  for (const auto& [id, t] : added_by_id_) {
    if (t.content.empty()) continue;
    std::vector<uint32_t> cps;
    std::vector<size_t> at;
    code_points(utf8_replace(t.content), cps, at);
    int node = 0;
    for (uint32_t c : cps) {
      auto it = trie_[node].next.find(c);
      if (it == trie_[node].next.end()) {
        trie_.emplace_back();
        it = trie_[node].next.emplace(c, static_cast<int>(trie_.size() - 1)).first;
      }
      node = it->second;
    }
    trie_[node].terminal = true;
  }
}

BpeTokenizer BpeTokenizer::from_pretrained(const fs::path& hf_dir) {
  std::error_code ec;  // a path the system refuses (too long, no permission) counts as absent
  if (!fs::is_directory(hf_dir, ec)) fail("BpeTokenizer: tokenizer directory {} does not exist", hf_dir.string());
  BpeTokenizer tok;
  tok.source_ = hf_dir;
  BpeModelFiles model = read_model_files(hf_dir);
  tok.vocab_ = std::move(model.vocab);
  tok.ranks_ = std::move(model.ranks);
  for (const auto& [piece, id] : tok.vocab_) tok.id_to_token_[id] = piece;  // duplicates: any one
  SpecialTokenFiles specials = read_special_tokens(hf_dir, model.tokenizer_json);

  for (const auto& [id, t] : specials.decoder) tok.added_ids_[t.content] = id;
  tok.added_by_id_ = specials.decoder;

  // The class: CodeGenTokenizer / GPT2Tokenizer wrap a string bos/eos/unk/pad in an
  // AddedToken without stripping. Then every special token missing from the added tokens is
  // added (an AddedToken always: its flags replace the entry's), at its vocabulary id when it
  // has one, else after everything.
  std::vector<Spec> extended;
  std::vector<std::string> all_special;  // HF all_special_tokens
  std::unordered_set<std::string> seen;
  auto push = [&](Spec s) {
    if (!seen.insert(s.content).second) return;
    all_special.push_back(s.content);
    extended.push_back(std::move(s));
  };
  for (const char* key : kSpecialKeys) {
    auto& slot = specials.slots[key];
    if (!slot) continue;
    Spec s = *slot;
    const std::string k = key;
    if (!s.added_token && (k == "bos_token" || k == "eos_token" || k == "unk_token" || k == "pad_token"))
      s = Spec{s.content, true, AddedToken{s.content, true, false, false, false}};
    push(s);
  }
  for (const Spec& s : specials.additional) push(s);

  std::unordered_set<std::string> current;
  for (const auto& [piece, id] : tok.vocab_) current.insert(piece);
  for (const auto& [content, id] : tok.added_ids_) current.insert(content);
  const int64_t new_id = static_cast<int64_t>(current.size());
  int64_t n_new = 0;
  for (const Spec& s : extended) {
    if (s.content.empty()) continue;
    AddedToken t = s.added_token ? s.flags : AddedToken{s.content, true, false, false, false};
    if (!s.added_token && tok.added_ids_.count(s.content)) continue;
    t.content = s.content;
    t.special = true;
    int64_t id;
    if (auto it = tok.added_ids_.find(s.content); it != tok.added_ids_.end())
      id = it->second;
    else if (auto v = tok.vocab_.find(s.content); v != tok.vocab_.end())
      id = v->second;
    else
      id = new_id + n_new++;
    tok.added_by_id_[id] = t;
    tok.added_ids_[s.content] = id;
  }
  current.clear();
  for (const auto& [piece, id] : tok.vocab_) current.insert(piece);
  for (const auto& [content, id] : tok.added_ids_) current.insert(content);
  tok.size_ = static_cast<int64_t>(current.size());

  tok.build_added_token_trie();

  auto special_id = [&](const char* key) -> int64_t {
    const auto& slot = specials.slots[key];
    return slot ? tok.piece_to_id(slot->content) : -1;
  };
  tok.unk_token_ = specials.slots["unk_token"] ? specials.slots["unk_token"]->content : std::string();
  tok.bos_id_ = special_id("bos_token");
  tok.eos_id_ = special_id("eos_token");
  tok.unk_id_ = special_id("unk_token");
  tok.pad_token_id_ = special_id("pad_token");
  for (const std::string& s : all_special) {
    const int64_t id = tok.piece_to_id(s);
    tok.special_ids_.push_back(id);
    tok.special_id_set_.insert(id);
  }
  // HF's "legacy added tokens": decoded verbatim, outside the byte map.
  const std::unordered_set<std::string> special_set(all_special.begin(), all_special.end());
  for (const auto& [content, id] : tok.added_ids_)
    if (!special_set.count(content)) tok.verbatim_.insert(content);
  for (const Spec& s : specials.additional)
    if (tok.piece_to_id(s.content) >= tok.vocab_size()) tok.verbatim_.insert(s.content);

  tok.add_bos_ = get_bool(specials.config, "add_bos_token", false);
  tok.add_prefix_space_ =
      get_bool(specials.config, "add_prefix_space", model.slow_files ? false : model.json_prefix_space);
  tok.split_special_tokens_ = get_bool(specials.config, "split_special_tokens", false);
  // PreTrainedTokenizerBase.__init__: kwargs.pop("clean_up_tokenization_spaces", True); a
  // null stays None, which decode treats as false.
  if (specials.config.contains("clean_up_tokenization_spaces")) {
    const json& v = specials.config.at("clean_up_tokenization_spaces");
    if (!v.is_boolean() && !v.is_null())
      fail("BpeTokenizer: clean_up_tokenization_spaces in {} must be true, false or null, not {}",
           specials.config_path.string(), describe_json(v));
    tok.clean_up_tokenization_spaces_ = v.is_boolean() && v.get<bool>();
  }
  tok.regex_ = std::make_shared<const Regex>();
  tok.cache_ = std::make_shared<Cache>();
  return tok;
}

// ---------------------------------------------------------------- encoding

// transformers' Trie.split, step for step (on code points): at the first position where an
// active match completes, the earliest-starting active match that can complete wins, extended
// as far as it goes.
std::vector<std::string> BpeTokenizer::split_on_added_tokens(const std::string& text) const {
  std::vector<uint32_t> cp;
  std::vector<size_t> at;
  code_points(text, cp, at);
  const size_t n = cp.size();
  auto child = [&](int node, uint32_t c) {
    auto it = trie_[node].next.find(c);
    return it == trie_[node].next.end() ? -1 : it->second;
  };
  std::vector<std::pair<size_t, int>> states;  // start -> trie node, in insertion order
  std::vector<size_t> offsets{0};
  size_t skip = 0;
  for (size_t current = 0; current < n; ++current) {
    if (skip && current < skip) continue;
    const uint32_t c = cp[current];
    std::vector<size_t> to_remove;
    bool reset = false;
    for (auto& state : states) {
      size_t start = state.first;
      if (trie_[state.second].terminal) {
        size_t end = current;
        for (const auto& [lookstart, node] : states) {
          if (lookstart > start) break;
          size_t lookahead = lookstart < start ? current + 1 : current;
          end = lookahead;
          int look = node;
          if (trie_[look].terminal) start = lookstart, end = lookahead, skip = lookahead;
          while (lookahead < n) {
            const int next = child(look, cp[lookahead]);
            if (next < 0) break;
            look = next;
            ++lookahead;
            if (trie_[look].terminal) start = lookstart, end = lookahead, skip = lookahead;
          }
        }
        offsets.push_back(start);
        offsets.push_back(end);
        reset = true;
        break;
      }
      const int next = child(state.second, c);
      if (next >= 0)
        state.second = next;
      else
        to_remove.push_back(start);
    }
    if (reset) {
      states.clear();
    } else if (!to_remove.empty()) {
      states.erase(std::remove_if(states.begin(), states.end(),
                                  [&](const auto& s) {
                                    return std::find(to_remove.begin(), to_remove.end(), s.first) != to_remove.end();
                                  }),
                   states.end());
    }
    if (current >= skip)
      if (const int next = child(0, c); next >= 0) states.emplace_back(current, next);
  }
  for (const auto& [start, node] : states)
    if (trie_[node].terminal) {
      offsets.push_back(start);
      offsets.push_back(n);
      break;
    }
  offsets.push_back(n);
  std::vector<std::string> out;
  size_t start = 0;
  for (size_t end : offsets) {
    if (start >= end) continue;
    out.push_back(text.substr(at[start], at[end] - at[start]));
    start = end;
  }
  return out;
}

std::vector<std::string> bpe_merge(std::vector<std::string> symbols, const BpeMergeRanks& ranks) {
  // The word as a linked list of symbols; node ids keep the left-to-right order, and a merge
  // keeps the left node (its version changes) and retires the right one.
  const int n = static_cast<int>(symbols.size());
  if (n < 2) return symbols;
  std::vector<int> next(n), prev(n), version(n, 0);
  std::vector<bool> alive(n, true);
  for (int i = 0; i < n; ++i) next[i] = i + 1 < n ? i + 1 : -1, prev[i] = i - 1;
  struct Candidate {
    int64_t rank;
    int left, right, left_version, right_version;
    bool operator>(const Candidate& o) const { return rank != o.rank ? rank > o.rank : left > o.left; }
  };
  std::priority_queue<Candidate, std::vector<Candidate>, std::greater<Candidate>> heap;
  std::pair<std::string, std::string> key;
  auto consider = [&](int left, int right) {
    if (left < 0 || right < 0) return;
    key.first = symbols[left];
    key.second = symbols[right];
    if (auto it = ranks.find(key); it != ranks.end())
      heap.push({it->second, left, right, version[left], version[right]});
  };
  auto valid = [&](const Candidate& c) {
    return alive[c.left] && alive[c.right] && next[c.left] == c.right && version[c.left] == c.left_version &&
           version[c.right] == c.right_version;
  };
  for (int i = 0; i + 1 < n; ++i) consider(i, i + 1);
  std::vector<Candidate> round;
  while (!heap.empty()) {
    // Every occurrence of the lowest-ranked pair, in word order, before anything they create.
    const int64_t rank = heap.top().rank;
    round.clear();
    while (!heap.empty() && heap.top().rank == rank) {
      round.push_back(heap.top());
      heap.pop();
    }
    for (const Candidate& c : round) {
      if (!valid(c)) continue;  // stale, or overlapped by the merge just left of it
      symbols[c.left] += symbols[c.right];
      ++version[c.left];
      alive[c.right] = false;
      next[c.left] = next[c.right];
      if (next[c.left] >= 0) prev[next[c.left]] = c.left;
      consider(prev[c.left], c.left);
      consider(c.left, next[c.left]);
    }
  }
  std::vector<std::string> out;
  for (int i = 0; i >= 0; i = next[i]) out.push_back(std::move(symbols[i]));
  return out;
}

std::vector<std::string> BpeTokenizer::bpe(const std::string& word) const {
  {
    std::lock_guard<std::mutex> lock(cache_->mutex);
    if (auto it = cache_->words.find(word); it != cache_->words.end()) return it->second;
  }
  std::vector<uint32_t> cps;
  std::vector<size_t> at;
  code_points(word, cps, at);
  std::vector<std::string> symbols;
  for (size_t k = 0; k < cps.size(); ++k) symbols.push_back(word.substr(at[k], at[k + 1] - at[k]));
  symbols = bpe_merge(std::move(symbols), ranks_);
  // HF's cache is unbounded; a server's stays bounded in entries, and long words (rare in
  // text, frequent in hostile input) are not kept.
  if (word.size() > 256) return symbols;
  std::lock_guard<std::mutex> lock(cache_->mutex);
  if (cache_->words.size() >= 100000) cache_->words.clear();
  cache_->words.emplace(word, symbols);
  return symbols;
}

// PreTrainedTokenizer.tokenize + GPT2Tokenizer._tokenize.
std::vector<std::string> BpeTokenizer::tokenize(const std::string& raw) const {
  std::string text = utf8_replace(raw);
  if (add_prefix_space_) text = " " + text;
  std::vector<std::string> tokens =
      split_special_tokens_ ? std::vector<std::string>{text} : split_on_added_tokens(text);
  auto no_split = [&](const std::string& s) { return !split_special_tokens_ && added_ids_.count(s) > 0; };

  // The added tokens' flags act on their neighbours (left/right as they were before).
  for (size_t i = 0; i < tokens.size(); ++i) {
    if (!no_split(tokens[i])) continue;
    const std::string token = tokens[i];
    auto it = added_by_id_.find(added_ids_.at(token));
    if (it == added_by_id_.end()) continue;
    const AddedToken& t = it->second;
    const std::string left = i > 0 ? tokens[i - 1] : std::string();
    const std::string right = i + 1 < tokens.size() ? tokens[i + 1] : std::string();
    if (t.rstrip && !right.empty()) tokens[i + 1] = py_lstrip(right);
    if (t.lstrip && !left.empty()) tokens[i - 1] = py_rstrip(left);
    if (t.single_word && !left.empty() && left.back() != ' ') {
      tokens[i - 1] += token;
      tokens[i].clear();
    } else if (t.single_word && !right.empty() && right.front() != ' ') {
      tokens[i + 1] = token + tokens[i + 1];
      tokens[i].clear();
    }
  }

  const ByteMap& map = byte_map();
  std::vector<std::string> out;
  for (const std::string& chunk : tokens) {
    if (chunk.empty()) continue;
    if (no_split(chunk)) {
      out.push_back(chunk);
      continue;
    }
    for (const std::string& piece : regex_->find_all(chunk)) {
      std::string word;
      for (unsigned char b : piece) word += map.to_unicode[b];
      for (auto& p : bpe(word)) out.push_back(std::move(p));
    }
  }
  return out;
}

std::vector<int64_t> BpeTokenizer::encode(const std::string& text, bool add_special_tokens) const {
  std::vector<int64_t> ids;
  if (add_special_tokens && add_bos_ && bos_id_ >= 0) ids.push_back(bos_id_);
  for (const auto& piece : tokenize(text)) ids.push_back(piece_to_id(piece));
  return ids;
}

int64_t BpeTokenizer::piece_to_id(const std::string& piece) const {
  if (auto it = added_ids_.find(piece); it != added_ids_.end()) return it->second;
  if (auto it = vocab_.find(piece); it != vocab_.end()) return it->second;
  // GPT2Tokenizer: encoder.get(token, encoder.get(unk_token)).
  if (auto it = vocab_.find(unk_token_); it != vocab_.end()) return it->second;
  fail("BpeTokenizer: the piece {} is not in the vocabulary of {} and there is no unk token to use instead",
       quote_piece(piece), source_.string());
}

// ---------------------------------------------------------------- decoding

std::string BpeTokenizer::id_to_piece(int64_t id) const {
  if (auto it = added_by_id_.find(id); it != added_by_id_.end()) return it->second.content;
  if (auto it = id_to_token_.find(id); it != id_to_token_.end()) return it->second;
  fail("BpeTokenizer: token id {} is outside the vocabulary of {} ({} pieces and {} added tokens)", id,
       source_.string(), vocab_size(), added_by_id_.size());
}

// GPT2Tokenizer.convert_tokens_to_string: characters back to bytes, bytes decoded as UTF-8
// with errors="replace". A character outside the byte map (only a special token's own text
// can hold one) is kept as its UTF-8; HF raises a KeyError there.
std::string BpeTokenizer::tokens_to_string(const std::vector<std::string>& tokens) const {
  const ByteMap& map = byte_map();
  std::string bytes;
  std::vector<uint32_t> cps;
  std::vector<size_t> at;
  for (const std::string& token : tokens) {
    code_points(token, cps, at);
    for (size_t k = 0; k < cps.size(); ++k) {
      if (auto it = map.to_byte.find(cps[k]); it != map.to_byte.end())
        bytes += static_cast<char>(it->second);
      else
        bytes.append(token, at[k], at[k + 1] - at[k]);
    }
  }
  return utf8_replace(bytes);
}

std::string BpeTokenizer::clean_up_tokenization(std::string text) {
  static const std::array<std::pair<const char*, const char*>, 10> kReplacements = {{
      {" .", "."},
      {" ?", "?"},
      {" !", "!"},
      {" ,", ","},
      {" ' ", "'"},
      {" n't", "n't"},
      {" 'm", "'m"},
      {" 's", "'s"},
      {" 've", "'ve"},
      {" 're", "'re"},
  }};
  // Each as Python's str.replace: non-overlapping matches, left to right, in one pass. The
  // patterns are ASCII, so matching bytes of valid UTF-8 matches characters.
  for (const auto& [from, to] : kReplacements) {
    const std::string pattern = from;
    if (text.find(pattern) == std::string::npos) continue;
    std::string out;
    out.reserve(text.size());
    size_t start = 0;
    for (size_t at; (at = text.find(pattern, start)) != std::string::npos; start = at + pattern.size())
      out.append(text, start, at - start).append(to);
    out.append(text, start, std::string::npos);
    text = std::move(out);
  }
  return text;
}

std::string BpeTokenizer::decode(const std::vector<int64_t>& ids, bool skip_special_tokens) const {
  return decode(ids, skip_special_tokens, clean_up_tokenization_spaces_);
}

// PreTrainedTokenizer._decode (spaces_between_special_tokens=True): runs of ordinary pieces
// (special tokens included) go through the byte map; non-special added tokens are written as
// they are; the parts are joined with single spaces; then the clean-up, on the whole string.
std::string BpeTokenizer::decode(const std::vector<int64_t>& ids, bool skip_special_tokens,
                                 bool clean_up_tokenization_spaces) const {
  std::vector<std::string> parts, run;
  for (int64_t id : ids) {
    if (skip_special_tokens && special_id_set_.count(id)) continue;
    std::string token = id_to_piece(id);
    if (verbatim_.count(token)) {
      if (!run.empty()) {
        std::string s = tokens_to_string(run);
        if (!s.empty()) parts.push_back(std::move(s));
        run.clear();
      }
      parts.push_back(std::move(token));
    } else {
      run.push_back(std::move(token));
    }
  }
  if (!run.empty()) parts.push_back(tokens_to_string(run));
  std::string text;
  for (size_t i = 0; i < parts.size(); ++i) text += (i ? " " : "") + parts[i];
  return clean_up_tokenization_spaces ? clean_up_tokenization(std::move(text)) : text;
}

}  // namespace minigpt4
