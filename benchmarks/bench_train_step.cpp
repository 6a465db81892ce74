// One MiniGPT-4 training step (CPU, float32, random weights), as the trainer runs it:
// MiniGPT4::forward on a batch of images and captions (frozen ViT, Q-Former and LLM; only
// llama_proj trains), loss.backward(), AdamW step with the runner's parameter groups.
//
//   bench_train_step [--shape tiny|mid|all] [--repeats N] [--warmup N] [--threads N] [--json PATH]
//                    [--tokenizer tokenizer.model]
//
// Prints the median step time, samples per second and the peak resident memory (VmHWM).
// Nothing is asserted: benchmarks/bench_train_step_hf.py runs this binary next to the same
// step in Python PyTorch and prints the ratio.
#include "benchmarks/bench_shapes.h"
#include "minigpt4/common/run_settings.h"
#include "minigpt4/common/config.h"
#include "minigpt4/models/minigpt4.h"
#include "minigpt4/tokenizer/llama_tokenizer.h"
#include "minigpt4/train/optimizer.h"

#include <CLI/CLI.hpp>
#include <fmt/format.h>
#include <nlohmann/json.hpp>
#include <torch/torch.h>

#include <algorithm>
#include <chrono>
#include <fstream>
#include <string>
#include <vector>

namespace {

using bench::Shape;

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n == 0 ? 0 : n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

// Peak resident set size of this process in MiB (Linux /proc/self/status VmHWM).
double peak_rss_mib() {
  std::ifstream status("/proc/self/status");
  for (std::string line; std::getline(status, line);)
    if (line.rfind("VmHWM:", 0) == 0) return std::stod(line.substr(6)) / 1024.0;
  return 0;
}

// A caption long enough to fill max_txt_len tokens, so every row has text_tokens tokens.
std::string long_caption() {
  std::string text;
  for (int i = 0; i < 8; ++i) text += "a small red circle at the top left of a large blue square ";
  return text;
}

nlohmann::json bench_shape(const Shape& s, const minigpt4::Tokenizer& tokenizer, int warmup, int repeats) {
  torch::manual_seed(0);
  minigpt4::MiniGPT4Config config;
  config.vision = s.vit;
  config.qformer = s.qformer;
  config.vit_precision = config.llm_precision = "fp32";
  config.max_txt_len = s.text_tokens;
  config.end_sym = "\n";
  auto model = std::make_shared<minigpt4::MiniGPT4>(config, s.llama, torch::kCPU);
  bench::randomise(*model);
  model->apply_freezing();  // only llama_proj trains

  const auto run = minigpt4::Config::from_yaml("run:\n  init_lr: 1e-4\n  weight_decay: 0.05\n", "bench_train_step");
  auto optimizer = minigpt4::train::make_optimizer(*model, minigpt4::RunSettings::from_config(run));

  const auto images = torch::randn({s.batch, 3, s.vit.image_size, s.vit.image_size});
  const std::vector<std::string> captions(static_cast<size_t>(s.batch), long_caption());
  int64_t tokens = 0;
  auto step = [&] {
    optimizer->zero_grad();
    const auto out = model->forward(images, captions, "", tokenizer);
    out.loss.backward();
    optimizer->step();
    tokens = out.inputs_embeds.size(1);
    return out.loss.item<double>();
  };

  for (int i = 0; i < warmup; ++i) step();
  std::vector<double> runs_ms;
  for (int i = 0; i < repeats; ++i) {
    const auto start = std::chrono::steady_clock::now();
    step();
    runs_ms.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count());
  }
  const double med = median(runs_ms);
  nlohmann::json result = {{"median_ms", med},
                           {"min_ms", *std::min_element(runs_ms.begin(), runs_ms.end())},
                           {"runs", runs_ms},
                           {"samples_per_sec", static_cast<double>(s.batch) / (med / 1e3)},
                           {"peak_rss_mib", peak_rss_mib()},
                           {"llm_tokens", tokens},
                           {"batch", s.batch},
                           {"trainable", optimizer->groups().numel()}};
  fmt::print("  train_step  median {:10.3f} ms  {:8.2f} samples/s  peak RSS {:.0f} MiB  ({} LLM tokens, {} runs)\n",
             med, result["samples_per_sec"].get<double>(), result["peak_rss_mib"].get<double>(), tokens, repeats);
  std::fflush(stdout);
  return result;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"One MiniGPT-4 training step (CPU, float32, random weights, trainable projector)"};
  std::string shape_arg = "all", json_path;
  std::string tokenizer_path = std::string(MINIGPT4_SOURCE_DIR) + "/tests/data/parity/tiny_vicuna0/tokenizer.model";
  int repeats = 0, warmup = -1, threads = 0;
  app.add_option("--shape", shape_arg, "tiny, mid or all")->check(CLI::IsMember({"tiny", "mid", "all"}));
  app.add_option("--repeats", repeats, "timed steps (0: the shape's default)")->check(CLI::NonNegativeNumber);
  app.add_option("--warmup", warmup, "untimed steps first (-1: the shape's default)");
  app.add_option("--threads", threads, "at::set_num_threads (0: LibTorch's default)")->check(CLI::NonNegativeNumber);
  app.add_option("--tokenizer", tokenizer_path,
                 "sentencepiece model for the captions (ids must fit both vocabularies)");
  app.add_option("--json", json_path, "write the results as JSON to this file");
  CLI11_PARSE(app, argc, argv);
  if (threads > 0) at::set_num_threads(threads);
  torch::set_num_interop_threads(1);

  const auto tokenizer = minigpt4::LlamaTokenizer::from_model_file(tokenizer_path);
  fmt::print("LibTorch {}, {} intra-op threads, float32 CPU\n", TORCH_VERSION, at::get_num_threads());
  nlohmann::ordered_json json;
  json["threads"] = at::get_num_threads();
  json["torch"] = TORCH_VERSION;
  for (const auto& s : {bench::tiny_shape(), bench::mid_shape()}) {
    if (shape_arg != "all" && shape_arg != s.name) continue;
    const int w = warmup >= 0 ? warmup : s.default_warmup;
    const int r = repeats > 0 ? repeats : s.default_repeats;
    fmt::print("\n[{}] warm-up {}, timed steps {}\n", s.name, w, r);
    json[s.name] = bench_shape(s, tokenizer, w, r);
  }
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
