#include "minigpt4/processors/pil_resize.h"

#include "minigpt4/common/error.h"

#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

// The arithmetic below mirrors Pillow's Resample.c step by step (double-precision kernel
// weights, per-pixel normalisation, conversion to 22-bit integers, integer accumulation
// with a rounding bias, floor shift and clip), because any deviation -- e.g. keeping the
// weights in float, or rounding differently -- moves some pixels by one level.

namespace minigpt4 {
namespace {

// 8 bits of result, 2 bits of headroom for the negative lobes and sums above 1.
constexpr int kPrecisionBits = 32 - 8 - 2;

// Bicubic convolution kernel with a = -0.5 (Keys), support 2, written as Pillow writes it
// so the double results are identical.
double bicubic(double x) {
  constexpr double a = -0.5;
  if (x < 0.0) x = -x;
  if (x < 1.0) return ((a + 2.0) * x - (a + 3.0)) * x * x + 1;
  if (x < 2.0) return (((x - 5) * x + 8) * x - 4) * a;
  return 0.0;
}

// For each output position along one axis: the first input index, how many inputs it
// reads, and their fixed-point weights (`ksize` slots per output, unused ones zero).
struct AxisCoeffs {
  int ksize = 0;
  std::vector<int> first;
  std::vector<int> count;
  std::vector<int32_t> weights;
};

// Pillow's precompute_coeffs + normalize_coeffs_8bpc for the whole-image box (0, in_size).
AxisCoeffs precompute_coeffs(int in_size, int out_size) {
  constexpr double kFilterSupport = 2.0;
  // Pillow takes (in1 - in0) from a float box; for box (0, in_size) that is in_size.
  const double scale = static_cast<double>(static_cast<float>(in_size)) / out_size;
  const double filterscale = std::max(scale, 1.0);  // stretch the kernel only when shrinking
  const double support = kFilterSupport * filterscale;

  AxisCoeffs c;
  c.ksize = static_cast<int>(std::ceil(support)) * 2 + 1;
  c.first.resize(out_size);
  c.count.resize(out_size);
  c.weights.assign(static_cast<size_t>(out_size) * c.ksize, 0);
  std::vector<double> k(c.ksize);
  const double ss = 1.0 / filterscale;
  for (int xx = 0; xx < out_size; ++xx) {
    const double center = 0.0 + (xx + 0.5) * scale;
    // Window rounded as Pillow does: (int) truncates toward zero, then clamped.
    int xmin = static_cast<int>(center - support + 0.5);
    if (xmin < 0) xmin = 0;
    int xmax = static_cast<int>(center + support + 0.5);
    if (xmax > in_size) xmax = in_size;
    xmax -= xmin;

    double ww = 0.0;
    for (int x = 0; x < xmax; ++x) {
      const double w = bicubic((x + xmin - center + 0.5) * ss);
      k[x] = w;
      ww += w;
    }
    int32_t* out = &c.weights[static_cast<size_t>(xx) * c.ksize];
    for (int x = 0; x < xmax; ++x) {
      const double w = ww != 0.0 ? k[x] / ww : k[x];
      // Round half away from zero into 22-bit fixed point (normalize_coeffs_8bpc).
      out[x] = w < 0 ? static_cast<int32_t>(-0.5 + w * (1 << kPrecisionBits))
                     : static_cast<int32_t>(0.5 + w * (1 << kPrecisionBits));
    }
    c.first[xx] = xmin;
    c.count[xx] = xmax;
  }
  return c;
}

// Pillow's clip8: the accumulator carries a +0.5 bias, so an arithmetic shift (floor)
// rounds to nearest; then clamp to 0..255.
inline uint8_t clip8(int64_t acc) {
  const int64_t v = acc >> kPrecisionBits;
  return static_cast<uint8_t>(v < 0 ? 0 : (v > 255 ? 255 : v));
}

constexpr int64_t kRoundingBias = int64_t{1} << (kPrecisionBits - 1);

// Filters along the width: [h, in_w, ch] -> [h, out_w, ch].
void resample_horizontal(const uint8_t* in, int h, int in_w, int ch, uint8_t* out, int out_w, const AxisCoeffs& c) {
  std::vector<int64_t> acc(ch);
  for (int y = 0; y < h; ++y) {
    const uint8_t* row = in + static_cast<size_t>(y) * in_w * ch;
    uint8_t* dst = out + static_cast<size_t>(y) * out_w * ch;
    for (int xx = 0; xx < out_w; ++xx) {
      const int32_t* k = &c.weights[static_cast<size_t>(xx) * c.ksize];
      std::fill(acc.begin(), acc.end(), kRoundingBias);
      for (int x = 0; x < c.count[xx]; ++x) {
        const uint8_t* px = row + static_cast<size_t>(x + c.first[xx]) * ch;
        for (int b = 0; b < ch; ++b) acc[b] += int64_t{px[b]} * k[x];
      }
      for (int b = 0; b < ch; ++b) dst[static_cast<size_t>(xx) * ch + b] = clip8(acc[b]);
    }
  }
}

// Filters along the height: [in_h, w, ch] -> [out_h, w, ch].
void resample_vertical(const uint8_t* in, int w, int ch, uint8_t* out, int out_h, const AxisCoeffs& c) {
  const size_t row_len = static_cast<size_t>(w) * ch;
  for (int yy = 0; yy < out_h; ++yy) {
    const int32_t* k = &c.weights[static_cast<size_t>(yy) * c.ksize];
    uint8_t* dst = out + static_cast<size_t>(yy) * row_len;
    for (size_t i = 0; i < row_len; ++i) {
      int64_t acc = kRoundingBias;
      for (int y = 0; y < c.count[yy]; ++y) acc += int64_t{in[(y + c.first[yy]) * row_len + i]} * k[y];
      dst[i] = clip8(acc);
    }
  }
}

}  // namespace

at::Tensor resize_bicubic_like_pil(const at::Tensor& image, int out_h, int out_w) {
  if (!image.defined() || image.dim() != 3 || image.scalar_type() != at::kByte)
    fail("resize_bicubic_like_pil: expected a uint8 [H,W,C] image, got {} {}",
         image.defined() ? std::string(c10::toString(image.scalar_type())) : "undefined",
         image.defined() ? c10::str(image.sizes()) : "");
  const int in_h = static_cast<int>(image.size(0)), in_w = static_cast<int>(image.size(1));
  const int ch = static_cast<int>(image.size(2));
  if (in_h <= 0 || in_w <= 0 || ch <= 0) fail("resize_bicubic_like_pil: empty image {}", c10::str(image.sizes()));
  if (out_h <= 0 || out_w <= 0) fail("resize_bicubic_like_pil: invalid output size {}x{}", out_h, out_w);

  at::Tensor src = image.to(at::kCPU).contiguous();
  // Pillow skips an axis whose size does not change (need_horizontal / need_vertical);
  // with neither, Image.resize returns a copy.
  if (out_w != in_w) {
    at::Tensor tmp = torch::empty({in_h, out_w, ch}, torch::kUInt8);
    resample_horizontal(src.data_ptr<uint8_t>(), in_h, in_w, ch, tmp.data_ptr<uint8_t>(), out_w,
                        precompute_coeffs(in_w, out_w));
    src = tmp;
  }
  if (out_h != in_h) {
    at::Tensor tmp = torch::empty({out_h, out_w, ch}, torch::kUInt8);
    resample_vertical(src.data_ptr<uint8_t>(), out_w, ch, tmp.data_ptr<uint8_t>(), out_h,
                      precompute_coeffs(in_h, out_h));
    src = tmp;
  }
  return src.data_ptr() == image.data_ptr() ? src.clone() : src;
}

}  // namespace minigpt4
