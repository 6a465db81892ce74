#pragma once
// BLIP-2's `blip2_image_eval` processor, the one MiniGPT-4's demo and evaluation use:
// Resize((S,S), BICUBIC) -> ToTensor -> Normalize(CLIP mean/std).
#include <ATen/core/Tensor.h>

#include "minigpt4/processors/image_decode.h"
#include "minigpt4/processors/pil_resize.h"

#include <array>
#include <string>

namespace minigpt4 {

// OpenAI CLIP's normalisation constants, BLIP-2's defaults.
inline constexpr std::array<double, 3> kClipMean = {0.48145466, 0.4578275, 0.40821073};
inline constexpr std::array<double, 3> kClipStd = {0.26862954, 0.26130258, 0.27577711};

class ImageEvalProcessor {
 public:
  explicit ImageEvalProcessor(int image_size, std::array<double, 3> mean = kClipMean,
                              std::array<double, 3> std_dev = kClipStd);

  // uint8 [H,W,3] RGB (as decode_image_rgb returns) -> float32 [3,S,S] on the CPU:
  // (resize_bicubic_like_pil(image, S, S) / 255 - mean) / std, in float32 as torchvision.
  // The aspect ratio is not kept (the reference squashes to S x S).
  at::Tensor operator()(const at::Tensor& rgb_uint8_hwc) const;

  // decode_image_rgb(path) then operator().
  at::Tensor from_file(const std::string& path) const;

  int image_size() const { return image_size_; }
  const std::array<double, 3>& mean() const { return mean_; }
  const std::array<double, 3>& std_dev() const { return std_; }

 private:
  int image_size_;
  std::array<double, 3> mean_;
  std::array<double, 3> std_;
};

}  // namespace minigpt4
