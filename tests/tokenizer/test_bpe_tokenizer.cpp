// BpeTokenizer (GPT-2 byte-level BPE, Phi-2's CodeGenTokenizer) against Hugging Face's slow
// tokenizers: tests/data/tokenizer/bpe/golden.json, written by make_golden.py next to it
// (transformers 4.37.2). Every directory is read twice: from vocab.json + merges.txt and from
// tokenizer.json alone; both must give HF's exact tokens, ids and decodes.
#include <catch2/catch.hpp>

#include <unistd.h>

#include <algorithm>
#include <fstream>
#include <limits>
#include <random>
#include <thread>

#include "minigpt4/common/error.h"
#include "minigpt4/tokenizer/bpe_tokenizer.h"
#include "minigpt4/tokenizer/llama_tokenizer.h"
#include "tests/support/fixtures.h"

using Catch::Matchers::Contains;
using minigpt4::BpeTokenizer;
using nlohmann::json;
namespace fs = std::filesystem;

namespace {

fs::path bpe_dir() { return minigpt4::test::data_dir() / "tokenizer" / "bpe"; }

const json& golden() {
  static const json g = minigpt4::test::read_json(bpe_dir() / "golden.json");
  return g;
}

// A scratch directory, removed again at the end of the test.
struct Scratch {
  fs::path path;
  explicit Scratch(const std::string& name) {
    path = fs::temp_directory_path() / ("minigpt4_bpe_" + name + "_" + std::to_string(::getpid()));
    fs::remove_all(path);
    fs::create_directories(path);
  }
  void copy_from(const fs::path& dir, const std::vector<std::string>& skip = {}) const {
    for (const auto& entry : fs::directory_iterator(dir)) {
      const std::string name = entry.path().filename().string();
      if (std::find(skip.begin(), skip.end(), name) == skip.end())
        fs::copy_file(entry.path(), path / name, fs::copy_options::overwrite_existing);
    }
  }
  void write(const std::string& file, const std::string& text) const {
    std::ofstream(path / file, std::ios::binary) << text;
  }
  ~Scratch() { fs::remove_all(path); }
};

std::string read_file(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

std::vector<int64_t> ids_of(const json& j) { return j.get<std::vector<int64_t>>(); }

// "Hello world" as HF encodes it with tiny_codegen: {id("Hello"), id("Ġworld")}.
std::vector<int64_t> hello_world_ids() {
  std::vector<int64_t> ids;
  for (const char* piece : {"Hello", "\xc4\xa0world"})
    for (const auto& p : golden().at("variants").at("tiny_codegen").at("piece_ids"))
      if (p.at("piece") == piece) ids.push_back(p.at("id").get<int64_t>());
  REQUIRE(ids.size() == 2);
  return ids;
}

// Everything golden.json holds for one directory, checked on one loaded tokenizer.
void check_variant(const BpeTokenizer& tok, const json& v, const std::string& label) {
  INFO("directory: " << label);
  CHECK(tok.vocab_size() == v.at("vocab_size").get<int64_t>());
  CHECK(tok.size() == v.at("len").get<int64_t>());
  CHECK(tok.bos_id() == v.at("bos_id").get<int64_t>());
  CHECK(tok.eos_id() == v.at("eos_id").get<int64_t>());
  CHECK(tok.unk_id() == v.at("unk_id").get<int64_t>());
  CHECK(tok.configured_pad_id() == (v.at("pad_id").is_null() ? -1 : v.at("pad_id").get<int64_t>()));
  CHECK(tok.pad_id() == tok.eos_id());
  CHECK(tok.add_bos_token() == v.at("add_bos_token").get<bool>());
  CHECK_FALSE(tok.add_eos_token());
  CHECK(tok.add_prefix_space() == v.at("add_prefix_space").get<bool>());
  CHECK(tok.special_ids() == ids_of(v.at("all_special_ids")));
  for (const auto& [id, content] : v.at("added_tokens").items()) {
    CHECK(tok.id_to_piece(std::stoll(id)) == content.get<std::string>());
    CHECK(tok.piece_to_id(content.get<std::string>()) == std::stoll(id));
  }
  for (const auto& p : v.at("pieces"))
    CHECK(tok.id_to_piece(p.at("id").get<int64_t>()) == p.at("piece").get<std::string>());
  for (const auto& p : v.at("piece_ids"))
    CHECK(tok.piece_to_id(p.at("piece").get<std::string>()) == p.at("id").get<int64_t>());

  for (const auto& c : v.at("cases")) {
    const std::string text = c.at("text").get<std::string>();
    INFO("text: " << json(text).dump());
    CHECK(tok.tokenize(text) == c.at("tokens").get<std::vector<std::string>>());
    CHECK(tok.encode(text, false) == ids_of(c.at("ids")));
    const auto with_special = tok.encode(text, true);
    CHECK(with_special == ids_of(c.at("ids_with_special")));
    const auto golden_ids = ids_of(c.at("ids_with_special"));
    // These were decoded with clean_up_tokenization_spaces=False.
    CHECK(tok.decode(golden_ids, false, false) == c.at("decode").get<std::string>());
    CHECK(tok.decode(golden_ids, true, false) == c.at("decode_skip").get<std::string>());
  }
  for (const auto& c : v.at("decode_cases")) {
    INFO("ids: " << c.at("ids").dump());
    CHECK(tok.decode(ids_of(c.at("ids")), false, false) == c.at("decode").get<std::string>());
    CHECK(tok.decode(ids_of(c.at("ids")), true, false) == c.at("decode_skip").get<std::string>());
  }

  // The clean-up: the config's setting by default, or forced on or off.
  CHECK(tok.clean_up_tokenization_spaces() == v.at("clean_up_tokenization_spaces").get<bool>());
  for (const auto& c : v.at("cleanup_cases")) {
    INFO("cleanup text: " << c.at("text").dump());
    const auto ids = ids_of(c.at("ids"));
    CHECK(tok.encode(c.at("text").get<std::string>()) == ids);
    CHECK(tok.decode(ids) == c.at("decode_default").get<std::string>());
    CHECK(tok.decode(ids, true) == c.at("decode_skip_default").get<std::string>());
    CHECK(tok.decode(ids, false, true) == c.at("decode_clean").get<std::string>());
    CHECK(tok.decode(ids, false, false) == c.at("decode_raw").get<std::string>());
  }
}

}  // namespace

TEST_CASE("BpeTokenizer equals HF's slow CodeGenTokenizer on the Phi-2-like directory", "[parity][tokenizer][bpe]") {
  const json& v = golden().at("variants").at("tiny_codegen");
  const fs::path dir = bpe_dir() / v.at("dir").get<std::string>();
  REQUIRE(v.at("cases").size() >= 40);

  SECTION("vocab.json + merges.txt") { check_variant(BpeTokenizer::from_pretrained(dir), v, dir.string()); }
  SECTION("tokenizer.json and the configs only") {
    Scratch scratch("codegen_json");
    scratch.copy_from(dir, {"vocab.json", "merges.txt"});
    check_variant(BpeTokenizer::from_pretrained(scratch.path), v, "tokenizer.json only");
  }
}

TEST_CASE("BpeTokenizer equals HF on an older directory (flags in tokenizer.json, prefix space, bos)",
          "[parity][tokenizer][bpe]") {
  const json& v = golden().at("variants").at("tiny_gpt2_legacy");
  const fs::path dir = bpe_dir() / v.at("dir").get<std::string>();
  const fs::path base = bpe_dir() / v.at("vocab_and_merges_from").get<std::string>();

  SECTION("tokenizer.json and the configs only") { check_variant(BpeTokenizer::from_pretrained(dir), v, dir.string()); }
  SECTION("with vocab.json + merges.txt") {
    Scratch scratch("legacy_slow");
    scratch.copy_from(dir);
    fs::copy_file(base / "vocab.json", scratch.path / "vocab.json");
    fs::copy_file(base / "merges.txt", scratch.path / "merges.txt");
    check_variant(BpeTokenizer::from_pretrained(scratch.path), v, "with vocab.json + merges.txt");
  }
}

TEST_CASE("the golden data is not trivial", "[tokenizer][bpe]") {
  // Guards against a regenerated golden.json that would let a wrong tokenizer pass.
  const json& v = golden().at("variants").at("tiny_codegen");
  size_t multi_piece = 0, with_eot = 0, with_added = 0;
  for (const auto& c : v.at("cases")) {
    multi_piece += c.at("ids").size() > 3;
    for (int64_t id : ids_of(c.at("ids"))) {
      with_eot += id == v.at("eos_id").get<int64_t>();
      with_added += id >= v.at("vocab_size").get<int64_t>();
    }
  }
  CHECK(multi_piece > 25);
  CHECK(with_eot > 4);
  CHECK(with_added > 4);
  const auto tok = BpeTokenizer::from_pretrained(bpe_dir() / "tiny_codegen");
  // One wrong id anywhere must show: a plain round trip is not enough.
  CHECK(tok.encode("Hello world", false) == hello_world_ids());
  CHECK(tok.tokenize("Hello world") == std::vector<std::string>{"Hello", "\xc4\xa0world"});
}

TEST_CASE("BpeTokenizer's clean_up_tokenization_spaces follows tokenizer_config.json as HF does",
          "[parity][tokenizer][bpe]") {
  const fs::path dir = bpe_dir() / "tiny_codegen";
  const json config = minigpt4::test::read_json(dir / "tokenizer_config.json");
  const auto& rows = golden().at("cleanup_config");
  REQUIRE(rows.size() == 4);
  for (const auto& row : rows) {
    const json& value = row.at("config_value");
    INFO("clean_up_tokenization_spaces: " << value.dump());
    Scratch scratch("cleanup_config");
    scratch.copy_from(dir, {"tokenizer_config.json"});
    json c = config;
    if (value == "absent")
      c.erase("clean_up_tokenization_spaces");
    else
      c["clean_up_tokenization_spaces"] = value;
    scratch.write("tokenizer_config.json", c.dump(2));
    const auto tok = BpeTokenizer::from_pretrained(scratch.path);
    const json& attribute = row.at("clean_up_tokenization_spaces");  // null: None, read as false
    const bool want = attribute.is_boolean() && attribute.get<bool>();
    CHECK(tok.clean_up_tokenization_spaces() == want);
    const auto ids = tok.encode(row.at("text").get<std::string>());
    CHECK(ids == ids_of(row.at("ids")));
    CHECK(tok.decode(ids) == row.at("decode_default").get<std::string>());
  }
  // The rows must tell the settings apart.
  CHECK(rows[0].at("decode_default") != rows[1].at("decode_default"));
  CHECK(rows[3].at("decode_default") == rows[0].at("decode_default"));

  // Through the Tokenizer interface (what chat uses), the Phi-2-like directory cleans up.
  const std::shared_ptr<minigpt4::Tokenizer> loaded = minigpt4::load_tokenizer(dir);
  CHECK(loaded->decode(loaded->encode("I do n't know .", false)) == "I don't know.");

  // A value HF would not read as a boolean is refused.
  Scratch bad("cleanup_bad");
  bad.copy_from(dir, {"tokenizer_config.json"});
  json c = config;
  c["clean_up_tokenization_spaces"] = "yes";
  bad.write("tokenizer_config.json", c.dump(2));
  CHECK_THROWS_WITH(BpeTokenizer::from_pretrained(bad.path), Contains("clean_up_tokenization_spaces"));

  // Python str.replace semantics, pattern after pattern.
  CHECK(BpeTokenizer::clean_up_tokenization("a ' ' b") == "a'' b");
  CHECK(BpeTokenizer::clean_up_tokenization(" . .") == "..");
  CHECK(BpeTokenizer::clean_up_tokenization("do n't , ok") == "don't, ok");
  CHECK(BpeTokenizer::clean_up_tokenization("nothing here") == "nothing here");
  CHECK(BpeTokenizer::clean_up_tokenization("") == "");
}

TEST_CASE("the clean-up golden data is not trivial", "[tokenizer][bpe]") {
  for (const char* name : {"tiny_codegen", "tiny_gpt2_legacy"}) {
    const json& v = golden().at("variants").at(name);
    size_t changed = 0;
    for (const auto& c : v.at("cleanup_cases")) changed += c.at("decode_clean") != c.at("decode_raw");
    CHECK(v.at("cleanup_cases").size() >= 20);
    CHECK(changed >= 15);
  }
}

TEST_CASE("BpeTokenizer decodes what it encodes and survives invalid UTF-8", "[tokenizer][bpe]") {
  const auto tok = BpeTokenizer::from_pretrained(bpe_dir() / "tiny_codegen");
  for (const std::string text : {"Hello world", " x\ty <|endoftext|>\n", "caf\xc3\xa9 \xe4\xb8\xad \xf0\x9f\x98\x80"})
    CHECK(tok.decode(tok.encode(text)) == text);
  // Added tokens (the space runs) decode with a space on each side, as in HF.
  CHECK(tok.decode(tok.encode("a  b")) == "a    b");
  // Invalid input bytes are read as U+FFFD, as Python's errors="replace" would decode them.
  CHECK(tok.encode("a\xff"
                   "b\xe4\xb8",
                   false) == tok.encode("a\xef\xbf\xbd"
                                        "b\xef\xbf\xbd",
                                        false));
  CHECK(tok.decode(tok.encode("\xc3", false)) == "\xef\xbf\xbd");
  CHECK_THROWS_AS(tok.decode({100000}), minigpt4::Error);
  CHECK_THROWS_AS(tok.id_to_piece(-1), minigpt4::Error);

  // encode_batch (shared with the LLaMA tokenizer): no bos for Phi-2, right padding.
  const auto batch = tok.encode_batch({"Hello world", "Hello"}, true, 0, tok.pad_id());
  CHECK(batch.ids[0] == hello_world_ids());
  CHECK(batch.ids[1] == std::vector<int64_t>{hello_world_ids()[0], tok.eos_id()});
  CHECK(batch.attention_mask[1] == std::vector<int64_t>{1, 0});

  // Copies share the cache; concurrent calls give the same ids.
  const BpeTokenizer copy = tok;
  const std::string text = "The model looks at the image and answers the question about the image.";
  const auto want = tok.encode(text, false);
  std::vector<std::thread> threads;
  std::vector<int> same(4, 0);
  for (int t = 0; t < 4; ++t)
    threads.emplace_back([&, t] {
      for (int k = 0; k < 50; ++k) same[t] += (t % 2 ? copy : tok).encode(text, false) == want;
    });
  for (auto& th : threads) th.join();
  CHECK(same == std::vector<int>(4, 50));
  CHECK(copy.encode(text, false) == want);
}

TEST_CASE("load_tokenizer picks the tokenizer from the directory's files", "[tokenizer][bpe]") {
  const fs::path codegen = bpe_dir() / "tiny_codegen";
  auto tok = minigpt4::load_tokenizer(codegen);
  CHECK(dynamic_cast<const BpeTokenizer*>(tok.get()) != nullptr);
  CHECK(tok->encode("Hello world", false) == hello_world_ids());

  // tokenizer.json alone is enough.
  CHECK(dynamic_cast<const BpeTokenizer*>(minigpt4::load_tokenizer(bpe_dir() / "tiny_gpt2_legacy").get()) != nullptr);

  // sentencepiece first when tokenizer.model is there, whatever else is.
  const fs::path vicuna = minigpt4::test::data_dir() / "parity" / "tiny_vicuna0" / "vicuna";
  CHECK(dynamic_cast<const minigpt4::LlamaTokenizer*>(minigpt4::load_tokenizer(vicuna).get()) != nullptr);
  Scratch both("both");
  both.copy_from(codegen);
  fs::copy_file(vicuna / "tokenizer.model", both.path / "tokenizer.model");
  CHECK(dynamic_cast<const minigpt4::LlamaTokenizer*>(minigpt4::load_tokenizer(both.path).get()) != nullptr);

  Scratch empty("empty");
  CHECK_THROWS_WITH(minigpt4::load_tokenizer(empty.path),
                    Contains(empty.path.string()) && Contains("vocab.json + merges.txt"));
  Scratch wordpiece("wordpiece");
  wordpiece.write("tokenizer.json", R"({"model": {"type": "WordPiece", "vocab": {"a": 0}}})");
  CHECK_THROWS_WITH(minigpt4::load_tokenizer(wordpiece.path), Contains("tokenizer.json") && Contains("WordPiece"));
}

TEST_CASE("missing or malformed BPE files raise minigpt4::Error naming file and problem", "[tokenizer][bpe]") {
  const fs::path codegen = bpe_dir() / "tiny_codegen";
  CHECK_THROWS_WITH(BpeTokenizer::from_pretrained("/nonexistent/phi-2"), Contains("/nonexistent/phi-2"));

  SECTION("no files") {
    Scratch s("none");
    CHECK_THROWS_WITH(BpeTokenizer::from_pretrained(s.path),
                      Contains("neither vocab.json + merges.txt nor tokenizer.json"));
  }
  SECTION("vocab.json without merges.txt") {
    Scratch s("no_merges");
    s.copy_from(codegen, {"merges.txt", "tokenizer.json"});
    CHECK_THROWS_WITH(BpeTokenizer::from_pretrained(s.path), Contains("merges.txt") && Contains("not found"));
  }
  SECTION("malformed vocab.json") {
    Scratch s("bad_vocab");
    s.copy_from(codegen);
    s.write("vocab.json", "{\"a\": 0, ");
    CHECK_THROWS_WITH(BpeTokenizer::from_pretrained(s.path), Contains("vocab.json") && Contains("not valid JSON"));
    s.write("vocab.json", "[1, 2]");
    CHECK_THROWS_WITH(BpeTokenizer::from_pretrained(s.path), Contains("vocab.json") && Contains("JSON object"));
    s.write("vocab.json", R"({"a": "zero"})");
    CHECK_THROWS_WITH(BpeTokenizer::from_pretrained(s.path),
                      Contains("vocab.json") && Contains("non-negative integer"));
  }
  SECTION("merges referencing unknown pieces") {
    Scratch s("bad_merges");
    s.copy_from(codegen);
    s.write("merges.txt", "#version: 0.2\nh e\n\xc4\xa0 zzz\n");
    CHECK_THROWS_WITH(BpeTokenizer::from_pretrained(s.path),
                      Contains("merges.txt line 3") && Contains("\"zzz\"") && Contains("not in the vocabulary"));
    s.write("merges.txt", "#version: 0.2\nh e x\n");
    CHECK_THROWS_WITH(BpeTokenizer::from_pretrained(s.path),
                      Contains("merges.txt line 2") && Contains("not two pieces"));
  }
  SECTION("malformed tokenizer.json") {
    Scratch s("bad_json");
    s.copy_from(codegen, {"vocab.json", "merges.txt"});
    const std::string good = read_file(codegen / "tokenizer.json");
    s.write("tokenizer.json", good.substr(0, good.size() / 2));
    CHECK_THROWS_WITH(BpeTokenizer::from_pretrained(s.path), Contains("tokenizer.json") && Contains("not valid JSON"));

    json doc = json::parse(good);
    doc["model"]["merges"].push_back("\xc4\xa0 qqq");
    s.write("tokenizer.json", doc.dump());
    CHECK_THROWS_WITH(BpeTokenizer::from_pretrained(s.path), Contains("tokenizer.json model.merges[") &&
                                                                 Contains("\"qqq\"") &&
                                                                 Contains("not in the vocabulary"));
    doc = json::parse(good);
    doc["model"]["merges"][0] = json::array({"h"});
    s.write("tokenizer.json", doc.dump());
    CHECK_THROWS_WITH(BpeTokenizer::from_pretrained(s.path), Contains("model.merges[0]"));
    doc = json::parse(good);
    doc["model"].erase("vocab");
    s.write("tokenizer.json", doc.dump());
    CHECK_THROWS_WITH(BpeTokenizer::from_pretrained(s.path), Contains("tokenizer.json") && Contains("model.vocab"));
    doc = json::parse(good);
    doc["pre_tokenizer"] = json{{"type", "Metaspace"}};
    s.write("tokenizer.json", doc.dump());
    CHECK_THROWS_WITH(BpeTokenizer::from_pretrained(s.path), Contains("tokenizer.json") && Contains("pre_tokenizer"));
    doc = json::parse(good);
    doc["model"]["type"] = "Unigram";
    s.write("tokenizer.json", doc.dump());
    CHECK_THROWS_WITH(BpeTokenizer::from_pretrained(s.path), Contains("model.type is \"Unigram\""));
  }
  SECTION("malformed configs") {
    Scratch s("bad_config");
    s.copy_from(codegen);
    s.write("tokenizer_config.json", "{oops");
    CHECK_THROWS_WITH(BpeTokenizer::from_pretrained(s.path),
                      Contains("tokenizer_config.json") && Contains("not valid JSON"));
    s.write("tokenizer_config.json", R"({"bos_token": 5})");
    CHECK_THROWS_WITH(BpeTokenizer::from_pretrained(s.path),
                      Contains("tokenizer_config.json") && Contains("bos_token"));
    s.write("tokenizer_config.json", R"({})");
    s.write("added_tokens.json", R"(["  "])");
    CHECK_THROWS_WITH(BpeTokenizer::from_pretrained(s.path), Contains("added_tokens.json"));
  }
}

TEST_CASE("BpeTokenizer follows the slow tokenizer's reading of merges.txt and configs", "[tokenizer][bpe]") {
  const fs::path codegen = bpe_dir() / "tiny_codegen";
  const auto ref = BpeTokenizer::from_pretrained(codegen);

  SECTION("no config files: GPT-2 defaults (<|endoftext|> for bos/eos/unk, no added tokens)") {
    Scratch s("bare");
    s.copy_from(codegen, {"tokenizer_config.json", "special_tokens_map.json", "added_tokens.json", "tokenizer.json"});
    const auto tok = BpeTokenizer::from_pretrained(s.path);
    CHECK(tok.bos_id() == ref.bos_id());
    CHECK(tok.eos_id() == ref.eos_id());
    CHECK_FALSE(tok.add_bos_token());
    CHECK(tok.size() == tok.vocab_size());
    // Without the added space runs, two spaces are byte-level pieces.
    CHECK(tok.tokenize("a  b") == std::vector<std::string>{"a", "\xc4\xa0",
                                                           "\xc4\xa0"
                                                           "b"});
    CHECK(ref.tokenize("a  b") == std::vector<std::string>{"a", "  ", "b"});
  }
  SECTION("add_bos_token and add_prefix_space from tokenizer_config.json") {
    Scratch s("bos");
    s.copy_from(codegen);
    json config = minigpt4::test::read_json(codegen / "tokenizer_config.json");
    config["add_bos_token"] = true;
    config["add_prefix_space"] = true;
    s.write("tokenizer_config.json", config.dump());
    const auto tok = BpeTokenizer::from_pretrained(s.path);
    auto want = ref.encode(" Hello world", false);
    want.insert(want.begin(), ref.bos_id());
    CHECK(tok.encode("Hello world") == want);
  }
  SECTION("merges.txt: the first line is always skipped, the text after the last newline dropped") {
    Scratch s("merges");
    s.copy_from(codegen);
    std::string merges = read_file(codegen / "merges.txt");
    REQUIRE(merges.substr(0, 14) == "#version: 0.2\n");
    s.write("merges.txt", "# any header\n" + merges.substr(14) + "\n\n");
    CHECK(BpeTokenizer::from_pretrained(s.path).encode("Hello world image", false) ==
          ref.encode("Hello world image", false));
    // "h e" moved to the end: kept after a final newline, lost without one (GPT2Tokenizer
    // drops whatever follows the last "\n").
    const size_t at = merges.find("\nh e\n");
    REQUIRE(at != std::string::npos);
    const std::string without = merges.substr(0, at + 1) + merges.substr(at + 5);
    s.write("merges.txt", without + "h e\n");
    CHECK(BpeTokenizer::from_pretrained(s.path).tokenize("he") == std::vector<std::string>{"he"});
    s.write("merges.txt", without + "h e");
    CHECK(BpeTokenizer::from_pretrained(s.path).tokenize("he") == std::vector<std::string>{"h", "e"});
  }
}

namespace {

// The slow tokenizer's loop (GPT2Tokenizer.bpe), kept here as the reference: rescan the
// word for the lowest-ranked pair, merge its occurrences left to right, repeat.
std::vector<std::string> slow_bpe(std::vector<std::string> symbols, const minigpt4::BpeMergeRanks& ranks) {
  while (symbols.size() > 1) {
    int64_t best = std::numeric_limits<int64_t>::max();
    std::pair<std::string, std::string> pair;
    for (size_t k = 0; k + 1 < symbols.size(); ++k)
      if (auto it = ranks.find({symbols[k], symbols[k + 1]}); it != ranks.end() && it->second < best)
        best = it->second, pair = it->first;
    if (best == std::numeric_limits<int64_t>::max()) break;
    std::vector<std::string> merged;
    for (size_t k = 0; k < symbols.size();) {
      if (k + 1 < symbols.size() && symbols[k] == pair.first && symbols[k + 1] == pair.second) {
        merged.push_back(symbols[k] + symbols[k + 1]);
        k += 2;
      } else {
        merged.push_back(symbols[k++]);
      }
    }
    symbols = std::move(merged);
  }
  return symbols;
}

}  // namespace

TEST_CASE("BPE merges: the heap gives the slow tokenizer's pieces, also for merge lists out of order", "[tokenizer]") {
  std::mt19937 rng(7);
  for (int trial = 0; trial < 300; ++trial) {
    // Merges over a 3-letter alphabet: pairs of existing pieces, in a random rank order (so
    // that a merge may rank before the merges that make its halves, as a crafted file can).
    std::vector<std::string> pieces = {"a", "b", "c"};
    std::vector<std::pair<std::string, std::string>> merges;
    for (int m = 0; m < 12; ++m) {
      const auto& x = pieces[rng() % pieces.size()];
      const auto& y = pieces[rng() % pieces.size()];
      merges.emplace_back(x, y);
      pieces.push_back(x + y);
    }
    std::shuffle(merges.begin(), merges.end(), rng);
    minigpt4::BpeMergeRanks ranks;
    for (size_t r = 0; r < merges.size(); ++r) ranks.emplace(merges[r], static_cast<int64_t>(r));
    std::vector<std::string> word;
    const size_t length = 1 + rng() % 40;
    for (size_t i = 0; i < length; ++i) word.push_back(std::string(1, "abc"[rng() % (trial % 3 == 0 ? 1 : 3)]));
    INFO("trial " << trial);
    CHECK(minigpt4::bpe_merge(word, ranks) == slow_bpe(word, ranks));
  }
}

TEST_CASE("BPE merges: a word of 200,000 letters is merged without quadratic rescans", "[tokenizer]") {
  minigpt4::BpeMergeRanks ranks{{{"a", "a"}, 0}, {{"aa", "aa"}, 1}, {{"aaaa", "aaaa"}, 2}};
  const std::vector<std::string> word(200000, "a");
  const auto pieces = minigpt4::bpe_merge(word, ranks);
  REQUIRE(pieces.size() == 200000 / 8);
  CHECK(pieces.front() == "aaaaaaaa");
}
