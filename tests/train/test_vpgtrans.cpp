// VPGTrans: the word converter recovers a known linear map between two embedding spaces,
// the merged projector is Wc Wp / Wc bp + bc, and the two stage configs parse and freeze
// what the original freezes.
#include "minigpt4/common/config.h"
#include "minigpt4/common/run_settings.h"
#include "minigpt4/models/minigpt4.h"
#include "minigpt4/tokenizer/llama_tokenizer.h"
#include "minigpt4/train/schedule.h"
#include "minigpt4/train/vpgtrans.h"
#include "tests/support/fixtures.h"

#include <catch2/catch.hpp>
#include <torch/torch.h>

using namespace minigpt4;

namespace {

// The schedule a config's run: section gives, as the trainer builds it.
train::LrSchedule schedule_of(const Config& config, int64_t loader_length = 0) {
  return train::LrSchedule::from_run(RunSettings::from_config(config), loader_length);
}
}  // namespace

TEST_CASE("vpgtrans: the word converter recovers a known linear map", "[vpgtrans]") {
  torch::manual_seed(3);
  const int64_t vocab = 300, d_src = 16, d_tgt = 24;
  const auto source = torch::randn({vocab, d_src});
  const auto map = torch::randn({d_tgt, d_src}) / 4, shift = torch::randn({d_tgt}) / 4;
  // The target vocabulary lists the same words in another order.
  const auto order = torch::randperm(vocab, torch::kInt64);
  auto target = torch::empty({vocab, d_tgt});
  target.index_copy_(0, order, source.matmul(map.t()) + shift);

  train::TokenPairs pairs;  // the first 240 words; the last 60 are held out
  for (int64_t id = 0; id < 240; ++id) pairs.source.push_back(id), pairs.target.push_back(order[id].item<int64_t>());
  train::WordConverterOptions options;
  options.lr = 2.0, options.batch_size = 64, options.epochs = 150;
  const auto converter = train::train_word_converter(source, target, pairs, options);
  CHECK(converter.final_loss < 1e-3);

  const auto held_out = torch::arange(240, vocab, torch::kInt64);
  const auto predicted = source.index_select(0, held_out).matmul(converter.weight.t()) + converter.bias;
  const auto wanted = target.index_select(0, order.index_select(0, held_out));
  CHECK(torch::cosine_similarity(predicted, wanted, 1).min().item<double>() > 0.99);

  // The cosine loss fixes the map up to a positive scale.
  const double scale = converter.weight.norm().item<double>() / map.norm().item<double>();
  CHECK(torch::allclose(converter.weight / scale, map, 0, 0.05));
  CHECK(torch::allclose(converter.bias / scale, shift, 0, 0.05));
}

TEST_CASE("vpgtrans: the merged projector is the converter after the projector", "[vpgtrans]") {
  torch::manual_seed(4);
  train::WordConverter converter{torch::randn({6, 5}), torch::randn({6}), 0};
  const auto wp = torch::randn({5, 3}), bp = torch::randn({5});
  const auto [w, b] = train::merge_projector(converter, wp, bp);
  const auto x = torch::randn({4, 3});
  const auto two_steps = (x.matmul(wp.t()) + bp).matmul(converter.weight.t()) + converter.bias;
  CHECK(torch::allclose(x.matmul(w.t()) + b, two_steps, 1e-5, 1e-6));
  CHECK_THROWS_WITH(train::merge_projector(converter, torch::randn({4, 3}), torch::randn({4})),
                    Catch::Contains("the source projector outputs 4 features"));
}

TEST_CASE("vpgtrans: token pairs come from captions of equal token counts", "[vpgtrans]") {
  const auto tokenizer = LlamaTokenizer::from_pretrained(test::data_dir() / "parity/tiny_vicuna0/vicuna");
  const auto pairs = train::token_pairs_from_captions({"a red circle.", "two blue squares"}, tokenizer, tokenizer);
  CHECK(pairs.captions_used == 2);
  CHECK(pairs.source == pairs.target);
  CHECK(pairs.source.size() ==
        tokenizer.encode("a red circle.", false).size() + tokenizer.encode("two blue squares", false).size());
}

TEST_CASE("vpgtrans: the stage configs parse and train what the original trains", "[vpgtrans]") {
  const auto root = test::source_dir();
  const auto warmup = Config::load((root / "train_configs/vpgtrans_stage1_warmup.yaml").string());
  const auto schedule = schedule_of(warmup);
  CHECK(schedule.lr_at(0, 0) == Approx(5e-4));
  CHECK(schedule.lr_at(0, 4999) == Approx(5e-4));
  const auto finetune = Config::load((root / "train_configs/vpgtrans_stage2_finetune.yaml").string());
  CHECK(schedule_of(finetune).lr_at(3, 0) < 1e-4);

  // The fine-tuning freezes on the tiny fixture model.
  auto flag = [&](const std::string& key) { return std::string(finetune.get_bool(key, true) ? "True" : "False"); };
  const auto tiny = test::data_dir() / "parity/tiny_vicuna0";
  const auto config = Config::load(
      (root / "configs/tiny_vicuna0.yaml").string(),
      {"model.vit_model=" + (tiny / "eva_vit_g.pth").string(),
       "model.q_former_model=" + (tiny / "blip2_pretrained.pth").string(),
       "model.llama_model=" + (tiny / "vicuna").string(), "model.ckpt=", "model.freeze_vit=" + flag("model.freeze_vit"),
       "model.freeze_ln_vision=" + flag("model.freeze_ln_vision"),
       "model.freeze_qformer=" + flag("model.freeze_qformer")});
  const auto model = load_minigpt4(MiniGPT4Config::from_config(config), torch::kCPU);
  for (const auto& item : model->named_parameters()) {
    const auto& name = item.key();
    const bool trains = name.rfind("Qformer.", 0) == 0 || name == "query_tokens" || name.rfind("ln_vision.", 0) == 0 ||
                        name.rfind("llama_proj.", 0) == 0;
    INFO(name);
    CHECK(item.value().requires_grad() == trains);
  }
}
