// Decoding rules (PIL's convert('RGB') semantics) on synthetic images, and the errors
// for files that are not usable images. Images are written with OpenCV into a temp dir.
#include <catch2/catch.hpp>
#include <opencv2/imgcodecs.hpp>
#include <opencv2/imgproc.hpp>
#include <torch/torch.h>

#include "minigpt4/common/error.h"
#include "minigpt4/processors/image_processor.h"
#include "tests/processors/test_support_local.h"
#include "tests/support/fixtures.h"

namespace mt = minigpt4::test;
using minigpt4::decode_image_rgb;
using minigpt4::decode_image_rgb_bytes;

namespace {

std::string encode(const cv::Mat& m, const std::string& ext, std::vector<int> params = {}) {
  std::vector<uchar> buf;
  REQUIRE(cv::imencode(ext, m, buf, params));
  return std::string(buf.begin(), buf.end());
}

at::Tensor mat_to_tensor(const cv::Mat& m) {  // 8-bit, any channels, as stored (BGR order)
  return torch::from_blob(m.data, {m.rows, m.cols, m.channels()}, torch::kUInt8).clone();
}

// Runs `fn` and returns the minigpt4::Error's message (fails the test if none is thrown).
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

// An APP1 Exif segment holding only Orientation = `value` (little-endian TIFF).
std::string exif_orientation_segment(uint8_t value) {
  const std::string tiff(
      "II*\0\x08\0\0\0"  // header, IFD at offset 8
      "\x01\0"           // one entry
      "\x12\x01\x03\0\x01\0\0\0",
      18);  // tag 0x0112, SHORT, count 1
  const std::string body =
      std::string("Exif\0\0", 6) + tiff + char(value) + std::string(7, '\0');  // value padded to 4 bytes, next IFD = 0
  const size_t len = body.size() + 2;
  return std::string("\xFF\xE1", 2) + char(len >> 8) + char(len & 0xFF) + body;
}

cv::Mat gradient_bgr(int h, int w) {
  cv::Mat m(h, w, CV_8UC3);
  for (int y = 0; y < h; ++y)
    for (int x = 0; x < w; ++x) m.at<cv::Vec3b>(y, x) = cv::Vec3b(uchar(x * 7), uchar(y * 11), uchar(x * y));
  return m;
}

}  // namespace

TEST_CASE("PNG decoding: BGR -> RGB, alpha dropped, gray replicated", "[processors]") {
  const cv::Mat bgr = gradient_bgr(13, 21);
  const auto expected_rgb = mat_to_tensor(bgr).flip(2);

  SECTION("RGB") { CHECK(torch::equal(decode_image_rgb_bytes(encode(bgr, ".png"), "rgb.png"), expected_rgb)); }
  SECTION("RGBA with varying alpha: the colour is kept as stored, not composited") {
    cv::Mat bgra;
    cv::cvtColor(bgr, bgra, cv::COLOR_BGR2BGRA);
    for (int y = 0; y < bgra.rows; ++y)
      for (int x = 0; x < bgra.cols; ++x) bgra.at<cv::Vec4b>(y, x)[3] = uchar((x * 40 + y) % 256);
    CHECK(torch::equal(decode_image_rgb_bytes(encode(bgra, ".png"), "rgba.png"), expected_rgb));
  }
  SECTION("grayscale") {
    cv::Mat gray;
    cv::cvtColor(bgr, gray, cv::COLOR_BGR2GRAY);
    const auto out = decode_image_rgb_bytes(encode(gray, ".png"), "gray.png");
    const auto g = mat_to_tensor(gray);
    CHECK(torch::equal(out, g.expand({gray.rows, gray.cols, 3})));
  }
  SECTION("16-bit colour keeps the high byte (PIL's RGB;16B unpacker)") {
    cv::Mat bgr16;
    bgr.convertTo(bgr16, CV_16U, 256.0);
    bgr16 += cv::Scalar::all(255);  // low byte must be ignored, not rounded
    CHECK(torch::equal(decode_image_rgb_bytes(encode(bgr16, ".png"), "rgb16.png"), expected_rgb));
  }
  SECTION("16-bit gray is clipped to 255 (PIL's mode I -> RGB)") {
    cv::Mat gray16(2, 3, CV_16U);
    const uint16_t values[6] = {0, 17, 255, 256, 4000, 65535};
    for (int i = 0; i < 6; ++i) gray16.at<uint16_t>(i / 3, i % 3) = values[i];
    const auto out = decode_image_rgb_bytes(encode(gray16, ".png"), "gray16.png");
    const auto expected = torch::tensor({0, 17, 255, 255, 255, 255}, torch::kUInt8).view({2, 3, 1}).expand({2, 3, 3});
    CHECK(torch::equal(out, expected));
  }
}

TEST_CASE("JPEG decoding ignores EXIF orientation, as PIL's open/convert does", "[processors]") {
  const cv::Mat bgr = gradient_bgr(16, 40);
  const std::string jpeg = encode(bgr, ".jpg", {cv::IMWRITE_JPEG_QUALITY, 95});
  // Insert an Exif segment saying "rotate 90 CW" right after SOI.
  const std::string rotated = jpeg.substr(0, 2) + exif_orientation_segment(6) + jpeg.substr(2);
  const auto plain = decode_image_rgb_bytes(jpeg, "plain.jpg");
  const auto tagged = decode_image_rgb_bytes(rotated, "tagged.jpg");
  CHECK(plain.sizes() == at::IntArrayRef({16, 40, 3}));
  CHECK(torch::equal(plain, tagged));
  // Sanity check that OpenCV itself would have rotated it, so the test means something.
  const cv::Mat cv_default = cv::imdecode(std::vector<uchar>(rotated.begin(), rotated.end()), cv::IMREAD_COLOR);
  CHECK(cv_default.rows == 40);
}

TEST_CASE("decode_image_rgb reads files and works on the fixture's grayscale JPEG", "[processors]") {
  const auto file = mt::data_dir() / "parity/tiny_vicuna0/image_processor/freshflower_gray_97x73.jpg";
  const auto img = decode_image_rgb(file.string());
  CHECK(img.sizes() == at::IntArrayRef({73, 97, 3}));
  CHECK(img.scalar_type() == torch::kUInt8);
  CHECK(img.is_contiguous());
  CHECK(torch::equal(img.select(2, 0), img.select(2, 1)));
  CHECK(torch::equal(img.select(2, 0), img.select(2, 2)));
  CHECK(torch::equal(img, decode_image_rgb_bytes(mt::read_file_bytes(file), "same bytes")));
}

TEST_CASE("unusable image files raise a minigpt4::Error naming the file", "[processors]") {
  const mt::TempDir tmp;
  const auto fixture_dir = mt::data_dir() / "parity/tiny_vicuna0/image_processor";
  const std::string jpeg = mt::read_file_bytes(fixture_dir / "ladybird_640x400.jpg");
  const std::string png = mt::read_file_bytes(fixture_dir / "arc_colors_rgba_357x200.png");

  auto expect_error = [&](const std::string& name, const std::string& bytes, const std::string& what) {
    const auto path = tmp.write(name, bytes);
    INFO(name);
    const std::string msg = error_of([&] { decode_image_rgb(path.string()); });
    CHECK_THAT(msg, Catch::Contains(path.string()));
    CHECK_THAT(msg, Catch::Contains(what, Catch::CaseSensitive::No));
    // The processor reports the same error rather than anything else.
    CHECK_THROWS_AS(minigpt4::ImageEvalProcessor(224).from_file(path.string()), minigpt4::Error);
  };

  expect_error("empty.jpg", "", "empty");
  expect_error("notes.txt", "This is a text file, not a picture.\n", "not an image");
  expect_error("text_named.png", "hello\n", "not an image");
  // JPEG cut at several points: inside the header, inside the scan, just before EOI.
  for (size_t cut : {size_t{3}, size_t{200}, jpeg.size() / 2, jpeg.size() - 2})
    expect_error("truncated_" + std::to_string(cut) + ".jpg", jpeg.substr(0, cut), "truncated");
  // PNG cut inside the image data, and a PNG with a corrupted image chunk.
  expect_error("truncated.png", png.substr(0, png.size() / 2), "corrupt or truncated PNG");
  std::string bad_png = png;
  for (size_t i = 200; i < 400; ++i) bad_png[i] = char(i * 37);
  expect_error("corrupt.png", bad_png, "corrupt or truncated PNG");
  // A JPEG header followed by garbage, and a PNG signature with nothing behind it.
  expect_error("garbage.jpg", std::string("\xFF\xD8\xFF\xE0", 4) + std::string(300, 'x'), "JPEG");
  expect_error("signature_only.png", png.substr(0, 8), "PNG");

  const std::string missing = (tmp.path() / "does_not_exist.jpg").string();
  CHECK_THAT(error_of([&] { decode_image_rgb(missing); }), Catch::Contains(missing));
  CHECK_THAT(error_of([&] { decode_image_rgb(tmp.path().string()); }), Catch::Contains("directory"));
  CHECK_THAT(error_of([&] { decode_image_rgb_bytes("", "my upload"); }), Catch::Contains("my upload"));
}

TEST_CASE("a complete JPEG with data appended after EOI still decodes", "[processors]") {
  // Some cameras and "motion photos" append data after the image; libjpeg and PIL accept it.
  const auto file = mt::data_dir() / "parity/tiny_vicuna0/image_processor/twowings_333x500.jpg";
  const std::string jpeg = mt::read_file_bytes(file);
  const auto plain = decode_image_rgb_bytes(jpeg, "plain");
  CHECK(torch::equal(plain, decode_image_rgb_bytes(jpeg + std::string(1000, '\x42'), "with trailer")));
}

TEST_CASE("ImageEvalProcessor shapes, constants and argument checks", "[processors]") {
  const minigpt4::ImageEvalProcessor p(32);
  CHECK(p.image_size() == 32);
  CHECK(p.mean() == minigpt4::kClipMean);
  const auto out = p(torch::full({10, 50, 3}, 255, torch::kUInt8));
  REQUIRE(out.sizes() == at::IntArrayRef({3, 32, 32}));
  CHECK(out.scalar_type() == torch::kFloat);
  for (int c = 0; c < 3; ++c) {  // a white image normalises to (1 - mean) / std everywhere
    const float expected = (1.0f - float(minigpt4::kClipMean[c])) / float(minigpt4::kClipStd[c]);
    CHECK(out[c].min().item<float>() == Approx(expected).epsilon(1e-6));
    CHECK(out[c].max().item<float>() == Approx(expected).epsilon(1e-6));
  }
  CHECK_THROWS_AS(minigpt4::ImageEvalProcessor(0), minigpt4::Error);
  CHECK_THROWS_AS(minigpt4::ImageEvalProcessor(224, minigpt4::kClipMean, {1, 0, 1}), minigpt4::Error);
  CHECK_THROWS_AS(p(torch::zeros({4, 4, 4}, torch::kUInt8)), minigpt4::Error);
  CHECK_THROWS_AS(p(torch::zeros({4, 4, 3}, torch::kFloat)), minigpt4::Error);
}
