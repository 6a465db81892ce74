// Images as clients send them: data URIs (and the URLs the server refuses), the size read
// from file headers before decoding, and the limits.
#include "minigpt4/common/error.h"
#include "minigpt4/server/base64.h"
#include "minigpt4/server/image_input.h"
#include "tests/support/fixtures.h"

#include <catch2/catch.hpp>
#include <opencv2/imgcodecs.hpp>

#include <fstream>
#include <thread>
#include <sstream>

using namespace minigpt4;
using namespace minigpt4::server;
using Catch::Contains;

namespace {

std::string read_file(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

std::string encoded(const std::string& extension, int width, int height) {
  cv::Mat image(height, width, CV_8UC3, cv::Scalar(30, 120, 200));
  std::vector<uchar> bytes;
  REQUIRE(cv::imencode(extension, image, bytes));
  return std::string(bytes.begin(), bytes.end());
}

const auto kImages = test::data_dir() / "parity/tiny_vicuna0/image_processor";
const std::string kGif("GIF89a\x05\x00\x07\x00rest", 14);  // a GIF header: 5x7

}  // namespace

TEST_CASE("data URIs decode; remote and file URLs are refused", "[server]") {
  const auto uri = parse_data_uri("data:image/png;base64," + base64_encode("PNGDATA"));
  CHECK(uri.media_type == "image/png");
  CHECK(uri.bytes == "PNGDATA");
  CHECK(parse_data_uri("DATA:Image/JPEG;name=x.jpg;BASE64,QUJD").media_type == "image/jpeg");
  CHECK(parse_data_uri("data:;base64,QUJD").bytes == "ABC");

  CHECK_THROWS_WITH(parse_data_uri("https://example.com/cat.png"), Contains("not fetched") && Contains("data URI"));
  CHECK_THROWS_WITH(parse_data_uri("HTTP://example.com/cat.png"), Contains("not fetched"));
  CHECK_THROWS_WITH(parse_data_uri("file:///etc/passwd"), Contains("file://"));
  CHECK_THROWS_WITH(parse_data_uri("ftp://x/y.png"), Contains("expected a data URI"));
  CHECK_THROWS_WITH(parse_data_uri("data:image/png,rawbytes"), Contains("base64"));
  CHECK_THROWS_WITH(parse_data_uri("data:image/png;base64"), Contains("','"));
  CHECK_THROWS_WITH(parse_data_uri("data:text/plain;base64,QUJD"), Contains("text/plain"));
  CHECK_THROWS_WITH(parse_data_uri("data:image/png;base64,QU JD"), Contains("invalid base64"));
  CHECK_THROWS_WITH(parse_data_uri("data:image/png;base64,"), Contains("no data"));
}

TEST_CASE("image sizes come from the headers of every accepted format", "[server]") {
  for (const auto& [extension, format] : std::vector<std::pair<std::string, std::string>>{
           {".png", "PNG"}, {".jpg", "JPEG"}, {".bmp", "BMP"}, {".webp", "WebP"}}) {
    INFO(extension);
    const auto info = image_header_info(encoded(extension, 37, 21));
    REQUIRE(info);
    CHECK(info->format == format);
    CHECK(info->width == 37);
    CHECK(info->height == 21);
  }
  // Lossless WebP has its own header layout.
  std::vector<uchar> lossless;
  REQUIRE(
      cv::imencode(".webp", cv::Mat(9, 13, CV_8UC3, cv::Scalar(1, 2, 3)), lossless, {cv::IMWRITE_WEBP_QUALITY, 101}));
  const auto webp = image_header_info(std::string(lossless.begin(), lossless.end()));
  REQUIRE(webp);
  CHECK((webp->width == 13 && webp->height == 9));

  const auto jpeg = image_header_info(read_file(kImages / "ladybird_640x400.jpg"));
  REQUIRE(jpeg);
  CHECK((jpeg->width == 640 && jpeg->height == 400));
  const auto png = image_header_info(read_file(kImages / "arc_colors_rgba_357x200.png"));
  REQUIRE(png);
  CHECK((png->width == 357 && png->height == 200));
  const auto gif = image_header_info(kGif);
  REQUIRE(gif);
  CHECK((gif->format == "GIF" && gif->width == 5 && gif->height == 7));

  CHECK_FALSE(image_header_info("not an image"));
  CHECK_FALSE(image_header_info(encoded(".png", 4, 4).substr(0, 20)));  // cut before IHDR's size
}

TEST_CASE("check_image enforces the limits before decoding and refuses corrupt data", "[server]") {
  ImageLimits limits;
  const auto png = encoded(".png", 40, 30);
  CHECK(check_image(png, limits, "img").width == 40);

  limits.max_side = 35;
  CHECK_THROWS_WITH(check_image(png, limits, "messages[0].content[1]"),
                    Contains("messages[0].content[1]") && Contains("40x30") && Contains("35 per side"));
  limits = ImageLimits{};
  limits.max_pixels = 1000;
  CHECK_THROWS_WITH(check_image(png, limits, "img"), Contains("at most 1000 pixels"));

  // A tiny file whose header claims a huge canvas is refused from the header alone.
  std::string bomb = png;
  bomb[16] = '\x00', bomb[17] = '\x01', bomb[18] = '\x00', bomb[19] = '\x00';  // width 65536
  CHECK_THROWS_WITH(check_image(bomb, ImageLimits{}, "img"), Contains("65536x30"));

  CHECK_THROWS_WITH(check_image(kGif, ImageLimits{}, "img"), Contains("GIF images are not supported"));
  CHECK_THROWS_WITH(check_image("hello world", ImageLimits{}, "img"),
                    Contains("not an image in a format this build reads"));
  const auto jpeg = encoded(".jpg", 40, 30);
  CHECK_THROWS_WITH(check_image(jpeg.substr(0, jpeg.size() / 2), ImageLimits{}, "img"),
                    Contains("img") && Contains("truncated"));
}

TEST_CASE("the decode budget bounds the pixels decoded at once across threads", "[server]") {
  auto budget = std::make_shared<PixelBudget>(1000);
  {
    auto a = budget->acquire(600, std::chrono::milliseconds(0));
    REQUIRE(a);
    CHECK(budget->in_use() == 600);
    CHECK_FALSE(budget->acquire(600, std::chrono::milliseconds(10)));  // would exceed: waits, then gives up
    auto b = budget->acquire(400, std::chrono::milliseconds(0));
    CHECK(b);
    CHECK(budget->in_use() == 1000);
  }
  CHECK(budget->in_use() == 0);
  // A waiter gets its pixels when another thread frees them.
  auto held = budget->acquire(1000, std::chrono::milliseconds(0));
  REQUIRE(held);
  std::thread release([&] {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    held.reset();
  });
  CHECK(budget->acquire(10, std::chrono::seconds(30)));
  release.join();
  // More than the whole budget takes all of it (one huge image still decodes, alone).
  CHECK(budget->acquire(5000, std::chrono::milliseconds(0)));

  // check_image decodes within the budget, and says the server is busy when it stays full.
  ImageLimits limits;
  limits.decode_budget = std::make_shared<PixelBudget>(1000);
  limits.decode_wait = std::chrono::milliseconds(20);
  const auto png = encoded(".png", 40, 20);
  CHECK(check_image(png, limits, "img").width == 40);
  const auto full = limits.decode_budget->acquire(1000, std::chrono::milliseconds(0));
  REQUIRE(full);
  CHECK_THROWS_AS(check_image(png, limits, "img"), DecodeBusy);
  CHECK_THROWS_WITH(check_image(png, limits, "img"), Contains("busy"));
}

TEST_CASE("image headers: sizes that would overflow width * height are refused by side", "[server]") {
  std::string png = encoded(".png", 4, 4);
  for (int i = 16; i < 24; ++i) png[static_cast<size_t>(i)] = '\xff';  // 4294967295 x 4294967295
  ImageLimits huge;
  huge.max_side = int64_t(1) << 40;  // only the pixel count stands in the way
  CHECK_THROWS_WITH(check_image_header(png, huge, "img"), Contains("4294967295 x 4294967295"));
}
