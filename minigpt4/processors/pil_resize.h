#pragma once
// Pillow's bicubic resampler (`Image.resize(size, Image.BICUBIC)`, Pillow 9.4
// ImagingResample), reproduced bit for bit. torchvision's `Resize(..., BICUBIC)` on a PIL
// image is exactly this call, and OpenCV's INTER_CUBIC is a different filter (a = -0.75,
// no antialiasing) that is off by tens of levels when shrinking.
#include <ATen/core/Tensor.h>

namespace minigpt4 {

// uint8 [H,W,C] (any C >= 1, e.g. RGB) -> uint8 [out_h,out_w,C], contiguous, on the CPU.
// Same algorithm and integer arithmetic as Pillow: separable, horizontal pass then
// vertical, each rounded and clipped to uint8; bicubic a = -0.5 whose support is
// stretched by the downscale factor (antialiasing); 22-bit fixed-point coefficients. A
// dimension that keeps its size is not filtered, so resizing to the same size is a copy.
at::Tensor resize_bicubic_like_pil(const at::Tensor& image_uint8_hwc, int out_h, int out_w);

}  // namespace minigpt4
