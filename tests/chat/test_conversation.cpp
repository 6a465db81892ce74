// Unit tests of the conversation templates and the Chat operations on them.
#include <catch2/catch.hpp>

#include <algorithm>

#include "minigpt4/chat/conversation.h"
#include "minigpt4/common/error.h"
#include "minigpt4/tokenizer/llama_tokenizer.h"
#include "tests/support/fixtures.h"

using namespace minigpt4;

namespace {
const std::string kSystem =
    "Give the following image: <Img>ImageContent</Img>. You will be able to see the image "
    "once I provide it to you. Please answer my questions.";
}

TEST_CASE("CONV_VISION: upload, ask, answer", "[chat]") {
  Conversation conv = conv_vision_v0();
  CHECK(conv.get_prompt() == kSystem + "###");
  conv.upload_image();
  conv.ask("Hi?");
  conv.start_answer();
  CHECK(conv.get_prompt() == kSystem + "###Human: <Img><ImageHere></Img> Hi?###Assistant:");
  conv.set_answer("Yes.");
  conv.ask("More?");  // the last human turn is no image: a new turn
  REQUIRE(conv.messages().size() == 3);
  CHECK(conv.messages()[2].text == "More?");
  CHECK(conv.get_prompt() == kSystem + "###Human: <Img><ImageHere></Img> Hi?###Assistant: Yes.###Human: More?###");
}

TEST_CASE("ask joins only a human turn that ends with an image", "[chat]") {
  Conversation conv = conv_vision_vicuna0();
  conv.ask("no image yet");
  conv.upload_image();
  conv.upload_image();
  conv.ask("compare them");
  REQUIRE(conv.messages().size() == 3);
  CHECK(conv.messages()[1].text == "<Img><ImageHere></Img>");
  CHECK(conv.messages()[2].text == "<Img><ImageHere></Img> compare them");
  conv.start_answer();
  CHECK(conv.get_prompt() == kSystem +
                                 "###Human: no image yet###Human: <Img><ImageHere></Img>###Human: "
                                 "<Img><ImageHere></Img> compare them###Assistant: ");
}

TEST_CASE("an empty message counts as an open turn, like Python's `if message:`", "[chat]") {
  Conversation conv = conv_vision_v0();
  conv.append_message("Human", std::string());
  CHECK(conv.get_prompt() == kSystem + "###Human:");
}

TEST_CASE("separator style TWO alternates sep and sep2", "[chat]") {
  Conversation conv("SYS", {"USER", "ASSISTANT"}, SeparatorStyle::Two, " ", "</s>", RoleFormat::Colon);
  conv.append_message("USER", "hi");
  conv.append_message("ASSISTANT", "hello");
  conv.append_message("USER", "bye");
  conv.append_message("ASSISTANT", std::nullopt);
  CHECK(conv.get_prompt() == "SYS USER: hi ASSISTANT: hello</s>USER: bye ASSISTANT:");
  CHECK_THROWS_AS(Conversation("S", {"a", "b"}, SeparatorStyle::Two, " ", std::nullopt, RoleFormat::Colon), Error);
}

TEST_CASE("LLaMA-2 template: the literal <s> in the roles becomes bos", "[chat]") {
  Conversation conv = conv_vision_llama2();
  conv.upload_image();
  conv.ask("What?");
  conv.start_answer();
  const std::string prompt = conv.get_prompt();
  CHECK(prompt == kSystem + "<s>[INST] <Img><ImageHere></Img> What? [/INST] ");
  const auto tok = LlamaTokenizer::from_pretrained(test::data_dir() / "parity" / "tiny_vicuna0" / "vicuna");
  const auto segments = split_image_placeholder(prompt);
  REQUIRE(segments.size() == 2);
  const auto ids = tok.encode(segments[0], false);
  CHECK(std::count(ids.begin(), ids.end(), tok.bos_id()) == 1);
}

TEST_CASE("split_image_placeholder behaves like str.split", "[chat]") {
  using V = std::vector<std::string>;
  CHECK(split_image_placeholder("a<ImageHere>b") == V{"a", "b"});
  CHECK(split_image_placeholder("no image") == V{"no image"});
  CHECK(split_image_placeholder("<ImageHere>") == V{"", ""});
  CHECK(split_image_placeholder("x<ImageHere><ImageHere>y") == V{"x", "", "y"});
}

TEST_CASE("templates by name", "[chat]") {
  CHECK(conversation_template("CONV_VISION").role_format() == RoleFormat::Colon);
  CHECK(conversation_template("vicuna0").roles()[0] == "Human: ");
  CHECK(conversation_template("CONV_VISION_LLama2").sep().empty());
  CHECK_THROWS_AS(conversation_template("CONV_VISION_Vicuna1"), Error);
}
