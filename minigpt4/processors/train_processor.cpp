#include "minigpt4/processors/train_processor.h"

#include "minigpt4/common/error.h"

#include <cmath>
#include <limits>

namespace minigpt4 {

double uniform_real(std::mt19937_64& rng, double lo, double hi) {
  // The top 53 bits give every double in [0, 1) on a 2^-53 grid.
  const double unit = static_cast<double>(rng() >> 11) * 0x1.0p-53;
  return lo + (hi - lo) * unit;
}

uint64_t uniform_index(std::mt19937_64& rng, uint64_t n) {
  if (n == 0) fail("uniform_index: empty range");
  // Reject the lowest 2^64 mod n values so every residue is equally likely.
  const uint64_t threshold = (0 - n) % n;
  uint64_t x = rng();
  while (x < threshold) x = rng();
  return x % n;
}

ImageTrainProcessor::ImageTrainProcessor(int image_size, double min_scale, double max_scale, std::array<double, 3> mean,
                                         std::array<double, 3> std_dev)
    : resize_normalise_(image_size, mean, std_dev), min_scale_(min_scale), max_scale_(max_scale) {
  if (!(min_scale > 0.0 && min_scale <= max_scale && max_scale <= 1.0))
    fail("ImageTrainProcessor: need 0 < min_scale <= max_scale <= 1, got min_scale {} max_scale {}", min_scale,
         max_scale);
}

CropBox ImageTrainProcessor::sample_crop(int height, int width, std::mt19937_64& rng) const {
  if (height <= 0 || width <= 0) fail("ImageTrainProcessor: cannot crop an empty {}x{} image", height, width);
  constexpr double kMinRatio = 3.0 / 4.0;
  constexpr double kMaxRatio = 4.0 / 3.0;
  const double area = static_cast<double>(height) * width;
  const double log_min = std::log(kMinRatio);
  const double log_max = std::log(kMaxRatio);
  // std::nearbyint in the default rounding mode is half-to-even, as Python's round().
  for (int attempt = 0; attempt < 10; ++attempt) {
    const double target_area = area * uniform_real(rng, min_scale_, max_scale_);
    const double aspect = std::exp(uniform_real(rng, log_min, log_max));
    const int w = static_cast<int>(std::nearbyint(std::sqrt(target_area * aspect)));
    const int h = static_cast<int>(std::nearbyint(std::sqrt(target_area / aspect)));
    if (0 < w && w <= width && 0 < h && h <= height) {
      const int top = static_cast<int>(uniform_index(rng, static_cast<uint64_t>(height - h + 1)));
      const int left = static_cast<int>(uniform_index(rng, static_cast<uint64_t>(width - w + 1)));
      return {top, left, h, w};
    }
  }
  // Fallback: the whole image, cut to the allowed ratio range, centred.
  const double in_ratio = static_cast<double>(width) / height;
  int w = width;
  int h = height;
  if (in_ratio < kMinRatio) {
    h = static_cast<int>(std::nearbyint(w / kMinRatio));
  } else if (in_ratio > kMaxRatio) {
    w = static_cast<int>(std::nearbyint(h * kMaxRatio));
  }
  return {(height - h) / 2, (width - w) / 2, h, w};
}

at::Tensor ImageTrainProcessor::apply(const at::Tensor& rgb, const CropBox& box) const {
  if (!rgb.defined() || rgb.dim() != 3 || rgb.size(2) != 3)
    fail("ImageTrainProcessor: expected a uint8 [H,W,3] RGB image, got {}",
         rgb.defined() ? c10::str(rgb.sizes()) : "undefined");
  if (box.top < 0 || box.left < 0 || box.height <= 0 || box.width <= 0 || box.top + box.height > rgb.size(0) ||
      box.left + box.width > rgb.size(1))
    fail("ImageTrainProcessor: crop box (top {}, left {}, {}x{}) is outside the {}x{} image", box.top, box.left,
         box.height, box.width, rgb.size(0), rgb.size(1));
  // PIL's crop copies the region and resizes the copy as a whole image; the resizer makes
  // the slice contiguous, which is that copy.
  const at::Tensor region = rgb.slice(0, box.top, box.top + box.height).slice(1, box.left, box.left + box.width);
  return resize_normalise_(region);
}

at::Tensor ImageTrainProcessor::operator()(const at::Tensor& rgb, std::mt19937_64& rng) const {
  if (!rgb.defined() || rgb.dim() != 3)
    fail("ImageTrainProcessor: expected a uint8 [H,W,3] RGB image, got {}",
         rgb.defined() ? c10::str(rgb.sizes()) : "undefined");
  return apply(rgb, sample_crop(static_cast<int>(rgb.size(0)), static_cast<int>(rgb.size(1)), rng));
}

}  // namespace minigpt4
