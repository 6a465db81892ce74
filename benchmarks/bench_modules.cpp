// Forward-pass timings of MiniGPT-4's modules (CPU, float32, no grad, random weights).
//
//   bench_modules [--shape tiny|mid|all] [--repeats N] [--warmup N] [--threads N] [--json PATH]
//
// For each shape it builds one module at a time, fills its parameters with random values,
// runs `warmup` untimed forwards and then `repeats` timed ones, and reports the median:
//   vit          EVA ViT + ln_vision on [B,3,S,S] images
//   qformer      Q-Former on [B,NQ,QH] query tokens and [B,1+P,W] image tokens
//   projector    llama_proj on [B,NQ,QH]
//   llm_prefill  LlamaForCausalLM on [B,T,H] input embeddings -> [B,T,V] logits
// It also measures float32 torch::mm throughput for scale. Nothing is asserted:
// benchmarks/bench_modules_hf.py runs this binary next to the Hugging Face modules.
#include "benchmarks/bench_shapes.h"

#include <CLI/CLI.hpp>
#include <fmt/format.h>
#include <nlohmann/json.hpp>
#include <torch/torch.h>

#include <algorithm>
#include <chrono>
#include <fstream>
#include <functional>
#include <string>
#include <vector>

namespace {

using bench::mid_shape;
using bench::randomise;
using bench::Shape;
using bench::tiny_shape;
using minigpt4::EvaVit;
using minigpt4::LlamaForCausalLM;
using minigpt4::QFormer;

int64_t count_parameters(const torch::nn::Module& module) {
  int64_t n = 0;
  for (const auto& p : module.parameters()) n += p.numel();
  return n;
}

struct Timing {
  std::vector<double> runs_ms;
  double median_ms = 0;
  int64_t params = 0;
};

double median(std::vector<double> v) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

double elapsed_ms(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();
}

Timing time_forward(const std::function<torch::Tensor()>& forward, int warmup, int repeats) {
  Timing t;
  for (int i = 0; i < warmup; ++i) forward();
  for (int i = 0; i < repeats; ++i) {
    const auto start = std::chrono::steady_clock::now();
    const auto out = forward();
    // Reading one element keeps the result alive and used; CPU ops are synchronous anyway.
    (void)out.flatten()[0].item<float>();
    t.runs_ms.push_back(elapsed_ms(start));
  }
  t.median_ms = median(t.runs_ms);
  return t;
}

// Best float32 GEMM throughput of n x n @ n x n over `tries` runs, in GFLOP/s.
double matmul_gflops(int64_t n, int tries) {
  torch::NoGradGuard no_grad;
  const auto a = torch::randn({n, n}), b = torch::randn({n, n});
  auto c = torch::mm(a, b);  // warm-up
  double best_ms = 1e300;
  for (int i = 0; i < tries; ++i) {
    const auto start = std::chrono::steady_clock::now();
    torch::mm_out(c, a, b);
    best_ms = std::min(best_ms, elapsed_ms(start));
  }
  return 2.0 * static_cast<double>(n) * n * n / (best_ms * 1e-3) / 1e9;
}

using Results = std::vector<std::pair<std::string, Timing>>;

Results bench_shape(const Shape& s, int warmup, int repeats) {
  torch::NoGradGuard no_grad;
  torch::manual_seed(0);
  const auto options = torch::TensorOptions().dtype(torch::kFloat32).device(torch::kCPU);
  const int64_t B = s.batch;
  const int64_t vision_tokens = s.vit.num_patches() + 1;
  Results results;
  auto report = [&](const std::string& module, Timing t) {
    fmt::print("  {:<12} median {:10.3f} ms  ({} runs)\n", module, t.median_ms, t.runs_ms.size());
    std::fflush(stdout);
    results.emplace_back(module, std::move(t));
  };

  {  // EVA ViT + ln_vision (Hugging Face's Blip2VisionModel ends in the equivalent post_layernorm)
    auto vit = std::make_shared<EvaVit>(s.vit, options);
    auto ln_vision = std::make_shared<minigpt4::LayerNorm>(s.vit.width, s.ln_vision_eps, options);
    vit->eval();
    randomise(*vit);
    ln_vision->reset_parameters();
    const auto images = torch::randn({B, 3, s.vit.image_size, s.vit.image_size}, options);
    auto t = time_forward([&] { return ln_vision->forward(vit->forward(images)); }, warmup, repeats);
    t.params = count_parameters(*vit) + count_parameters(*ln_vision);
    report("vit", std::move(t));
  }
  {
    auto qformer = std::make_shared<QFormer>(s.qformer, options);
    qformer->eval();
    randomise(*qformer);
    const auto queries = torch::randn({B, s.qformer.num_query_tokens, s.qformer.hidden_size}, options);
    const auto image_embeds = torch::randn({B, vision_tokens, s.qformer.encoder_width}, options);
    auto t = time_forward([&] { return qformer->forward(queries, image_embeds); }, warmup, repeats);
    t.params = count_parameters(*qformer);
    report("qformer", std::move(t));
  }
  {
    auto projector = std::make_shared<minigpt4::Linear>(s.qformer.hidden_size, s.projector_out, true, options);
    projector->eval();
    randomise(*projector);
    const auto queries = torch::randn({B, s.qformer.num_query_tokens, s.qformer.hidden_size}, options);
    auto t = time_forward([&] { return projector->forward(queries); }, warmup, repeats);
    t.params = count_parameters(*projector);
    report("projector", std::move(t));
  }
  {
    auto llm = std::make_shared<LlamaForCausalLM>(s.llama, options);
    llm->eval();
    randomise(*llm);
    const auto embeds = torch::randn({B, s.llm_tokens(), s.llama.hidden_size}, options);
    auto t = time_forward([&] { return llm->forward(embeds).logits; }, warmup, repeats);
    t.params = count_parameters(*llm);
    report("llm_prefill", std::move(t));
  }
  return results;
}

void print_table(const Shape& s, const Results& results) {
  fmt::print(
      "\n{} shape: batch {}, ViT {}x{} blocks image {}, Q-Former {}x{} layers {} queries, LLaMA {}x{} layers, "
      "{} LLM tokens\n",
      s.name, s.batch, s.vit.width, s.vit.depth, s.vit.image_size, s.qformer.hidden_size, s.qformer.num_layers,
      s.qformer.num_query_tokens, s.llama.hidden_size, s.llama.num_hidden_layers, s.llm_tokens());
  fmt::print("{:<12} {:>10} {:>12} {:>12} {:>12} {:>6}\n", "module", "params(M)", "median ms", "min ms", "max ms",
             "runs");
  for (const auto& [module, t] : results) {
    const auto [lo, hi] = std::minmax_element(t.runs_ms.begin(), t.runs_ms.end());
    fmt::print("{:<12} {:>10.2f} {:>12.3f} {:>12.3f} {:>12.3f} {:>6}\n", module, t.params / 1e6, t.median_ms,
               t.runs_ms.empty() ? 0.0 : *lo, t.runs_ms.empty() ? 0.0 : *hi, t.runs_ms.size());
  }
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"Forward-pass timings of MiniGPT-4's modules (CPU, float32, random weights)"};
  std::string shape_arg = "all", json_path;
  int repeats = 0, warmup = -1, threads = 0;
  app.add_option("--shape", shape_arg, "tiny, mid or all")->check(CLI::IsMember({"tiny", "mid", "all"}));
  app.add_option("--repeats", repeats, "timed runs per module (0: the shape's default, tiny 30, mid 3)")
      ->check(CLI::NonNegativeNumber);
  app.add_option("--warmup", warmup, "untimed runs before timing (-1: the shape's default, tiny 5, mid 1)");
  app.add_option("--threads", threads, "at::set_num_threads (0: LibTorch's default)")->check(CLI::NonNegativeNumber);
  app.add_option("--json", json_path, "write the results as JSON to this file");
  CLI11_PARSE(app, argc, argv);

  if (threads > 0) at::set_num_threads(threads);
  torch::set_num_interop_threads(1);

  std::vector<Shape> shapes;
  if (shape_arg == "tiny" || shape_arg == "all") shapes.push_back(tiny_shape());
  if (shape_arg == "mid" || shape_arg == "all") shapes.push_back(mid_shape());

  fmt::print("LibTorch {}, {} intra-op threads, float32 CPU\n", TORCH_VERSION, at::get_num_threads());
  const double gflops_1024 = matmul_gflops(1024, 10);
  const double gflops_2048 = matmul_gflops(2048, 5);
  fmt::print("torch::mm float32: {:.1f} GFLOP/s (1024^3), {:.1f} GFLOP/s (2048^3)\n", gflops_1024, gflops_2048);

  nlohmann::ordered_json json;
  json["threads"] = at::get_num_threads();
  json["torch"] = TORCH_VERSION;
  json["matmul_gflops"] = {{"1024", gflops_1024}, {"2048", gflops_2048}};
  std::vector<std::pair<Shape, Results>> all;
  for (const auto& s : shapes) {
    const int w = warmup >= 0 ? warmup : s.default_warmup;
    const int r = repeats > 0 ? repeats : s.default_repeats;
    fmt::print("\n[{}] warm-up {}, timed runs {}\n", s.name, w, r);
    std::fflush(stdout);
    auto results = bench_shape(s, w, r);
    auto& entry = json[s.name];
    for (const auto& [module, t] : results)
      entry[module] = {{"median_ms", t.median_ms},
                       {"min_ms", t.runs_ms.empty() ? 0.0 : *std::min_element(t.runs_ms.begin(), t.runs_ms.end())},
                       {"runs", t.runs_ms},
                       {"params", t.params}};
    entry["_meta"] = {{"batch", s.batch}, {"llm_tokens", s.llm_tokens()}, {"warmup", w}, {"repeats", r}};
    all.emplace_back(s, std::move(results));
  }
  for (const auto& [s, results] : all) print_table(s, results);

  if (!json_path.empty()) {
    std::ofstream out(json_path);
    if (!out) {
      fmt::print(stderr, "cannot write {}\n", json_path);
      return 1;
    }
    out << json.dump(2) << "\n";
  }
  return 0;
}
