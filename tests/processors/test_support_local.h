#pragma once
// Small helpers for the processor tests: a temp directory, file reading, and a
// double-precision PIL-style resampler used as an independent cross-check.
#include <ATen/core/Tensor.h>

#include <filesystem>
#include <string>

namespace minigpt4::test {

// A fresh directory under the system temp dir, removed by the destructor.
class TempDir {
 public:
  TempDir();
  ~TempDir();
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  const std::filesystem::path& path() const { return path_; }
  std::filesystem::path write(const std::string& name, const std::string& bytes) const;

 private:
  std::filesystem::path path_;
};

std::string read_file_bytes(const std::filesystem::path& path);

// Pillow's resampling written plainly in double precision (same kernel and windows, but
// floating-point weights and accumulation), rounding and clipping after each pass as
// Pillow does. Differs from the fixed-point version only through weight quantisation.
at::Tensor resize_bicubic_reference_double(const at::Tensor& image_uint8_hwc, int out_h, int out_w);

}  // namespace minigpt4::test
