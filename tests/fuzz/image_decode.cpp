// Fuzz harness: the bytes through decode_image_rgb_bytes, the decoder training (the data
// loader's workers) and the server share: the header is read and checked against
// limits.max_image_pixels before OpenCV decodes anything. minigpt4::Error (ImageTooLarge
// included) is a clean refusal; anything else escaping (or a crash) is a bug.
#include "minigpt4/common/error.h"
#include "minigpt4/common/limits.h"
#include "minigpt4/processors/image_decode.h"
#include "minigpt4/processors/image_header.h"

#include <cstdint>
#include <string>

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const bool limited = [] {
    // 16 M pixels: the rule is the same as at PIL's 89.5 M, but each input stays cheap.
    minigpt4::InputLimits l = minigpt4::input_limits();
    l.max_image_pixels = 16'000'000;
    minigpt4::set_input_limits(l);
    return true;
  }();
  (void)limited;
  const std::string bytes(reinterpret_cast<const char*>(data), size);
  try {
    (void)minigpt4::read_image_header(bytes, "fuzz input");
  } catch (const minigpt4::Error&) {}
  try {
    const auto rgb = minigpt4::decode_image_rgb_bytes(bytes, "fuzz input");
    if (rgb.dim() != 3 || rgb.size(2) != 3) __builtin_trap();  // the decoder's promise
  } catch (const minigpt4::Error&) {}
  return 0;
}
