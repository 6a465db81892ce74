#pragma once
// 4-component (CMYK or YCCK) JPEGs decoded as PIL's `Image.open(f).convert("RGB")` decodes
// them. OpenCV converts CMYK with its own rounding (one level off PIL's, two after the
// resize), so these files go straight to libjpeg, the decoder PIL itself uses.
#include <opencv2/core/mat.hpp>

#include <string>

namespace minigpt4 {

// `bytes` hold a JPEG whose frame has 4 components; returns 8-bit RGB (rows x cols x 3).
// Throws minigpt4::Error naming `name` when libjpeg refuses the data.
cv::Mat decode_cmyk_jpeg_like_pil(const std::string& bytes, const std::string& name);

}  // namespace minigpt4
