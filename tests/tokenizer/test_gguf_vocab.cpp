// A GGUF's own vocabulary (tokenizer/gguf_vocab.h): the files llama.cpp's converter wrote from
// the tiny Vicuna fixture give the tokenizer its tokenizer.model gives, and broken
// vocabularies are named errors.
#include "minigpt4/common/error.h"
#include "minigpt4/io/gguf.h"
#include "minigpt4/tokenizer/gguf_vocab.h"
#include "minigpt4/tokenizer/llama_tokenizer.h"
#include "minigpt4/tokenizer/tokenizer.h"
#include "tests/support/fixtures.h"

#include <catch2/catch.hpp>

#include <filesystem>
#include <unistd.h>

using namespace minigpt4;
using Catch::Contains;
namespace fs = std::filesystem;

namespace {

const std::vector<std::string> kTexts = {
    "",
    "Hello world",
    "  two  spaces and\ttabs\nnew lines\n\n",
    "###Human: <Img><ImageHere></Img> Describe this image. ###Assistant: ",
    "<s>specials</s> inside <unk> text",
    "caf\xC3\xA9 \xE6\x97\xA5\xE6\x9C\xAC\xE8\xAA\x9E \xE2\x9C\x93 \xF0\x9F\x99\x82",  // byte fallback
    "{\"colour\": \"red\", \"count\": 12}",
};

std::string refusal(const io::GgufFile& gguf) {
  try {
    sentencepiece_model_from_gguf(gguf);
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

}  // namespace

TEST_CASE("a GGUF's own vocabulary tokenizes as the tokenizer.model it was converted from", "[tokenizer][gguf]") {
  const auto reference = LlamaTokenizer::from_pretrained(test::data_dir() / "parity/tiny_vicuna0/vicuna");
  for (const char* name : {"tiny_llama_f16.gguf", "tiny_llama_q8_0.gguf", "tiny_llama_q4_0.gguf"}) {
    INFO(name);
    const auto tokenizer = LlamaTokenizer::from_gguf(test::data_dir() / "gguf" / name);
    REQUIRE(tokenizer.vocab_size() == reference.vocab_size());
    CHECK(tokenizer.bos_id() == reference.bos_id());
    CHECK(tokenizer.eos_id() == reference.eos_id());
    CHECK(tokenizer.unk_id() == reference.unk_id());
    CHECK(tokenizer.add_bos_token() == reference.add_bos_token());
    CHECK(tokenizer.add_eos_token() == reference.add_eos_token());
    for (const auto& text : kTexts) {
      INFO(text);
      const auto ids = reference.encode(text);
      CHECK(tokenizer.encode(text) == ids);
      CHECK(tokenizer.tokenize(text) == reference.tokenize(text));
      CHECK(tokenizer.decode(ids) == reference.decode(ids));
      CHECK(tokenizer.decode(ids, true) == reference.decode(ids, true));
    }
    for (int64_t id = 0; id < reference.vocab_size(); ++id) {
      CHECK(tokenizer.id_to_piece(id) == reference.id_to_piece(id));
      CHECK(tokenizer.decode({id}) == reference.decode({id}));
    }
  }
}

TEST_CASE("load_tokenizer on a GGUF needs no tokenizer.model beside it", "[tokenizer][gguf]") {
  const auto dir = fs::temp_directory_path() / ("minigpt4_test_gguf_vocab_" + std::to_string(::getpid()));
  fs::create_directories(dir);
  const auto path = dir / "model.gguf";
  fs::copy_file(test::data_dir() / "gguf/tiny_llama_q8_0.gguf", path, fs::copy_options::overwrite_existing);
  const auto tokenizer = load_tokenizer(path);
  const auto reference = LlamaTokenizer::from_pretrained(test::data_dir() / "parity/tiny_vicuna0/vicuna");
  CHECK(tokenizer->encode(kTexts[3]) == reference.encode(kTexts[3]));
  fs::remove_all(dir);
}

TEST_CASE("a GGUF vocabulary that is missing, foreign or inconsistent is a named error", "[tokenizer][gguf][hostile]") {
  const auto good = io::read_gguf((test::data_dir() / "gguf/tiny_llama_f16.gguf").string());
  REQUIRE(refusal(good).empty());
  auto gguf = good;
  gguf.metadata["tokenizer.ggml.model"] = "gpt2";
  CHECK_THAT(refusal(gguf), Contains("\"gpt2\"") && Contains("tokenizer.ggml.model"));
  gguf = good;
  gguf.metadata.erase("tokenizer.ggml.tokens");
  CHECK_THAT(refusal(gguf), Contains("tokenizer.ggml.tokens"));
  gguf = good;
  gguf.metadata["tokenizer.ggml.scores"].erase(0);
  CHECK_THAT(refusal(gguf), Contains("tokenizer.ggml.scores") && Contains("999 entries"));
  gguf = good;
  gguf.metadata["tokenizer.ggml.token_type"][5] = 9;
  CHECK_THAT(refusal(gguf), Contains("token 5 has type 9"));
  gguf = good;
  gguf.metadata["tokenizer.ggml.tokens"][7] = 3;
  CHECK_THAT(refusal(gguf), Contains("token 7"));
  gguf = good;
  gguf.metadata["tokenizer.ggml.bos_token_id"] = 1000;
  CHECK_THAT(refusal(gguf), Contains("tokenizer.ggml.bos_token_id") && Contains("below 1000"));
  gguf = good;
  gguf.metadata["tokenizer.ggml.add_space_prefix"] = "yes";
  CHECK_THAT(refusal(gguf), Contains("add_space_prefix"));
}
