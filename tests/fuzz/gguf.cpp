// libFuzzer harness: bytes as a GGUF file (io/gguf.h): the header and tensor table, then every
// tensor dequantised (and q8_0/q4_0 ones rearranged into group-wise storage), then the LLaMA
// config its metadata describes. A minigpt4::Error is a clean refusal; a crash, a read outside
// the file, a hang or any other exception is a bug.
#include "minigpt4/common/error.h"
#include "minigpt4/io/gguf.h"
#include "minigpt4/models/gguf_llama.h"
#include "tests/fuzz/fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const auto path = minigpt4::fuzz::scratch_dir("gguf") / "model.gguf";
  minigpt4::fuzz::write_file(path, data, size);
  minigpt4::io::GgufFile gguf;
  try {
    gguf = minigpt4::io::read_gguf(path.string());
  } catch (const minigpt4::Error&) {
    return 0;
  }
  for (const auto& t : gguf.tensors) {
    try {
      // Elements are bounded by the bytes the file really holds (read_gguf checked them), but
      // a q4_K block expands 144 bytes into 1 KiB of float32: cap what one input may allocate.
      if (t.nbytes > (uint64_t{1} << 20)) continue;
      (void)minigpt4::io::gguf_dequantize(gguf, t);
      (void)minigpt4::io::gguf_grouped(gguf, t);
    } catch (const minigpt4::Error&) {}
  }
  try {
    (void)minigpt4::llama_config_from_gguf(gguf);
  } catch (const minigpt4::Error&) {}
  return 0;
}
