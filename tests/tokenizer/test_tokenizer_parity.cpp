// Fixture parity: every case's tokenizer_cases.json (HF slow LlamaTokenizer outputs) and the
// token ids the Python MiniGPT-4 code produced (io.safetensors).
#include <catch2/catch.hpp>
#include <sentencepiece_processor.h>

#include <iostream>

#include "minigpt4/common/strings.h"
#include "minigpt4/tokenizer/llama_tokenizer.h"
#include "tests/support/fixtures.h"
#include "tests/support/int_tensors.h"

using minigpt4::LlamaTokenizer;
using minigpt4::split;
using nlohmann::json;
namespace fs = std::filesystem;
namespace mt = minigpt4::test;

namespace {

// The tokenizer MiniGPT-4 used: the HF directory when the case has one.
LlamaTokenizer load_case_tokenizer(const fs::path& dir, const json& cases) {
  if (fs::exists(dir / "vicuna" / "tokenizer.model")) return LlamaTokenizer::from_pretrained(dir / "vicuna");
  return LlamaTokenizer::from_model_file(dir / cases.at("tokenizer_model").get<std::string>());
}

std::vector<int64_t> ids_of(const json& j) { return j.get<std::vector<int64_t>>(); }

// Python's str.split(sep) for one separator.
// The token-id tensors of io.safetensors that MiniGPT-4's tokenizer calls produced.
int check_io_ids(const fs::path& dir, const LlamaTokenizer& tok) {
  if (!fs::exists(dir / "io.safetensors")) return 0;
  const mt::I64Safetensors io(dir / "io.safetensors");
  const json manifest = mt::read_json(dir / "manifest.json");
  if (!manifest.contains("config") || !manifest.at("config").contains("minigpt4")) return 0;
  const json& mg = manifest.at("config").at("minigpt4");
  int checks = 0;

  // MiniGPT-4.forward: tokenizer([c + end_sym], padding='longest', truncation=True,
  // max_length=max_txt_len, add_special_tokens=False) with pad = eos (Vicuna-v0's code) or
  // pad = "$$" (the LLaMA-2 variant's code: the piece's id, else unk).
  const bool dollar_pad = !mg.value("has_qformer", true);
  const int64_t pad = dollar_pad ? tok.piece_to_id("$$") : tok.pad_id();
  if (mg.contains("llama_tokenizer") && mg.at("llama_tokenizer").contains("pad_token_id")) {
    CHECK(pad == mg.at("llama_tokenizer").at("pad_token_id").get<int64_t>());
    ++checks;
  }
  for (const std::string stage : {"stage1", "stage2", "instr"}) {
    const auto ids = io.get(stage + "_to_regress_ids");
    const auto mask = io.get(stage + "_to_regress_mask");
    if (!ids || !mask || !mg.contains(stage)) continue;
    const std::string end_sym = mg.at(stage).at("end_sym");
    std::vector<std::string> texts;
    for (const auto& c : mg.at("captions")) texts.push_back(c.get<std::string>() + end_sym);
    const int max_len = mg.at(stage).contains("max_txt_len") ? mg.at(stage).at("max_txt_len").get<int>()
                                                             : mg.at("from_config").at("max_txt_len").get<int>();
    const auto batch = tok.encode_batch(texts, false, max_len, pad);
    REQUIRE(int64_t(batch.ids.size()) == ids->shape.at(0));
    for (size_t r = 0; r < batch.ids.size(); ++r) {
      INFO(stage << " row " << r << ": " << texts[r]);
      CHECK(batch.ids[r] == ids->row(r));
      CHECK(batch.attention_mask[r] == mask->row(r));
      checks += 2;
    }
  }

  // prompt_wrap: the stage-2 prompt halves around <ImageHere>, no special tokens.
  if (mg.contains("stage2") && mg.at("stage2").at("prompt").is_string()) {
    const auto halves = split(mg.at("stage2").at("prompt").get<std::string>(), "<ImageHere>");
    const auto before = io.get("stage2_prompt_before_ids");
    const auto after = io.get("stage2_prompt_after_ids");
    if (before && after && halves.size() == 2) {
      CHECK(tok.encode(halves[0], false) == before->values);
      CHECK(tok.encode(halves[1], false) == after->values);
      checks += 2;
    }
  }

  // Chat.get_context_emb: prompt segments, only the first with bos.
  if (manifest.contains("generation") && manifest.at("generation").contains("prompt")) {
    const auto segs = split(manifest.at("generation").at("prompt").get<std::string>(), "<ImageHere>");
    for (size_t i = 0; i < segs.size(); ++i) {
      const auto expected = io.get("chat_seg" + std::to_string(i) + "_ids");
      if (!expected) continue;
      INFO("chat segment " << i << ": " << segs[i]);
      CHECK(tok.encode(segs[i], i == 0) == expected->values);
      ++checks;
    }
  }
  return checks;
}

}  // namespace

TEST_CASE("tokenizer matches HF slow LlamaTokenizer on every fixture case", "[parity][tokenizer]") {
  const auto dirs = mt::parity_cases("tokenizer_cases.json");
  REQUIRE(!dirs.empty());
  for (const auto& dir : dirs) {
    const json file = mt::read_json(dir / "tokenizer_cases.json");
    const LlamaTokenizer tok = load_case_tokenizer(dir, file);
    sentencepiece::SentencePieceProcessor sp;  // raw sentencepiece, for the sp-only fields
    REQUIRE(sp.Load((dir / file.at("tokenizer_model").get<std::string>()).string()).ok());
    int checks = 0;

    const json& special = file.at("special_ids");
    CHECK(tok.unk_id() == special.at("unk").get<int64_t>());
    CHECK(tok.bos_id() == special.at("bos").get<int64_t>());
    CHECK(tok.eos_id() == special.at("eos").get<int64_t>());
    CHECK(tok.pad_id() == tok.eos_id());  // MiniGPT-4: pad_token = eos_token
    CHECK(tok.vocab_size() == file.at("vocab_size").get<int64_t>());
    checks += 5;

    for (const auto& c : file.at("cases")) {
      const std::string text = c.at("text");
      INFO("case " << dir.filename().string() << " text: '" << text << "'");
      if (c.contains("sentencepiece_ids")) {
        std::vector<int> raw;
        REQUIRE(sp.Encode(text, &raw).ok());
        CHECK(std::vector<int64_t>(raw.begin(), raw.end()) == ids_of(c.at("sentencepiece_ids")));
        ++checks;
      }
      if (c.contains("sentencepiece_pieces")) {
        std::vector<std::string> pieces;
        REQUIRE(sp.Encode(text, &pieces).ok());
        CHECK(pieces == c.at("sentencepiece_pieces").get<std::vector<std::string>>());
        ++checks;
      }
      if (c.contains("hf_tokenize")) {
        const auto pieces = c.at("hf_tokenize").get<std::vector<std::string>>();
        CHECK(tok.tokenize(text) == pieces);
        ++checks;
      }
      const auto with = ids_of(c.at("hf_ids_add_special_tokens_true"));
      const auto without = ids_of(c.at("hf_ids_add_special_tokens_false"));
      CHECK(tok.encode(text, true) == with);
      CHECK(tok.encode(text, false) == without);
      checks += 2;
      if (c.contains("hf_tokenize")) {  // piece <-> id agrees with HF's convert_*
        const auto pieces = c.at("hf_tokenize").get<std::vector<std::string>>();
        REQUIRE(pieces.size() == without.size());
        for (size_t i = 0; i < pieces.size(); ++i) {
          CHECK(tok.piece_to_id(pieces[i]) == without[i]);
          // Without byte fallback an unknown character's piece is its own text, id unk.
          if (without[i] != tok.unk_id()) CHECK(tok.id_to_piece(without[i]) == pieces[i]);
        }
        ++checks;
      }
      if (c.contains("hf_decode_of_ids_with_special")) {
        CHECK(tok.decode(with) == c.at("hf_decode_of_ids_with_special").get<std::string>());
        ++checks;
      }
      if (c.contains("hf_decode_of_ids_with_special_skip_special")) {
        CHECK(tok.decode(with, true) == c.at("hf_decode_of_ids_with_special_skip_special").get<std::string>());
        ++checks;
      }
      if (c.contains("hf_decode_of_ids_without_special")) {
        CHECK(tok.decode(without) == c.at("hf_decode_of_ids_without_special").get<std::string>());
        ++checks;
      }
    }
    checks += check_io_ids(dir, tok);
    std::cout << "parity case " << dir.filename().string() << ": " << checks << " tensors checked\n";
  }
}
