#pragma once
// The steps `minigpt4 quickstart` is made of, shared with the experiments built on its
// output (the VPGTrans transfer experiment builds a second tiny LLM the same way): a
// tokenizer and a fresh model in the real file layout, the language warm-up, one training
// stage run from a config with overrides, and model "releases".
#include "minigpt4/train/trainer.h"

#include <nlohmann/json.hpp>

#include <chrono>
#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

namespace minigpt4 {
struct MiniGPT4;
}

namespace minigpt4::quickstart {

// The chat template of the quickstart model: CONV_VISION, the original demo's, whose open
// turn ends in "Assistant:" (the Sep-2023 one ends in "Assistant: ", and a prompt ending in
// a space token that training text never shows there derails a small LLM's first word).
constexpr const char* kChatTemplate = "v0";

using Clock = std::chrono::steady_clock;
double seconds_since(Clock::time_point t);

// Written atomically.
void write_file(const std::filesystem::path& path, const std::string& text);
std::vector<std::string> with(std::vector<std::string> base, const std::vector<std::string>& more);

// What every stage of one run shares: iters_per_epoch multiplied by iterations_scale (tests
// run at a small fraction; at least 2 iterations, warm-up steps clipped to them), and extra
// key=value overrides applied last.
struct StageSettings {
  double iterations_scale = 1.0;
  std::vector<std::string> options;
};

// The overrides run_stage adds for the scaling (none at scale 1).
std::vector<std::string> scaled_iteration_overrides(const std::filesystem::path& config_path,
                                                    const std::vector<std::string>& overrides,
                                                    const StageSettings& settings);

struct StageOutcome {
  train::TrainResult result;
  double seconds = 0;
};
// An ordinary `minigpt4 train` run of `config_path` with the overrides (on the CPU).
StageOutcome run_stage(const std::string& name, const std::filesystem::path& config_path,
                       std::vector<std::string> overrides, const StageSettings& settings);

// model.vit_model, model.q_former_model and model.llama_model of a release directory.
std::vector<std::string> release_paths(const std::filesystem::path& release);

// Copies tokenizer.model and its two JSON files between LLM directories.
void copy_tokenizer(const std::filesystem::path& from, const std::filesystem::path& to);
// A model "release": the loaded model's parts in the real layout, with the tokenizer.
void release_model(const MiniGPT4& model, const std::filesystem::path& tokenizer_dir, const std::filesystem::path& dir);

// The tiny LLM (LLaMA architecture) and its tokenizer's vocabulary.
struct TinyLlm {
  int vocab_size = 512;
  int64_t hidden = 128, layers = 4, heads = 4, intermediate = 344;
};

// Trains a sentencepiece tokenizer of llm.vocab_size on `corpus` and writes a fresh model
// (vision tower at PyTorch's scale, LLM at 0.02; the model section of `model_config_path`)
// under init_dir in the real layout, the tokenizer in init_dir/llm. Every tensor depends
// only on the seed and its name: two runs with one seed share the vision tower's start.
// Returns {parameters, llm_vocab_size, llm_hidden, llm_layers}.
nlohmann::json write_fresh_model(const std::filesystem::path& model_config_path, const std::filesystem::path& corpus,
                                 const TinyLlm& llm, uint64_t seed, const std::vector<std::string>& options,
                                 const std::filesystem::path& init_dir);

// The language warm-up (quickstart_warmup.yaml) of the LLM in init_dir on `corpus`, run in
// run_dir; the warmed-up model is released to warm_dir (tokenizer from init_dir/llm).
StageOutcome warm_up_llm(const std::filesystem::path& warmup_config, const std::filesystem::path& init_dir,
                         const std::filesystem::path& corpus, const std::filesystem::path& run_dir,
                         const std::filesystem::path& warm_dir, const StageSettings& settings);

}  // namespace minigpt4::quickstart
