#include "minigpt4/server/image_input.h"

#include "minigpt4/common/error.h"
#include "minigpt4/common/untrusted.h"
#include "minigpt4/processors/image_decode.h"
#include "minigpt4/server/base64.h"

#include <algorithm>
#include <cctype>
#include <cstdlib>
#include <cstring>

namespace minigpt4::server {

namespace {

std::string lower(std::string s) {
  std::transform(s.begin(), s.end(), s.begin(), [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  return s;
}

bool starts_with_ci(const std::string& s, const char* prefix) {
  const size_t n = std::strlen(prefix);
  return s.size() >= n && lower(s.substr(0, n)) == prefix;
}

const unsigned char* u8(const std::string& b) { return reinterpret_cast<const unsigned char*>(b.data()); }
uint32_t be16(const unsigned char* p) { return (uint32_t(p[0]) << 8) | p[1]; }
uint32_t be32(const unsigned char* p) { return (be16(p) << 16) | be16(p + 2); }
uint32_t le16(const unsigned char* p) { return uint32_t(p[0]) | (uint32_t(p[1]) << 8); }
uint32_t le24(const unsigned char* p) { return le16(p) | (uint32_t(p[2]) << 16); }
uint32_t le32(const unsigned char* p) { return le16(p) | (le16(p + 2) << 16); }

// The first start-of-frame segment of a JPEG holds its size; walk the segments to it.
std::optional<ImageInfo> jpeg_info(const std::string& b) {
  const auto* d = u8(b);
  size_t i = 2;
  while (i + 4 <= b.size()) {
    if (d[i] != 0xFF) return std::nullopt;
    const unsigned marker = d[i + 1];
    if (marker == 0xFF) {  // fill byte
      ++i;
      continue;
    }
    if (marker == 0x01 || (marker >= 0xD0 && marker <= 0xD8)) {  // no length field
      i += 2;
      continue;
    }
    const size_t length = be16(d + i + 2);
    // SOF0..SOF15 except DHT (C4), JPG (C8) and DAC (CC): precision, height, width.
    if (marker >= 0xC0 && marker <= 0xCF && marker != 0xC4 && marker != 0xC8 && marker != 0xCC) {
      if (i + 9 > b.size() || length < 7) return std::nullopt;
      return ImageInfo{"JPEG", be16(d + i + 7), be16(d + i + 5)};
    }
    if (marker == 0xDA || marker == 0xD9 || length < 2) return std::nullopt;  // scan data before any frame header
    i += 2 + length;
  }
  return std::nullopt;
}

std::optional<ImageInfo> webp_info(const std::string& b) {
  const auto* d = u8(b);
  if (b.size() < 30) return std::nullopt;
  const std::string chunk = b.substr(12, 4);
  if (chunk == "VP8X") return ImageInfo{"WebP", int64_t(le24(d + 24)) + 1, int64_t(le24(d + 27)) + 1};
  if (chunk == "VP8L") {
    if (d[20] != 0x2F) return std::nullopt;
    const uint32_t bits = le32(d + 21);
    return ImageInfo{"WebP", int64_t(bits & 0x3FFF) + 1, int64_t((bits >> 14) & 0x3FFF) + 1};
  }
  if (chunk == "VP8 ") {
    if (d[23] != 0x9D || d[24] != 0x01 || d[25] != 0x2A) return std::nullopt;
    return ImageInfo{"WebP", le16(d + 26) & 0x3FFF, le16(d + 28) & 0x3FFF};
  }
  return std::nullopt;
}

std::optional<ImageInfo> bmp_info(const std::string& b) {
  const auto* d = u8(b);
  if (b.size() < 26) return std::nullopt;
  const uint32_t header = le32(d + 14);
  if (header == 12) return ImageInfo{"BMP", le16(d + 18), le16(d + 20)};  // OS/2 BITMAPCOREHEADER
  const auto width = static_cast<int32_t>(le32(d + 18));
  const auto height = static_cast<int32_t>(le32(d + 22));  // negative: rows stored top-down
  return ImageInfo{"BMP", std::abs(int64_t(width)), std::abs(int64_t(height))};
}

}  // namespace

DataUri parse_data_uri(const std::string& url) {
  if (starts_with_ci(url, "http://") || starts_with_ci(url, "https://"))
    fail("image URLs are not fetched by this server; send the image inline as a data URI "
         "(data:image/png;base64,...)");
  if (starts_with_ci(url, "file:"))
    fail("file:// URLs are refused (the server reads no files for clients); send the image inline as a "
         "data URI (data:image/png;base64,...)");
  if (!starts_with_ci(url, "data:"))
    fail("unsupported image URL '{}': expected a data URI (data:image/png;base64,...)", excerpt(url, 32));
  const size_t comma = url.find(',');
  if (comma == std::string::npos) fail("malformed data URI: no ',' before the data");
  const std::string header = lower(url.substr(5, comma - 5));
  const size_t base64_at = header.size() >= 7 ? header.rfind(";base64") : std::string::npos;
  if (base64_at == std::string::npos || base64_at + 7 != header.size())
    fail("data URI must be base64-encoded (data:image/png;base64,...)");
  DataUri uri;
  uri.media_type = header.substr(0, std::min(header.find(';'), base64_at));
  if (!uri.media_type.empty() && uri.media_type.rfind("image/", 0) != 0)
    fail("data URI has media type '{}'; expected an image (image/png, image/jpeg, ...)", excerpt(uri.media_type));
  uri.bytes = base64_decode(std::string_view(url).substr(comma + 1));
  if (uri.bytes.empty()) fail("data URI holds no data");
  return uri;
}

std::optional<ImageInfo> image_header_info(const std::string& b) {
  const auto* d = u8(b);
  if (b.size() >= 24 && std::memcmp(d, "\x89PNG\r\n\x1A\n", 8) == 0 && std::memcmp(d + 12, "IHDR", 4) == 0)
    return ImageInfo{"PNG", be32(d + 16), be32(d + 20)};
  if (b.size() >= 4 && d[0] == 0xFF && d[1] == 0xD8 && d[2] == 0xFF) return jpeg_info(b);
  if (b.size() >= 12 && std::memcmp(d, "RIFF", 4) == 0 && std::memcmp(d + 8, "WEBP", 4) == 0) return webp_info(b);
  if (b.size() >= 2 && d[0] == 'B' && d[1] == 'M') return bmp_info(b);
  if (b.size() >= 10 && (std::memcmp(d, "GIF87a", 6) == 0 || std::memcmp(d, "GIF89a", 6) == 0))
    return ImageInfo{"GIF", le16(d + 6), le16(d + 8)};
  return std::nullopt;
}

PixelBudget::PixelBudget(int64_t pixels) : capacity_(std::max<int64_t>(pixels, 1)) {}

int64_t PixelBudget::in_use() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return used_;
}

std::optional<PixelBudget::Lease> PixelBudget::acquire(int64_t pixels, std::chrono::milliseconds wait) {
  pixels = std::clamp<int64_t>(pixels, 1, capacity_);
  std::unique_lock<std::mutex> lock(mutex_);
  if (!freed_.wait_for(lock, wait, [&] { return used_ + pixels <= capacity_; })) return std::nullopt;
  used_ += pixels;
  return Lease(this, pixels);
}

PixelBudget::Lease::~Lease() {
  if (!budget_) return;
  {
    std::lock_guard<std::mutex> lock(budget_->mutex_);
    budget_->used_ -= pixels_;
  }
  budget_->freed_.notify_all();
}

ImageInfo check_image_header(const std::string& bytes, const ImageLimits& limits, const std::string& name) {
  const auto info = image_header_info(bytes);
  if (!info) fail("{}: not a PNG, JPEG, WebP or BMP image (unrecognised or truncated header)", name);
  if (info->format == "GIF") fail("{}: GIF images are not supported; send PNG, JPEG, WebP or BMP", name);
  if (info->width <= 0 || info->height <= 0) fail("{}: the {} header gives an empty image", name, info->format);
  if (info->width > limits.max_side || info->height > limits.max_side || info->width > limits.max_pixels / info->height)
    fail("{}: the image is {}x{}; this server takes at most {} pixels and {} per side", name, info->width,
         info->height, limits.max_pixels, limits.max_side);
  return *info;
}

void check_image_decodes(const std::string& bytes, const ImageInfo& info, const ImageLimits& limits,
                         const std::string& name) {
  const auto lease = limits.decode_budget ? limits.decode_budget->acquire(info.width * info.height, limits.decode_wait)
                                          : std::optional<PixelBudget::Lease>();
  if (limits.decode_budget && !lease)
    throw DecodeBusy(fmt::format("{}: the server is busy decoding other images ({} pixels at once); retry later", name,
                                 limits.decode_budget->capacity()));
  const auto rgb = decode_image_rgb_bytes(bytes, name);  // throws for corrupt data
  if (rgb.size(0) != info.height || rgb.size(1) != info.width)
    fail("{}: the {} header says {}x{} but the image decodes to {}x{}", name, info.format, info.width,
         info.height, rgb.size(1), rgb.size(0));
}

ImageInfo check_image(const std::string& bytes, const ImageLimits& limits, const std::string& name) {
  const auto info = check_image_header(bytes, limits, name);
  check_image_decodes(bytes, info, limits, name);
  return info;
}

}  // namespace minigpt4::server
