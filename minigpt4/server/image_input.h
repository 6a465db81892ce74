#pragma once
// Images as clients send them: data URIs (the server fetches nothing), checked against the
// server's limits before any decoder allocates memory for the pixels.
#include "minigpt4/common/error.h"

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <string>

namespace minigpt4::server {

struct DataUri {
  std::string media_type;  // e.g. "image/png" (lower case; may be empty: RFC 2397's default)
  std::string bytes;       // the decoded payload
};

// `data:[<media type>][;params];base64,<data>`. Anything else throws minigpt4::Error with a
// message a client can act on: http(s):// and file:// URLs (this server downloads nothing),
// a data URI without ;base64, a non-image media type, broken base64.
DataUri parse_data_uri(const std::string& url);

// Pixels being decoded at once, shared by every thread that decodes uploads: a decode of P
// pixels waits until P fit, so parallel requests cannot all hold huge decoded images.
class PixelBudget {
 public:
  explicit PixelBudget(int64_t pixels);
  int64_t capacity() const { return capacity_; }
  int64_t in_use() const;

  // Holds `pixels` (at most the whole budget) until destroyed.
  class Lease {
   public:
    Lease(Lease&& other) noexcept : budget_(other.budget_), pixels_(other.pixels_) { other.budget_ = nullptr; }
    Lease(const Lease&) = delete;
    Lease& operator=(const Lease&) = delete;
    Lease& operator=(Lease&&) = delete;
    ~Lease();

   private:
    friend class PixelBudget;
    Lease(PixelBudget* budget, int64_t pixels) : budget_(budget), pixels_(pixels) {}
    PixelBudget* budget_;
    int64_t pixels_;
  };
  // Waits up to `wait` for the pixels; nullopt when they did not come free in time.
  std::optional<Lease> acquire(int64_t pixels, std::chrono::milliseconds wait);

 private:
  const int64_t capacity_;
  mutable std::mutex mutex_;
  std::condition_variable freed_;
  int64_t used_ = 0;
};

// The decode budget stayed full for longer than a request waits (the server is busy).
class DecodeBusy : public Error {
 public:
  using Error::Error;
};

struct ImageLimits {
  int64_t max_pixels = 40'000'000;  // width * height
  int64_t max_side = 16384;         // longest side
  // Shared by the server's threads; nullptr: decodes are not limited across requests.
  std::shared_ptr<PixelBudget> decode_budget;
  std::chrono::milliseconds decode_wait{30'000};
};

struct ImageInfo {
  std::string format;  // read_image_header's names: "PNG", "JPEG", "WebP", "BMP", "GIF", ...
  int64_t width = 0, height = 0;
};

// The format and size from the file header alone (read_image_header,
// processors/image_header.h); nullopt for data that is not an image it reads, or is cut
// short.
std::optional<ImageInfo> image_header_info(const std::string& bytes);

// The server's gate for an uploaded image: its header must name a format the decoder reads
// and a size within `limits` (so a small file claiming a huge canvas is refused before it is
// decoded); then it is decoded once as a check, so a corrupt image is the client's error
// (4xx) rather than a failure later in the model queue. Throws minigpt4::Error naming
// `name` (e.g. "messages[0].content[1]"); DecodeBusy when the decode budget stays full.
ImageInfo check_image(const std::string& bytes, const ImageLimits& limits, const std::string& name);
// The two halves: the header checks alone (no pixel is decoded) ...
ImageInfo check_image_header(const std::string& bytes, const ImageLimits& limits, const std::string& name);
// ... and the decode, within limits.decode_budget, of an image whose header passed.
void check_image_decodes(const std::string& bytes, const ImageInfo& info, const ImageLimits& limits,
                         const std::string& name);

}  // namespace minigpt4::server
