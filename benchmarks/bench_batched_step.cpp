// One decode step of N sequences (the server's continuous batching, CausalLM::step_sequences)
// against the same N sequences stepped one at a time (a server without batching), and against
// ATen's path per sequence, at the LLaMA 1.1B layer shape (hidden 2048, MLP 5632, 32 heads,
// 4 kv heads) with a few layers. Per weight format and N it prints ms per step and per layer,
// tokens/s over all sequences, and the ratios, all measured in this process.
//
//   build/benchmarks/bench_batched_step [--layers 2] [--rows 1,2,4,8,16] [--past 128]
//                                       [--formats fp32,bf16,int8,q4] [--repeats 5] [--threads 0]
#include "minigpt4/models/cpu_decode.h"
#include "minigpt4/models/init.h"
#include "minigpt4/models/llama.h"
#include "minigpt4/models/weights.h"

#include <CLI/CLI.hpp>
#include <fmt/format.h>
#include <torch/torch.h>

#include <algorithm>
#include <chrono>
#include <functional>
#include <map>
#include <memory>
#include <set>
#include <sstream>
#include <string>
#include <vector>

using namespace minigpt4;

namespace {

using Clock = std::chrono::steady_clock;

struct Format {
  std::string name;
  torch::Dtype dtype;
  WeightFormat weights;
};

std::shared_ptr<LlamaForCausalLM> make_model(const LlamaConfig& config, const Format& f) {
  LlamaForCausalLM reference(config, torch::kFloat32);
  init_fresh_weights(reference, /*seed=*/1, /*std=*/0.02);
  StateDict state;
  for (const auto& item : reference.named_parameters()) state[item.key()] = item.value();
  auto model = std::make_shared<LlamaForCausalLM>(config, torch::TensorOptions().dtype(f.dtype), f.weights);
  std::set<std::string> filled;
  load_into(*model, state, LoadSpec{}, filled);
  model->eval();
  return model;
}

// Caches of `past` positions for `rows` sequences.
std::vector<KVCache> filled_caches(const LlamaForCausalLM& model, int64_t rows, int64_t past) {
  std::vector<KVCache> caches(static_cast<size_t>(rows));
  for (auto& cache : caches) {
    cache.reserve = past + 64;
    CausalLMOptions options;
    options.cache = &cache;
    model.forward(model.embed(torch::randint(0, model.config.vocab_size, {1, past})), options);
  }
  return caches;
}

// Median ms of `repeats` calls of `step` (each on caches cut back to `past` first).
double median_ms(const std::function<void()>& step, const std::function<void()>& reset, int repeats) {
  std::vector<double> ms;
  for (int i = 0; i < repeats + 1; ++i) {
    reset();
    const auto start = Clock::now();
    step();
    if (i > 0) ms.push_back(std::chrono::duration<double, std::milli>(Clock::now() - start).count());
  }
  std::sort(ms.begin(), ms.end());
  return ms[ms.size() / 2];
}

std::vector<std::string> split(const std::string& s) {
  std::vector<std::string> out;
  std::stringstream in(s);
  for (std::string item; std::getline(in, item, ',');)
    if (!item.empty()) out.push_back(item);
  return out;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"Decode steps of N sequences together vs one at a time (LLaMA 1.1B layer shape)"};
  int64_t layers = 2, past = 128;
  int repeats = 5, threads = 0;
  std::string rows_list = "1,2,4,8,16", formats_list = "fp32,bf16,int8,q4";
  app.add_option("--layers", layers, "decoder layers")->capture_default_str();
  app.add_option("--rows", rows_list, "sequences per step, comma list")->capture_default_str();
  app.add_option("--past", past, "positions already in each sequence's cache")->capture_default_str();
  app.add_option("--formats", formats_list, "fp32, bf16, int8 (per channel), q4 (4-bit groups of 32)")
      ->capture_default_str();
  app.add_option("--repeats", repeats, "timed steps per case (median)")->capture_default_str();
  app.add_option("--threads", threads, "torch threads (0: default)")->capture_default_str();
  CLI11_PARSE(app, argc, argv);
  if (threads > 0) torch::set_num_threads(threads);
  torch::NoGradGuard no_grad;

  LlamaConfig config;
  config.vocab_size = 32000;
  config.hidden_size = 2048;
  config.intermediate_size = 5632;
  config.num_hidden_layers = layers;
  config.num_attention_heads = 32;
  config.num_key_value_heads = 4;
  const std::map<std::string, Format> known = {{"fp32", {"fp32", torch::kFloat32, WeightFormat::Dense}},
                                               {"bf16", {"bf16", torch::kBFloat16, WeightFormat::Dense}},
                                               {"int8", {"int8", torch::kBFloat16, WeightFormat::Int8}},
                                               {"q4", {"q4 g32", torch::kBFloat16, WeightFormat{4, 32}}}};
  std::vector<int64_t> row_counts;
  for (const auto& r : split(rows_list)) row_counts.push_back(std::stoll(r));

  fmt::print("LLaMA 1.1B layer shape, {} layers + the LM head, {} cached positions per sequence, {} threads\n", layers,
             past, torch::get_num_threads());
  fmt::print("{:<8} {:>4} {:>12} {:>12} {:>12} {:>11} {:>10} {:>10}\n", "format", "N", "batched ms", "one-by-one",
             "ATen/seq", "tok/s", "vs 1-by-1", "vs ATen");
  for (const auto& name : split(formats_list)) {
    const auto found = known.find(name);
    if (found == known.end()) {
      fmt::print("unknown format {}\n", name);
      return 2;
    }
    const auto& f = found->second;
    const auto model = make_model(config, f);
    for (const int64_t rows : row_counts) {
      auto caches = filled_caches(*model, rows, past);
      std::vector<KVCache*> pointers;
      for (auto& c : caches) pointers.push_back(&c);
      const auto inputs = model->embed(torch::randint(0, config.vocab_size, {rows, 1}));
      const auto reset = [&] {
        for (auto& c : caches) c.truncate(past);
      };
      cpu_decode::set_enabled(true);
      const double batched = median_ms([&] { model->step_sequences(inputs, pointers); }, reset, repeats);
      const double one_by_one = median_ms(
          [&] {
            for (int64_t r = 0; r < rows; ++r) model->step_sequences(inputs.slice(0, r, r + 1), {pointers[r]});
          },
          reset, repeats);
      cpu_decode::set_enabled(false);
      const double aten = median_ms(
          [&] {
            for (int64_t r = 0; r < rows; ++r) {
              CausalLMOptions options;
              options.cache = pointers[static_cast<size_t>(r)];
              model->forward(inputs.slice(0, r, r + 1), options);
            }
          },
          reset, repeats);
      cpu_decode::set_enabled(true);
      fmt::print("{:<8} {:>4} {:>12.2f} {:>12.2f} {:>12.2f} {:>11.1f} {:>9.2f}x {:>9.2f}x\n", f.name, rows, batched,
                 one_by_one, aten, 1000.0 * static_cast<double>(rows) / batched, one_by_one / batched, aten / batched);
    }
  }
  fmt::print(
      "(batched: one step_sequences call for all N; one-by-one: N single-sequence fused steps; ATen/seq: "
      "N steps through LlamaForCausalLM::forward with the fused step off. Per layer: the times / {} "
      "(the LM head included))\n",
      layers);
  return 0;
}
