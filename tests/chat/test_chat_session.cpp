// ChatSession against the original Chat on every parity case: the fixture's conversation
// replayed turn by turn gives its prompt and its greedy answer; then the session's own
// behaviour: the KV cache kept across rounds changes nothing but the work done, streamed
// pieces add up to the answer, cancelling keeps the partial answer, images mid-chat.
#include "minigpt4/chat/chat.h"
#include "minigpt4/models/minigpt4.h"
#include "tests/generate/generate_fixture.h"

#include <catch2/catch.hpp>

using namespace minigpt4;
namespace fs = std::filesystem;

namespace {

std::string template_name(const std::string& fixture_template) {
  if (fixture_template.rfind("CONV_VISION_LLama2", 0) == 0) return "llama2";
  if (fixture_template.rfind("CONV_VISION_Vicuna0", 0) == 0) return "vicuna0";
  return "v0";
}

std::shared_ptr<ChatModel> chat_model(const test::GenerationFixture& fx) {
  const auto yaml = test::parity_case_yaml(fx.dir, fx.manifest) +
                    "  conv_template: " + template_name(fx.generation().value("template", "CONV_VISION")) + "\n";
  return ChatModel::load(Config::from_yaml(yaml, (fx.dir / "manifest.json").string()), torch::kCPU);
}

torch::Tensor fixture_image_embeds(const test::GenerationFixture& fx, const ChatModel& model) {
  torch::NoGradGuard no_grad;
  const int64_t index = fx.generation().value("image_index", 0);
  return model.model->encode_img(fx.io.at("image").slice(0, index, index + 1));
}

// The session's own behaviour (cache, streaming, images mid-chat) is checked on the
// repository's Vicuna-v0 case, whose greedy answers run long enough to stream in pieces.
fs::path session_case() { return test::data_dir() / "parity" / "tiny_vicuna0"; }

// Replays the fixture's messages up to the open assistant turn.
void replay(ChatSession& session, const test::GenerationFixture& fx, const torch::Tensor& image) {
  const std::string image_message = kImageMessage;
  const auto& messages = fx.generation().at("messages");
  for (size_t i = 0; i < messages.size(); ++i) {
    const auto& message = messages[i];
    if (message[1].is_null()) break;
    const auto text = message[1].get<std::string>();
    if (i % 2 == 1) {  // the template's roles alternate, the user first (whatever their names)
      session.add_answer(text);
    } else if (text.rfind(image_message, 0) == 0) {
      session.upload_image(image);
      if (text.size() > image_message.size()) session.ask(text.substr(image_message.size() + 1));
    } else {
      session.ask(text);
    }
  }
}

// Chat.answer decodes with special tokens, so an answer that ends on eos ends in "</s>"
// there (the LLaMA-2 variant's answers always do); ChatSession leaves the end token out of
// the text, as MiniGPT-4's later code does (skip_special_tokens=True). docs/chat.md.
std::string shown_answer(std::string original) {
  const std::string eos = "</s>";
  if (original.size() >= eos.size() && original.compare(original.size() - eos.size(), eos.size(), eos) == 0)
    original.resize(original.size() - eos.size());
  while (!original.empty() && std::isspace(static_cast<unsigned char>(original.back()))) original.pop_back();
  return original;
}

AnswerOptions greedy(int64_t max_new_tokens) {
  AnswerOptions o;
  o.temperature = 0;
  o.max_new_tokens = max_new_tokens;
  return o;
}

}  // namespace

TEST_CASE("a chat session answers as the original Chat on every fixture case", "[parity]") {
  const auto cases = test::parity_cases("minigpt4_full.safetensors");
  REQUIRE(!cases.empty());
  for (const auto& dir : cases) {
    INFO("case directory " << dir);
    const test::GenerationFixture fx(dir);
    const auto model = chat_model(fx);
    ChatSession session(model);
    replay(session, fx, fixture_image_embeds(fx, *model));
    Conversation open = session.conversation();
    open.start_answer();
    CHECK(open.get_prompt() == fx.generation().at("prompt").get<std::string>());

    const auto& expected = fx.generation().at("results").at("greedy");
    const auto reply = session.answer(greedy(fx.generation().at("max_new_tokens").get<int64_t>()));
    CHECK(reply.text == shown_answer(expected.at("output_text").get<std::string>()));
    CHECK(session.conversation().messages().back().text == reply.text);
  }
}

TEST_CASE("the KV cache kept across rounds gives the answers of a full recomputation", "[parity]") {
  const auto dir = session_case();
  const test::GenerationFixture fx(dir);
  const auto model = chat_model(fx);
  const auto image = fixture_image_embeds(fx, *model);

  ChatSession cached(model), fresh(model);
  AnswerOptions recompute = greedy(10);
  recompute.reuse_cache = false;
  for (auto* s : {&cached, &fresh}) s->upload_image(image);

  const std::vector<std::string> questions = {"What is in this image?", "What colour is it?", "Say more."};
  for (size_t round = 0; round < questions.size(); ++round) {
    INFO("round " << round);
    cached.ask(questions[round]);
    fresh.ask(questions[round]);
    const auto a = cached.answer(greedy(10));
    const auto b = fresh.answer(recompute);
    CHECK(a.tokens == b.tokens);
    CHECK(a.text == b.text);
    CHECK(b.reused_tokens == 0);
    if (round == 0) CHECK(a.reused_tokens == 0);
    // Later rounds start with everything up to the last answer already computed.
    if (round > 0) CHECK(a.reused_tokens > fixture_image_embeds(fx, *model).size(1));
    CHECK(cached.cached_tokens() > 0);
  }
  CHECK(cached.conversation().get_prompt() == fresh.conversation().get_prompt());
}

TEST_CASE("streamed pieces add up to the answer; cancelling keeps what was said", "[parity]") {
  const auto dir = session_case();
  const test::GenerationFixture fx(dir);
  const auto model = chat_model(fx);
  ChatSession session(model);
  session.upload_image(fixture_image_embeds(fx, *model));
  session.ask("What is in this image?");

  std::string streamed;
  int pieces = 0, calls = 0;
  const auto reply = session.answer(greedy(16), [&](const std::string& piece) {
    streamed += piece, ++calls;
    if (!piece.empty()) ++pieces;
    return true;
  });
  CHECK(streamed == reply.text);
  CHECK(pieces > 1);
  // Once per generated token (a final eos ends it without a call), so a caller can cancel
  // even while the text is held back.
  CHECK(calls >= static_cast<int>(reply.tokens.size()) - 1);
  CHECK(calls <= static_cast<int>(reply.tokens.size()));

  // Cancel after the first piece: the partial answer is the conversation's.
  session.ask("Again?");
  std::string first;
  const auto cut = session.answer(greedy(16), [&](const std::string& piece) {
    first = piece;
    return false;
  });
  CHECK(cut.finish_reason == "cancelled");
  CHECK(cut.tokens.size() < 16);
  CHECK(session.conversation().messages().back().text == cut.text);
  // The session goes on after a cancelled answer.
  session.ask("Once more.");
  CHECK_FALSE(session.answer(greedy(4)).tokens.empty());
}

TEST_CASE("an image can come mid-chat, and reset forgets everything", "[parity]") {
  const auto dir = session_case();
  const test::GenerationFixture fx(dir);
  const auto model = chat_model(fx);
  ChatSession session(model);
  session.ask("Hello.");
  session.answer(greedy(4));
  session.upload_image(fixture_image_embeds(fx, *model));
  session.ask("And this?");
  const auto reply = session.answer(greedy(4));
  CHECK(session.image_count() == 1);
  CHECK(reply.prompt_tokens > fixture_image_embeds(fx, *model).size(1));
  CHECK(session.conversation().get_prompt().find(kImagePlaceholder) != std::string::npos);

  // An answer that cannot be made leaves the conversation as it was.
  session.ask("One more?");
  const auto turns = session.conversation().messages().size();
  AnswerOptions no_room = greedy(4);
  no_room.max_length = 3;
  CHECK_THROWS_WITH(session.answer(no_room), Catch::Contains("max_length"));
  CHECK(session.conversation().messages().size() == turns);
  CHECK_FALSE(session.answer(greedy(2)).tokens.empty());

  session.reset();
  CHECK(session.image_count() == 0);
  CHECK(session.cached_tokens() == 0);
  CHECK(session.conversation().messages().empty());
}

TEST_CASE("bad chat input gets a clear error") {
  AnswerOptions o;
  ChatModel model;
  o.max_new_tokens = 0;
  CHECK_THROWS_WITH(generation_config(model, o), Catch::Contains("max_new_tokens"));
  o.max_new_tokens = 5, o.num_beams = 11;
  CHECK_THROWS_WITH(generation_config(model, o), Catch::Contains("num_beams"));
}

TEST_CASE("model.repetition_penalty is the default of answers that do not set one") {
  const auto dir = session_case();
  const test::GenerationFixture fx(dir);
  CHECK(generation_config(*chat_model(fx), greedy(4)).repetition_penalty == 1.0);

  const auto yaml = test::parity_case_yaml(fx.dir, fx.manifest) + "  repetition_penalty: 1.05\n";
  const auto model = ChatModel::load(Config::from_yaml(yaml, (fx.dir / "manifest.json").string()), torch::kCPU);
  CHECK(model->repetition_penalty == 1.05);
  AnswerOptions o = greedy(4);
  CHECK(generation_config(*model, o).repetition_penalty == 1.05);
  o.repetition_penalty = 1.0;  // given: wins over the config
  CHECK(generation_config(*model, o).repetition_penalty == 1.0);

  const auto bad = test::parity_case_yaml(fx.dir, fx.manifest) + "  repetition_penalty: 0\n";
  CHECK_THROWS_WITH(ChatModel::load(Config::from_yaml(bad, (fx.dir / "manifest.json").string()), torch::kCPU),
                    Catch::Contains("model.repetition_penalty"));
}

TEST_CASE("model.stop_token_ids end an answer on their own") {
  const auto dir = session_case();
  const test::GenerationFixture fx(dir);
  const auto plain = chat_model(fx)->stop_sequences();

  const auto yaml = test::parity_case_yaml(fx.dir, fx.manifest) + "  stop_token_ids: [2, 7]\n";
  const auto model = ChatModel::load(Config::from_yaml(yaml, (fx.dir / "manifest.json").string()), torch::kCPU);
  CHECK(model->stop_token_ids == std::vector<int64_t>{2, 7});
  auto expected = plain;
  expected.push_back({2});
  expected.push_back({7});
  CHECK(model->stop_sequences() == expected);
  CHECK(generation_config(*model, greedy(4)).stop_token_sequences == expected);

  for (const char* bad : {"[x]", "[-1]", "[100000000]"}) {
    const auto text = test::parity_case_yaml(fx.dir, fx.manifest) + "  stop_token_ids: " + bad + "\n";
    CHECK_THROWS_WITH(ChatModel::load(Config::from_yaml(text, (fx.dir / "manifest.json").string()), torch::kCPU),
                      Catch::Contains("model.stop_token_ids"));
  }
}
