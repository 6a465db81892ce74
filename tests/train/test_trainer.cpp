// The whole training loop on the tiny fixture model and a generated cc_sbu_align folder.
#include "minigpt4/common/config.h"
#include "minigpt4/io/checkpoint.h"
#include "minigpt4/models/minigpt4.h"
#include "minigpt4/train/metrics.h"
#include "minigpt4/train/trainer.h"
#include "tests/support/fixtures.h"

#include <catch2/catch.hpp>
#include <opencv2/imgcodecs.hpp>
#include <opencv2/imgproc.hpp>

#include <fstream>

#include <unistd.h>

using namespace minigpt4;
namespace fs = std::filesystem;

namespace {

fs::path tiny() { return test::data_dir() / "parity/tiny_vicuna0"; }

// Six coloured pictures with captions naming the colour, in the cc_sbu_align layout.
fs::path make_dataset(const fs::path& root) {
  fs::create_directories(root / "image");
  const std::vector<std::pair<std::string, cv::Scalar>> colours = {
      {"red", {0, 0, 255}},      {"green", {0, 255, 0}},     {"blue", {255, 0, 0}},
      {"yellow", {0, 255, 255}}, {"white", {255, 255, 255}}, {"black", {0, 0, 0}}};
  nlohmann::json annotations = nlohmann::json::array();
  for (size_t i = 0; i < colours.size(); ++i) {
    cv::Mat image(80, 96, CV_8UC3, cv::Scalar(128, 128, 128));
    cv::circle(image, {48, 40}, 25, colours[i].second, cv::FILLED);
    cv::imwrite((root / "image" / (std::to_string(i) + ".jpg")).string(), image);
    annotations.push_back({{"image_id", std::to_string(i)}, {"caption", "a " + colours[i].first + " circle."}});
  }
  std::ofstream(root / "filter_cap.json") << nlohmann::json{{"annotations", annotations}}.dump();
  std::ofstream(root / "prompts.txt") << "<Img><ImageHere></Img> Describe this image.\n";
  return root;
}

Config run_config(const fs::path& data, const fs::path& output, std::vector<std::string> extra = {}) {
  std::vector<std::string> options = {"model.vit_model=" + (tiny() / "eva_vit_g.pth").string(),
                                      "model.q_former_model=" + (tiny() / "blip2_pretrained.pth").string(),
                                      "model.llama_model=" + (tiny() / "vicuna").string(),
                                      "model.ckpt=",
                                      "model.max_txt_len=32",
                                      "model.prompt_path=" + (data / "prompts.txt").string(),
                                      "datasets.cc_sbu_align.build_info.storage=" + data.string(),
                                      "datasets.cc_sbu_align.vis_processor.train.name=blip2_image_train",
                                      "datasets.cc_sbu_align.vis_processor.train.image_size=56",
                                      "run.lr_sched=linear_warmup_cosine_lr",
                                      "run.init_lr=1e-2",
                                      "run.min_lr=1e-3",
                                      "run.warmup_lr=1e-3",
                                      "run.warmup_steps=2",
                                      "run.weight_decay=0.05",
                                      "run.max_epoch=2",
                                      "run.iters_per_epoch=4",
                                      "run.batch_size_train=2",
                                      "run.num_workers=1",
                                      "run.seed=7",
                                      "run.log_freq=1",
                                      "run.device=cpu",
                                      "run.output_dir=" + output.string()};
  options.insert(options.end(), extra.begin(), extra.end());
  return Config::load((test::source_dir() / "configs/tiny_vicuna0.yaml").string(), options);
}

torch::Tensor trained_projector(const fs::path& checkpoint) {
  return io::load_state_dict(checkpoint.string()).at("llama_proj.weight");
}

}  // namespace

TEST_CASE("training: the loss falls, resume continues exactly, stage 1 feeds stage 2", "[train]") {
  const auto tmp = fs::temp_directory_path() / ("minigpt4_trainer_" + std::to_string(::getpid()));
  fs::remove_all(tmp);
  const auto data = make_dataset(tmp / "data");
  train::TrainOptions options;
  options.interactive_progress = false;

  // Straight through: 2 epochs x 4 iterations.
  const auto straight = train::run_training(run_config(data, tmp / "straight"), options);
  CHECK(straight.global_step == 8);
  CHECK(straight.last_loss < straight.first_loss);
  CHECK(fs::exists(tmp / "straight/checkpoint_0.pth"));
  CHECK(fs::exists(tmp / "straight/checkpoint_1.pth"));
  CHECK(fs::exists(tmp / "straight/training_curves.png"));
  CHECK(train::read_metrics_log((tmp / "straight/metrics.jsonl").string()).size() == 8);
  // Only the trainable parameters are saved, under the original names.
  const auto saved = io::load_state_dict((tmp / "straight/checkpoint_1.pth").string());
  CHECK(saved.size() == 2);
  CHECK(saved.count("llama_proj.weight") == 1);

  // Interrupted after epoch 0, then resumed from its checkpoint: the same final weights.
  auto first_half = options;
  first_half.stop_after_epochs = 1;
  train::run_training(run_config(data, tmp / "resumed"), first_half);
  CHECK_FALSE(fs::exists(tmp / "resumed/checkpoint_1.pth"));
  const auto resumed = train::run_training(
      run_config(data, tmp / "resumed", {"run.resume_ckpt_path=" + (tmp / "resumed/checkpoint_0.pth").string()}),
      options);
  CHECK(resumed.global_step == 8);
  CHECK(torch::allclose(trained_projector(tmp / "resumed/checkpoint_1.pth"),
                        trained_projector(tmp / "straight/checkpoint_1.pth"), 0, 1e-7));

  // The stage-1 checkpoint is stage 2's model.ckpt.
  const auto stage2 = MiniGPT4Config::from_config(
      run_config(data, tmp / "stage2", {"model.ckpt=" + (tmp / "straight/checkpoint_1.pth").string()}));
  const auto model = load_minigpt4(stage2, torch::kCPU);
  CHECK(torch::equal(model->llama_proj->weight, saved.at("llama_proj.weight")));
  fs::remove_all(tmp);
}

TEST_CASE("training LoRA adapters: checkpoints hold only them, each epoch writes PEFT folders", "[train][lora]") {
  const auto tmp = fs::temp_directory_path() / ("minigpt4_trainer_lora_" + std::to_string(::getpid()));
  fs::remove_all(tmp);
  const auto data = make_dataset(tmp / "data");
  train::TrainOptions options;
  options.interactive_progress = false;
  const std::vector<std::string> lora = {"model.lora.llm.r=4", "model.lora.llm.lora_dropout=0.1", "model.lora.vit.r=2",
                                         "run.max_epoch=1"};
  const auto result = train::run_training(run_config(data, tmp / "run", lora), options);
  CHECK(result.last_loss < result.first_loss);
  // The trainable parameters are the adapters: q/v of 2 LLM layers, query/value of 3 blocks.
  const auto saved = io::load_state_dict((tmp / "run/checkpoint_0.pth").string());
  CHECK(saved.size() == 2 * (4 + 6));
  for (const auto& item : saved) CHECK(item.first.find(".lora_") != std::string::npos);
  CHECK(saved.count("llama_model.model.layers.1.self_attn.v_proj.lora_B.default.weight"));
  CHECK(saved.count("visual_encoder.blocks.2.attn.query.lora_A.default.weight"));
  // One PEFT folder per adapted component, holding the trained weights.
  CHECK(fs::exists(tmp / "run/lora_0/llm/adapter_config.json"));
  CHECK(fs::exists(tmp / "run/lora_0/ve/adapter_model.safetensors"));
  CHECK_FALSE(fs::exists(tmp / "run/lora_0/qformer"));
  const auto llm = io::load_state_dict((tmp / "run/lora_0/llm/adapter_model.safetensors").string());
  const auto& b = llm.at("base_model.model.model.layers.1.self_attn.v_proj.lora_B.weight");
  CHECK(b.abs().max().item<double>() > 0);
  CHECK(torch::equal(b, saved.at("llama_model.model.layers.1.self_attn.v_proj.lora_B.default.weight")));
  // The checkpoint restores the adapter as model.ckpt of a run that configures it.
  const auto again_config =
      run_config(data, tmp / "again",
                 {"model.lora.llm.r=4", "model.lora.vit.r=2", "model.ckpt=" + (tmp / "run/checkpoint_0.pth").string()});
  const auto again = load_minigpt4(MiniGPT4Config::from_config(again_config), torch::kCPU);
  const auto restored = again->named_parameters()["llama_model.model.layers.1.self_attn.v_proj.lora_B.default.weight"];
  CHECK(torch::equal(restored, b));
  fs::remove_all(tmp);
}
