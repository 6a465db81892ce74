#include "minigpt4/common/config.h"
#include "minigpt4/common/error.h"
#include "minigpt4/common/run_settings.h"
#include "tests/support/fixtures.h"

#include <catch2/catch.hpp>

using namespace minigpt4;
using Catch::Contains;

TEST_CASE("the original MiniGPT-4 configs parse as they are", "[config]") {
  const auto root = test::source_dir();
  const auto stage1 = Config::load((root / "train_configs/minigpt4_stage1_pretrain.yaml").string());
  CHECK(stage1.get_float("run.init_lr", 0) == Approx(1e-4));
  CHECK(stage1.get_int("run.warmup_steps", 0) == 5000);
  CHECK(stage1.get_bool("run.amp", false));
  CHECK(stage1.get_string_list("run.train_splits") == std::vector<std::string>{"train"});
  CHECK(!stage1.has("run.resume_ckpt_path"));  // null
  CHECK(stage1.get_float("datasets.laion.sample_ratio", 0) == 115);
  CHECK(stage1.keys_under("datasets") == std::vector<std::string>{"cc_sbu", "laion"});
  // model defaults merged under the user's keys
  CHECK(stage1.get_int("model.vit_width", 0) == 1408);
  CHECK(stage1.get_string("model.end_sym") == "\n");
  CHECK_THAT(stage1.source_of("model.vit_width"), Contains("configs/models/minigpt4_vicuna0.yaml"));
  CHECK_THAT(stage1.source_of("run.init_lr"), Contains("minigpt4_stage1_pretrain.yaml"));

  const auto stage2 = Config::load((root / "train_configs/minigpt4_stage2_finetune.yaml").string());
  CHECK(stage2.get_string("model.end_sym") == "###");
  CHECK(stage2.get_int("model.max_txt_len", 0) == 160);
  CHECK(stage2.get_string("model.prompt_template") == "###Human: {} ###Assistant: ");

  const auto eval = Config::load((root / "eval_configs/minigpt4_eval.yaml").string());
  CHECK(eval.get_string("model.arch") == "mini_gpt4");
  CHECK(eval.get_bool("model.low_resource", false));
  CHECK(eval.get_string("datasets.cc_sbu_align.vis_processor.train.name") == "blip2_image_eval");

  const auto llama2 = Config::load((root / "eval_configs/minigpt4_llama2_eval.yaml").string());
  CHECK_FALSE(llama2.get_bool("model.has_qformer", true));
  CHECK(llama2.get_string("model.end_sym") == "</s>");
  // The LLaMA-2 training configs as the Sep-2023 code ships them: stage 1 keeps the class's
  // end_sym '\n' (its model file sets none), stage 2 ends captions with </s> in [INST].
  const auto llama2_stage1 = Config::load((root / "train_configs/minigpt4_llama2_stage1_pretrain.yaml").string());
  CHECK_FALSE(llama2_stage1.get_bool("model.has_qformer", true));
  CHECK(llama2_stage1.get_string("model.end_sym") == "\n");
  const auto llama2_stage2 = Config::load((root / "train_configs/minigpt4_llama2_stage2_finetune.yaml").string());
  CHECK(llama2_stage2.get_string("model.end_sym") == "</s>");
  CHECK(llama2_stage2.get_string("model.prompt_template") == "[INST] {} [/INST] ");
}

TEST_CASE("--options override dotted keys with typed values", "[config]") {
  const auto root = test::source_dir();
  const auto cfg = Config::load(
      (root / "train_configs/minigpt4_stage1_pretrain.yaml").string(),
      {"run.init_lr=1e-5", "model.ckpt=/tmp/x.pth", "run.train_splits=[a, b]", "model.freeze_qformer=False"});
  CHECK(cfg.get_float("run.init_lr", 0) == Approx(1e-5));
  CHECK(cfg.get_string("model.ckpt") == "/tmp/x.pth");
  CHECK(cfg.get_string_list("run.train_splits") == std::vector<std::string>{"a", "b"});
  CHECK_FALSE(cfg.get_bool("model.freeze_qformer", true));
  CHECK(cfg.source_of("run.init_lr") == "--options");
  CHECK_THROWS_WITH(Config::load((root / "train_configs/minigpt4_stage1_pretrain.yaml").string(), {"run.init_lrr=1"}),
                    Contains("--options") && Contains("run.init_lrr") && Contains("did you mean 'init_lr'"));
  CHECK_THROWS_WITH(Config::load((root / "train_configs/minigpt4_stage1_pretrain.yaml").string(), {"run.max_epoch"}),
                    Contains("key=value"));
}

TEST_CASE("bad configs are errors naming the key and the file", "[config]") {
  CHECK_THROWS_WITH(Config::from_yaml("model:\n  arch: minigpt4\n  vit_widht: 3\n", "my.yaml"),
                    Contains("my.yaml") && Contains("model.vit_widht") && Contains("vit_width"));
  CHECK_THROWS_WITH(Config::from_yaml("run:\n  max_epoch: four\n", "my.yaml"),
                    Contains("my.yaml") && Contains("run.max_epoch") && Contains("integer"));
  CHECK_THROWS_WITH(Config::from_yaml("run:\n  amp: maybe\n", "my.yaml"),
                    Contains("run.amp") && Contains("true or false"));
  CHECK_THROWS_WITH(Config::from_yaml("run:\n  init_lr: [1]\n", "my.yaml"), Contains("run.init_lr"));
  CHECK_THROWS_WITH(Config::from_yaml("datasets:\n  laoin:\n    batch_size: 4\n", "my.yaml"),
                    Contains("my.yaml") && Contains("laoin"));
  CHECK_THROWS_WITH(Config::from_yaml("modle:\n  arch: minigpt4\n", "my.yaml"), Contains("unknown key 'modle'"));
  CHECK_THROWS_WITH(Config::from_yaml("model: [1, 2\n", "my.yaml"), Contains("my.yaml") && Contains("invalid YAML"));
  CHECK_THROWS_WITH(Config::from_yaml("model:\n  arch: blip2\n", "my.yaml"), Contains("model.arch"));
  CHECK_THROWS_WITH(Config::from_yaml("model:\n  arch: minigpt4\n  model_type: vicuna13\n", "my.yaml"),
                    Contains("model_type") && Contains("vicuna13"));
  CHECK_THROWS_WITH(Config::load("/nonexistent/config.yaml"), Contains("/nonexistent/config.yaml"));
}

TEST_CASE("every shipped config parses", "[config]") {
  namespace fs = std::filesystem;
  for (const char* folder : {"configs", "train_configs", "eval_configs"}) {
    for (const auto& entry : fs::directory_iterator(test::source_dir() / folder)) {
      if (entry.path().extension() != ".yaml") continue;
      INFO(entry.path());
      CHECK_NOTHROW(RunSettings::from_config(Config::load(entry.path().string())));  // the run: section's checks too
    }
  }
}

TEST_CASE("TinyGPT-V's configs parse with the original's values", "[config]") {
  const auto root = test::source_dir();
  const auto stage1 = Config::load((root / "train_configs/tinygptv_stage1.yaml").string());
  CHECK(stage1.get_int("model.proj_hidden", 0) == 4096);
  CHECK(stage1.get_string("model.llm_variant") == "tinygptv");
  CHECK(stage1.get_int("model.lora_r", 0) == 64);
  CHECK(stage1.get_int("datasets.laion.batch_size", 0) == 16);
  CHECK(stage1.get_int("run.warmup_steps", 0) == 1000);
  CHECK(stage1.get_int("run.max_epoch", 0) == 1);
  const auto stage2 = Config::load((root / "train_configs/tinygptv_stage2.yaml").string());
  CHECK(stage2.get_int("run.warmup_steps", 0) == 5000);
  CHECK(stage2.get_int("run.max_epoch", 0) == 4);
  const auto stage3 = Config::load((root / "train_configs/tinygptv_stage3.yaml").string());
  CHECK(stage3.get_int("datasets.cc_sbu_align.batch_size", 0) == 6);
  CHECK(stage3.get_float("run.init_lr", 0) == Approx(3e-5));
  CHECK(stage3.get_string("model.prompt_template") == "###Human: {} ###Assistant: ");
  const auto stage4 = Config::load((root / "train_configs/tinygptv_stage4.yaml").string());
  CHECK(stage4.get_int("model.image_size", 0) == 448);
  CHECK(stage4.get_string("model.prompt_template") == "[INST] {} [/INST]");
  CHECK(stage4.keys_under("datasets").size() == 20);
  CHECK(stage4.get_int("datasets.refcoco.vis_processor.train.image_size", 0) == 448);
  CHECK(stage4.get_int("run.iters_per_epoch", 0) * stage4.get_int("run.max_epoch", 0) == 50000);
  CHECK(
      Config::load((root / "eval_configs/tinygptv_stage1_2_3_eval.yaml").string()).get_string("model.conv_template") ==
      "vicuna0");
  CHECK(Config::load((root / "eval_configs/tinygptv_stage4_eval.yaml").string()).get_string("model.conv_template") ==
        "minigptv2");
  // The original eval configs' unused bos_token_id is accepted.
  CHECK(Config::from_yaml("model:\n  arch: minigpt4\n  bos_token_id: \"###\"\n", "eval.yaml")
            .get_string("model.bos_token_id") == "###");
}
