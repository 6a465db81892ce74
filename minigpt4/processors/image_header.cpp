#include "minigpt4/processors/image_header.h"

#include "minigpt4/common/error.h"
#include "minigpt4/common/untrusted.h"

#include <cstring>
#include <limits>

namespace minigpt4 {
namespace {

// Every read below is bounds-checked against the size first: the bytes come from strangers.
struct Bytes {
  const unsigned char* d;
  size_t n;
  bool has(size_t at, size_t count) const { return at <= n && count <= n - at; }
  uint32_t be16(size_t at) const { return (uint32_t(d[at]) << 8) | d[at + 1]; }
  uint32_t le16(size_t at) const { return (uint32_t(d[at + 1]) << 8) | d[at]; }
  uint32_t be32(size_t at) const { return (be16(at) << 16) | be16(at + 2); }
  uint32_t le32(size_t at) const { return (le16(at + 2) << 16) | le16(at); }
  uint32_t le24(size_t at) const { return (uint32_t(d[at + 2]) << 16) | le16(at); }
  uint64_t be64(size_t at) const { return (uint64_t(be32(at)) << 32) | be32(at + 4); }
  uint64_t le64(size_t at) const { return (uint64_t(le32(at + 4)) << 32) | le32(at); }
};

// a * b for non-negative sizes, saturating instead of overflowing.
int64_t area(int64_t a, int64_t b) {
  if (a <= 0 || b <= 0) return 0;
  return a > std::numeric_limits<int64_t>::max() / b ? std::numeric_limits<int64_t>::max() : a * b;
}

bool starts_with(const std::string& s, const char* prefix, size_t n) {
  return s.size() >= n && std::memcmp(s.data(), prefix, n) == 0;
}

// The messages every format shares.
struct Reader {
  const std::string& name;
  const char* format;
  size_t size;

  [[noreturn]] void truncated(const char* what) const {
    fail("cannot decode image {}: truncated {} data (the file ends inside the {}; {} bytes)", name, format, what, size);
  }
  [[noreturn]] void corrupt(const std::string& what) const {
    fail("cannot decode image {}: corrupt {} header: {}", name, format, what);
  }
  ImageHeader result(int64_t width, int64_t height, int64_t buffer_pixels = -1) const {
    if (width <= 0 || height <= 0) corrupt(fmt::format("it declares an empty image ({} x {})", width, height));
    return {format, width, height, buffer_pixels < 0 ? area(width, height) : buffer_pixels};
  }
};

// libjpeg's marker walk: after SOI, stray bytes are skipped up to an FF, fill FFs are
// skipped, FF00 is no marker; standalone markers carry no length; every other segment is
// skipped by its length until the frame header (SOFn) gives the size.
ImageHeader jpeg_header(const Bytes& b, const Reader& r) {
  size_t i = 2;
  while (true) {
    while (i < b.n && b.d[i] != 0xFF) ++i;
    while (i < b.n && b.d[i] == 0xFF) ++i;
    if (i >= b.n) r.truncated("markers before the frame header");
    const unsigned marker = b.d[i++];
    if (marker == 0x00 || marker == 0x01 || (marker >= 0xD0 && marker <= 0xD7)) continue;
    if (marker == 0xD8) r.corrupt("a second start-of-image marker");
    if (marker == 0xD9 || marker == 0xDA) r.corrupt("image data before any frame header (SOFn)");
    if (!b.has(i, 2)) r.truncated("markers before the frame header");
    const size_t length = b.be16(i);
    if (length < 2) r.corrupt(fmt::format("a segment of length {}", length));
    const bool frame = marker >= 0xC0 && marker <= 0xCF && marker != 0xC4 && marker != 0xC8 && marker != 0xCC;
    if (frame) {
      if (length < 8) r.corrupt(fmt::format("a frame header of length {}", length));
      if (!b.has(i, 8)) r.truncated("frame header");
      const int64_t height = b.be16(i + 3), width = b.be16(i + 5);
      if (height == 0) r.corrupt("a frame of height 0 (the height defined later by a DNL marker is not supported)");
      ImageHeader header = r.result(width, height);
      header.jpeg_components = b.d[i + 7];
      return header;
    }
    if (!b.has(i, length)) r.truncated("markers before the frame header");
    i += length;
  }
}

ImageHeader png_header(const Bytes& b, const Reader& r) {
  if (!b.has(8, 16)) r.truncated("header (IHDR chunk)");
  if (std::memcmp(b.d + 12, "IHDR", 4) != 0) r.corrupt("the first chunk is not IHDR");
  const int64_t width = b.be32(16), height = b.be32(20);
  if (width > std::numeric_limits<int32_t>::max() || height > std::numeric_limits<int32_t>::max())
    r.corrupt(fmt::format("a size of {} x {} (PNG allows at most 2^31 - 1 per side)", width, height));
  return r.result(width, height);
}

ImageHeader gif_header(const Bytes& b, const Reader& r) {
  if (!b.has(0, 10)) r.truncated("logical screen descriptor");
  return r.result(b.le16(6), b.le16(8));
}

// As OpenCV's BMP reader: a BITMAPINFOHEADER or later (>= 36 bytes: signed 32-bit width and
// height, a negative height for a top-down picture) or OS/2's 12-byte core header.
ImageHeader bmp_header(const Bytes& b, const Reader& r) {
  if (!b.has(0, 18)) r.truncated("file header");
  const uint32_t dib = b.le32(14);
  if (dib >= 36 && dib <= 0x7fffffff) {
    if (!b.has(0, 26)) r.truncated("info header");
    const int64_t width = static_cast<int32_t>(b.le32(18));
    const int64_t height = static_cast<int32_t>(b.le32(22));
    return r.result(width, height < 0 ? -height : height);
  }
  if (dib == 12) {
    if (!b.has(0, 22)) r.truncated("core header");
    return r.result(b.le16(18), b.le16(20));
  }
  r.corrupt(fmt::format("an info header of {} bytes (expected 12, or 36 and more)", dib));
}

// RIFF "WEBP" with its first chunk: VP8 (lossy key frame), VP8L (lossless) or VP8X (the
// extended format's canvas, which is what the decoder allocates).
ImageHeader webp_header(const Bytes& b, const Reader& r) {
  if (!b.has(0, 20)) r.truncated("RIFF header");
  const std::string fourcc(reinterpret_cast<const char*>(b.d + 12), 4);
  if (fourcc == "VP8 ") {
    if (!b.has(20, 10)) r.truncated("VP8 frame header");
    if (b.d[23] != 0x9D || b.d[24] != 0x01 || b.d[25] != 0x2A) r.corrupt("a VP8 frame without its start code");
    return r.result(b.le16(26) & 0x3FFF, b.le16(28) & 0x3FFF);
  }
  if (fourcc == "VP8L") {
    if (!b.has(20, 5)) r.truncated("VP8L header");
    if (b.d[20] != 0x2F) r.corrupt("a VP8L chunk without its signature byte");
    const uint32_t bits = b.le32(21);
    return r.result((bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1);
  }
  if (fourcc == "VP8X") {
    if (!b.has(20, 10)) r.truncated("VP8X header");
    return r.result(int64_t(b.le24(24)) + 1, int64_t(b.le24(27)) + 1);
  }
  r.corrupt(fmt::format("a first chunk '{}' (expected VP8, VP8L or VP8X)", excerpt(fourcc)));
}

// The first image file directory, which is what OpenCV decodes: ImageWidth (256),
// ImageLength (257), RowsPerStrip (278), TileWidth (322), TileLength (323); classic TIFF
// and BigTIFF, either byte order.
ImageHeader tiff_header(const Bytes& b, const Reader& r) {
  if (!b.has(0, 8)) r.truncated("header");
  const bool le = b.d[0] == 'I';
  auto u16 = [&](size_t at) { return le ? b.le16(at) : b.be16(at); };
  auto u32 = [&](size_t at) { return le ? b.le32(at) : b.be32(at); };
  auto u64 = [&](size_t at) { return le ? b.le64(at) : b.be64(at); };
  const bool big = u16(2) == 43;
  uint64_t ifd = 0, count = 0;
  size_t entry_size = 12, first_entry = 0;
  if (big) {
    if (!b.has(0, 16)) r.truncated("BigTIFF header");
    if (u16(4) != 8 || u16(6) != 0) r.corrupt("a BigTIFF header with an offset size other than 8");
    ifd = u64(8);
    if (ifd > b.n || !b.has(static_cast<size_t>(ifd), 8)) r.truncated("first image directory");
    count = u64(static_cast<size_t>(ifd));
    entry_size = 20;
    first_entry = static_cast<size_t>(ifd) + 8;
  } else {
    ifd = u32(4);
    if (!b.has(static_cast<size_t>(ifd), 2)) r.truncated("first image directory");
    count = u16(static_cast<size_t>(ifd));
    first_entry = static_cast<size_t>(ifd) + 2;
  }
  if (count == 0) r.corrupt("an empty first image directory");
  int64_t width = -1, height = -1, rows_per_strip = -1, tile_width = -1, tile_height = -1;
  for (uint64_t k = 0; k < count; ++k) {
    const size_t at = first_entry + static_cast<size_t>(k) * entry_size;
    if (!b.has(at, entry_size)) r.truncated("first image directory");
    const uint32_t tag = u16(at), type = u16(at + 2);
    const uint64_t n = big ? u64(at + 4) : u32(at + 4);
    const size_t value_at = at + (big ? 12 : 8);
    if (n != 1) continue;
    int64_t value = -1;
    if (type == 3)
      value = u16(value_at);  // SHORT
    else if (type == 4)
      value = u32(value_at);  // LONG
    else if (type == 16 && big)
      value = static_cast<int64_t>(std::min<uint64_t>(u64(value_at), uint64_t(1) << 33));  // LONG8
    else
      continue;
    int64_t* field = tag == 256   ? &width
                     : tag == 257 ? &height
                     : tag == 278 ? &rows_per_strip
                     : tag == 322 ? &tile_width
                     : tag == 323 ? &tile_height
                                  : nullptr;
    if (field && *field < 0) *field = value;  // libtiff keeps the first of duplicate tags
  }
  if (width < 0 || height < 0) r.corrupt("the first image directory gives no ImageWidth and ImageLength");
  int64_t buffer = 0;
  if (tile_width > 0 && tile_height > 0) {
    buffer = area(tile_width, tile_height);
  } else {
    const int64_t rows = rows_per_strip <= 0 || rows_per_strip == 0xFFFFFFFF ? height : rows_per_strip;
    buffer = area(width, rows);
  }
  return r.result(width, height, std::max(area(width, height), buffer));
}

bool pnm_space(unsigned char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f'; }

// P1..P6: whitespace and '#' comments, then the width and the height in decimal.
ImageHeader pnm_header(const Bytes& b, const Reader& r) {
  size_t i = 2;
  auto number = [&](const char* what) -> int64_t {
    while (true) {
      while (i < b.n && pnm_space(b.d[i])) ++i;
      if (i < b.n && b.d[i] == '#') {
        while (i < b.n && b.d[i] != '\n' && b.d[i] != '\r') ++i;
        continue;
      }
      break;
    }
    if (i >= b.n) r.truncated("header");
    if (b.d[i] < '0' || b.d[i] > '9') r.corrupt(fmt::format("the {} is not a decimal number", what));
    int64_t v = 0;
    while (i < b.n && b.d[i] >= '0' && b.d[i] <= '9') {
      v = v * 10 + (b.d[i++] - '0');
      if (v > std::numeric_limits<int32_t>::max()) r.corrupt(fmt::format("the {} has too many digits", what));
    }
    return v;
  };
  const int64_t width = number("width");
  const int64_t height = number("height");
  return r.result(width, height);
}

}  // namespace

std::string sniff_image_format(const std::string& b) {
  if (starts_with(b, "\xFF\xD8\xFF", 3)) return "JPEG";
  if (starts_with(b, "\x89PNG\r\n\x1A\n", 8)) return "PNG";
  if (starts_with(b, "GIF87a", 6) || starts_with(b, "GIF89a", 6)) return "GIF";
  if (starts_with(b, "BM", 2)) return "BMP";
  if (b.size() >= 12 && starts_with(b, "RIFF", 4) && b.compare(8, 4, "WEBP") == 0) return "WebP";
  if (starts_with(b, "II*\0", 4) || starts_with(b, "MM\0*", 4) || starts_with(b, "II+\0", 4) ||
      starts_with(b, "MM\0+", 4))
    return "TIFF";
  if (b.size() >= 3 && b[0] == 'P' && b[1] >= '1' && b[1] <= '6' && pnm_space(static_cast<unsigned char>(b[2])))
    return "PNM";
  return "";
}

ImageHeader read_image_header(const std::string& bytes, const std::string& name) {
  const Bytes b{reinterpret_cast<const unsigned char*>(bytes.data()), bytes.size()};
  const std::string format = sniff_image_format(bytes);
  const Reader r{name, format.c_str(), bytes.size()};
  if (format == "JPEG") return jpeg_header(b, r);
  if (format == "PNG") return png_header(b, r);
  if (format == "GIF") return gif_header(b, r);
  if (format == "BMP") return bmp_header(b, r);
  if (format == "WebP") return webp_header(b, r);
  if (format == "TIFF") return tiff_header(b, r);
  if (format == "PNM") return pnm_header(b, r);

  // Formats OpenCV could decode but we refuse, by name.
  const char* refused = nullptr;
  if (starts_with(bytes, "\0\0\0\x0CjP  \r\n\x87\n", 12) || starts_with(bytes, "\xFF\x4F\xFF\x51", 4))
    refused = "JPEG 2000";
  else if (starts_with(bytes, "\x76\x2F\x31\x01", 4))
    refused = "OpenEXR";
  else if (starts_with(bytes, "#?RADIANCE", 10) || starts_with(bytes, "#?RGBE", 6))
    refused = "Radiance HDR";
  else if (starts_with(bytes, "\x59\xA6\x6A\x95", 4))
    refused = "Sun raster";
  else if (starts_with(bytes, "P7", 2))
    refused = "PAM (P7)";
  else if (starts_with(bytes, "PF", 2) || starts_with(bytes, "Pf", 2))
    refused = "PFM";
  if (refused)
    fail("cannot decode image {}: {} images are not accepted; use JPEG, PNG, BMP, WebP, TIFF or PPM/PGM/PBM", name,
         refused);
  fail(
      "cannot decode image {}: not an image in a format this build reads (JPEG, PNG, BMP, WebP, TIFF, PPM/PGM/PBM; "
      "{} bytes, unrecognised header)",
      name, bytes.size());
}

}  // namespace minigpt4
