#include "minigpt4/server/image_input.h"

#include "minigpt4/common/error.h"
#include "minigpt4/common/untrusted.h"
#include "minigpt4/processors/image_decode.h"
#include "minigpt4/processors/image_header.h"
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

}  // namespace

DataUri parse_data_uri(const std::string& url) {
  if (starts_with_ci(url, "http://") || starts_with_ci(url, "https://"))
    fail(
        "image URLs are not fetched by this server; send the image inline as a data URI "
        "(data:image/png;base64,...)");
  if (starts_with_ci(url, "file:"))
    fail(
        "file:// URLs are refused (the server reads no files for clients); send the image inline as a "
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

std::optional<ImageInfo> image_header_info(const std::string& bytes) {
  try {
    const auto header = read_image_header(bytes, "image");
    return ImageInfo{header.format, header.width, header.height};
  } catch (const Error&) {
    return std::nullopt;
  }
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
  // The same header reader as every other image path (processors/image_header.h): it names a
  // truncated or corrupt header and refuses formats by name.
  const auto header = read_image_header(bytes, name);
  const ImageInfo info{header.format, header.width, header.height};
  if (info.format != "PNG" && info.format != "JPEG" && info.format != "WebP" && info.format != "BMP")
    fail("{}: {} images are not supported here; send PNG, JPEG, WebP or BMP", name, info.format);
  if (info.width > limits.max_side || info.height > limits.max_side || info.width > limits.max_pixels / info.height)
    fail("{}: the image is {}x{}; this server takes at most {} pixels and {} per side", name, info.width, info.height,
         limits.max_pixels, limits.max_side);
  return info;
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
    fail("{}: the {} header says {}x{} but the image decodes to {}x{}", name, info.format, info.width, info.height,
         rgb.size(1), rgb.size(0));
}

ImageInfo check_image(const std::string& bytes, const ImageLimits& limits, const std::string& name) {
  const auto info = check_image_header(bytes, limits, name);
  check_image_decodes(bytes, info, limits, name);
  return info;
}

}  // namespace minigpt4::server
