// `minigpt4 synth --out DIR [--seed N] [...]`: writes a small synthetic image-caption world
// (coloured shapes in named regions) in the real data formats, for a CPU quickstart, with a
// captioning and a VQA set for `minigpt4 evaluate`.
#include "apps/commands.h"
#include "minigpt4/common/log.h"
#include "minigpt4/quickstart/synth.h"

#include <fmt/format.h>

#include <chrono>
#include <memory>

namespace minigpt4::apps {

void add_synth_command(CLI::App& app) {
  auto opt = std::make_shared<quickstart::SynthOptions>();
  auto* cmd = app.add_subcommand("synth",
                                 "Write a synthetic shapes-and-colours world (stage-1 shards, stage-2 "
                                 "cc_sbu_align, held-out set, corpus) for a quick CPU run");
  cmd->add_option("--out", opt->out_dir, "output directory")->required();
  cmd->add_option("--seed", opt->seed, "random seed (same seed, same bytes)")->capture_default_str();
  cmd->add_option("--stage1-samples", opt->stage1_samples, "stage-1 webdataset samples")->capture_default_str();
  cmd->add_option("--align-samples", opt->align_samples, "stage-2 cc_sbu_align samples")->capture_default_str();
  cmd->add_option("--heldout-samples", opt->heldout_samples, "held-out evaluation samples")->capture_default_str();
  cmd->add_option("--eval-samples", opt->eval_samples,
                  "held-out pictures that also form the captioning and VQA sets (COCO / VQAv2 formats)")
      ->capture_default_str();
  cmd->add_option("--image-size", opt->image_size, "square image side in pixels (32..1024)")->capture_default_str();
  cmd->add_option("--shard-size", opt->shard_size, "samples per stage-1 tar (1..10000)")->capture_default_str();
  cmd->add_flag("--force", opt->force, "reuse an existing non-empty output directory (replaces what synth wrote)");
  cmd->callback([opt] {
    const auto start = std::chrono::steady_clock::now();
    const auto s = quickstart::write_synthetic_world(*opt);
    const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    log::info("synth: {} files written under {} in {:.1f} s", s.files_written, s.out_dir, secs);
    fmt::print("stage 1 ({} samples in {} shards): {}\n", s.stage1_samples, s.stage1_shards, s.stage1_spec);
    fmt::print("stage 2 cc_sbu_align ({} samples): {}\n", s.align_samples, s.align_root);
    fmt::print("held out ({} samples): {}/annotations.json\n", s.heldout_samples, s.heldout_root);
    if (s.eval_samples > 0) {
      fmt::print("captioning set ({} pictures): {} (images in {})\n", s.eval_samples, s.eval_captions,
                 s.eval_image_root);
      fmt::print("VQA set ({} questions): {} + {}\n", s.eval_samples, s.eval_vqa_questions, s.eval_vqa_annotations);
    }
    fmt::print("corpus ({} lines): {}\n", s.corpus_lines, s.corpus_path);
    fmt::print("world: {}\n", s.world_path);
  });
}

}  // namespace minigpt4::apps
