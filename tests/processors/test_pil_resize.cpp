// Properties of the PIL-compatible bicubic resize that hold whatever the fixture:
// identity, constants, a hand-computed upscale, and agreement with a plain
// double-precision version of the same filter for up/down and non-square sizes.
#include <catch2/catch.hpp>
#include <torch/torch.h>

#include "minigpt4/common/error.h"
#include "minigpt4/processors/pil_resize.h"
#include "tests/processors/test_support_local.h"

#include <tuple>

using minigpt4::resize_bicubic_like_pil;

namespace {

at::Tensor random_image(int h, int w, int c, int seed) {
  torch::manual_seed(seed);
  return torch::randint(0, 256, {h, w, c}, torch::kLong).to(torch::kUInt8);
}

}  // namespace

TEST_CASE("resizing to the same size is an exact copy, as in PIL", "[processors]") {
  const auto img = random_image(17, 23, 3, 1);
  const auto out = resize_bicubic_like_pil(img, 17, 23);
  CHECK(torch::equal(out, img));
  CHECK(out.data_ptr() != img.data_ptr());  // a copy, not a view of the input
}

TEST_CASE("a constant image stays constant at any output size", "[processors]") {
  // Coefficients are normalised per output pixel, so a flat field is reproduced exactly
  // (the fixed-point sum of weights is within a few units of 2^22 of 1).
  for (int value : {0, 1, 128, 254, 255}) {
    const auto img = torch::full({31, 47, 3}, value, torch::kUInt8);
    for (auto [h, w] : {std::pair{224, 224}, {7, 300}, {300, 7}, {1, 1}, {31, 90}, {62, 47}, {5, 3}}) {
      INFO("value " << value << " -> " << h << "x" << w);
      const auto out = resize_bicubic_like_pil(img, h, w);
      REQUIRE(out.sizes() == at::IntArrayRef({h, w, 3}));
      CHECK(torch::equal(out, torch::full({h, w, 3}, value, torch::kUInt8)));
    }
  }
}

TEST_CASE("a hand-computed 2 -> 4 bicubic upscale", "[processors]") {
  // One row [100, 200] widened to 4 (scale 0.5, no kernel stretch). For output 0 the
  // centre is 0.25, the window is inputs 0..1 with raw weights K(0.25) = 0.8671875 and
  // K(1.25) = -0.0703125, normalised to 1.0882, -0.0882: 108.82 - 17.65 = 91.18 -> 91.
  // Output 1: K(0.25), K(0.75) = 0.8671875, 0.2265625 -> 79.29 + 41.43 = 120.7 -> 121.
  // Outputs 2 and 3 mirror these: 200 + 100 - 121 = 179 and 300 - 91 = 209.
  const auto row = torch::tensor({100, 200}, torch::kUInt8).view({1, 2, 1});
  const auto out = resize_bicubic_like_pil(row, 1, 4);
  CHECK(torch::equal(out.flatten(), torch::tensor({91, 121, 179, 209}, torch::kUInt8)));
  // The same along the height goes through the vertical pass.
  const auto col = resize_bicubic_like_pil(row.view({2, 1, 1}), 4, 1);
  CHECK(torch::equal(col.flatten(), torch::tensor({91, 121, 179, 209}, torch::kUInt8)));
}

TEST_CASE("a 2x downscale of a step averages across it with the stretched kernel", "[processors]") {
  // [0,0,0,0,255,255,255,255] -> 4: antialiasing (support 4 input pixels) blends the
  // step over the two middle outputs, which a non-stretched kernel would not; the two
  // halves stay mirror images of each other.
  const auto row = torch::tensor({0, 0, 0, 0, 255, 255, 255, 255}, torch::kUInt8).view({1, 8, 1});
  const auto out = resize_bicubic_like_pil(row, 1, 4).flatten();
  CHECK(out[1].item<int>() > 0);
  CHECK(out[2].item<int>() < 255);
  CHECK(out[0].item<int>() + out[3].item<int>() == 255);
  CHECK(out[1].item<int>() + out[2].item<int>() == 255);
}

TEST_CASE("fixed-point resize agrees with a double-precision version of Pillow's filter", "[processors]") {
  using Case = std::tuple<int, int, int, int>;  // in_h, in_w, out_h, out_w
  for (auto [ih, iw, oh, ow] :
       {Case{73, 97, 224, 224}, Case{400, 640, 224, 224}, Case{50, 80, 120, 33}, Case{33, 120, 80, 50},
        Case{224, 224, 97, 300}, Case{5, 9, 2, 1}, Case{1, 1, 4, 6}, Case{60, 40, 60, 13}}) {
    INFO(ih << "x" << iw << " -> " << oh << "x" << ow);
    // Noise, not a smooth image: where an output centre falls exactly between two input
    // pixels (e.g. 120 -> 50) a locally linear image gives exact .5 ties, which the
    // double version and Pillow's fixed point legitimately round differently.
    const auto img = random_image(ih, iw, 3, ih * 1000 + iw);
    const auto out = resize_bicubic_like_pil(img, oh, ow);
    const auto ref = minigpt4::test::resize_bicubic_reference_double(img, oh, ow);
    REQUIRE(out.sizes() == ref.sizes());
    const auto diff = (out.to(torch::kInt) - ref.to(torch::kInt)).abs();
    // Only weight quantisation (2^-22) separates them: a level at most, and rarely.
    CHECK(diff.max().item<int>() <= 1);
    CHECK(diff.gt(0).to(torch::kDouble).mean().item<double>() < 0.01);
  }
}

TEST_CASE("a smooth image keeps its shape when upscaled and squashed", "[processors]") {
  // Bicubic reproduces linear ramps away from the borders: an upscaled horizontal ramp
  // stays monotonic and close to the linear interpolation of the input.
  const int w = 20;
  auto ramp = (torch::arange(w, torch::kDouble) * 10 + 20).to(torch::kUInt8).view({1, w, 1}).expand({6, w, 3});
  const auto out = resize_bicubic_like_pil(ramp.contiguous(), 11, 57);
  REQUIRE(out.sizes() == at::IntArrayRef({11, 57, 3}));
  const auto row = out[5].select(1, 0).to(torch::kInt);
  CHECK((row.slice(0, 1) - row.slice(0, 0, -1)).min().item<int>() >= 0);
  const double scale = double(w) / 57;
  for (int x = 8; x < 49; ++x) {
    const double expected = 20 + 10 * ((x + 0.5) * scale - 0.5);
    CHECK(std::abs(row[x].item<int>() - expected) <= 1.0);
  }
  // Rows are all identical (the vertical pass sees constant columns).
  CHECK(torch::equal(out, out[0].unsqueeze(0).expand_as(out)));
}

TEST_CASE("resize_bicubic_like_pil handles 1 and 4 channels and rejects bad input", "[processors]") {
  const auto rgba = random_image(12, 9, 4, 7);
  const auto out4 = resize_bicubic_like_pil(rgba, 5, 20);
  CHECK(out4.sizes() == at::IntArrayRef({5, 20, 4}));
  // Channels are filtered independently.
  const auto out1 = resize_bicubic_like_pil(rgba.select(2, 2).unsqueeze(2).contiguous(), 5, 20);
  CHECK(torch::equal(out1.squeeze(2), out4.select(2, 2)));
  // Non-contiguous input is accepted.
  const auto t = random_image(9, 12, 3, 8).transpose(0, 1);
  CHECK(torch::equal(resize_bicubic_like_pil(t, 4, 4), resize_bicubic_like_pil(t.contiguous(), 4, 4)));

  CHECK_THROWS_AS(resize_bicubic_like_pil(torch::zeros({4, 4, 3}, torch::kFloat), 2, 2), minigpt4::Error);
  CHECK_THROWS_AS(resize_bicubic_like_pil(torch::zeros({4, 4}, torch::kUInt8), 2, 2), minigpt4::Error);
  CHECK_THROWS_AS(resize_bicubic_like_pil(torch::zeros({4, 4, 3}, torch::kUInt8), 0, 2), minigpt4::Error);
  CHECK_THROWS_AS(resize_bicubic_like_pil(torch::zeros({0, 4, 3}, torch::kUInt8), 2, 2), minigpt4::Error);
}
