// `minigpt4 info --kernels [--measure]`: which decode kernels run on this CPU and why
// (cpu_gemv.h), and with --measure every runnable family timed on this machine: the
// TinyLlama-1.1B projections' three shapes per weight dtype, at 1 and 4 activation rows,
// weights streamed from memory (enough copies, run in turn, that they do not stay in cache),
// next to a plain read of the same bytes (at::sum).
#include "apps/commands.h"
#include "minigpt4/models/cpu_gemv.h"
#include "minigpt4/models/layers.h"

#include <ATen/Parallel.h>
#include <fmt/format.h>
#include <torch/torch.h>

#include <algorithm>
#include <chrono>
#include <memory>
#include <vector>

namespace minigpt4::apps {

namespace {

using cpu_gemv::Kernels;

// Median milliseconds of one call of f(copy) over `passes` passes through every copy.
template <typename F>
double median_ms(int64_t copies, int passes, F&& f) {
  for (int64_t c = 0; c < copies; ++c) f(c);  // warm-up: page faults, thread pool
  std::vector<double> ms;
  for (int p = 0; p < passes; ++p)
    for (int64_t c = 0; c < copies; ++c) {
      const auto t0 = std::chrono::steady_clock::now();
      f(c);
      ms.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
    }
  std::nth_element(ms.begin(), ms.begin() + static_cast<std::ptrdiff_t>(ms.size() / 2), ms.end());
  return ms[ms.size() / 2];
}

void measure_kernels(int64_t N, int64_t K) {
  constexpr int64_t kStreamBytes = int64_t{384} << 20;  // well above any L3 on a 2-32 core guest
  const auto saved = cpu_gemv::chosen();
  fmt::print(
      "\nmeasured: linear {} -> {}, {} threads, weights streamed from memory; ms per product, median "
      "(GB/s of weight read)\n",
      K, N, at::get_num_threads());
  fmt::print("{:<6} {:>4} {:>16} {:>16} {:>16} {:>16}\n", "dtype", "rows", "read (at::sum)", "aten", "avx2", "avx512");
  struct Row {
    const char* name;
    at::ScalarType weight, activation;  // weight: kByte stands for the group-wise formats (cpu_gemv.h)
    WeightFormat format;
  };
  for (const Row& r : {Row{"f32", at::kFloat, at::kFloat, WeightFormat::Dense},
                       Row{"bf16", at::kBFloat16, at::kBFloat16, WeightFormat::Dense},
                       Row{"int8", at::kChar, at::kBFloat16, WeightFormat::Int8},
                       Row{"q8", at::kByte, at::kBFloat16, WeightFormat{8, 32}},
                       Row{"q4", at::kByte, at::kBFloat16, WeightFormat{4, 32}}}) {
    std::vector<std::unique_ptr<Linear>> layers;
    std::vector<torch::Tensor> plain;  // the same bytes as float32, for the read reference
    int64_t bytes = 0, copies = 0;
    {
      torch::NoGradGuard no_grad;
      const auto dense = r.format.quantized() ? at::kBFloat16 : r.weight;
      const auto make = [&] {
        layers.push_back(std::make_unique<Linear>(K, N, false, torch::TensorOptions().dtype(dense), r.format));
        layers.back()->load_weight(torch::randn({N, K}) * 0.02);
      };
      make();
      const auto& first = *layers.front();
      bytes = static_cast<int64_t>(first.weight.nbytes() + (first.is_quantized() ? first.weight_scale.nbytes() : 0));
      copies = std::max<int64_t>(2, (kStreamBytes + bytes - 1) / bytes);
      layers.reserve(static_cast<size_t>(copies));
      while (static_cast<int64_t>(layers.size()) < copies) make();
      for (int64_t c = 0; c < copies; ++c) plain.push_back(torch::empty({bytes / 4}, torch::kFloat).normal_());
    }
    const auto runnable = cpu_gemv::runnable(r.weight);
    for (const int64_t rows : {int64_t{1}, int64_t{4}}) {
      torch::NoGradGuard no_grad;
      const auto x = torch::randn({rows, K}).to(r.activation);
      const auto cell = [&](double ms) {
        return fmt::format("{:.3f} ({:.1f})", ms, static_cast<double>(bytes) / ms / 1e6);
      };
      const double read =
          median_ms(copies, 8, [&](int64_t c) { (void)plain[static_cast<size_t>(c)].sum().item<float>(); });
      std::string cells[3] = {"-", "-", "-"};
      for (const Kernels k : runnable) {
        auto choice = saved;
        const auto slot = [&r](cpu_gemv::Choice& c) -> Kernels& {
          return r.weight == at::kFloat      ? c.f32
                 : r.weight == at::kBFloat16 ? c.bf16
                 : r.weight == at::kChar     ? c.int8
                                             : c.grouped;
        };
        slot(choice) = k;
        cpu_gemv::set_choice(choice);
        const double ms = median_ms(copies, 8, [&](int64_t c) { (void)layers[static_cast<size_t>(c)]->forward(x); });
        auto saved_copy = saved;
        const Kernels chosen = slot(saved_copy);
        cells[static_cast<int>(k)] = cell(ms) + (k == chosen ? "*" : " ");
      }
      fmt::print("{:<6} {:>4} {:>16} {:>16} {:>16} {:>16}\n", r.name, rows, cell(read) + " ", cells[0], cells[1],
                 cells[2]);
    }
  }
  cpu_gemv::set_choice(saved);
  fmt::print(
      "* the automatic choice (or MINIGPT4_CPU_KERNELS); int8 and q8/q4 rows take bf16 activations; q8/q4: groups of "
      "32 with float16 scales, the bytes read include the scales\n");
}

}  // namespace

void print_kernels(bool measure) {
  fmt::print("{}", cpu_gemv::describe());
  if (!measure) return;
  // TinyLlama-1.1B's three projection shapes: gate/up, down (a wide input), q/o.
  measure_kernels(5632, 2048);
  measure_kernels(2048, 5632);
  measure_kernels(2048, 2048);
}

}  // namespace minigpt4::apps
