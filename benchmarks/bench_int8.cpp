// low_resource on the CPU: what an int8 linear layer costs against the dense one, and what
// loading a LLaMA in fp32 / bf16 / int8 holds in memory. Nothing is asserted.
//
//   bench_int8 matmul [--in 2048] [--out 5632] [--rows 1,16,128,512] [--repeats N] [--copies C] [--threads N]
//   bench_int8 load --llm DIR --precision fp32|bf16 [--int8]
//   bench_int8 gemm [--in 2048] [--out 5632] [--rows 16,64,128,512] [--repeats N] [--threads N]
//
// `matmul` times minigpt4::Linear forwards (median and minimum) for dense fp32, int8 with
// fp32 activations, dense bf16 and int8 with bf16 activations. `load` builds the
// LlamaForCausalLM of a Hugging Face directory, loads it as load_minigpt4 does (int8:
// quantised tensor by tensor while loading) and prints the bytes held by dtype and the
// process' resident set now and at its peak. Run `load` once per process: the peak is the
// process'. `gemm` times a prompt's forward (more rows than a GEMV's) for every weight kind
// twice in turn, through MKL's float32 GEMM and through ours (cpu_gemv::prompt_mm, forced
// with cpu_gemv::set_choice), and prints the ratio.
#include "minigpt4/io/checkpoint.h"
#include "minigpt4/models/cpu_gemv.h"
#include "minigpt4/models/layers.h"
#include "minigpt4/models/llama.h"
#include "minigpt4/models/memory.h"
#include "minigpt4/models/weights.h"

#include <CLI/CLI.hpp>
#include <fmt/format.h>
#include <fmt/ranges.h>
#include <torch/torch.h>

#include <algorithm>
#include <chrono>
#include <filesystem>

using namespace minigpt4;

namespace {

// "median (min)" of `repeats` timed runs after one warm-up; the minimum is the number to
// trust on a busy machine.
std::string time_ms(const std::function<void()>& run, int repeats) {
  run();
  std::vector<double> times;
  for (int i = 0; i < repeats; ++i) {
    const auto start = std::chrono::steady_clock::now();
    run();
    times.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count());
  }
  std::sort(times.begin(), times.end());
  return fmt::format("{:.2f} ({:.2f})", times[times.size() / 2], times.front());
}

void bench_matmul(int64_t in, int64_t out, const std::vector<int64_t>& rows_list, int repeats, int copies) {
  torch::NoGradGuard no_grad;
  torch::manual_seed(0);
  const auto w = torch::randn({out, in}) * 0.02;
  fmt::print("Linear {} -> {}, {} threads, {} cop{} run in turn; ms per forward, median (min) of {}\n", in, out,
             at::get_num_threads(), copies, copies == 1 ? "y" : "ies", repeats);
  fmt::print("{:>6} {:>16} {:>16} {:>16} {:>16}\n", "rows", "fp32", "int8/fp32", "bf16", "int8/bf16");
  for (const int64_t rows : rows_list) {
    std::vector<std::string> ms;
    for (const auto dtype : {torch::kFloat32, torch::kBFloat16}) {
      for (const auto format : {WeightFormat::Dense, WeightFormat::Int8}) {
        // Copies run in turn so that, when they add up to more than the caches, every forward
        // reads its weights from memory, as a decode step does.
        std::vector<std::unique_ptr<Linear>> layers;
        for (int c = 0; c < copies; ++c) {
          layers.push_back(std::make_unique<Linear>(in, out, false, torch::TensorOptions().dtype(dtype), format));
          layers.back()->load_weight(w);
        }
        const auto x = torch::randn({rows, in}).to(dtype);
        size_t next = 0;
        ms.push_back(time_ms([&] { layers[next++ % layers.size()]->forward(x); }, repeats));
      }
    }
    fmt::print("{:>6} {:>16} {:>16} {:>16} {:>16}\n", rows, ms[0], ms[1], ms[2], ms[3]);
  }
}

void bench_gemm(int64_t in, int64_t out, const std::vector<int64_t>& rows_list, int repeats) {
  torch::NoGradGuard no_grad;
  torch::manual_seed(0);
  const auto w = torch::randn({out, in}) * 0.02;
  const auto automatic = cpu_gemv::chosen();
  auto mkl = automatic, ours = automatic;
  mkl.gemm = cpu_gemv::Kernels::aten;
  ours.gemm = cpu_gemv::Kernels::avx2;
  // bf16 weights reach a float32 GEMM only through float32 blocks (no AMX); int8 only without
  // LLM.int8() (no VNNI): force both so that each row measures the GEMM.
  mkl.bf16_prompt_float32 = ours.bf16_prompt_float32 = true;
  mkl.int8_prompt_llm_int8 = ours.int8_prompt_llm_int8 = false;
  fmt::print(
      "Linear {} -> {}, {} threads; ms per forward, median (min) of {}; MKL = float32 GEMM by MKL (the "
      "weight converted a block at a time), ours = cpu_gemv::prompt_mm; ratio = MKL / ours (minimums)\n",
      in, out, at::get_num_threads(), repeats);
  fmt::print("{:<12} {:>6} {:>16} {:>16} {:>7} {:>12}\n", "weights", "rows", "MKL", "ours", "ratio", "ours GFLOP/s");
  struct Kind {
    const char* name;
    torch::Dtype dtype;
    WeightFormat format;
  };
  for (const Kind& kind :
       {Kind{"fp32", torch::kFloat32, WeightFormat::Dense}, Kind{"bf16", torch::kBFloat16, WeightFormat::Dense},
        Kind{"int8", torch::kFloat32, WeightFormat::Int8}, Kind{"q8 g32", torch::kFloat32, {8, 32}},
        Kind{"q4 g32", torch::kFloat32, {4, 32}}}) {
    Linear layer(in, out, false, torch::TensorOptions().dtype(kind.dtype), kind.format);
    layer.load_weight(w);
    for (const int64_t rows : rows_list) {
      const auto x = torch::randn({rows, in}).to(kind.dtype);
      double best[2];
      std::string shown[2];
      for (int which = 0; which < 2; ++which) {
        cpu_gemv::set_choice(which == 0 ? mkl : ours);
        std::vector<double> times;
        layer.forward(x);
        for (int i = 0; i < repeats; ++i) {
          const auto start = std::chrono::steady_clock::now();
          layer.forward(x);
          times.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count());
        }
        std::sort(times.begin(), times.end());
        best[which] = times.front();
        shown[which] = fmt::format("{:.2f} ({:.2f})", times[times.size() / 2], times.front());
      }
      fmt::print("{:<12} {:>6} {:>16} {:>16} {:>7.2f} {:>12.1f}\n", kind.name, rows, shown[0], shown[1],
                 best[0] / best[1], 2.0 * double(rows) * double(in) * double(out) / (best[1] * 1e6));
    }
  }
  cpu_gemv::set_choice(automatic);
}

void bench_load(const std::string& dir, const std::string& precision, bool int8) {
  torch::NoGradGuard no_grad;
  const auto json_path = (std::filesystem::path(dir) / "config.json").string();
  const auto config = LlamaConfig::from_json(io::read_json_file(json_path), json_path);
  const auto rss_before = resident_set_bytes();
  LlamaForCausalLM model(config, torch::TensorOptions().dtype(parse_dtype(precision)),
                         int8 ? WeightFormat::Int8 : WeightFormat::Dense);
  std::set<std::string> filled;
  LoadSpec spec;
  spec.source = dir;
  const auto start = std::chrono::steady_clock::now();
  {
    const auto state = io::load_state_dict(dir);
    load_into(model, state, spec, filled);
  }
  if (int8) release_free_heap();  // as load_minigpt4 does
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  const auto bytes = tensor_bytes(model);
  std::vector<std::string> parts;
  for (const auto& [dtype, n] : bytes.by_dtype) parts.push_back(fmt::format("{} {}", dtype, format_bytes(n)));
  fmt::print(
      "{} {}{}: loaded in {:.1f} s; parameters + buffers {} ({}); resident set {} (before building {}, "
      "peak {})\n",
      dir, precision, int8 ? " + int8" : "", seconds, format_bytes(bytes.total), fmt::join(parts, ", "),
      format_bytes(resident_set_bytes()), format_bytes(rss_before), format_bytes(peak_resident_set_bytes()));
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"int8 (low_resource) linear layers and loading: time and memory"};
  int threads = 0, repeats = 20;
  int64_t in = 2048, out = 5632;
  std::vector<int64_t> rows = {1, 16, 128, 512};
  std::string llm, precision = "fp32";
  bool int8 = false;
  app.add_option("--threads", threads, "at::set_num_threads (0: LibTorch's default)");
  auto* matmul = app.add_subcommand("matmul", "time one linear layer, dense and int8");
  matmul->add_option("--in", in)->capture_default_str();
  matmul->add_option("--out", out)->capture_default_str();
  matmul->add_option("--rows", rows, "activation rows (tokens)")->delimiter(',');
  matmul->add_option("--repeats", repeats)->capture_default_str();
  int copies = 1;
  matmul
      ->add_option("--copies", copies,
                   "copies of the layer run in turn (enough to exceed the caches: weights "
                   "then come from memory, as in a decode step)")
      ->capture_default_str();
  auto* gemm = app.add_subcommand("gemm", "a prompt's product, MKL against ours, every weight kind");
  std::vector<int64_t> gemm_rows = {16, 64, 128, 512};
  gemm->add_option("--in", in)->capture_default_str();
  gemm->add_option("--out", out)->capture_default_str();
  gemm->add_option("--rows", gemm_rows, "activation rows (tokens)")->delimiter(',');
  gemm->add_option("--repeats", repeats)->capture_default_str();
  auto* load = app.add_subcommand("load", "load a Hugging Face LLaMA directory and report its memory");
  load->add_option("--llm", llm, "Hugging Face LLaMA directory")->required();
  load->add_option("--precision", precision, "fp32 or bf16")->capture_default_str();
  load->add_flag("--int8", int8, "int8 projections (low_resource)");
  app.require_subcommand(1);
  CLI11_PARSE(app, argc, argv);
  if (threads > 0) at::set_num_threads(threads);
  try {
    if (*matmul) bench_matmul(in, out, rows, repeats, std::max(1, copies));
    if (*load) bench_load(llm, precision, int8);
    if (*gemm) bench_gemm(in, out, gemm_rows, repeats);
  } catch (const std::exception& e) {
    fmt::print(stderr, "error: {}\n", e.what());
    return 1;
  }
  return 0;
}
