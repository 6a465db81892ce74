// Training a LLaMA-style tokenizer for a model built from scratch.
#include <catch2/catch.hpp>

#include "minigpt4/common/error.h"
#include "minigpt4/tokenizer/llama_tokenizer.h"
#include "minigpt4/tokenizer/train_tokenizer.h"

#include <unistd.h>

#include <filesystem>
#include <fstream>

namespace fs = std::filesystem;

TEST_CASE("a trained tokenizer directory loads as a LLaMA tokenizer and round-trips its text", "[tokenizer]") {
  const fs::path dir = fs::temp_directory_path() / ("minigpt4_tok_" + std::to_string(::getpid()));
  fs::remove_all(dir);
  fs::create_directories(dir);
  const auto corpus = (dir / "corpus.txt").string();
  {
    std::ofstream out(corpus);
    const char* colours[] = {"red", "green", "blue", "yellow"};
    const char* shapes[] = {"circle", "square", "triangle"};
    for (int i = 0; i < 300; ++i)
      out << "a picture of " << (i % 3 + 1) << " " << colours[i % 4] << " " << shapes[i % 3] << "s on the left.###\n";
  }
  minigpt4::TokenizerTrainOptions options;
  options.corpus_path = corpus;
  options.out_dir = (dir / "llm").string();
  options.vocab_size = 300;
  minigpt4::train_llama_tokenizer(options);

  const auto tok = minigpt4::LlamaTokenizer::from_pretrained(dir / "llm");
  CHECK(tok.bos_id() == 1);
  CHECK(tok.eos_id() == 2);
  CHECK(tok.unk_id() == 0);
  CHECK(tok.vocab_size() <= 300);
  const std::string text = "a picture of 2 blue squares on the left.###";
  const auto ids = tok.encode(text);
  REQUIRE(!ids.empty());
  CHECK(ids.front() == 1);
  CHECK(tok.decode(ids, /*skip_special_tokens=*/true) == text);
  // Unseen characters fall back to bytes rather than <unk>.
  const auto odd = tok.encode("ü!", false);
  CHECK(std::find(odd.begin(), odd.end(), tok.unk_id()) == odd.end());
  CHECK(tok.decode(odd) == "ü!");

  options.vocab_size = 100;
  CHECK_THROWS_WITH(minigpt4::train_llama_tokenizer(options), Catch::Contains("too small"));
  options.corpus_path = (dir / "missing.txt").string();
  options.vocab_size = 300;
  CHECK_THROWS_WITH(minigpt4::train_llama_tokenizer(options), Catch::Contains("missing.txt"));
  fs::remove_all(dir);
}
