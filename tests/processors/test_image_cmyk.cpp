// CMYK JPEGs decode and resize exactly as PIL does (tests/data/images, made by
// make_cmyk.py there: PIL's own decode and 224x224 bicubic resize of each file, as PNG).
#include <catch2/catch.hpp>
#include <torch/torch.h>

#include "minigpt4/common/error.h"
#include "minigpt4/processors/image_decode.h"
#include "minigpt4/processors/pil_resize.h"
#include "tests/support/fixtures.h"

#include <fstream>
#include <sstream>

namespace mt = minigpt4::test;

namespace {

std::string read_bytes(const mt::fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  REQUIRE(in);
  std::ostringstream out;
  out << in.rdbuf();
  return out.str();
}

}  // namespace

TEST_CASE("CMYK JPEG: decoded and resized as PIL does, to the level", "[processors]") {
  const auto name = GENERATE(as<std::string>{}, "cmyk_q90", "cmyk_q75_progressive");
  const auto dir = mt::data_dir() / "images";
  INFO(name);
  const auto decoded = minigpt4::decode_image_rgb((dir / (name + ".jpg")).string());
  const auto expected = minigpt4::decode_image_rgb((dir / (name + ".decoded.png")).string());
  REQUIRE(decoded.sizes() == expected.sizes());
  CHECK((decoded.to(torch::kInt) - expected.to(torch::kInt)).abs().max().item<int>() == 0);

  const auto resized = minigpt4::resize_bicubic_like_pil(decoded, 224, 224);
  const auto expected_resized = minigpt4::decode_image_rgb((dir / (name + ".resized.png")).string());
  CHECK((resized.to(torch::kInt) - expected_resized.to(torch::kInt)).abs().max().item<int>() == 0);
}

TEST_CASE("CMYK JPEG: damaged data is a named error", "[processors]") {
  const auto path = mt::data_dir() / "images" / "cmyk_q90.jpg";
  std::string bytes = read_bytes(path);
  SECTION("entropy-coded data overwritten") {
    // Past the headers, inside the scan: libjpeg reports corrupt data or decodes garbage
    // without crashing; either way nothing escapes as a crash or a bare library message.
    for (size_t i = bytes.size() / 2; i < bytes.size() - 2; ++i) bytes[i] = '\xFF';
    bytes[bytes.size() - 2] = '\xFF';
    bytes[bytes.size() - 1] = '\xD9';
    try {
      const auto image = minigpt4::decode_image_rgb_bytes(bytes, "damaged.jpg");
      CHECK(image.size(2) == 3);
    } catch (const minigpt4::Error& e) {
      CHECK_THAT(e.what(), Catch::Contains("damaged.jpg"));
    }
  }
  SECTION("a quantisation table pointing nowhere") {
    // The frame names table 3 for every component; the file defines fewer.
    const auto sof = bytes.find("\xFF\xC0");
    REQUIRE(sof != std::string::npos);
    for (int c = 0; c < 4; ++c) bytes[sof + 2 + 8 + 3 * c + 2] = 3;
    CHECK_THROWS_WITH(minigpt4::decode_image_rgb_bytes(bytes, "bad_tables.jpg"),
                      Catch::Contains("bad_tables.jpg") && Catch::Contains("CMYK JPEG"));
  }
}
