#pragma once
// `minigpt4 vpgtrans-demo --from runs/quickstart`: VPGTrans on the embedded default. Does
// moving the quickstart's trained visual part to another LLM save training steps against
// training it again from scratch for that LLM?
//
// From a finished quickstart (its world, its warm LLM, its stage-1 vision tower and
// projector), under <from>/vpgtrans/:
//   model/init, warmup/, model/warm   a second tiny LLM of another width and vocabulary (its
//                   own sentencepiece tokenizer on the same world text), warmed up on language
//                   exactly as the quickstart's (quickstart_warmup.yaml)
//   scratch/        the quickstart's stage 1 for the second LLM, unchanged (fresh vision
//                   tower and projector, quickstart_stage1.yaml, same steps), checkpointed every
//                   scratch_eval_every steps
//   transfer/       vpgtrans_init_proj.pth: the word converter (token pairs from the world's
//                   captions) merged with the quickstart's stage-1 projector
//   transfer_warmup/    VPGTrans stage 1: projector only, constant 5x lr
//                   (quickstart_vpgtrans_stage1_warmup.yaml), on the quickstart's trained tower
//   transfer_finetune/  VPGTrans stage 2: ln_vision and projector (and a Q-Former, if the model
//                   had one) train, the ViT stays frozen (quickstart_vpgtrans_stage2_finetune.yaml)
//   random_{warmup,finetune}/  the ablation: the same two stages on the same tower from a
//                   fresh projector instead of the converted one (what the converter adds)
// Every checkpoint of every run is scored the same way: the quickstart's held-out chat
// answers (attributes right, heldout.h) and the held-out caption loss. The summary,
// <from>/vpgtrans_summary.json beside quickstart_summary.json, holds the curves, the
// from-scratch final accuracy, the first transfer step that reaches it, the ratio of steps
// and the wall times. second_llm.json and scratch_result.json keep what --reuse reuses.
#include "minigpt4/quickstart/stages.h"
#include "minigpt4/train/vpgtrans.h"

#include <nlohmann/json.hpp>

#include <cstdint>
#include <string>
#include <vector>

namespace minigpt4::quickstart {

struct VpgtransExperimentOptions {
  std::string from_dir = "runs/quickstart";  // a finished `minigpt4 quickstart --out`
  std::string out_dir;                       // "": <from_dir>/vpgtrans
  std::string summary_path;                  // "": <from_dir>/vpgtrans_summary.json
  std::string config_dir = "train_configs";  // quickstart_{warmup,stage1}.yaml, quickstart_vpgtrans_*.yaml
  std::string prompt_dir = "prompts";        // image_only.txt (stage 1's prompt)
  uint64_t seed = 0;                         // the second LLM's fresh weights
  // The second LLM: another width and another vocabulary than the quickstart's (128, 512).
  TinyLlm target{768, 160, 4, 4, 432};
  // Checkpoint spacing, in steps (multiplied by iterations_scale like the runs, at least 1).
  int64_t scratch_eval_every = 200;
  int64_t transfer_eval_every = 40;
  double iterations_scale = 1.0;  // every run's iters_per_epoch (tests: a small fraction)
  int64_t eval_limit = -1;        // held-out pictures scored per checkpoint (the first N); -1: all
  train::WordConverterOptions converter;
  // Keep the second LLM (model/, warmup/) and the from-scratch curve of an earlier run made
  // with the same settings, and redo what changed (trying transfer recipes).
  bool reuse = false;
  std::vector<std::string> options;  // key=value overrides for every run
};

// Runs the experiment; returns the summary it also writes.
nlohmann::json run_vpgtrans_experiment(const VpgtransExperimentOptions& options);

// The table the command prints: steps, accuracy of both runs at their checkpoints.
std::string format_vpgtrans_table(const nlohmann::json& summary);

}  // namespace minigpt4::quickstart
