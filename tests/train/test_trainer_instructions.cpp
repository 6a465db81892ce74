// `minigpt4 train` over a TinyGPT-V stage-4-style mix of MiniGPT-v2's datasets (LLaVA detail
// and conversations, RefCOCO, COCO VQA, unnatural instructions) on the tiny fixture model:
// a few CPU steps run and the loss is finite; a missing build_info key is named; a text-only
// batch with nothing trainable in its graph is a clear error.
#include "minigpt4/common/run_settings.h"
#include "minigpt4/common/config.h"
#include "minigpt4/common/error.h"
#include "minigpt4/datasets/loader.h"
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

void picture(const fs::path& path, int seed) {
  fs::create_directories(path.parent_path());
  cv::Mat image(64, 80, CV_8UC3, cv::Scalar(40 * seed % 255, 90, 160));
  cv::circle(image, {30, 30}, 12, cv::Scalar(0, 0, 255), cv::FILLED);
  cv::imwrite(path.string(), image);
}

void write(const fs::path& path, const std::string& text) {
  fs::create_directories(path.parent_path());
  std::ofstream(path) << text;
}

// REFER's refs(unc).p as protocol-2 pickle: one train ref.
std::string refs_pickle() {
  std::string p = "\x80\x02](}(";
  auto str = [&](const std::string& s) {
    p += 'X';
    const uint32_t n = static_cast<uint32_t>(s.size());
    p.append(reinterpret_cast<const char*>(&n), 4);
    p += s;
  };
  auto num = [&](int32_t v) {
    p += 'J';
    p.append(reinterpret_cast<const char*>(&v), 4);
  };
  str("ref_id"), num(1), str("ann_id"), num(10), str("image_id"), num(5), str("split"), str("train");
  str("sentences"), p += "](}(", str("raw"), str("the red circle"), p += "ue";
  p += "ue.";
  return p;
}

// The data of every dataset under `root`, in the original layouts.
void make_data(const fs::path& root) {
  for (int i = 1; i <= 3; ++i) picture(root / "coco" / fmt::format("COCO_train2014_{:012d}.jpg", i), i);
  picture(root / "coco" / "COCO_train2014_000000000005.jpg", 5);
  write(root / "llava/detail.json", R"([
      {"id": "000000000001", "conversations": [{"from": "human", "value": "<image>\nDescribe it."}, {"from": "gpt", "value": "A red circle."}]},
      {"id": "000000000002", "conversations": [{"from": "human", "value": "What is shown?\n<image>"}, {"from": "gpt", "value": "A circle on blue."}]}])");
  write(root / "llava/conversation.json", R"([
      {"id": "000000000003", "conversations": [{"from": "human", "value": "<image>\nColour?"}, {"from": "gpt", "value": "Red."},
                                                {"from": "human", "value": "Shape?"}, {"from": "gpt", "value": "Round."}]},
      {"id": "000000000001", "conversations": [{"from": "human", "value": "<image>\nWhat?"}, {"from": "gpt", "value": "A circle."}]}])");
  write(root / "refer/refcoco/refs(unc).p", refs_pickle());
  write(root / "refer/refcoco/instances.json",
        R"({"images": [], "annotations": [{"id": 10, "bbox": [18, 18, 24, 24]}]})");
  write(root / "vqa/train.json", R"([
      {"question_id": 1, "question": "What colour is the circle?", "answer": ["red", "red", "crimson"], "image": "train2014/COCO_train2014_000000000001.jpg"},
      {"question_id": 2, "question": "Is there a circle?", "answer": ["yes"], "image": "train2014/COCO_train2014_000000000002.jpg"}])");
  write(root / "nlp/unnatural.json", R"([
      {"instances": [{"instruction_with_input": "Reverse: a b", "constraints": null, "output": "b a"}]},
      {"instances": [{"instruction_with_input": "Count: x y z", "constraints": "A number.", "output": "3"}]}])");
}

std::string stage4_yaml(const fs::path& data, const fs::path& output, bool lora = true) {
  const std::string d = data.string();
  return fmt::format(R"(
model:
  arch: minigpt4
  model_type: pretrain_vicuna0
  image_size: 56
  vit_patch_size: 14
  vit_width: 64
  vit_depth: 3
  vit_num_heads: 4
  vit_mlp_ratio: 4.3637
  vit_precision: fp32
  num_query_token: 8
  qformer_hidden_size: 48
  qformer_num_layers: 2
  qformer_num_heads: 4
  qformer_intermediate_size: 96
  cross_attention_freq: 2
  llm_precision: fp32
  vit_model: {tiny}/eva_vit_g.pth
  q_former_model: {tiny}/blip2_pretrained.pth
  llama_model: {tiny}/vicuna
  ckpt: {tiny}/pretrained_minigpt4.pth
  max_txt_len: 1024
  end_sym: "###"
  chat_template: True
  prompt_template: '[INST] {{}} [/INST]'
  max_context_len: 3800
{lora}

datasets:
  llava_detail:
    batch_size: 2
    vis_processor: {{train: {{name: blip2_image_train, image_size: 56}}}}
    text_processor: {{train: {{name: blip_caption}}}}
    sample_ratio: 20
    build_info: {{ann_path: {d}/llava/detail.json, image_path: {d}/coco}}
  llava_conversation:
    batch_size: 2
    vis_processor: {{train: {{name: blip2_image_train, image_size: 56}}}}
    sample_ratio: 30
    build_info: {{ann_path: {d}/llava/conversation.json, image_path: {d}/coco}}
  refcoco:
    batch_size: 1
    vis_processor: {{train: {{name: blip2_image_train, image_size: 56}}}}
    sample_ratio: 25
    build_info: {{image_path: {d}/coco, ann_path: {d}/refer, dataset: refcoco, splitBy: unc}}
  coco_vqa:
    batch_size: 2
    vis_processor: {{train: {{name: blip2_image_train, image_size: 56}}}}
    sample_ratio: 15
    build_info:
      annotations: {{train: {{url: [https://example.invalid/vqa_train.json], storage: [{d}/vqa/train.json]}}}}
      images: {{storage: {d}/coco}}
  unnatural_instruction:
    data_type: text
    batch_size: 2
    sample_ratio: 10
    build_info: {{ann_path: {d}/nlp/unnatural.json}}

run:
  task: image_text_pretrain
  lr_sched: linear_warmup_cosine_lr
  init_lr: 1e-3
  min_lr: 1e-4
  warmup_lr: 1e-4
  warmup_steps: 2
  weight_decay: 0.05
  max_epoch: 1
  iters_per_epoch: 8
  num_workers: 1
  seed: 42
  log_freq: 1
  device: cpu
  output_dir: {out}
)",
                     fmt::arg("tiny", tiny().string()), fmt::arg("d", d), fmt::arg("out", output.string()),
                     // stage 4 trains a LoRA adapter: text-only batches train it too
                     fmt::arg("lora", lora ? "  lora: {llm: {r: 4, lora_alpha: 16}}" : ""));
}

}  // namespace

TEST_CASE("training on MiniGPT-v2's multi-task mix: a few steps, finite loss", "[train]") {
  const auto tmp = fs::temp_directory_path() / ("minigpt4_trainer_stage4_" + std::to_string(::getpid()));
  fs::remove_all(tmp);
  make_data(tmp / "data");
  const auto config = Config::from_yaml(stage4_yaml(tmp / "data", tmp / "out"), (tmp / "stage4.yaml").string());

  // Every dataset is read in its own layout; the mix draws from several of them.
  datasets::LoaderOptions opt =
      datasets::loader_options_from_config(config, RunSettings::from_config(config).trainer, 0, 1);
  REQUIRE(opt.datasets.size() == 5);
  std::set<std::string> drawn;
  {
    datasets::DataLoader loader(opt);
    for (int i = 0; i < 12; ++i) {
      const auto batch = loader.next();
      drawn.insert(batch.dataset);
      CHECK(batch.instructions.size() == batch.size());
      CHECK(batch.images.defined() == (batch.dataset != "unnatural_instruction"));
    }
  }
  CHECK(drawn.size() >= 3);

  train::TrainOptions options;
  options.interactive_progress = false;
  const auto result = train::run_training(config, options);
  CHECK(result.global_step == 8);
  CHECK(std::isfinite(result.first_loss));
  CHECK(std::isfinite(result.last_loss));
  CHECK(fs::exists(tmp / "out/checkpoint_0.pth"));

  // Without an adapter only the projector trains, which a text-only batch never reaches.
  const auto no_lora =
      Config::from_yaml(stage4_yaml(tmp / "data", tmp / "out2", false), (tmp / "stage4.yaml").string());
  CHECK_THROWS_WITH(train::run_training(no_lora, options),
                    Catch::Contains("unnatural_instruction") && Catch::Contains("nothing that trains"));
  fs::remove_all(tmp);
}

TEST_CASE("MiniGPT-v2 datasets: a missing build_info key is named", "[train]") {
  const auto yaml = "datasets:\n  refcoco:\n    batch_size: 2\n    build_info: {image_path: /data/coco}\n";
  const auto config = Config::from_yaml(yaml, "stage4.yaml");
  CHECK_THROWS_WITH(datasets::loader_options_from_config(config, RunSettings::from_config(config).trainer, 0, 1),
                    Catch::Contains("datasets.refcoco.build_info.ann_path is not set"));
  const auto vqa = Config::from_yaml("datasets:\n  gqa:\n    batch_size: 2\n", "stage4.yaml");
  CHECK_THROWS_WITH(datasets::loader_options_from_config(vqa, RunSettings::from_config(vqa).trainer, 0, 1),
                    Catch::Contains("datasets.gqa.build_info.annotations.train.storage is not set"));
}
