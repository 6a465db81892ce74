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
#include "minigpt4/models/eva_vit.h"
#include "minigpt4/models/layers.h"
#include "minigpt4/models/llama.h"
#include "minigpt4/models/qformer.h"

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

using minigpt4::EvaVit;
using minigpt4::EvaVitConfig;
using minigpt4::LlamaConfig;
using minigpt4::LlamaForCausalLM;
using minigpt4::QFormer;
using minigpt4::QFormerConfig;

struct Shape {
  std::string name;
  EvaVitConfig vit;
  double ln_vision_eps = 1e-5;
  QFormerConfig qformer;
  int64_t projector_out = 0;  // the LLM hidden size
  LlamaConfig llama;
  int64_t batch = 1;
  int64_t text_tokens = 64;  // prompt tokens after the image queries
  int default_repeats = 5, default_warmup = 1;

  int64_t llm_tokens() const { return qformer.num_query_tokens + text_tokens; }
};

// The tiny_vicuna0 fixture (configs/tiny_vicuna0.yaml, tests/data/parity/tiny_vicuna0).
Shape tiny_shape() {
  Shape s;
  s.name = "tiny";
  s.vit.image_size = 56;
  s.vit.patch_size = 14;
  s.vit.width = 64;
  s.vit.depth = 3;
  s.vit.num_heads = 4;
  s.vit.mlp_ratio = 4.3637;  // 279 hidden
  s.qformer.hidden_size = 48;
  s.qformer.num_layers = 2;
  s.qformer.num_heads = 4;
  s.qformer.intermediate_size = 96;
  s.qformer.encoder_width = 64;
  s.qformer.cross_attention_freq = 2;
  s.qformer.num_query_tokens = 8;
  s.projector_out = 64;
  s.llama.vocab_size = 1000;
  s.llama.hidden_size = 64;
  s.llama.intermediate_size = 176;
  s.llama.num_hidden_layers = 2;
  s.llama.num_attention_heads = 4;
  s.llama.num_key_value_heads = 4;
  s.batch = 2;
  s.text_tokens = 64;
  s.default_repeats = 30;
  s.default_warmup = 5;
  return s;
}

// ViT-B/14-sized vision encoder, BERT-base Q-Former, TinyLlama-1.1B-shaped LLM.
Shape mid_shape() {
  Shape s;
  s.name = "mid";
  s.vit.image_size = 224;
  s.vit.patch_size = 14;
  s.vit.width = 768;
  s.vit.depth = 12;
  s.vit.num_heads = 12;
  s.vit.mlp_ratio = 4.0;  // 3072 hidden
  s.qformer.hidden_size = 768;
  s.qformer.num_layers = 12;
  s.qformer.num_heads = 12;
  s.qformer.intermediate_size = 3072;
  s.qformer.encoder_width = 768;
  s.qformer.cross_attention_freq = 2;
  s.qformer.num_query_tokens = 32;
  s.projector_out = 2048;
  s.llama.vocab_size = 32000;
  s.llama.hidden_size = 2048;
  s.llama.intermediate_size = 5632;
  s.llama.num_hidden_layers = 22;
  s.llama.num_attention_heads = 32;
  s.llama.num_key_value_heads = 4;
  s.llama.rms_norm_eps = 1e-5;
  s.batch = 1;
  s.text_tokens = 64;
  s.default_repeats = 3;
  s.default_warmup = 1;
  return s;
}

// Parameters are allocated uninitialised: N(0, 0.02) everywhere, norms at weight 1, bias 0.
void randomise(torch::nn::Module& module) {
  torch::NoGradGuard no_grad;
  for (auto& p : module.parameters()) p.normal_(0.0, 0.02);
  for (const auto& sub : module.modules(/*include_self=*/false)) {
    if (auto ln = std::dynamic_pointer_cast<minigpt4::LayerNorm>(sub)) {
      ln->reset_parameters();
    } else if (auto rms = std::dynamic_pointer_cast<minigpt4::RMSNorm>(sub)) {
      rms->weight.fill_(1.0);
    }
  }
}

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
  fmt::print("\n{} shape: batch {}, ViT {}x{} blocks image {}, Q-Former {}x{} layers {} queries, LLaMA {}x{} layers, "
             "{} LLM tokens\n",
             s.name, s.batch, s.vit.width, s.vit.depth, s.vit.image_size, s.qformer.hidden_size, s.qformer.num_layers,
             s.qformer.num_query_tokens, s.llama.hidden_size, s.llama.num_hidden_layers, s.llm_tokens());
  fmt::print("{:<12} {:>10} {:>12} {:>12} {:>12} {:>6}\n", "module", "params(M)", "median ms", "min ms", "max ms", "runs");
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
