#pragma once
// BLIP-2's `blip2_image_train` processor, the one MiniGPT-4 trains with:
// RandomResizedCrop(S, scale=(0.5, 1.0), ratio=(3/4, 4/3), BICUBIC) -> ToTensor ->
// Normalize(CLIP mean/std).
#include <ATen/core/Tensor.h>

#include "minigpt4/processors/image_processor.h"

#include <array>
#include <cstdint>
#include <random>

namespace minigpt4 {

// Portable draws from a std::mt19937_64. The engine's output sequence is fixed by the
// standard but std::uniform_*_distribution are not (libstdc++ and libc++ differ), so these
// keep "same seed, same crops / same shuffle" true on every platform.
double uniform_real(std::mt19937_64& rng, double lo, double hi);  // in [lo, hi), 53-bit
uint64_t uniform_index(std::mt19937_64& rng, uint64_t n);         // in [0, n), unbiased; n > 0

// A crop box in pixels: rows [top, top + height), columns [left, left + width).
struct CropBox {
  int top = 0;
  int left = 0;
  int height = 0;
  int width = 0;
};

class ImageTrainProcessor {
 public:
  explicit ImageTrainProcessor(int image_size, double min_scale = 0.5, double max_scale = 1.0,
                               std::array<double, 3> mean = kClipMean, std::array<double, 3> std_dev = kClipStd);

  // torchvision's RandomResizedCrop.get_params for an image of height x width:
  // up to 10 attempts of (area fraction ~ U(min_scale, max_scale), log aspect ratio ~
  // U(log 3/4, log 4/3)), sides rounded half-to-even as Python's round(); the first box
  // that fits gets a uniform position (top drawn before left). If none fits, the centred
  // box of the whole image, narrowed to the nearest allowed aspect ratio.
  CropBox sample_crop(int height, int width, std::mt19937_64& rng) const;

  // uint8 [H,W,3] RGB -> float32 [3,S,S]: crop `box`, resize it to S x S with the
  // PIL-exact bicubic, /255, normalise (the same float32 steps as ImageEvalProcessor).
  at::Tensor apply(const at::Tensor& rgb_uint8_hwc, const CropBox& box) const;

  // sample_crop on the image's size, then apply.
  at::Tensor operator()(const at::Tensor& rgb_uint8_hwc, std::mt19937_64& rng) const;

  int image_size() const { return resize_normalise_.image_size(); }
  double min_scale() const { return min_scale_; }
  double max_scale() const { return max_scale_; }

 private:
  ImageEvalProcessor resize_normalise_;  // on the cropped region, it is exactly the rest
  double min_scale_;
  double max_scale_;
};

}  // namespace minigpt4
