// Hostile images (issue 17): the header is read before decoding, its dimensions checked
// against limits.max_image_pixels (PIL's 89,478,485 by default), unknown formats refused by
// name. Each hostile case is a few bytes that claim a huge picture.
#include <catch2/catch.hpp>
#include <opencv2/imgcodecs.hpp>
#include <torch/torch.h>

#include "minigpt4/common/error.h"
#include "minigpt4/common/limits.h"
#include "minigpt4/processors/image_decode.h"
#include "minigpt4/processors/image_header.h"
#include "tests/processors/test_support_local.h"
#include "tests/support/fixtures.h"

#include <fstream>

namespace mt = minigpt4::test;
using minigpt4::decode_image_rgb;
using minigpt4::decode_image_rgb_bytes;
using minigpt4::read_image_header;

namespace {

std::string encode(const cv::Mat& m, const std::string& ext) {
  std::vector<uchar> buf;
  REQUIRE(cv::imencode(ext, m, buf));
  return std::string(buf.begin(), buf.end());
}

cv::Mat picture(int h, int w, int type = CV_8UC3) {
  cv::Mat m(h, w, type);
  cv::randu(m, 0, 255);
  return m;
}

void put_be32(std::string& s, size_t at, uint32_t v) {
  for (int k = 0; k < 4; ++k) s[at + k] = char(v >> (24 - 8 * k));
}

// The bytes with the JPEG frame header's size replaced.
std::string jpeg_with_size(std::string jpeg, uint16_t width, uint16_t height) {
  size_t i = 2;
  while (i + 4 < jpeg.size()) {
    const auto marker = static_cast<unsigned char>(jpeg[i + 1]);
    const size_t length =
        (size_t(static_cast<unsigned char>(jpeg[i + 2])) << 8) | static_cast<unsigned char>(jpeg[i + 3]);
    if (marker >= 0xC0 && marker <= 0xCF && marker != 0xC4 && marker != 0xC8 && marker != 0xCC) {
      jpeg[i + 5] = char(height >> 8), jpeg[i + 6] = char(height & 0xFF);
      jpeg[i + 7] = char(width >> 8), jpeg[i + 8] = char(width & 0xFF);
      return jpeg;
    }
    i += 2 + length;
  }
  FAIL("no frame header");
  return jpeg;
}

struct LimitsScope {
  minigpt4::InputLimits saved = minigpt4::input_limits();
  ~LimitsScope() { minigpt4::set_input_limits(saved); }
};

template <typename Fn>
std::string too_large_message(Fn&& fn) {
  try {
    fn();
  } catch (const minigpt4::ImageTooLarge& e) {
    return e.what();
  } catch (const std::exception& e) {
    FAIL("expected ImageTooLarge, got: " << e.what());
  }
  FAIL("expected ImageTooLarge");
  return "";
}

template <typename Fn>
std::string error_of(Fn&& fn) {
  try {
    fn();
  } catch (const minigpt4::Error& e) {
    return e.what();
  }
  FAIL("expected a minigpt4::Error");
  return "";
}

}  // namespace

TEST_CASE("image headers give the size the decoder will give, for every accepted format", "[processors][hostile]") {
  struct Case {
    const char* ext;
    const char* format;
    int type;
  };
  for (const Case c : {Case{".png", "PNG", CV_8UC3}, Case{".png", "PNG", CV_16UC4}, Case{".jpg", "JPEG", CV_8UC3},
                       Case{".jpg", "JPEG", CV_8UC1}, Case{".bmp", "BMP", CV_8UC3}, Case{".ppm", "PNM", CV_8UC3},
                       Case{".pgm", "PNM", CV_8UC1}, Case{".tif", "TIFF", CV_8UC3}, Case{".webp", "WebP", CV_8UC3}}) {
    INFO(c.ext << " type " << c.type);
    const std::string bytes = encode(picture(37, 53, c.type), c.ext);
    const auto header = read_image_header(bytes, "x");
    CHECK(header.format == c.format);
    CHECK(header.width == 53);
    CHECK(header.height == 37);
    const auto rgb = decode_image_rgb_bytes(bytes, "x");
    CHECK(rgb.sizes() == at::IntArrayRef({37, 53, 3}));
  }
  const auto fixture = mt::data_dir() / "parity/tiny_vicuna0/image_processor/ladybird_640x400.jpg";
  const auto header = read_image_header(mt::read_file_bytes(fixture), fixture.string());
  CHECK(header.width == 640);
  CHECK(header.height == 400);
}

TEST_CASE("an image over limits.max_image_pixels is refused from its header, naming the file and size",
          "[processors][hostile]") {
  // A real 40x30 PNG, under a limit of 1000 pixels.
  LimitsScope scope;
  minigpt4::InputLimits limits = minigpt4::input_limits();
  limits.max_image_pixels = 1000;
  minigpt4::set_input_limits(limits);
  const std::string png = encode(picture(30, 40), ".png");
  CHECK_THAT(too_large_message([&] { decode_image_rgb_bytes(png, "upload.png"); }),
             Catch::Contains("upload.png") && Catch::Contains("40x30") && Catch::Contains("1200 pixels") &&
                 Catch::Contains("limits.max_image_pixels"));
  CHECK(decode_image_rgb_bytes(encode(picture(25, 40), ".png"), "ok").size(0) == 25);  // exactly 1000
  minigpt4::set_input_limits(scope.saved);

  // At the default (PIL's): a few hundred bytes that claim 60000 x 60000 (3.6 G pixels).
  std::string huge_png = encode(picture(4, 4), ".png");
  put_be32(huge_png, 16, 60000);
  put_be32(huge_png, 20, 60000);
  CHECK_THAT(too_large_message([&] { decode_image_rgb_bytes(huge_png, "bomb.png"); }),
             Catch::Contains("bomb.png") && Catch::Contains("60000x60000") && Catch::Contains("89478485"));
  const std::string jpeg =
      mt::read_file_bytes(mt::data_dir() / "parity/tiny_vicuna0/image_processor/freshflower_gray_97x73.jpg");
  CHECK_THAT(too_large_message([&] { decode_image_rgb_bytes(jpeg_with_size(jpeg, 65500, 65500), "bomb.jpg"); }),
             Catch::Contains("65500x65500"));
  // Just over the limit (9500 x 9500 = 90.25 M): refused; just under (9000 x 9000): allowed
  // by the header check, then refused as the truncated data it is.
  CHECK_THAT(too_large_message([&] { decode_image_rgb_bytes(jpeg_with_size(jpeg, 9500, 9500), "a.jpg"); }),
             Catch::Contains("9500x9500"));
  // BMP, PPM, WebP and TIFF headers claiming the same.
  std::string bmp = encode(picture(2, 2), ".bmp");
  for (int k = 0; k < 4; ++k) bmp[18 + k] = char((100000 >> (8 * k)) & 0xFF), bmp[22 + k] = bmp[18 + k];
  CHECK_THAT(too_large_message([&] { decode_image_rgb_bytes(bmp, "b.bmp"); }), Catch::Contains("100000x100000"));
  CHECK_THAT(
      too_large_message([&] { decode_image_rgb_bytes("P6\n100000 100000\n255\n" + std::string(12, 'x'), "p.ppm"); }),
      Catch::Contains("100000x100000"));
  const std::string vp8x = std::string("RIFF\x16\0\0\0WEBPVP8X\x0a\0\0\0\0\0\0\0\xff\xff\xff\xff\xff\xff", 30);
  CHECK_THAT(too_large_message([&] { decode_image_rgb_bytes(vp8x, "w.webp"); }), Catch::Contains("16777216x16777216"));
}

TEST_CASE("a TIFF whose tiles or strips are larger than the pixel limit is refused before decoding",
          "[processors][hostile]") {
  // A 4 x 4 RGB TIFF with TileWidth = TileLength = 16384 (OpenCV would allocate a 1 GB tile).
  std::string tiff("II*\0\x08\0\0\0", 8);
  auto entry = [&](uint16_t tag, uint16_t type, uint32_t value) {
    tiff += char(tag & 0xFF), tiff += char(tag >> 8), tiff += char(type & 0xFF), tiff += char(type >> 8);
    tiff += std::string("\x01\0\0\0", 4);
    for (int k = 0; k < 4; ++k) tiff += char((value >> (8 * k)) & 0xFF);
  };
  tiff += std::string("\x07\0", 2);
  entry(256, 4, 4), entry(257, 4, 4), entry(258, 3, 8), entry(262, 3, 2), entry(277, 3, 3);
  entry(322, 4, 16384), entry(323, 4, 16384);
  tiff += std::string(4, '\0') + std::string(48, '\x7f');
  const auto header = read_image_header(tiff, "t.tif");
  CHECK(header.width == 4);
  CHECK(header.buffer_pixels == 16384LL * 16384);
  CHECK_THAT(too_large_message([&] { decode_image_rgb_bytes(tiff, "t.tif"); }),
             Catch::Contains("t.tif") && Catch::Contains("tiles or strips"));
}

TEST_CASE("formats we do not read are refused by name; truncated headers say so", "[processors][hostile]") {
  CHECK_THAT(error_of([] { decode_image_rgb_bytes(std::string("\0\0\0\x0cjP  \r\n\x87\n", 12) + "xxxx", "a.jp2"); }),
             Catch::Contains("a.jp2") && Catch::Contains("JPEG 2000"));
  CHECK_THAT(error_of([] { decode_image_rgb_bytes("\x76\x2f\x31\x01rest", "a.exr"); }), Catch::Contains("OpenEXR"));
  CHECK_THAT(error_of([] { decode_image_rgb_bytes("#?RADIANCE\n", "a.hdr"); }), Catch::Contains("Radiance"));
  CHECK_THAT(error_of([] { decode_image_rgb_bytes("P7\nWIDTH 4\n", "a.pam"); }), Catch::Contains("PAM"));
  CHECK_THAT(error_of([] { decode_image_rgb_bytes("GIF89a\x10\0\x10\0", "a.gif"); }), Catch::Contains("GIF"));
  CHECK_THAT(error_of([] { decode_image_rgb_bytes("\x89PNG\r\n\x1a\n\0\0", "a.png"); }),
             Catch::Contains("truncated PNG"));
  CHECK_THAT(error_of([] { decode_image_rgb_bytes("BM\0\0", "a.bmp"); }), Catch::Contains("truncated BMP"));
  CHECK_THAT(error_of([] { decode_image_rgb_bytes(std::string("II*\0\xf0\xff\xff\xff", 8), "a.tif"); }),
             Catch::Contains("truncated TIFF"));
  CHECK_THAT(error_of([] {
               decode_image_rgb_bytes(std::string("\xff\xd8\xff\xda\0\x08", 6) + std::string(6, '\0'), "a.jpg");
             }),
             Catch::Contains("corrupt JPEG header"));
  CHECK_THAT(error_of([] { decode_image_rgb_bytes("P6\n" + std::string(5000, '9') + " 1\n255\n", "a.ppm"); }),
             Catch::Contains("too many digits"));
}

TEST_CASE("an image file larger than limits.max_encoded_image_bytes is refused before it is read",
          "[processors][hostile]") {
  const mt::TempDir tmp;
  const auto path = tmp.path() / "sparse.png";
  {
    std::ofstream out(path, std::ios::binary);
    out << "\x89PNG\r\n\x1a\n";
    out.seekp(minigpt4::input_limits().max_encoded_image_bytes + 10);  // a sparse file: no disk is used
    out << 'x';
  }
  const std::string message = error_of([&] { decode_image_rgb(path.string()); });
  CHECK_THAT(message, Catch::Contains("sparse.png") && Catch::Contains("limits.max_encoded_image_bytes"));
  // The key sets it: a 4 KB cap refuses a small PNG, from a file and from memory.
  LimitsScope scope;
  auto limits = scope.saved;
  limits.max_encoded_image_bytes = 4096;
  minigpt4::set_input_limits(limits);
  const std::string png = encode(picture(64, 64), ".png");  // random pixels: ~12 KB
  REQUIRE(png.size() > 4096);
  const auto small = tmp.path() / "small.png";
  std::ofstream(small, std::ios::binary) << png;
  CHECK_THAT(error_of([&] { decode_image_rgb(small.string()); }), Catch::Contains("more than the 4096"));
  CHECK_THAT(error_of([&] { decode_image_rgb_bytes(png, "mem.png"); }), Catch::Contains("more than the 4096"));
}
