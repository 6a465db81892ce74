// Explanations (chat/explain.h): the pieces (words of an answer, saliency from a gradient,
// the overlay), then ChatSession::explain on every model case (Q-Former and the LLaMA-2
// variant's 4-patch groups): maps over the ViT's grid that sum to 1, one per word, that
// change nothing in the conversation (the next answer is the same as without them), and
// clear errors when there is nothing to explain. Whether the maps point at the right place
// is measured on a trained model (`minigpt4 explain-check`, docs/explain.md): random test
// weights have no right place.
#include "minigpt4/chat/chat.h"
#include "minigpt4/chat/explain.h"
#include "minigpt4/models/minigpt4.h"
#include "minigpt4/processors/image_decode.h"
#include "minigpt4/tokenizer/llama_tokenizer.h"
#include "tests/generate/generate_fixture.h"

#include <catch2/catch.hpp>
#include <opencv2/imgcodecs.hpp>
#include <torch/torch.h>

using namespace minigpt4;
using Catch::Contains;
namespace fs = std::filesystem;

namespace {

std::shared_ptr<ChatModel> chat_model(const fs::path& dir) {
  const auto manifest = test::read_json(dir / "manifest.json");
  return ChatModel::load(Config::from_yaml(test::parity_case_yaml(dir, manifest), (dir / "manifest.json").string()),
                         torch::kCPU);
}

fs::path picture() { return test::data_dir() / "parity/tiny_vicuna0/image_processor/arc_colors_rgba_357x200.png"; }

AnswerOptions greedy(int64_t max_new_tokens) {
  AnswerOptions o;
  o.temperature = 0;
  o.max_new_tokens = max_new_tokens;
  return o;
}

void check_map(const at::Tensor& map, int64_t grid) {
  REQUIRE(map.sizes() == at::IntArrayRef({grid, grid}));
  CHECK(map.isfinite().all().item<bool>());
  CHECK(map.min().item<float>() >= 0);
  CHECK(map.sum().item<double>() == Approx(1.0).margin(1e-5));
}

}  // namespace

TEST_CASE("explain: an answer's words are its tokens grouped at spaces, punctuation apart, the stop left out",
          "[chat][explain]") {
  const auto tokenizer = LlamaTokenizer::from_pretrained(test::data_dir() / "parity/tiny_vicuna0/vicuna");
  auto tokens = tokenizer.encode("The image shows two red circles, on the left.", /*add_special_tokens=*/false);
  const auto stop = tokenizer.encode("###", false);
  tokens.insert(tokens.end(), stop.begin(), stop.end());
  tokens.push_back(tokenizer.eos_id());
  const auto words = answer_words(tokens, tokenizer, {});
  std::vector<std::string> texts;
  for (const auto& w : words) texts.push_back(w.text);
  CHECK(texts ==
        std::vector<std::string>{"The", "image", "shows", "two", "red", "circles", ",", "on", "the", "left", "."});
  // Every token of the visible answer belongs to one word, in order; the stop's do not.
  std::vector<int64_t> covered;
  for (const auto& w : words) covered.insert(covered.end(), w.token_indices.begin(), w.token_indices.end());
  CHECK(std::is_sorted(covered.begin(), covered.end()));
  std::vector<int64_t> covered_ids;
  for (const auto i : covered) covered_ids.push_back(tokens[static_cast<size_t>(i)]);
  CHECK(tokenizer.decode(covered_ids).find('#') == std::string::npos);
  // A stop id of the model's ends the words there.
  const auto cut = answer_words(tokens, tokenizer, {tokens[3]});
  CHECK(cut.size() < words.size());
}

TEST_CASE("explain: patch saliency is the gradient's norm per patch, without the cls token", "[chat][explain]") {
  auto grad = torch::zeros({1 + 4, 3});
  grad[0] = torch::tensor({100.0f, 0.0f, 0.0f});  // cls: not a place in the picture
  grad[1] = torch::tensor({3.0f, 4.0f, 0.0f});    // norm 5
  grad[4] = torch::tensor({0.0f, 0.0f, 15.0f});   // norm 15
  const auto map = patch_saliency(grad, 2);
  CHECK(torch::allclose(map, torch::tensor({0.25f, 0.0f, 0.0f, 0.75f}).view({2, 2})));
  CHECK(torch::allclose(patch_saliency(torch::zeros({5, 3}), 2), torch::full({2, 2}, 0.25f)));
  CHECK_THROWS_WITH(patch_saliency(torch::zeros({7, 3}), 2), Contains("2x2"));
}

TEST_CASE("explain: the overlay is a PNG of the picture's size, red where the map is highest", "[chat][explain]") {
  const auto white = torch::full({40, 60, 3}, 255, torch::kUInt8);
  auto map = torch::full({4, 4}, 0.01f);
  map[0][0] = 0.85f;
  const auto png = explanation_png(white, map);
  const std::vector<uchar> bytes(png.begin(), png.end());
  const cv::Mat decoded = cv::imdecode(bytes, cv::IMREAD_COLOR);  // BGR
  REQUIRE(decoded.rows == 40);
  REQUIRE(decoded.cols == 60);
  const auto top_left = decoded.at<cv::Vec3b>(2, 2), bottom_right = decoded.at<cv::Vec3b>(37, 57);
  CHECK(top_left[2] > top_left[0]);          // red over blue
  CHECK(bottom_right[0] > bottom_right[2]);  // blue over red
}

TEST_CASE("explain: every model case gives maps over its patch grid, per word, and leaves the chat as it was",
          "[chat][explain]") {
  const auto cases = test::parity_cases("minigpt4_full.safetensors");
  REQUIRE(!cases.empty());
  for (const auto& dir : cases) {
    INFO("case directory " << dir);
    const auto model = chat_model(dir);
    const int64_t grid = model->model->config.vision.grid();
    at::Tensor vision_tokens;
    const auto image = model->encode_image_file(picture().string(), &vision_tokens);
    CHECK(torch::allclose(image, model->encode_image_file(picture().string())));  // the same embeddings

    ChatSession explained(model), plain(model);
    explained.upload_image(image, vision_tokens);
    plain.upload_image(image);
    for (auto* s : {&explained, &plain}) s->ask("What is in this image?");
    const auto reply = explained.answer(greedy(12));
    CHECK(plain.answer(greedy(12)).tokens == reply.tokens);

    const auto cached = explained.cached_tokens();
    const auto e = explained.explain(/*per_word=*/true);
    CHECK(e.image_index == 0);
    CHECK(e.grid == grid);
    check_map(e.answer_map, grid);
    CHECK(e.answer_map.max().item<float>() > e.answer_map.min().item<float>());  // the picture matters somewhere
    const auto words = answer_words(reply.tokens, *model->tokenizer, model->stop_token_ids);
    REQUIRE(e.words.size() == words.size());
    for (size_t i = 0; i < words.size(); ++i) {
      CHECK(e.words[i].word == words[i].text);
      check_map(e.words[i].map, grid);
    }
    if (e.words.size() > 1) CHECK_FALSE(torch::allclose(e.words.front().map, e.words.back().map));
    // The same again, and nothing changed for the conversation: its cache and its next answer.
    CHECK(torch::allclose(explained.explain().answer_map, e.answer_map));
    CHECK(explained.cached_tokens() == cached);
    for (auto* s : {&explained, &plain}) s->ask("And what colour is it?");
    const auto next = explained.answer(greedy(8));
    CHECK(next.tokens == plain.answer(greedy(8)).tokens);
    CHECK(next.reused_tokens > image.size(1));  // the cache still served the earlier rounds
    // JSON: the grid and one entry per word.
    const auto j = explanation_json(explained.explain(true));
    CHECK(j["grid"] == nlohmann::json::array({grid, grid}));
    CHECK(j["patches"].size() == static_cast<size_t>(grid));
    CHECK(j["words"].size() == answer_words(next.tokens, *model->tokenizer, model->stop_token_ids).size());
  }
}

TEST_CASE("explain: nothing to explain is a clear error", "[chat][explain]") {
  const auto model = chat_model(test::data_dir() / "parity/tiny_vicuna0");
  ChatSession session(model);
  CHECK_THROWS_WITH(session.explain(), Contains("no generated answer"));
  session.ask("Hello?");
  session.answer(greedy(4));
  CHECK_THROWS_WITH(session.explain(), Contains("no image"));
  session.upload_image(model->encode_image_file(picture().string()));  // without its vision tokens
  session.ask("And now?");
  session.answer(greedy(4));
  CHECK_THROWS_WITH(session.explain(), Contains("without its vision_tokens"));
  session.add_answer("a given answer");
  CHECK_THROWS_WITH(session.explain(), Contains("no generated answer"));
}

TEST_CASE("explain: 8-bit weights (low_resource) are differentiated through too", "[chat][explain]") {
  const auto dir = test::data_dir() / "parity/tiny_vicuna0";
  const auto manifest = test::read_json(dir / "manifest.json");
  const auto model = ChatModel::load(
      Config::from_yaml(test::parity_case_yaml(dir, manifest), "int8.yaml", {"model.low_resource=True"}), torch::kCPU);
  at::Tensor vision_tokens;
  const auto image = model->encode_image_file(picture().string(), &vision_tokens);
  ChatSession session(model);
  session.upload_image(image, vision_tokens);
  session.ask("What is in this image?");
  session.answer(greedy(6));
  const auto e = session.explain();
  check_map(e.answer_map, model->model->config.vision.grid());
  CHECK(e.answer_map.max().item<float>() > e.answer_map.min().item<float>());
}
