// The quickstart's measure (attributes read out of free-text answers) and a smoke run of
// the whole pipeline at a tiny fraction of its iterations.
#include <catch2/catch.hpp>

#include "minigpt4/chat/chat.h"
#include "minigpt4/common/config.h"
#include "minigpt4/quickstart/synth.h"
#include "minigpt4/models/minigpt4.h"
#include "minigpt4/processors/image_processor.h"
#include "minigpt4/quickstart/explain_check.h"
#include "minigpt4/quickstart/heldout.h"
#include "minigpt4/quickstart/pipeline.h"
#include "tests/support/fixtures.h"

#include <torch/torch.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>

using namespace minigpt4;
using namespace minigpt4::quickstart;
namespace fs = std::filesystem;

TEST_CASE("every synthetic phrasing states exactly its scene's attributes", "[quickstart]") {
  std::mt19937_64 rng(3);
  for (int i = 0; i < 400; ++i) {
    const auto scene = quickstart::random_scene(rng);
    for (const auto& text : {quickstart::scene_caption(scene, rng), quickstart::scene_answer(scene, rng),
                             quickstart::canonical_caption(scene)}) {
      INFO(text);
      const auto stated = parse_scene_answer(text);
      REQUIRE(stated.shape);
      REQUIRE(stated.colour);
      REQUIRE(stated.count);
      REQUIRE(stated.position);
      CHECK(*stated.shape == scene.shape);
      CHECK(*stated.colour == scene.colour);
      CHECK(*stated.count == scene.count);
      CHECK(*stated.position == scene.position);
    }
  }
}

TEST_CASE("answer parsing: synonyms, first mention wins, missing attributes stay unset", "[quickstart]") {
  auto s = parse_scene_answer("An orange square sits in the middle; a red circle is on the left.");
  CHECK(*s.colour == "orange");
  CHECK(*s.shape == "square");
  CHECK(*s.count == 1);
  CHECK(*s.position == "centre");
  s = parse_scene_answer("3 Triangles, center.");
  CHECK(*s.count == 3);
  CHECK(*s.shape == "triangle");
  CHECK(*s.position == "centre");
  CHECK_FALSE(s.colour);
  s = parse_scene_answer("I cannot tell.");
  CHECK_FALSE(s.shape);
  CHECK_FALSE(s.count);

  AttributeTally tally;
  quickstart::SceneAttributes truth{"circle", "red", 2, "left"};
  tally.add(parse_scene_answer("two red circles on the left."), truth);  // 4 right
  tally.add(parse_scene_answer("one blue circle at the top."), truth);   // shape only
  CHECK(tally.items == 2);
  CHECK(tally.accuracy() == Approx(5.0 / 8.0));
  CHECK(tally.to_json()["shape"].get<double>() == Approx(1.0));
  CHECK(tally.to_json()["colour"].get<double>() == Approx(0.5));
}

TEST_CASE("the quickstart pipeline runs end to end and leaves a usable eval config", "[quickstart]") {
  const fs::path out = fs::temp_directory_path() / ("minigpt4_quickstart_" + std::to_string(::getpid()));
  fs::remove_all(out);
  QuickstartOptions options;
  options.out_dir = out.string();
  options.config_dir = (test::source_dir() / "train_configs").string();
  options.prompt_path = (test::source_dir() / "prompts/alignment.txt").string();
  options.stage1_samples = 120;
  options.align_samples = 40;
  options.heldout_samples = 6;
  options.warmup_context_lines = 60;
  options.vocab_size = 400;
  options.llm_hidden = 32, options.llm_layers = 1, options.llm_heads = 2, options.llm_intermediate = 64;
  options.iterations_scale = 0.01;
  options.eval_limit = 4;
  options.options = {"run.num_workers=1", "run.batch_size_train=4"};
  const auto summary = run_quickstart(options);

  for (const char* key : {"accuracy", "blind_accuracy", "n_heldout", "stage1_loss", "stage2_loss", "wall_seconds"})
    CHECK(summary.contains(key));
  CHECK(summary["n_heldout"].get<int64_t>() == 4);
  CHECK(fs::is_regular_file(out / "quickstart_summary.json"));
  CHECK(fs::is_regular_file(out / "heldout_answers.jsonl"));
  CHECK(fs::is_regular_file(out / "stage2" / "training_curves.png"));
  // The benchmark path ran on the held-out captioning and VQA sets.
  const auto metrics = test::read_json(out / "quickstart_eval_metrics.json");
  CHECK(metrics["caption"]["images"] == 6);
  CHECK(metrics["vqa"]["questions"] == 6);
  CHECK(summary["benchmarks"]["caption_CIDEr"] == metrics["caption"]["CIDEr"]);
  CHECK(fs::is_regular_file(out / "evaluate" / "vqa" / "results.json"));
  CHECK(fs::is_regular_file(out / "quickstart_caption_eval.yaml"));
  for (const char* dir : {"init", "warm", "stage1"}) {
    CHECK(fs::is_regular_file(out / "model" / dir / "eva_vit.safetensors"));
    CHECK(fs::is_regular_file(out / "model" / dir / "llm" / "tokenizer.model"));
  }
  // The eval config names real files and builds the trained model.
  const auto eval = Config::load((out / "minigpt4_quickstart_eval.yaml").string());
  const auto model = load_minigpt4(MiniGPT4Config::from_config(eval), torch::kCPU);
  CHECK(model->config.vision.image_size == 64);
  // The tower trained in stage 1 is what the eval config loads, ln_vision included (it comes
  // from model/stage1/blip2.safetensors, not LayerNorm's defaults).
  CHECK_FALSE(torch::equal(model->ln_vision->weight, torch::ones_like(model->ln_vision->weight)));

  // Explanations checked against the held-out objects' boxes, which the world records.
  const auto chat = ChatModel::load(eval, torch::kCPU), control = ChatModel::load(eval, torch::kCPU);
  ExplainCheckOptions check;
  check.heldout_root = (out / "world" / "heldout").string();
  check.limit = 3;
  check.max_new_tokens = 12;
  check.pictures_dir = (out / "explain").string();
  check.pictures = 1;
  const auto result = check_explanations(*chat, *control, check);
  CHECK(result.trained.pictures <= 3);
  CHECK(result.trained.words >= result.trained.pictures);
  if (result.trained.words > 0) {
    CHECK(result.trained.area_share > 0);
    CHECK(result.trained.area_share < 1);
    CHECK(result.trained.mass_in_boxes >= 0);
    CHECK(result.trained.mass_in_boxes <= 1);
  }
  CHECK(result.explain_seconds > 0);
  CHECK(fs::is_regular_file(out / "explain" / "00_answer.png"));
  CHECK(result.to_json().contains("shuffled_projector"));
  // A world without boxes (written before they were recorded) is refused by name.
  auto annotations = test::read_json(out / "world" / "heldout" / "annotations.json");
  for (auto& a : annotations) a.erase("boxes");
  std::ofstream(out / "world" / "heldout" / "annotations.json") << annotations.dump();
  CHECK_THROWS_WITH(check_explanations(*chat, *control, check), Catch::Contains("no object boxes"));
  fs::remove_all(out);
}

// The embedded default must learn to see, not only run. A miniature of the recipe (0.35 of
// the full run's steps, its own seeded world) is too short for its free answers to beat the
// blind ones by a margin another CPU keeps (30.8 % against 26.2 % here), so this asks what
// those answers are built on: each held-out picture's caption must be likelier under the model
// given that picture than given another held-out picture, in stage 1's own format. A
// projector that carried nothing of the picture scores both alike (about 50 of 100). Measured
// on an AMD EPYC Zen 3: own picture better for 74 of 100, mean loss 2.477 against 2.562
// (at 0.15 of the steps 63 of 100 and 2.192 against 2.194; the full run 285 of 300, 2.010
// against 2.525).
TEST_CASE("a miniature quickstart learns to use the picture", "[quickstart]") {
  const fs::path out = fs::temp_directory_path() / ("minigpt4_quickstart_learns_" + std::to_string(::getpid()));
  fs::remove_all(out);
  QuickstartOptions options;
  options.out_dir = out.string();
  options.config_dir = (test::source_dir() / "train_configs").string();
  options.prompt_path = (test::source_dir() / "prompts/alignment.txt").string();
  options.stage1_samples = 3000;
  options.heldout_samples = 100;
  options.iterations_scale = 0.35;
  options.options = {"run.num_workers=1"};
  run_quickstart(options);

  torch::NoGradGuard no_grad;
  const auto chat = ChatModel::load(Config::load((out / "minigpt4_quickstart_eval.yaml").string()), torch::kCPU);
  const auto items = read_heldout((out / "world" / "heldout").string());
  REQUIRE(items.size() == 100);
  std::vector<torch::Tensor> pictures;
  for (const auto& item : items) pictures.push_back(chat->processor->from_file(item.image_path).unsqueeze(0));
  // Stage 1's task: its prompt (prompts/image_only.txt), then the caption.
  auto caption_loss = [&](size_t picture, size_t caption) {
    return chat->model
        ->forward(pictures[picture], {canonical_caption(items[caption].truth)}, "<Img><ImageHere></Img>",
                  *chat->tokenizer)
        .loss.item<double>();
  };
  double own = 0, other = 0;
  int own_better = 0;
  for (size_t i = 0; i < items.size(); ++i) {
    const double a = caption_loss(i, i), b = caption_loss((i + 37) % items.size(), i);
    own += a, other += b, own_better += a < b;
  }
  own /= static_cast<double>(items.size()), other /= static_cast<double>(items.size());
  std::cout << "miniature quickstart: held-out caption loss " << own << " with its own picture, " << other
            << " with another; own picture better for " << own_better << " of " << items.size() << std::endl;
  CHECK(own_better >= 60);
  CHECK(own < other - 0.02);
  fs::remove_all(out);
}
