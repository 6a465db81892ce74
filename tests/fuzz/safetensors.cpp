// libFuzzer harness: bytes as a safetensors file (its header, then whatever data follows).
// A minigpt4::Error is a clean refusal; a crash, hang, huge allocation or any other
// exception is a bug.
#include "minigpt4/common/error.h"
#include "minigpt4/io/safetensors.h"
#include "tests/fuzz/fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const auto path = minigpt4::fuzz::scratch_dir("safetensors") / "input.safetensors";
  minigpt4::fuzz::write_file(path, data, size);
  try {
    const auto tensors = minigpt4::io::load_safetensors(path.string());
    for (const auto& [name, t] : tensors) (void)t.sum();  // touch every byte a tensor claims
  } catch (const minigpt4::Error&) {}
  try {
    minigpt4::io::load_safetensors_metadata(path.string());
  } catch (const minigpt4::Error&) {}
  return 0;
}
