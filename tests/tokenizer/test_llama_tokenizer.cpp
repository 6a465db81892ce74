// Unit tests of LlamaTokenizer on the tiny_vicuna0 vocabulary (unk=0, bos=1, eos=2, byte
// pieces 3..258, as its spm_train command sets) and on hand-made HF directories.
#include <catch2/catch.hpp>

#include <unistd.h>

#include <algorithm>
#include <fstream>
#include <regex>

#include "minigpt4/common/error.h"
#include "minigpt4/tokenizer/llama_tokenizer.h"
#include "tests/support/fixtures.h"

using minigpt4::LlamaTokenizer;
namespace fs = std::filesystem;

namespace {

fs::path case_dir() { return minigpt4::test::data_dir() / "parity" / "tiny_vicuna0"; }

// A scratch HF directory holding the fixture's tokenizer.model plus the given JSON files.
struct ScratchDir {
  fs::path path;
  explicit ScratchDir(const std::string& name) {
    path = fs::temp_directory_path() / ("minigpt4_tok_" + name + "_" + std::to_string(::getpid()));
    fs::remove_all(path);
    fs::create_directories(path);
    fs::copy_file(case_dir() / "tokenizer.model", path / "tokenizer.model");
  }
  void write(const std::string& file, const std::string& text) const { std::ofstream(path / file) << text; }
  ~ScratchDir() { fs::remove_all(path); }
};

std::vector<int64_t> concat(std::vector<int64_t> a, const std::vector<int64_t>& b) {
  a.insert(a.end(), b.begin(), b.end());
  return a;
}

}  // namespace

TEST_CASE("from_pretrained reads the HF LLaMA directory", "[tokenizer]") {
  const auto tok = LlamaTokenizer::from_pretrained(case_dir() / "vicuna");
  CHECK(tok.vocab_size() == 1000);
  CHECK(tok.unk_id() == 0);
  CHECK(tok.bos_id() == 1);
  CHECK(tok.eos_id() == 2);
  CHECK(tok.pad_id() == 2);
  CHECK(tok.add_bos_token());
  CHECK_FALSE(tok.add_eos_token());
  CHECK(tok.id_to_piece(1) == "<s>");
  CHECK(tok.piece_to_id("</s>") == 2);
  CHECK(tok.piece_to_id("no such piece") == 0);

  const auto plain = LlamaTokenizer::from_model_file(case_dir() / "tokenizer.model");
  for (const std::string text : {"Hello world", "a <s> b </s> c <unk>", ""})
    CHECK(plain.encode(text) == tok.encode(text));
}

TEST_CASE("characters outside the vocabulary fall back to bytes", "[tokenizer]") {
  const auto tok = LlamaTokenizer::from_model_file(case_dir() / "tokenizer.model");
  const std::string text = "\xE6\x97\xA5\xF0\x9F\x90\x9E";  // 日🐞: 3 + 4 UTF-8 bytes
  const auto pieces = tok.tokenize(text);
  const auto ids = tok.encode(text, false);
  REQUIRE(pieces.size() == 8);  // the dummy-prefix "▁", then one piece per byte
  CHECK(pieces[0] == "\xE2\x96\x81");
  const std::regex byte_piece("<0x[0-9A-F]{2}>");
  for (size_t i = 1; i < pieces.size(); ++i) {
    CHECK(std::regex_match(pieces[i], byte_piece));
    CHECK(ids[i] == 3 + static_cast<unsigned char>(text[i - 1]));  // <0x00> is id 3
  }
  CHECK(pieces[1] == "<0xE6>");
  CHECK(tok.decode(ids) == text);
}

TEST_CASE("encode/decode round trips", "[tokenizer]") {
  const auto tok = LlamaTokenizer::from_pretrained(case_dir() / "vicuna");
  for (const std::string text : {"Hello world", " leading space", "trailing  ", "line\nbreak\ttab",
                                 "###Assistant:", "na\xC3\xAFve caf\xC3\xA9", "2023-08-15 12:00", "\n", ""}) {
    INFO("'" << text << "'");
    CHECK(tok.decode(tok.encode(text, false)) == text);
    CHECK(tok.decode(tok.encode(text, true), true) == text);
    CHECK(tok.decode(tok.encode(text, true)) == "<s>" + text);
  }
}

TEST_CASE("special-token strings are split out and decoded verbatim", "[tokenizer]") {
  const auto tok = LlamaTokenizer::from_pretrained(case_dir() / "vicuna");
  // Each chunk is encoded on its own (with its own dummy prefix); AddedToken specials
  // without lstrip/rstrip keep the surrounding spaces.
  const auto ids = tok.encode("a <s> b", false);
  CHECK(ids == concat(concat(tok.encode("a ", false), {1}), tok.encode(" b", false)));
  CHECK(tok.tokenize("</s></s>") == std::vector<std::string>{"</s>", "</s>"});
  // HF's quirk: a special token that follows text puts a space before that text run
  // (unless it opens the string), never between two specials.
  CHECK(tok.decode({1, 2, 0}) == "<s></s><unk>");
  CHECK(tok.decode(concat(tok.encode("hi", false), {2})) == " hi</s>");
  CHECK(tok.decode(concat(concat({1}, tok.encode("hi", false)), {2})) == "<s> hi</s>");
  CHECK(tok.decode(concat(tok.encode("hi", false), {2}), true) == "hi");
  CHECK_THROWS_AS(tok.decode({1000}), minigpt4::Error);
}

TEST_CASE("plain-string special tokens strip the whitespace around them", "[tokenizer]") {
  // special_tokens_map.json with plain strings: HF 4.28 sets them as str, not AddedToken,
  // and tokenize() then strips both neighbours of the token.
  ScratchDir dir("plain");
  dir.write("special_tokens_map.json", R"({"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"})");
  dir.write("tokenizer_config.json", R"({"add_bos_token": false, "add_eos_token": true})");
  const auto tok = LlamaTokenizer::from_pretrained(dir.path);
  const auto ref = LlamaTokenizer::from_model_file(case_dir() / "tokenizer.model");
  CHECK(tok.encode("a  </s>\n b", false) == concat(concat(ref.encode("a", false), {2}), ref.encode("b", false)));
  CHECK(tok.encode("x", true) == concat(ref.encode("x", false), {2}));  // eos, no bos
}

TEST_CASE("added tokens get ids past the vocabulary and decode as separate words", "[tokenizer]") {
  // Vicuna v0 added "[PAD]" (id 32000) this way; MiniGPT-4 then makes pad = eos.
  ScratchDir dir("added");
  dir.write("special_tokens_map.json", R"({"pad_token": "[PAD]"})");
  dir.write("added_tokens.json", R"({"[PAD]": 1000})");
  const auto tok = LlamaTokenizer::from_pretrained(dir.path);
  const auto ref = LlamaTokenizer::from_model_file(case_dir() / "tokenizer.model");
  CHECK(tok.pad_id() == tok.eos_id());
  CHECK(tok.piece_to_id("[PAD]") == 1000);
  CHECK(tok.id_to_piece(1000) == "[PAD]");
  const auto ids = tok.encode("x [PAD] y", false);
  CHECK(ids == concat(concat(ref.encode("x", false), {1000}), ref.encode("y", false)));
  CHECK(tok.decode(ids) == "x [PAD] y");
  CHECK(tok.decode({1000, 1000}) == "[PAD] [PAD]");
}

TEST_CASE("additional special tokens outside the vocabulary are appended to it", "[tokenizer]") {
  ScratchDir dir("additional");
  dir.write("tokenizer_config.json", R"({"additional_special_tokens": ["<img>"]})");
  const auto tok = LlamaTokenizer::from_pretrained(dir.path);
  const auto ref = LlamaTokenizer::from_model_file(case_dir() / "tokenizer.model");
  CHECK(tok.piece_to_id("<img>") == tok.vocab_size());
  const auto ids = tok.encode("a <img> b", false);  // plain string: spaces stripped
  CHECK(ids == concat(concat(ref.encode("a", false), {tok.vocab_size()}), ref.encode("b", false)));
  CHECK(tok.decode(ids) == "a <img> b");
  CHECK(tok.decode(ids, true) == "a b");
}

TEST_CASE("encode_batch truncates and right-pads like padding='longest'", "[tokenizer]") {
  const auto tok = LlamaTokenizer::from_pretrained(case_dir() / "vicuna");
  const std::vector<std::string> texts = {"short", "a much longer text than the first one"};
  const auto a = tok.encode(texts[0], false), b = tok.encode(texts[1], false);
  REQUIRE(b.size() > 6);

  auto batch = tok.encode_batch(texts, false, 0, 2);
  REQUIRE(batch.ids.size() == 2);
  CHECK(batch.ids[1] == b);
  CHECK(batch.ids[0].size() == b.size());
  CHECK(std::vector<int64_t>(batch.ids[0].begin(), batch.ids[0].begin() + a.size()) == a);
  CHECK(batch.ids[0].back() == 2);
  CHECK(std::count(batch.attention_mask[0].begin(), batch.attention_mask[0].end(), 1) == int64_t(a.size()));

  // With special tokens the limit counts bos.
  batch = tok.encode_batch(texts, true, 6, 0);
  CHECK(batch.ids[1] == concat({1}, {b.begin(), b.begin() + 5}));
  CHECK(batch.attention_mask[1] == std::vector<int64_t>(6, 1));
  CHECK(batch.ids[0].size() == 6);
}

TEST_CASE("missing or broken tokenizer files raise minigpt4::Error naming the path", "[tokenizer]") {
  using Catch::Matchers::Contains;
  CHECK_THROWS_WITH(LlamaTokenizer::from_pretrained("/nonexistent/vicuna"), Contains("/nonexistent/vicuna"));
  CHECK_THROWS_AS(LlamaTokenizer::from_model_file("/nonexistent/tokenizer.model"), minigpt4::Error);
  CHECK_THROWS_WITH(LlamaTokenizer::from_model_file("/nonexistent/tokenizer.model"),
                    Contains("/nonexistent/tokenizer.model"));

  ScratchDir dir("broken");
  fs::remove(dir.path / "tokenizer.model");
  CHECK_THROWS_WITH(LlamaTokenizer::from_pretrained(dir.path), Contains((dir.path / "tokenizer.model").string()));
  dir.write("tokenizer.model", "not a sentencepiece model");
  CHECK_THROWS_AS(LlamaTokenizer::from_pretrained(dir.path), minigpt4::Error);
  fs::copy_file(case_dir() / "tokenizer.model", dir.path / "tokenizer.model", fs::copy_options::overwrite_existing);
  dir.write("tokenizer_config.json", "{ broken");
  CHECK_THROWS_WITH(LlamaTokenizer::from_pretrained(dir.path), Contains("tokenizer_config.json"));
}
