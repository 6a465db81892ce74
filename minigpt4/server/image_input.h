#pragma once
// Images as clients send them: data URIs (the server fetches nothing), checked against the
// server's limits before any decoder allocates memory for the pixels.
#include <cstdint>
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

struct ImageLimits {
  int64_t max_pixels = 40'000'000;  // width * height
  int64_t max_side = 16384;         // longest side
};

struct ImageInfo {
  std::string format;  // "PNG", "JPEG", "WebP", "BMP", "GIF"
  int64_t width = 0, height = 0;
};

// Reads the format and size from the file header alone (PNG IHDR, JPEG SOFn, WebP VP8/VP8L/
// VP8X, BMP, GIF); nullopt for data whose header is not one of these or is cut short.
std::optional<ImageInfo> image_header_info(const std::string& bytes);

// The server's gate for an uploaded image: its header must name a format the decoder reads
// and a size within `limits` (so a small file claiming a huge canvas is refused before it is
// decoded); then it is decoded once as a check, so a corrupt image is the client's error
// (4xx) rather than a failure later in the model queue. Throws minigpt4::Error naming
// `name` (e.g. "messages[0].content[1]").
ImageInfo check_image(const std::string& bytes, const ImageLimits& limits, const std::string& name);

}  // namespace minigpt4::server
