#pragma once
// A parity case's MiniGPT-4, built through the YAML config path from the case's split weight
// files (test::parity_case_yaml, as tests/models/test_minigpt4_parity.cpp does), with its
// tokenizer, io tensors and the generation settings of its manifest.
#include "minigpt4/common/config.h"
#include "minigpt4/generate/generate.h"
#include "minigpt4/io/safetensors.h"
#include "minigpt4/models/minigpt4.h"
#include "minigpt4/tokenizer/llama_tokenizer.h"
#include "tests/support/fixtures.h"

#include <memory>
#include <string>

namespace minigpt4::test {

struct GenerationFixture {
  explicit GenerationFixture(const fs::path& case_dir)
      : dir(case_dir),
        manifest(read_json(dir / "manifest.json")),
        io(io::load_safetensors((dir / "io.safetensors").string())),
        model(load_minigpt4(MiniGPT4Config::from_config(
                                Config::from_yaml(parity_case_yaml(dir, manifest), (dir / "manifest.json").string())),
                            torch::kCPU)),
        tokenizer(LlamaTokenizer::from_pretrained(dir / "vicuna")) {
    // HF's generate takes bos/eos/pad from generation_config.json (else config.json).
    for (const char* file : {"config.json", "generation_config.json"}) {
      const auto path = dir / "vicuna" / file;
      if (!fs::exists(path)) continue;
      const auto j = read_json(path);
      for (const auto& key : {"bos_token_id", "eos_token_id", "pad_token_id", "top_k"})
        if (j.contains(key) && !j[key].is_null()) generation_defaults[key] = j[key];
    }
  }

  const CausalLM& llm() const { return *model->llama_model; }
  std::string name() const { return manifest.value("case", dir.filename().string()); }
  const nlohmann::json& generation() const { return manifest.at("generation"); }

  // HF's generation defaults for this model: ids from the model's files; top_k is
  // transformers' GenerationConfig default (50) unless generation_config.json sets one.
  GenerationConfig base_config() const {
    GenerationConfig c;
    c.bos_token_id = generation_defaults.value("bos_token_id", c.bos_token_id);
    c.eos_token_id = generation_defaults.value("eos_token_id", c.eos_token_id);
    c.pad_token_id = generation_defaults.value("pad_token_id", c.pad_token_id);
    c.top_k = generation_defaults.value("top_k", int64_t{50});
    return c;
  }

  // The settings of one manifest result: Chat.answer's generate kwargs with the fixture's
  // overrides, and its stopping criteria (Chat's own hard-coded stop ids unless the result
  // replaced them; the seq-stop result uses the manifest's custom stop sequence).
  GenerationConfig result_config(const std::string& result_name, bool apply_overrides = true) const {
    const auto& result = generation().at("results").at(result_name);
    nlohmann::json kw = result.at("generate_kwargs_from_chat");
    const nlohmann::json overrides = result.value("overrides", nlohmann::json::object());
    if (apply_overrides)
      for (const auto& [key, value] : overrides.items())
        if (key != "stopping_criteria") kw[key] = value;
    GenerationConfig c = base_config();
    c.max_new_tokens = kw.at("max_new_tokens").get<int64_t>();
    c.num_beams = kw.at("num_beams").get<int>();
    c.do_sample = kw.at("do_sample").get<bool>();
    c.min_length = kw.at("min_length").get<int64_t>();
    c.top_p = kw.at("top_p").get<double>();
    c.repetition_penalty = kw.at("repetition_penalty").get<double>();
    c.length_penalty = kw.at("length_penalty").get<double>();
    c.temperature = kw.at("temperature").get<double>();
    if (kw.contains("top_k")) c.top_k = kw["top_k"].get<int64_t>();
    if (!apply_overrides || !overrides.contains("stopping_criteria")) {
      c.stop_token_sequences = generation().at("chat_hardcoded_stop_ids").get<std::vector<std::vector<int64_t>>>();
    } else if (result_name.find("seq_stop") != std::string::npos) {
      c.stop_token_sequences = {generation().at("custom_stop_sequence").get<std::vector<int64_t>>()};
    }
    return c;
  }

  fs::path dir;
  nlohmann::json manifest;
  StateDict io;
  std::shared_ptr<MiniGPT4> model;
  LlamaTokenizer tokenizer;
  nlohmann::json generation_defaults = nlohmann::json::object();
};

}  // namespace minigpt4::test
