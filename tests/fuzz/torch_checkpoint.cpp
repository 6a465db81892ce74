// libFuzzer harness: bytes as a torch.save checkpoint (.pth / pytorch_model.bin zip). A
// minigpt4::Error is a clean refusal; a crash, hang, huge allocation or any other exception
// is a bug.
#include "minigpt4/common/error.h"
#include "minigpt4/io/torch_checkpoint.h"
#include "tests/fuzz/fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const auto path = minigpt4::fuzz::scratch_dir("torch_checkpoint") / "input.pth";
  minigpt4::fuzz::write_file(path, data, size);
  try {
    const auto tensors = minigpt4::io::load_torch_checkpoint(path.string());
    // Touch the last byte of every storage (a view may legally repeat one element 2^60
    // times with stride 0, so summing the views themselves is no measure).
    for (const auto& [name, t] : tensors)
      if (t.storage().nbytes() > 0)
        (void)static_cast<const volatile uint8_t*>(t.storage().data())[t.storage().nbytes() - 1];
  } catch (const minigpt4::Error&) {}
  return 0;
}
