#include "minigpt4/models/quantize.h"

#include "minigpt4/common/error.h"
#include "minigpt4/models/cpu_gemv.h"

#include <ATen/ATen.h>
#include <torch/csrc/autograd/grad_mode.h>

#include <algorithm>

namespace minigpt4 {

namespace {

// Rows quantised at a time: two reused 4 MiB float32 blocks, however large the layer. A
// whole 2048x5632 layer would take 46 MiB per temporary (on the GPU too), and freeing
// such temporaries between the int8 weights fragments glibc's heap: loading a 1.1B LLaMA
// that way peaked up to 0.9 GiB above its weights and mapped file, block by block 0.35.
constexpr int64_t kQuantizeBlockElements = int64_t{1} << 20;

// Up to this many activation rows, bf16/fp16 on the CPU use ATen's fused int8 kernel.
constexpr int64_t kCpuFusedMaxRows = 32;

void check_int8(const at::Tensor& values, const at::Tensor& scales) {
  if (values.scalar_type() != at::kChar || values.dim() != 2)
    fail("int8 linear: the weight must be int8 [N, K], got {} [{}]", c10::toString(values.scalar_type()),
         fmt::join(values.sizes(), ", "));
  if (scales.dim() != 1 || scales.size(0) != values.size(0))
    fail("int8 linear: {} scales for a weight with {} output channels", scales.numel(), values.size(0));
}

// The CPU's int8 product for x2 [M, K]. Up to cpu_gemv::kMaxRows rows (a decode step) go to
// our GEMV, which reads the int8 weights once at close to the memory's speed (cpu_gemv.h;
// about twice ATen's fused _weight_int8pack_mm for one row streamed from memory); it has no
// backward. Up to 32 bf16/fp16 rows, the fused kernel, which reads int8 directly, beats
// converting (it is 1.2-1.3x slower than the GEMM from 64 rows, and for fp32 it has no
// vectorised path). Otherwise: convert a block of output rows to float32 (a plain
// vectorised cast; a mixed int8 x float multiply is several times slower), multiply while
// the block is in cache, and apply the scales to the small output at the end (fp32: 1.1-1.2x
// the dense time from 64 rows). bf16/fp16 activations are multiplied in float32 as well: on
// a CPU without AMX the bf16 GEMM is no faster than float32's, and the float32 blocks cost
// less to make (64 rows of a 2048->5632 layer, 2 threads: 8.9 ms against 14.2 through bf16
// blocks).
// LLM.int8() (Dettmers et al., 2022), the product bitsandbytes' load_in_8bit computes for the
// original's low_resource: each activation row is quantised to int8 by its own absmax (as each
// weight row is by its own), the integer product runs in oneDNN's int8 GEMM (at::_int_mm, VNNI
// dot products, exact int32 sums), and the outliers, activations of magnitude >= 6 (its
// llm_int8_threshold), are multiplied in float32 by their dequantised weight columns. Unlike
// bitsandbytes, which sends a whole column to float when any row has an outlier there, only
// the outlier elements go: each row's result then depends on that row alone, so a prompt
// computed in chunks (the server's chunked prefill) gives what it gives whole.
constexpr float kOutlierThreshold = 6.0f;

at::Tensor llm_int8_mm(const at::Tensor& x2, const at::Tensor& values, const at::Tensor& scales) {
  if (x2.size(0) == 0) return at::zeros({0, values.size(0)}, x2.options().dtype(at::kFloat));
  auto x = x2.to(at::kFloat);
  const auto outlier = x.abs() >= kOutlierThreshold;
  const auto columns = outlier.any(0).nonzero().view({-1});
  at::Tensor x_outliers;
  if (columns.numel() > 0) {
    x_outliers = x.index_select(1, columns).mul_(outlier.index_select(1, columns));
    x = x.masked_fill(outlier, 0.0);
  }
  auto row_scale = x.abs().amax({1}, /*keepdim=*/true).div_(127.0);
  row_scale.masked_fill_(row_scale == 0, 1.0);
  const auto q = at::div(x, row_scale).round_().clamp_(-127, 127).to(at::kChar);
  auto y = at::_int_mm(q, values.t()).to(at::kFloat).mul_(row_scale).mul_(scales.to(at::kFloat).unsqueeze(0));
  if (x_outliers.defined())
    y.addmm_(x_outliers, dequantize_int8(values.index_select(1, columns), scales, at::kFloat).t());
  return y;
}

at::Tensor cpu_int8_mm(const at::Tensor& x2, const at::Tensor& values, const at::Tensor& scales) {
  const auto dtype = x2.scalar_type();
  if (!(at::GradMode::is_enabled() && x2.requires_grad())) {
    if (auto y = cpu_gemv::linear_int8(x2, values, scales); y.defined()) return y;
    // int32 sums of K products of at most 127 * 127 stay exact up to K = 133,000.
    if (cpu_gemv::chosen().int8_prompt_llm_int8 && x2.size(1) <= 130'000)
      return llm_int8_mm(x2, values, scales).to(dtype);
    if (auto y = cpu_gemv::prompt_mm(x2, values, scales); y.defined()) return y.to(dtype);  // scaled
  }
  // The fused kernel reads K in blocks of 16: other widths give garbage or crash (seen with
  // torch 2.12 at K = 8, 24, 40, 344, e.g. the quickstart LLM's FFN of 344).
  if ((dtype == at::kBFloat16 || dtype == at::kHalf) && x2.size(0) <= kCpuFusedMaxRows && x2.size(1) % 16 == 0)
    return at::_weight_int8pack_mm(x2.contiguous(), values, scales.to(dtype));  // scales in x's dtype
  auto y = cpu_gemv::float32_blocks_mm(x2, values);
  return y.mul_(scales.to(at::kFloat)).to(dtype);
}

}  // namespace

void quantize_int8_into(const at::Tensor& weight, at::Tensor& values, at::Tensor& scales) {
  if (weight.dim() != 2 || !at::isFloatingType(weight.scalar_type()))
    fail("quantize_int8: expected a floating [N, K] weight, got {} [{}]", c10::toString(weight.scalar_type()),
         fmt::join(weight.sizes(), ", "));
  check_int8(values, scales);
  if (values.sizes() != weight.sizes())
    fail("quantize_int8: weight [{}] does not fit int8 storage [{}]", fmt::join(weight.sizes(), ", "),
         fmt::join(values.sizes(), ", "));
  at::NoGradGuard no_grad;
  const int64_t N = weight.size(0), K = weight.size(1);
  const int64_t rows = std::min(N, std::max<int64_t>(1, kQuantizeBlockElements / std::max<int64_t>(K, 1)));
  // Two float32 blocks reused for every row block (out= variants): no allocation per block.
  const auto options = values.options().dtype(at::kFloat);
  auto w_block = at::empty({rows, K}, options), q_block = at::empty({rows, K}, options);
  auto absmax_block = at::empty({rows}, options);
  for (int64_t n0 = 0; n0 < N; n0 += rows) {
    const int64_t n = std::min(rows, N - n0);
    // From float32 whatever the stored dtype, so the scale is exact for fp16/bf16 files too.
    auto w = w_block.narrow(0, 0, n), q = q_block.narrow(0, 0, n), absmax = absmax_block.narrow(0, 0, n);
    w.copy_(weight.narrow(0, n0, n));
    at::amax_out(absmax, at::abs_out(q, w), {1});
    auto scale = scales.narrow(0, n0, n);
    scale.copy_(absmax).div_(127.0).masked_fill_(absmax == 0, 1.0);
    at::div_out(q, w, scale.unsqueeze(1)).round_().clamp_(-127, 127);
    values.narrow(0, n0, n).copy_(q);
  }
}

Int8Weight quantize_int8(const at::Tensor& weight) {
  if (weight.dim() != 2)
    fail("quantize_int8: expected a floating [N, K] weight, got [{}]", fmt::join(weight.sizes(), ", "));
  const auto options = at::TensorOptions().device(weight.device());
  Int8Weight out{at::empty(weight.sizes(), options.dtype(at::kChar)),
                 at::empty({weight.size(0)}, options.dtype(at::kFloat))};
  quantize_int8_into(weight, out.values, out.scales);
  return out;
}

at::Tensor dequantize_int8(const at::Tensor& values, const at::Tensor& scales, c10::ScalarType dtype) {
  check_int8(values, scales);
  // One pass: the product is computed in float32 (the scales' type) and written in `dtype`.
  auto out = at::empty(values.sizes(), values.options().dtype(dtype));
  at::mul_out(out, values, scales.to(at::kFloat).unsqueeze(1));
  return out;
}

at::Tensor int8_linear(const at::Tensor& x, const at::Tensor& values, const at::Tensor& scales,
                       const at::Tensor& bias) {
  check_int8(values, scales);
  const int64_t K = values.size(1);
  if (x.size(-1) != K) fail("int8 linear: input has {} features but the weight expects {}", x.size(-1), K);
  const auto dtype = x.scalar_type();
  auto out_shape = x.sizes().vec();
  out_shape.back() = values.size(0);
  at::Tensor y;
  // Our CPU kernel has no backward; explanations (chat/explain.h) differentiate through the
  // frozen layers to their inputs, so they take the dequantised product.
  const bool needs_grad = at::GradMode::is_enabled() && x.requires_grad();
  if (x.is_cpu() && !needs_grad) {
    y = cpu_int8_mm(x.reshape({-1, K}), values, scales).view(out_shape);
  } else {
    // CUDA (and anything else): dequantise to the activations' dtype, then the ordinary
    // GEMM. The transient dense weight is one layer's. ATen's CUDA _weight_int8pack_mm
    // takes fp32 activations only, and _int_mm would need int8 activations (LLM.int8()'s
    // outlier problem), so neither fits fp16/bf16 inference.
    y = at::linear(x, dequantize_int8(values, scales, dtype));
  }
  if (bias.defined()) y = y + bias.to(dtype);
  return y;
}

}  // namespace minigpt4

// ---------------------------------------------------------------- group-wise formats

namespace minigpt4 {

namespace {

constexpr int64_t kRun = 32;  // inputs per q4_0-packed run (and per activation scale in the kernels)

int64_t padded_width(const at::Tensor& values) {
  return values.scalar_type() == at::kByte ? values.size(1) * 2 : values.size(1);
}

// [n, Kp / 2] q4_0-packed bytes -> [n, Kp] nibbles in input order, as uint8.
at::Tensor unpack_nibbles(const at::Tensor& packed) {
  const int64_t n = packed.size(0), runs = packed.size(1) * 2 / kRun;
  const auto bytes = packed.view({n, runs, kRun / 2});
  return at::cat({at::bitwise_and(bytes, 15), at::bitwise_right_shift(bytes, 4)}, -1).view({n, runs * kRun});
}

}  // namespace

GroupedWeight empty_grouped(int64_t N, int64_t K, int bits, int64_t group_size, const at::TensorOptions& options) {
  if (bits != 4 && bits != 8) fail("group-wise weights have 4 or 8 bits, not {}", bits);
  if (group_size != 32 && group_size != 64 && group_size != 128)
    fail("the quantisation group size must be 32, 64 or 128 inputs, not {}", group_size);
  const int64_t Kp = (K + group_size - 1) / group_size * group_size;
  GroupedWeight w;
  w.values =
      bits == 8 ? at::empty({N, Kp}, options.dtype(at::kChar)) : at::empty({N, Kp / 2}, options.dtype(at::kByte));
  w.scales = at::empty({N, Kp / group_size}, options.dtype(at::kHalf));
  return w;
}

int grouped_bits(const at::Tensor& values) {
  if (values.dim() == 2 && values.scalar_type() == at::kChar) return 8;
  if (values.dim() == 2 && values.scalar_type() == at::kByte) return 4;
  fail("group-wise weight: values must be int8 [N, Kp] or packed 4-bit uint8 [N, Kp / 2], got {} [{}]",
       c10::toString(values.scalar_type()), fmt::join(values.sizes(), ", "));
}

int64_t grouped_group_size(const at::Tensor& values, const at::Tensor& scales) {
  grouped_bits(values);
  const int64_t Kp = padded_width(values);
  if (scales.dim() != 2 || scales.scalar_type() != at::kHalf || scales.size(0) != values.size(0) ||
      scales.size(1) == 0 || Kp % scales.size(1) != 0 || (Kp / scales.size(1)) % kRun != 0)
    fail("group-wise weight: {} [{}] scales do not fit values [{}] (float16 [N, Kp / group size] expected)",
         c10::toString(scales.scalar_type()), fmt::join(scales.sizes(), ", "), fmt::join(values.sizes(), ", "));
  return Kp / scales.size(1);
}

void quantize_grouped_into(const at::Tensor& weight, at::Tensor& values, at::Tensor& scales) {
  if (weight.dim() != 2 || !at::isFloatingType(weight.scalar_type()))
    fail("quantize_grouped: expected a floating [N, K] weight, got {} [{}]", c10::toString(weight.scalar_type()),
         fmt::join(weight.sizes(), ", "));
  const int bits = grouped_bits(values);
  const int64_t G = grouped_group_size(values, scales), Kp = padded_width(values);
  const int64_t N = weight.size(0), K = weight.size(1);
  if (values.size(0) != N || K > Kp || Kp - K >= G)
    fail("quantize_grouped: weight [{}] does not fit {}-bit storage for [{}, {}] in groups of {}",
         fmt::join(weight.sizes(), ", "), bits, values.size(0), Kp, G);
  at::NoGradGuard no_grad;
  const int64_t rows = std::min(N, std::max<int64_t>(1, kQuantizeBlockElements / Kp));
  const auto f32 = values.options().dtype(at::kFloat);
  auto w_block = at::zeros({rows, Kp}, f32);  // the padding columns stay zero
  for (int64_t n0 = 0; n0 < N; n0 += rows) {
    const int64_t n = std::min(rows, N - n0);
    auto w = w_block.narrow(0, 0, n);
    w.narrow(1, 0, K).copy_(weight.narrow(0, n0, n));
    const auto groups = w.view({n, Kp / G, G});
    // The scale as stored (float16) is the one the product uses, so quantise with it.
    at::Tensor d;
    if (bits == 8) {
      d = groups.abs().amax(-1) / 127.0;
    } else {  // the value of largest magnitude, with its sign, maps to -8 exactly
      const auto largest = groups.gather(-1, groups.abs().argmax(-1, /*keepdim=*/true)).squeeze(-1);
      d = largest / -8.0;
    }
    const auto d16 = d.to(at::kHalf);
    if (!at::isfinite(d16).all().item<bool>())
      fail("quantize_grouped: rows {}..{} hold values that are not finite or too large for a float16 scale", n0,
           n0 + n - 1);
    scales.narrow(0, n0, n).copy_(d16);
    const auto dq = d16.to(at::kFloat);
    const auto inverse = at::where(dq == 0, at::zeros_like(dq), dq.reciprocal()).unsqueeze(-1);
    auto q = (groups * inverse).round_();
    if (bits == 8) {
      values.narrow(0, n0, n).copy_(q.clamp_(-127, 127).view({n, Kp}));
    } else {
      const auto nibbles = q.add_(8).clamp_(0, 15).to(at::kByte).view({n, Kp / kRun, kRun});
      const auto packed = at::bitwise_or(nibbles.narrow(-1, 0, kRun / 2),
                                         at::bitwise_left_shift(nibbles.narrow(-1, kRun / 2, kRun / 2), 4));
      values.narrow(0, n0, n).copy_(packed.view({n, Kp / 2}));
    }
  }
}

GroupedWeight quantize_grouped(const at::Tensor& weight, int bits, int64_t group_size) {
  if (weight.dim() != 2)
    fail("quantize_grouped: expected a floating [N, K] weight, got [{}]", fmt::join(weight.sizes(), ", "));
  auto out =
      empty_grouped(weight.size(0), weight.size(1), bits, group_size, at::TensorOptions().device(weight.device()));
  quantize_grouped_into(weight, out.values, out.scales);
  return out;
}

at::Tensor dequantize_grouped(const at::Tensor& values, const at::Tensor& scales, int64_t K, c10::ScalarType dtype) {
  const int bits = grouped_bits(values);
  const int64_t G = grouped_group_size(values, scales), Kp = padded_width(values), N = values.size(0);
  if (K > Kp || K <= Kp - G) fail("dequantize_grouped: width {} does not fit storage of {} in groups of {}", K, Kp, G);
  const auto q = bits == 8 ? values.to(at::kFloat) : unpack_nibbles(values).to(at::kFloat).sub_(8);
  const auto w = q.view({N, Kp / G, G}).mul_(scales.to(at::kFloat).unsqueeze(-1)).view({N, Kp});
  return w.narrow(1, 0, K).to(dtype);
}

at::Tensor grouped_linear(const at::Tensor& x, const at::Tensor& values, const at::Tensor& scales,
                          const at::Tensor& bias) {
  const int64_t G = grouped_group_size(values, scales), Kp = padded_width(values), K = x.size(-1);
  if (K > Kp || K <= Kp - G)
    fail("group-wise linear: input has {} features but the weight holds {} (groups of {})", K, Kp, G);
  const auto dtype = x.scalar_type();
  const bool needs_grad = at::GradMode::is_enabled() && x.requires_grad();
  at::Tensor y;
  if (x.is_cpu() && !needs_grad) {
    y = cpu_gemv::linear_grouped(x, values, scales);  // a decode step's rows
    if (!y.defined()) {
      // A prompt: the weight dequantised a block of output rows at a time, in cache, and
      // multiplied by MKL's float32 GEMM (as the int8 path does, cpu_gemv::float32_blocks_mm);
      // our kernel dequantises where it runs, ATen's ops otherwise.
      const int64_t N = values.size(0);
      const auto x2 = x.reshape({-1, K}).to(at::kFloat).contiguous();
      auto y2 = cpu_gemv::grouped_blocks_mm(x2, values, scales);
      if (!y2.defined()) {
        const int64_t rows = std::min(N, std::max<int64_t>(16, (int64_t{1} << 19) / Kp));
        y2 = at::empty({x2.size(0), N}, x2.options());
        for (int64_t n0 = 0; n0 < N; n0 += rows) {
          const int64_t n = std::min(rows, N - n0);
          const auto w = dequantize_grouped(values.narrow(0, n0, n), scales.narrow(0, n0, n), K, at::kFloat);
          y2.narrow(1, n0, n).copy_(at::mm(x2, w.t()));
        }
      }
      auto shape = x.sizes().vec();
      shape.back() = N;
      y = y2.to(dtype).view(shape);
    }
  } else {
    y = at::linear(x, dequantize_grouped(values, scales, K, dtype));  // CUDA, autograd: one layer's transient
  }
  if (bias.defined()) y = y + bias.to(dtype);
  return y;
}

}  // namespace minigpt4
