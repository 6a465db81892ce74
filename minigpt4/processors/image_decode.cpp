#include "minigpt4/processors/image_decode.h"

#include "minigpt4/common/error.h"
#include "minigpt4/common/limits.h"
#include "minigpt4/common/untrusted.h"
#include "minigpt4/processors/image_header.h"
#include "minigpt4/processors/jpeg_cmyk.h"

#include <opencv2/core.hpp>
#include <opencv2/imgcodecs.hpp>
#include <opencv2/imgproc.hpp>
#include <torch/torch.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>

namespace minigpt4 {
namespace {

// libjpeg does not fail on a truncated JPEG: it warns on stderr ("Premature end of JPEG
// file") and fills the missing part with gray, and OpenCV hands that image back. PIL
// raises instead ("image file is truncated"), so we refuse JPEG data that ends before its
// EOI marker. The walk follows the marker structure (segments with a length, then
// entropy-coded data after each SOS, where FF00 is a stuffed byte and FFD0-FFD7 are
// restart markers), so an FFD9 inside a thumbnail or metadata segment is not mistaken for
// the end, and data appended after the real EOI is allowed, as libjpeg allows it.
bool jpeg_has_eoi(const std::string& data) {
  const auto* d = reinterpret_cast<const unsigned char*>(data.data());
  const size_t n = data.size();
  size_t i = 2;  // after SOI
  while (i < n) {
    if (d[i] != 0xFF) {  // stray bytes between segments: libjpeg skips them with a warning
      ++i;
      continue;
    }
    while (i < n && d[i] == 0xFF) ++i;  // fill bytes before a marker
    if (i >= n) return false;
    const unsigned marker = d[i++];
    if (marker == 0xD9) return true;                                                       // EOI
    if (marker == 0x00 || marker == 0x01 || (marker >= 0xD0 && marker <= 0xD8)) continue;  // no length
    if (i + 2 > n) return false;
    const size_t length = (size_t(d[i]) << 8) | d[i + 1];  // includes its own two bytes
    if (length < 2 || i + length > n) return false;
    i += length;
    if (marker != 0xDA) continue;
    // Entropy-coded data of this scan: runs until a marker other than RSTn.
    while (i < n) {
      if (d[i] != 0xFF) {
        ++i;
        continue;
      }
      if (i + 1 >= n) return false;
      const unsigned next = d[i + 1];
      if (next == 0x00 || (next >= 0xD0 && next <= 0xD7)) {
        i += 2;
      } else if (next == 0xFF) {
        ++i;  // fill byte; the marker follows
      } else {
        break;  // a real marker: back to the segment walk, which starts at this FF
      }
    }
  }
  return false;
}

// OpenCV gives 8- or 16-bit data with 1 (gray), 2 (gray+alpha), 3 (BGR) or 4 (BGRA)
// channels; this brings it to PIL's 8 bits (see the header for the 16-bit rules).
cv::Mat to_8bit_like_pil(const cv::Mat& image, const std::string& name) {
  if (image.depth() == CV_8U) return image;
  if (image.depth() != CV_16U)
    fail(
        "cannot decode image {}: unsupported sample type (OpenCV depth {}); only 8- and 16-bit "
        "integer images are supported",
        name, image.depth());
  cv::Mat out;
  if (image.channels() == 1) {
    image.convertTo(out, CV_8U);  // saturating: min(v, 255), PIL's "I" -> "RGB" clip
    return out;
  }
  out.create(image.rows, image.cols, CV_MAKETYPE(CV_8U, image.channels()));
  const int values_per_row = image.cols * image.channels();
  for (int y = 0; y < image.rows; ++y) {
    const auto* src = image.ptr<uint16_t>(y);
    auto* dst = out.ptr<uint8_t>(y);
    for (int x = 0; x < values_per_row; ++x) dst[x] = static_cast<uint8_t>(src[x] >> 8);  // high byte
  }
  return out;
}

// Three channels are swapped in place (no second full-size copy of a large picture).
cv::Mat to_rgb(cv::Mat image8, const std::string& name) {
  cv::Mat rgb;
  switch (image8.channels()) {
    case 1: cv::cvtColor(image8, rgb, cv::COLOR_GRAY2RGB); break;
    case 2: {  // gray + alpha: alpha dropped, gray replicated
      cv::Mat gray;
      cv::extractChannel(image8, gray, 0);
      cv::cvtColor(gray, rgb, cv::COLOR_GRAY2RGB);
      break;
    }
    case 3:
      cv::cvtColor(image8, image8, cv::COLOR_BGR2RGB);
      rgb = image8;
      break;
    case 4: cv::cvtColor(image8, rgb, cv::COLOR_BGRA2RGB); break;  // alpha dropped, not composited
    default: fail("cannot decode image {}: unsupported channel count {}", name, image8.channels());
  }
  return rgb;
}

// Everything but CMYK JPEG: OpenCV's decoders, brought to PIL's 8-bit RGB.
cv::Mat decode_with_opencv(const std::string& bytes, const ImageHeader& header, const std::string& name) {
  const std::string& format = header.format;
  cv::Mat image;
  try {
    const cv::Mat buffer(1, static_cast<int>(bytes.size()), CV_8U, const_cast<char*>(bytes.data()));
    // IMREAD_UNCHANGED keeps the stored depth and channels and, being exactly
    // IMREAD_UNCHANGED (OpenCV tests `flags != IMREAD_UNCHANGED`), applies no EXIF
    // orientation -- as PIL. (OR-ing IMREAD_IGNORE_ORIENTATION into -1 would change nothing.)
    image = cv::imdecode(buffer, cv::IMREAD_UNCHANGED);
  } catch (const cv::Exception& e) {
    fail("cannot decode image {}: OpenCV failed: {}", name, e.what());
  }
  if (image.empty()) {
    if (format == "GIF")
      fail("cannot decode image {}: GIF is not supported by this build's decoder (OpenCV imgcodecs)", name);
    fail("cannot decode image {}: corrupt or truncated {} data ({} bytes)", name, format, bytes.size());
  }
  if (image.dims != 2 || image.rows <= 0 || image.cols <= 0)
    fail("cannot decode image {}: decoder returned no 2-D image", name);

  return to_rgb(to_8bit_like_pil(image, name), name);
}

}  // namespace

at::Tensor decode_image_rgb_bytes(const std::string& bytes, const std::string& name_in) {
  const std::string name = excerpt(name_in, 1024);  // names come from data files too
  if (bytes.empty()) fail("cannot decode image {}: the file is empty", name);
  const int64_t max_bytes = input_limits().max_encoded_image_bytes;
  if (static_cast<uint64_t>(bytes.size()) > static_cast<uint64_t>(max_bytes))
    fail(
        "cannot decode image {}: {} bytes of encoded data, more than the {} an image file may have "
        "(limits.max_encoded_image_bytes)",
        name, bytes.size(), max_bytes);
  // The header first: the size the decoder would allocate for is checked before decoding.
  const ImageHeader header = read_image_header(bytes, name);
  const std::string& format = header.format;
  const int64_t max_pixels = input_limits().max_image_pixels;
  if (header.width > max_pixels / header.height)  // width * height > max_pixels, without overflow
    throw ImageTooLarge(fmt::format(
        "cannot decode image {}: its {} header says {}x{} ({} pixels), more than the {} "
        "an image may have (limits.max_image_pixels)",
        name, format, header.width, header.height,
        header.width > std::numeric_limits<int64_t>::max() / header.height ? std::numeric_limits<int64_t>::max()
                                                                           : header.width * header.height,
        max_pixels));
  if (header.buffer_pixels > max_pixels)
    throw ImageTooLarge(
        fmt::format("cannot decode image {}: its {} header declares tiles or strips of {} pixels, more "
                    "than the {} an image may have (limits.max_image_pixels)",
                    name, format, header.buffer_pixels, max_pixels));
  if (format == "JPEG" && !jpeg_has_eoi(bytes))
    fail("cannot decode image {}: truncated JPEG data (ends before the end-of-image marker, {} bytes)", name,
         bytes.size());

  cv::Mat rgb = format == "JPEG" && header.jpeg_components == 4 ? decode_cmyk_jpeg_like_pil(bytes, name)
                                                                : decode_with_opencv(bytes, header, name);
  if (rgb.rows != header.height || rgb.cols != header.width)
    fail("cannot decode image {}: the {} header says {}x{} but the data decodes to {}x{}", name, format, header.width,
         header.height, rgb.cols, rgb.rows);
  if (!rgb.isContinuous()) rgb = rgb.clone();  // from_blob needs one dense block
  // The tensor owns the Mat's pixels (no copy): a picture at the pixel limit is ~268 MB.
  auto* owner = new cv::Mat(rgb);
  return torch::from_blob(
      owner->data, {owner->rows, owner->cols, 3}, [owner](void*) { delete owner; },
      torch::TensorOptions().dtype(torch::kUInt8));
}

at::Tensor decode_image_rgb(const std::string& path) {
  const std::string name = excerpt(path, 1024);
  std::error_code ec;
  if (std::filesystem::is_directory(path, ec)) fail("cannot read image {}: it is a directory", name);
  std::ifstream in(path, std::ios::binary);
  if (!in) fail("cannot open image file {}: {}", name, std::strerror(errno));
  in.seekg(0, std::ios::end);
  const auto size = static_cast<int64_t>(in.tellg());
  if (size < 0) fail("cannot read image file {}: cannot tell its size", name);
  if (size > input_limits().max_encoded_image_bytes)
    fail(
        "cannot decode image {}: the file is {} bytes, more than the {} an image file may have "
        "(limits.max_encoded_image_bytes)",
        name, size, input_limits().max_encoded_image_bytes);
  std::string contents(static_cast<size_t>(size), '\0');
  in.seekg(0);
  if (!in.read(contents.data(), size)) fail("cannot read image file {}: read error", name);
  return decode_image_rgb_bytes(contents, path);
}

}  // namespace minigpt4
