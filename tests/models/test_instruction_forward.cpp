// MiniGPT-v2's training forward for instruction batches (MiniGPT4::forward_instructions) on
// the tiny_vicuna0 model: the targets are exactly the answer tokens (+ end_sym), found by
// tokenising each piece by hand; questions, the image and padding are masked; the image
// embeddings sit at <ImageHere>; prompt_template / chat_template, max_txt_len and
// max_context_len act as in the original.
#include "minigpt4/common/config.h"
#include "minigpt4/common/error.h"
#include "minigpt4/models/minigpt4.h"
#include "minigpt4/tokenizer/tokenizer.h"
#include "tests/support/fixtures.h"

#include <catch2/catch.hpp>

using namespace minigpt4;
namespace fs = std::filesystem;

namespace {

fs::path tiny() { return test::data_dir() / "parity/tiny_vicuna0"; }

MiniGPT4Config tiny_config() {
  const auto config = Config::load((test::source_dir() / "configs/tiny_vicuna0.yaml").string(),
                                   {"model.vit_model=" + (tiny() / "eva_vit_g.pth").string(),
                                    "model.q_former_model=" + (tiny() / "blip2_pretrained.pth").string(),
                                    "model.llama_model=" + (tiny() / "vicuna").string(),
                                    "model.ckpt=" + (tiny() / "pretrained_minigpt4.pth").string()});
  auto c = MiniGPT4Config::from_config(config);
  c.prompt_template = "[INST] {} [/INST]";
  c.chat_template = true;
  c.end_sym = "###";
  c.max_txt_len = 160;
  return c;
}

std::vector<int64_t> row(const torch::Tensor& t, int64_t b) {
  const auto r = t[b].contiguous().to(torch::kLong);
  return std::vector<int64_t>(r.data_ptr<int64_t>(), r.data_ptr<int64_t>() + r.numel());
}

void append(std::vector<int64_t>& v, const std::vector<int64_t>& more) { v.insert(v.end(), more.begin(), more.end()); }

}  // namespace

TEST_CASE("instruction forward: only answers are targets, every turn of a conversation", "[models]") {
  const auto config = tiny_config();
  const auto model = load_minigpt4(config, torch::kCPU);
  const auto tok = load_tokenizer(config.llama_model);
  torch::manual_seed(3);
  const auto images = torch::randn({2, 3, 56, 56});
  Instruction single{{"<Img><ImageHere></Img> [refer] the dog "}, {"{<1><2><30><40>}"}, false};
  Instruction conv{{"<Img><ImageHere></Img> what is it? ", "why? "}, {"a cat", "it sits"}, true};
  const auto out = model->forward_instructions(images, {single, conv}, *tok);
  const int64_t nq = model->encode_img(images).size(1);
  auto enc = [&](const std::string& s) { return tok->encode(s, false); };

  // Row 0: [bos] [INST] <Img> | image | </Img> [refer] the dog  [/INST] | answer + ###.
  const auto before = enc("[INST] <Img>"), after = enc("</Img> [refer] the dog  [/INST]");
  const int64_t cond0 = static_cast<int64_t>(before.size()) + nq + static_cast<int64_t>(after.size());
  std::vector<int64_t> expected(1 + cond0, -100);
  append(expected, enc("{<1><2><30><40>}###"));
  // Row 1: the first answer, then [bos] + the wrapped second question (masked), then the second answer.
  const auto c_before = enc("[INST] <Img>"), c_after = enc("</Img> what is it?  [/INST]");
  const int64_t cond1 = static_cast<int64_t>(c_before.size()) + nq + static_cast<int64_t>(c_after.size());
  std::vector<int64_t> expected1(1 + cond1, -100);
  append(expected1, enc("a cat###"));
  const auto q2 = enc("[INST] why?  [/INST]");
  expected1.insert(expected1.end(), 1 + q2.size(), -100);
  append(expected1, enc("it sits###"));

  const int64_t T = out.targets.size(1);
  REQUIRE(T == static_cast<int64_t>(std::max(expected.size(), expected1.size())));
  expected.resize(T, -100), expected1.resize(T, -100);
  CHECK(row(out.targets, 0) == expected);
  CHECK(row(out.targets, 1) == expected1);
  // Real tokens attend, padding does not; the image embeddings sit at <ImageHere>.
  CHECK(out.attention_mask[0].sum().item<int64_t>() ==
        1 + cond0 + static_cast<int64_t>(enc("{<1><2><30><40>}###").size()));
  CHECK(out.attention_mask[1].sum().item<int64_t>() == T);
  const auto img = model->encode_img(images);
  const int64_t at = 1 + static_cast<int64_t>(before.size());
  CHECK(torch::allclose(out.inputs_embeds[0].slice(0, at, at + nq), img[0]));
  CHECK(torch::allclose(out.inputs_embeds[1].slice(0, at, at + nq), img[1]));
  // The second question's tokens are the LLM's embeddings of [bos] + its ids.
  const int64_t q_at = 1 + cond1 + static_cast<int64_t>(enc("a cat###").size());
  std::vector<int64_t> q_ids = {tok->bos_id()};
  append(q_ids, q2);
  const auto q_embeds = model->llama_model->embed(torch::tensor(q_ids).unsqueeze(0))[0];
  CHECK(torch::allclose(out.inputs_embeds[1].slice(0, q_at, q_at + static_cast<int64_t>(q_ids.size())), q_embeds));
  CHECK(std::isfinite(out.loss.item<double>()));
}

TEST_CASE("instruction forward: chat_template, truncation, text-only batches and errors", "[models]") {
  auto config = tiny_config();
  config.chat_template = false;
  config.max_txt_len = 3;
  config.max_context_len = 6;
  const auto model = load_minigpt4(config, torch::kCPU);
  const auto tok = load_tokenizer(config.llama_model);
  auto enc = [&](const std::string& s) { return tok->encode(s, false); };
  const auto images = torch::randn({1, 3, 56, 56});
  Instruction single{
      {"<Img><ImageHere></Img> [vqa] what color is the long sentence here? "}, {"a very long answer indeed"}, false};
  const auto out = model->forward_instructions(images, {single}, *tok);
  // The prompt with its image embeddings is cut to max_context_len, the answer to max_txt_len.
  CHECK(out.targets.size(1) == 1 + 6 + 3);
  auto answer = enc("a very long answer indeed###");
  answer.resize(3);
  std::vector<int64_t> expected(1 + 6, -100);
  append(expected, answer);
  CHECK(row(out.targets, 0) == expected);

  // Text only (unnatural instructions): no image, no template with chat_template off.
  config.max_txt_len = 160;
  const auto text_model = load_minigpt4(config, torch::kCPU);
  Instruction text{{"sort these b, a"}, {"a, b"}, false};
  const auto t = text_model->forward_instructions(torch::Tensor(), {text}, *tok);
  std::vector<int64_t> expected_text(1 + enc("sort these b, a").size(), -100);
  append(expected_text, enc("a, b###"));
  CHECK(row(t.targets, 0) == expected_text);
  CHECK(std::isfinite(t.loss.item<double>()));

  CHECK_THROWS_WITH(text_model->forward_instructions(images, {text}, *tok),
                    Catch::Contains("0 <ImageHere> in its first question"));
  Instruction unequal{{"<Img><ImageHere></Img> q "}, {}, false};
  CHECK_THROWS_WITH(text_model->forward_instructions(images, {unequal}, *tok),
                    Catch::Contains("1 questions and 0 answers"));
}

TEST_CASE("model.prompt_template: its '{}' takes the text, and a template without one is refused at load", "[models]") {
  MiniGPT4Config c;
  CHECK(c.apply_prompt_template("<Img><ImageHere></Img> hi") == "<Img><ImageHere></Img> hi");
  c.prompt_template = "###Human: {} ###Assistant: ";
  CHECK(c.apply_prompt_template("hi") == "###Human: hi ###Assistant: ");
  const auto config =
      Config::load((test::source_dir() / "configs/tiny_vicuna0.yaml").string(), {"model.prompt_template=no slot here"});
  CHECK_THROWS_WITH(MiniGPT4Config::from_config(config),
                    Catch::Contains("model.prompt_template 'no slot here' has no '{}'"));
}
