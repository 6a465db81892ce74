// Fuzz harness: bytes as a run config (YAML) through Config::from_yaml and the limits it sets.
#include "minigpt4/common/config.h"
#include "minigpt4/common/error.h"
#include "minigpt4/common/limits.h"

#include <cstddef>
#include <cstdint>
#include <string>

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string text(reinterpret_cast<const char*>(data), size);
  try {
    const auto config = minigpt4::Config::from_yaml(text, "fuzz.yaml");
    const minigpt4::InputLimits before = minigpt4::input_limits();
    minigpt4::apply_input_limits(config);
    minigpt4::set_input_limits(before);
  } catch (const minigpt4::Error&) {  // a clean, named refusal
  }
  return 0;
}
