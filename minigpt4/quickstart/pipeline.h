#pragma once
// `minigpt4 quickstart`: the whole MiniGPT-4 recipe, end to end, on a world small enough
// for a CPU. Each step writes what the real recipe's users hold at that point:
//   world/          `minigpt4 synth`: stage-1 webdataset shards, cc_sbu_align, held-out set,
//                   and warmup.txt (the language the LLM warms up on)
//   model/init/     a fresh tiny model in the real four-file layout (EVA ViT, BLIP-2 part,
//                   HF LLaMA directory with a tokenizer trained on the world's text)
//   warmup/         language warm-up of the LLM (train_configs/quickstart_warmup.yaml)
//   model/warm/     the warmed-up LLM ("our Vicuna")
//   stage1/         stage-1 pretraining (train_configs/quickstart_stage1.yaml)
//   model/stage1/   the vision tower stage 1 trained ("our EVA-CLIP/BLIP-2")
//   stage2/         stage-2 finetuning from the stage-1 checkpoint (quickstart_stage2.yaml)
//   heldout_answers.jsonl, quickstart_summary.json, minigpt4_quickstart_eval.yaml
//   evaluate/{caption,vqa}/   `minigpt4 evaluate` on the world's captioning and VQA sets, with
//                   quickstart_{caption,vqa}_eval.yaml and quickstart_eval_metrics.json
#include <nlohmann/json.hpp>

#include <cstdint>
#include <string>
#include <vector>

namespace minigpt4::quickstart {

struct QuickstartOptions {
  std::string out_dir = "runs/quickstart";
  std::string config_dir = "train_configs";  // quickstart_{warmup,stage1,stage2}.yaml
  // Stage-2 prompts (and the warm-up's chat questions); stage 1's image_only.txt is beside it.
  std::string prompt_path = "prompts/alignment.txt";
  uint64_t seed = 0;
  int stage1_samples = 8000;
  int align_samples = 600;
  int heldout_samples = 300;
  int vocab_size = 512;
  int warmup_context_lines = 12000;  // warm-up lines that describe a scene in context (see pipeline.cpp)
  // The tiny LLM (LLaMA architecture).
  int64_t llm_hidden = 128, llm_layers = 4, llm_heads = 4, llm_intermediate = 344;
  // Multiplies every stage's iters_per_epoch (tests run the pipeline at a small fraction).
  double iterations_scale = 1.0;
  int64_t eval_limit = -1;           // held-out items evaluated; -1: all
  std::vector<std::string> options;  // extra key=value overrides for every stage
};

// Runs every step and returns the summary it also writes to quickstart_summary.json.
nlohmann::json run_quickstart(const QuickstartOptions& options);

}  // namespace minigpt4::quickstart
