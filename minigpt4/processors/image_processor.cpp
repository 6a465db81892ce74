#include "minigpt4/processors/image_processor.h"

#include "minigpt4/common/error.h"

#include <torch/torch.h>

namespace minigpt4 {

ImageEvalProcessor::ImageEvalProcessor(int image_size, std::array<double, 3> mean, std::array<double, 3> std_dev)
    : image_size_(image_size), mean_(mean), std_(std_dev) {
  if (image_size <= 0) fail("ImageEvalProcessor: image_size must be positive, got {}", image_size);
  for (double s : std_dev)
    if (s == 0.0)
      fail("ImageEvalProcessor: std must be non-zero, got ({}, {}, {})", std_dev[0], std_dev[1], std_dev[2]);
}

at::Tensor ImageEvalProcessor::operator()(const at::Tensor& rgb) const {
  if (!rgb.defined() || rgb.dim() != 3 || rgb.size(2) != 3 || rgb.scalar_type() != at::kByte)
    fail("ImageEvalProcessor: expected a uint8 [H,W,3] RGB image, got {} {}",
         rgb.defined() ? std::string(c10::toString(rgb.scalar_type())) : "undefined",
         rgb.defined() ? c10::str(rgb.sizes()) : "");
  const at::Tensor resized = resize_bicubic_like_pil(rgb, image_size_, image_size_);
  // The same float32 operations, in the same order, as torchvision's ToTensor
  // (`to(float).div(255)`) and Normalize (`sub_(mean).div_(std)` with float32 mean/std),
  // so the result matches the reference to the last bit, not just to rounding.
  const auto opts = torch::TensorOptions().dtype(torch::kFloat);
  const at::Tensor mean = torch::tensor({mean_[0], mean_[1], mean_[2]}, torch::kDouble).to(opts).view({3, 1, 1});
  const at::Tensor std = torch::tensor({std_[0], std_[1], std_[2]}, torch::kDouble).to(opts).view({3, 1, 1});
  at::Tensor x = resized.permute({2, 0, 1}).contiguous().to(torch::kFloat).div(255);
  return x.sub_(mean).div_(std);
}

at::Tensor ImageEvalProcessor::from_file(const std::string& path) const { return (*this)(decode_image_rgb(path)); }

}  // namespace minigpt4
