// The evaluation loop of `minigpt4 evaluate` (minigpt4/evaluate/predictor.h): items per second
// answered one at a time and in left-padded batches, on random models of the tiny and the
// mid-size shape (bench_shapes.h), CPU, float32.
//
//   bench_evaluate [--shape tiny|mid|all] [--tiny-items N] [--mid-items N] [--batch B]
//                  [--max-new-tokens T] [--rounds R] [--threads N] [--json PATH]
//
// Each item is what a VQA benchmark item costs: a 64 x 64 JPEG read from disk, decoded,
// resized and normalised, encoded by the ViT + Q-Former + projector, a question of its own
// in the Vicuna template with the short-answer instruction, greedy decoding of up to T new
// tokens (the '###' stop sequence and eos end a row earlier), decoding and clean-up. The
// whole loop is timed, batch by batch, after one untimed batch of each size. Batch 1 and
// batched alternate for R rounds and the best rate of each counts (a busy moment on a shared
// machine only lowers a rate; every round is printed). The tokenizer is the tiny fixture's
// (1000 pieces); the mid LLM keeps its 32000-wide output layer, whose rows past the
// tokenizer's pieces are zero: they score 0 and never beat the best of 1000 random logits, so
// every generated id decodes and the layer still costs what a full vocabulary does.
// Nothing is asserted.
#include "benchmarks/bench_shapes.h"
#include "minigpt4/chat/chat.h"
#include "minigpt4/evaluate/predictor.h"
#include "minigpt4/models/minigpt4.h"
#include "minigpt4/processors/image_processor.h"
#include "minigpt4/tokenizer/llama_tokenizer.h"

#include <CLI/CLI.hpp>
#include <fmt/format.h>
#include <nlohmann/json.hpp>
#include <opencv2/imgcodecs.hpp>
#include <opencv2/imgproc.hpp>
#include <torch/torch.h>

#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

namespace fs = std::filesystem;
using minigpt4::evaluate::EvalItem;

namespace {

using Clock = std::chrono::steady_clock;

std::shared_ptr<const minigpt4::ChatModel> random_chat_model(const bench::Shape& s, const std::string& tokenizer_path) {
  torch::manual_seed(0);
  minigpt4::MiniGPT4Config config;
  config.vision = s.vit;
  config.qformer = s.qformer;
  config.vit_precision = config.llm_precision = "fp32";
  auto chat = std::make_shared<minigpt4::ChatModel>();
  chat->model = std::make_shared<minigpt4::MiniGPT4>(config, s.llama, torch::kCPU);
  bench::randomise(*chat->model);
  chat->model->eval();
  chat->tokenizer =
      std::make_shared<minigpt4::LlamaTokenizer>(minigpt4::LlamaTokenizer::from_model_file(tokenizer_path));
  const int64_t pieces = chat->tokenizer->vocab_size();
  if (s.llama.vocab_size > pieces) {
    auto llm = std::dynamic_pointer_cast<minigpt4::LlamaForCausalLM>(chat->model->llama_model);
    torch::NoGradGuard no_grad;
    llm->lm_head->weight.narrow(0, pieces, s.llama.vocab_size - pieces).zero_();
  }
  chat->processor = std::make_shared<minigpt4::ImageEvalProcessor>(static_cast<int>(s.vit.image_size));
  chat->template_name = "vicuna0";
  chat->name = "bench_" + s.name;
  return chat;
}

// Distinct pictures and questions of different lengths (the batch is left-padded).
std::vector<EvalItem> make_items(const fs::path& dir, int n) {
  fs::create_directories(dir);
  const char* subjects[] = {"circle", "small square near the top edge", "shape", "object on the left of the picture"};
  std::vector<EvalItem> items;
  for (int i = 0; i < n; ++i) {
    cv::Mat picture(64, 64, CV_8UC3, cv::Scalar(37 * i % 255, 255 - 23 * i % 255, 71 * i % 255));
    cv::circle(picture, {10 + 7 * i % 44, 30}, 5 + i % 9, cv::Scalar(250, 250, 250), cv::FILLED);
    const auto path = dir / fmt::format("{:05d}.jpg", i);
    cv::imwrite(path.string(), picture);
    items.push_back({std::to_string(i), path.string(), fmt::format("What colour is the {}?", subjects[i % 4])});
  }
  return items;
}

struct LoopResult {
  double items_per_second = 0;
  std::vector<std::string> answers;
};

LoopResult time_loop(const minigpt4::evaluate::Predictor& predictor, const std::vector<EvalItem>& items, size_t batch,
                     bool warm_up) {
  if (warm_up)
    predictor.predict({items.begin(), items.begin() + static_cast<std::ptrdiff_t>(std::min(batch, items.size()))});
  LoopResult r;
  const auto start = Clock::now();
  for (size_t first = 0; first < items.size(); first += batch) {
    const auto last = std::min(items.size(), first + batch);
    const auto answers = predictor.predict(
        {items.begin() + static_cast<std::ptrdiff_t>(first), items.begin() + static_cast<std::ptrdiff_t>(last)});
    r.answers.insert(r.answers.end(), answers.begin(), answers.end());
  }
  r.items_per_second = static_cast<double>(items.size()) / std::chrono::duration<double>(Clock::now() - start).count();
  return r;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"Items per second of the evaluation loop, one at a time and batched (CPU, float32, random weights)"};
  std::string shape_arg = "all", json_path;
  std::string tokenizer_path = std::string(MINIGPT4_SOURCE_DIR) + "/tests/data/parity/tiny_vicuna0/tokenizer.model";
  int tiny_items = 64, mid_items = 8, batch = 8, threads = 0, rounds = 1;
  int64_t max_new_tokens = 10;
  app.add_option("--shape", shape_arg, "tiny, mid or all")->check(CLI::IsMember({"tiny", "mid", "all"}));
  app.add_option("--tiny-items", tiny_items, "items timed on the tiny shape")->capture_default_str();
  app.add_option("--mid-items", mid_items, "items timed on the mid shape")->capture_default_str();
  app.add_option("--batch", batch, "items per batch of the batched loop")->capture_default_str();
  app.add_option("--max-new-tokens", max_new_tokens, "longest answer (VQA's 10)")->capture_default_str();
  app.add_option("--rounds", rounds, "batch 1 / batched pairs timed; the best of each counts")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  app.add_option("--threads", threads, "at::set_num_threads (0: LibTorch's default)")->check(CLI::NonNegativeNumber);
  app.add_option("--tokenizer", tokenizer_path, "sentencepiece model (the tiny fixture's)");
  app.add_option("--json", json_path, "write the results as JSON to this file");
  CLI11_PARSE(app, argc, argv);
  if (threads > 0) at::set_num_threads(threads);
  torch::set_num_interop_threads(1);

  const fs::path scratch = fs::temp_directory_path() / ("bench_evaluate_" + std::to_string(getpid()));
  nlohmann::ordered_json json;
  json["threads"] = at::get_num_threads();
  json["torch"] = TORCH_VERSION;
  json["max_new_tokens"] = max_new_tokens;
  fmt::print("LibTorch {}, {} intra-op threads, float32 CPU, up to {} new tokens per answer\n", TORCH_VERSION,
             at::get_num_threads(), max_new_tokens);
  for (const auto& s : {bench::tiny_shape(), bench::mid_shape()}) {
    if (shape_arg != "all" && shape_arg != s.name) continue;
    const int n = s.name == "tiny" ? tiny_items : mid_items;
    const auto model = random_chat_model(s, tokenizer_path);
    const auto items = make_items(scratch / s.name, n);
    minigpt4::evaluate::EvalSettings settings;
    settings.task = minigpt4::metrics::Task::vqav2;
    settings.prompt = minigpt4::evaluate::default_prompt(settings.task);
    settings.max_new_tokens = max_new_tokens;
    const minigpt4::evaluate::Predictor predictor(model, settings);
    fmt::print("\n[{}] {} items, {} round(s)\n", s.name, n, rounds);
    double best_single = 0, best_batched = 0;
    bool same = true;
    nlohmann::json per_round = nlohmann::json::array();
    for (int round = 0; round < rounds; ++round) {
      const auto single = time_loop(predictor, items, 1, round == 0);
      const auto batched = time_loop(predictor, items, static_cast<size_t>(batch), round == 0);
      same = same && single.answers == batched.answers;
      best_single = std::max(best_single, single.items_per_second);
      best_batched = std::max(best_batched, batched.items_per_second);
      fmt::print("  round {}: batch 1 {:8.3f} items/s, batch {} {:8.3f} items/s\n", round + 1, single.items_per_second,
                 batch, batched.items_per_second);
      std::fflush(stdout);
      per_round.push_back({single.items_per_second, batched.items_per_second});
    }
    fmt::print("  best:    batch 1 {:8.3f} items/s, batch {} {:8.3f} items/s ({:.2f}x; answers {} batch 1's)\n",
               best_single, batch, best_batched, best_batched / best_single, same ? "equal to" : "DIFFER from");
    json[s.name] = {{"items", n},
                    {"batch", batch},
                    {"batch_1_items_per_second", best_single},
                    {"batched_items_per_second", best_batched},
                    {"ratio", best_batched / best_single},
                    {"same_answers", same},
                    {"rounds", per_round}};
  }
  std::error_code ignored;
  fs::remove_all(scratch, ignored);
  if (!json_path.empty()) std::ofstream(json_path) << json.dump(2) << "\n";
  return 0;
}
