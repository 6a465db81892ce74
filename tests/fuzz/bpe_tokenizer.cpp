// libFuzzer harness for the byte-level BPE tokenizer (Phi-2, TinyGPT-V). The first byte
// picks what the rest is: text encoded and decoded with the fixture tokenizer (tiny_codegen),
// token ids decoded, a tokenizer.json on its own, or a tokenizer_config.json / added_tokens.json
// next to the fixture's vocab.json and merges.txt. A minigpt4::Error is a clean refusal; a
// crash, hang or any other exception is a bug.
#include "minigpt4/common/error.h"
#include "minigpt4/tokenizer/bpe_tokenizer.h"
#include "tests/fuzz/fuzz_util.h"

namespace fs = std::filesystem;

namespace {
const fs::path kFixture = fs::path(MINIGPT4_TEST_DATA_DIR) / "tokenizer" / "bpe" / "tiny_codegen";

const minigpt4::BpeTokenizer& fixture() {
  static const minigpt4::BpeTokenizer tok = minigpt4::BpeTokenizer::from_pretrained(kFixture);
  return tok;
}

void round_trip(const minigpt4::BpeTokenizer& tok, const std::string& text) {
  const auto ids = tok.encode(text);
  (void)tok.decode(ids);
  (void)tok.decode(ids, true, false);
  (void)tok.tokenize(text);
}
}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  const uint8_t mode = data[0] % 5;
  const std::string rest(reinterpret_cast<const char*>(data + 1), size - 1);
  try {
    switch (mode) {
      case 0: round_trip(fixture(), rest); break;
      case 1: {
        std::vector<int64_t> ids;
        for (size_t i = 0; i + 1 < rest.size(); i += 2)
          ids.push_back(static_cast<int16_t>(uint8_t(rest[i]) | uint8_t(rest[i + 1]) << 8));
        (void)fixture().decode(ids);
        break;
      }
      default: {  // 2: tokenizer.json alone; 3: tokenizer_config.json, 4: added_tokens.json with the slow files
        const auto dir = minigpt4::fuzz::scratch_dir("bpe_tokenizer") / "hf";
        fs::remove_all(dir);
        fs::create_directories(dir);
        if (mode != 2)
          for (const char* name : {"vocab.json", "merges.txt"}) fs::copy_file(kFixture / name, dir / name);
        const char* name = mode == 2 ? "tokenizer.json" : mode == 3 ? "tokenizer_config.json" : "added_tokens.json";
        minigpt4::fuzz::write_file(dir / name, data + 1, size - 1);
        round_trip(minigpt4::BpeTokenizer::from_pretrained(dir), "Hello <|endoftext|> world, don't 1234 \xff\xfe");
        break;
      }
    }
  } catch (const minigpt4::Error&) {}
  return 0;
}
