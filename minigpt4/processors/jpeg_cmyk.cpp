#include "minigpt4/processors/jpeg_cmyk.h"

#include "minigpt4/common/error.h"

#include <opencv2/core.hpp>

#include <csetjmp>
#include <cstdio>
#include <cstdlib>
#include <cstring>

// jpeglib.h needs size_t and FILE declared first.
#include <jpeglib.h>

namespace minigpt4 {
namespace {

// libjpeg reports fatal errors through error_exit, which must not return. The usual way out
// is longjmp back into decode_raw_cmyk, whose frame holds only plain C data (so nothing with
// a destructor is skipped); the message is kept for the C++ error thrown afterwards.
struct ErrorManager {
  jpeg_error_mgr base;
  std::jmp_buf jump;
  char message[JMSG_LENGTH_MAX];
};

void on_error(j_common_ptr cinfo) {
  auto* manager = reinterpret_cast<ErrorManager*>(cinfo->err);
  (*cinfo->err->format_message)(cinfo, manager->message);
  std::longjmp(manager->jump, 1);
}

// Warnings (e.g. extraneous bytes before a marker) are not printed: PIL does not print them
// either, and a truncated file was already refused before decoding.
void on_message(j_common_ptr) {}

// The samples exactly as libjpeg returns them with out_color_space = JCS_CMYK (YCCK is
// converted to CMYK by libjpeg, as for PIL). Returns a malloc'ed width*height*4 buffer, or
// nullptr with `message` filled.
unsigned char* decode_raw_cmyk(const unsigned char* data, unsigned long size, int* width, int* height, char* message) {
  jpeg_decompress_struct cinfo;
  ErrorManager errors;
  unsigned char* volatile pixels = nullptr;
  cinfo.err = jpeg_std_error(&errors.base);
  errors.base.error_exit = on_error;
  errors.base.output_message = on_message;
  errors.message[0] = '\0';
  if (setjmp(errors.jump)) {
    std::strncpy(message, errors.message, JMSG_LENGTH_MAX);
    jpeg_destroy_decompress(&cinfo);
    std::free(pixels);
    return nullptr;
  }
  jpeg_create_decompress(&cinfo);
  jpeg_mem_src(&cinfo, data, size);
  jpeg_read_header(&cinfo, TRUE);
  if (cinfo.num_components != 4) {
    std::snprintf(message, JMSG_LENGTH_MAX, "%d components, expected 4 (CMYK or YCCK)", cinfo.num_components);
    jpeg_destroy_decompress(&cinfo);
    return nullptr;
  }
  cinfo.out_color_space = JCS_CMYK;
  jpeg_start_decompress(&cinfo);
  const size_t row_bytes = size_t(cinfo.output_width) * 4;
  pixels = static_cast<unsigned char*>(std::malloc(row_bytes * cinfo.output_height));
  if (pixels == nullptr) {
    std::snprintf(message, JMSG_LENGTH_MAX, "out of memory for %ux%u CMYK samples", cinfo.output_width,
                  cinfo.output_height);
    jpeg_destroy_decompress(&cinfo);
    return nullptr;
  }
  while (cinfo.output_scanline < cinfo.output_height) {
    JSAMPROW row = pixels + row_bytes * cinfo.output_scanline;
    jpeg_read_scanlines(&cinfo, &row, 1);
  }
  *width = static_cast<int>(cinfo.output_width);
  *height = static_cast<int>(cinfo.output_height);
  jpeg_finish_decompress(&cinfo);
  jpeg_destroy_decompress(&cinfo);
  return pixels;
}

// PIL's MULDIV255: a * b / 255, rounded, in integers.
inline int muldiv255(int a, int b) {
  const int t = a * b + 128;
  return ((t >> 8) + t) >> 8;
}

}  // namespace

cv::Mat decode_cmyk_jpeg_like_pil(const std::string& bytes, const std::string& name) {
  int width = 0, height = 0;
  char message[JMSG_LENGTH_MAX] = {0};
  unsigned char* raw = decode_raw_cmyk(reinterpret_cast<const unsigned char*>(bytes.data()),
                                       static_cast<unsigned long>(bytes.size()), &width, &height, message);
  if (raw == nullptr) fail("cannot decode image {}: corrupt CMYK JPEG data: {}", name, message);
  // PIL reads every 4-component JPEG as Adobe-inverted CMYK (rawmode "CMYK;I": ink = 255 -
  // sample), then converts to RGB with r = (255 - k) - (255 - k) * c / 255 (Convert.c,
  // cmyk2rgb). With the inversion folded in: r = K - muldiv255(255 - C, K) for the stored
  // samples C and K.
  cv::Mat rgb(height, width, CV_8UC3);
  for (int y = 0; y < height; ++y) {
    const unsigned char* in = raw + size_t(y) * width * 4;
    auto* out = rgb.ptr<uint8_t>(y);
    for (int x = 0; x < width; ++x, in += 4, out += 3) {
      const int not_black = in[3];
      for (int c = 0; c < 3; ++c) out[c] = static_cast<uint8_t>(not_black - muldiv255(255 - in[c], not_black));
    }
  }
  std::free(raw);
  return rgb;
}

}  // namespace minigpt4
