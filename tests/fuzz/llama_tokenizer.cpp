// libFuzzer harness for the LLaMA (sentencepiece) tokenizer. The first byte picks what the
// rest is: text encoded and decoded with the fixture tokenizer (tiny_vicuna0), token ids
// decoded (two bytes each, some out of range), a tokenizer.model, or a tokenizer_config.json
// / added_tokens.json next to the fixture model. A minigpt4::Error is a clean refusal; a
// crash, hang or any other exception is a bug.
#include "minigpt4/common/error.h"
#include "minigpt4/tokenizer/llama_tokenizer.h"
#include "tests/fuzz/fuzz_util.h"

namespace fs = std::filesystem;

namespace {
const fs::path kModel = fs::path(MINIGPT4_TEST_DATA_DIR) / "parity" / "tiny_vicuna0" / "tokenizer.model";

const minigpt4::LlamaTokenizer& fixture() {
  static const minigpt4::LlamaTokenizer tok = minigpt4::LlamaTokenizer::from_model_file(kModel);
  return tok;
}

void round_trip(const minigpt4::LlamaTokenizer& tok, const std::string& text) {
  const auto ids = tok.encode(text);
  (void)tok.decode(ids);
  (void)tok.decode(ids, true);
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
      case 2: {
        const auto model = minigpt4::fuzz::scratch_dir("llama_tokenizer") / "tokenizer.model";
        minigpt4::fuzz::write_file(model, data + 1, size - 1);
        round_trip(minigpt4::LlamaTokenizer::from_model_file(model), "Hello <s> world</s>, 1234 \xe2\x96\x81 \xff");
        break;
      }
      default: {  // 3: tokenizer_config.json, 4: added_tokens.json (5: special_tokens_map.json via 3's bytes)
        const auto dir = minigpt4::fuzz::scratch_dir("llama_tokenizer") / "hf";
        fs::create_directories(dir);
        for (const char* name : {"tokenizer_config.json", "added_tokens.json", "special_tokens_map.json"})
          fs::remove(dir / name);
        fs::copy_file(kModel, dir / "tokenizer.model", fs::copy_options::overwrite_existing);
        minigpt4::fuzz::write_file(dir / (mode == 3 ? "tokenizer_config.json" : "added_tokens.json"), data + 1,
                                   size - 1);
        round_trip(minigpt4::LlamaTokenizer::from_pretrained(dir), "Hello <s> world</s>, <pad> ###");
        break;
      }
    }
  } catch (const minigpt4::Error&) {}
  return 0;
}
