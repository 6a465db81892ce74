// Fixture parity: every case's conversation_cases.json (get_prompt() strings of the Python
// templates after real Chat operations) and the chat prompt of its manifest, tokenised as
// Chat.get_context_emb does.
#include <catch2/catch.hpp>

#include <iostream>

#include "minigpt4/chat/conversation.h"
#include "minigpt4/tokenizer/llama_tokenizer.h"
#include "tests/support/fixtures.h"
#include "tests/support/int_tensors.h"

using namespace minigpt4;
using nlohmann::json;
namespace fs = std::filesystem;
namespace mt = minigpt4::test;

namespace {

// "CONV_VISION_Vicuna0 (Sep 2023 code: ...)" -> "CONV_VISION_Vicuna0".
std::string template_name(const std::string& description) {
  return description.substr(0, description.find_first_of(" ("));
}

std::optional<std::string> text_of(const json& message) {
  if (message.at(1).is_null()) return std::nullopt;
  return message.at(1).get<std::string>();
}

bool same_messages(const Conversation& conv, const json& expected) {
  if (conv.messages().size() != expected.size()) return false;
  for (size_t i = 0; i < expected.size(); ++i)
    if (conv.messages()[i].role != expected[i].at(0).get<std::string>() ||
        conv.messages()[i].text != text_of(expected[i]))
      return false;
  return true;
}

// Drives `conv` with Chat operations (fill the open answer, upload_img, ask, answer) until
// its messages are `target`; the fixture only records the states between the steps.
void replay(Conversation& conv, const json& target) {
  size_t i = 0;
  for (; i < conv.messages().size(); ++i) {
    const Message& have = conv.messages()[i];
    const bool open_answer =
        i + 1 == conv.messages().size() && !have.text && have.role == conv.roles()[1] && text_of(target.at(i));
    if (open_answer) conv.set_answer(*text_of(target.at(i)));
  }
  const std::string image = kImageMessage;
  for (; i < target.size(); ++i) {
    const std::string role = target[i].at(0);
    const auto text = text_of(target[i]);
    if (role == conv.roles()[1]) {
      conv.start_answer();
      if (text) conv.set_answer(*text);
    } else if (text && text->rfind(image, 0) == 0) {
      conv.upload_image();
      if (text->size() > image.size()) {
        REQUIRE(text->at(image.size()) == ' ');  // ask() joins with one space
        conv.ask(text->substr(image.size() + 1));
      }
    } else {
      REQUIRE(text);
      conv.ask(*text);
    }
  }
}

int check_template_cases(const fs::path& dir) {
  int checks = 0;
  const json file = mt::read_json(dir / "conversation_cases.json");
  for (const auto& c : file.at("cases")) {
    const std::string name = template_name(c.at("template"));
    INFO("case " << dir.filename().string() << " template " << name);
    Conversation conv = conversation_template(name);
    CHECK(conv.system() == c.at("system").get<std::string>());
    CHECK(conv.roles() == c.at("roles").get<std::vector<std::string>>());
    CHECK(conv.sep() == c.at("sep").get<std::string>());
    CHECK(conv.sep2() == (c.at("sep2").is_null() ? std::nullopt : std::optional<std::string>(c.at("sep2"))));
    CHECK((conv.sep_style() == SeparatorStyle::Single ? "SINGLE" : "TWO") == c.at("sep_style").get<std::string>());
    checks += 5;
    for (const auto& step : c.at("steps")) {
      INFO("after " << step.value("after", ""));
      replay(conv, step.at("messages"));
      CHECK(same_messages(conv, step.at("messages")));
      CHECK(conv.get_prompt() == step.at("prompt").get<std::string>());
      checks += 2;
    }
  }
  return checks;
}

// The manifest's chat: its prompt, and the ids of its segments around <ImageHere>.
int check_generation_prompt(const fs::path& dir) {
  const json manifest = mt::read_json(dir / "manifest.json");
  if (!manifest.contains("generation") || !manifest.at("generation").contains("messages")) return 0;
  const json& gen = manifest.at("generation");
  INFO("case " << dir.filename().string() << " generation prompt");
  Conversation conv = conversation_template(template_name(gen.at("template")));
  replay(conv, gen.at("messages"));
  CHECK(conv.get_prompt() == gen.at("prompt").get<std::string>());
  int checks = 1;

  if (!fs::exists(dir / "io.safetensors") || !fs::exists(dir / "vicuna" / "tokenizer.model")) return checks;
  const mt::I64Safetensors io(dir / "io.safetensors");
  const auto tok = LlamaTokenizer::from_pretrained(dir / "vicuna");
  const auto segments = split_image_placeholder(conv.get_prompt());
  for (size_t i = 0; i < segments.size(); ++i) {
    const auto expected = io.get("chat_seg" + std::to_string(i) + "_ids");
    if (!expected) continue;
    CHECK(tok.encode(segments[i], i == 0) == expected->values);  // only seg 0 has bos
    ++checks;
  }
  return checks;
}

}  // namespace

TEST_CASE("conversation templates match the Python prompts on every fixture case", "[parity][chat]") {
  const auto dirs = mt::parity_cases("conversation_cases.json");
  REQUIRE(!dirs.empty());
  for (const auto& dir : dirs) {
    const int checks = check_template_cases(dir) + check_generation_prompt(dir);
    std::cout << "parity case " << dir.filename().string() << ": " << checks << " tensors checked\n";
  }
}
