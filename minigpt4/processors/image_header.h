#pragma once
// What an encoded image's header says, read without decoding it: the container format and
// the dimensions the decoder will allocate for. decode_image_rgb_bytes checks them against
// limits.max_image_pixels BEFORE decoding, so a few MB of hostile bytes that claim a
// 60000 x 60000 picture are refused in microseconds instead of costing gigabytes.
#include <cstdint>
#include <string>

namespace minigpt4 {

struct ImageHeader {
  std::string format;  // "JPEG", "PNG", "GIF", "BMP", "WebP", "TIFF", "PNM"
  int64_t width = 0;
  int64_t height = 0;
  // Pixels of the largest buffer the decoder allocates besides the image: a TIFF's tile or
  // strip (OpenCV reads one at a time, and a header may declare them larger than the
  // image); width * height for the other formats.
  int64_t buffer_pixels = 0;
  // JPEG only: the frame's component count (1 gray, 3 YCbCr/RGB, 4 CMYK/YCCK); 0 otherwise.
  int jpeg_components = 0;
};

// The header of `bytes`. Throws minigpt4::Error naming `name` for bytes that are not one
// of the formats above (JPEG 2000, OpenEXR, Radiance HDR, PFM, PAM, Sun raster and anything
// else are refused by name: PIL would not open most of them, and their decoders are more
// attack surface than this project needs), and for a header that is truncated, corrupt or
// declares an empty image. The message for a header cut short says "truncated".
ImageHeader read_image_header(const std::string& bytes, const std::string& name);

// The format from the magic bytes alone ("" when unknown), for messages.
std::string sniff_image_format(const std::string& bytes);

}  // namespace minigpt4
