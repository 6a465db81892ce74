// libFuzzer harness: bytes as a Hugging Face config.json (read as io::read_json_file reads
// it, Python's Infinity/NaN included), then as a LLaMA config, a Phi config, whatever
// llm_config_from_hf makes of it, and a PEFT adapter_config.json. Only the configs are
// parsed: no model is built. A minigpt4::Error is a clean refusal; a crash (say a division
// by zero), a hang or any other exception is a bug.
#include "minigpt4/common/error.h"
#include "minigpt4/io/checkpoint.h"
#include "minigpt4/models/llama.h"
#include "minigpt4/models/llm_family.h"
#include "minigpt4/models/lora_peft.h"
#include "minigpt4/models/phi.h"
#include "tests/fuzz/fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const auto path = minigpt4::fuzz::scratch_dir("hf_config") / "config.json";
  minigpt4::fuzz::write_file(path, data, size);
  nlohmann::json j;
  try {
    j = minigpt4::io::read_json_file(path.string());
  } catch (const minigpt4::Error&) {
    return 0;
  }
  const std::string source = path.string();
  try {
    minigpt4::LlamaConfig::from_json(j, source);
  } catch (const minigpt4::Error&) {}
  try {
    const auto c = minigpt4::PhiConfig::from_json(j, source);
    (void)c.rotary_ndims();
  } catch (const minigpt4::Error&) {}
  try {
    minigpt4::llm_config_from_hf(j, source, {});
  } catch (const minigpt4::Error&) {}
  try {
    minigpt4::lora::lora_config_from_peft_json(j, source);
  } catch (const minigpt4::Error&) {}
  return 0;
}
