#pragma once
// Image decoding that reproduces `PIL.Image.open(path).convert('RGB')`, the first step of
// every MiniGPT-4 image processor, so the pixels fed to the resizer match the reference.
#include <ATen/core/Tensor.h>

#include "minigpt4/common/error.h"

#include <cstdint>
#include <string>

namespace minigpt4 {

// An image whose header declares more than limits.max_image_pixels (PIL's 89,478,485 by
// default): refused before any decoding, so the data pipeline can count it apart from
// corrupt files.
class ImageTooLarge : public Error {
 public:
  using Error::Error;
};

// Decodes an image file to uint8 [H,W,3] RGB (contiguous, CPU), as PIL's
// `Image.open(path).convert('RGB')` does:
//   - EXIF orientation is NOT applied (PIL's open/convert ignore it);
//   - an alpha channel is dropped, not composited over a background;
//   - grayscale is replicated to the three channels;
//   - 16-bit data: colour (and gray+alpha) keeps the high byte, as PIL's "RGB;16B"
//     unpacker does; single-channel 16-bit is clipped to 255, as PIL's mode "I" -> "RGB"
//     conversion does (so most 16-bit gray pictures come out nearly white, like in PIL).
// Throws minigpt4::Error naming the file for a missing, empty, truncated, corrupt or
// non-image file; a truncated JPEG (no EOI marker) is refused rather than returned with
// libjpeg's gray fill. The header is read first (image_header.h): a format other than
// JPEG, PNG, BMP, WebP, TIFF or PPM/PGM/PBM is refused by name (GIF too: OpenCV 4.6 has
// no GIF decoder), and dimensions over limits.max_image_pixels throw ImageTooLarge,
// naming the file and the dimensions, before anything is decoded.
at::Tensor decode_image_rgb(const std::string& path);

// Same, from the file's bytes; `name_for_errors` is what error messages call the data.
at::Tensor decode_image_rgb_bytes(const std::string& bytes, const std::string& name_for_errors);

}  // namespace minigpt4
