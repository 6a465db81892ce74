#include "minigpt4/chat/conversation.h"

#include "minigpt4/common/error.h"
#include "minigpt4/common/strings.h"

namespace minigpt4 {

namespace {

const char* kVisionSystem =
    "Give the following image: <Img>ImageContent</Img>. You will be able to see the image "
    "once I provide it to you. Please answer my questions.";

}  // namespace

Conversation::Conversation(std::string system, std::vector<std::string> roles, SeparatorStyle sep_style,
                           std::string sep, std::optional<std::string> sep2, RoleFormat role_format)
    : system_(std::move(system)),
      roles_(std::move(roles)),
      sep_style_(sep_style),
      sep_(std::move(sep)),
      sep2_(std::move(sep2)),
      role_format_(role_format) {
  if (roles_.size() != 2) fail("Conversation: expected 2 roles, got {}", roles_.size());
  if (sep_style_ == SeparatorStyle::Two && !sep2_) fail("Conversation: separator style TWO needs sep2");
}

std::string Conversation::get_prompt() const {
  const bool colon = role_format_ == RoleFormat::Colon;
  std::string ret = system_ + sep_;
  for (size_t i = 0; i < messages_.size(); ++i) {
    const Message& m = messages_[i];
    // Python tests `if message:`, so an empty string is an open turn too.
    if (m.text && !m.text->empty()) {
      const std::string& end = (sep_style_ == SeparatorStyle::Two && i % 2 == 1) ? *sep2_ : sep_;
      ret += m.role + (colon ? ": " : "") + *m.text + end;
    } else {
      ret += m.role + (colon ? ":" : "");
    }
  }
  return ret;
}

void Conversation::append_message(const std::string& role, std::optional<std::string> text) {
  messages_.push_back({role, std::move(text)});
}

void Conversation::upload_image() { append_message(roles_[0], kImageMessage); }

void Conversation::ask(const std::string& text) {
  // Python: messages[-1][0] == roles[0] and messages[-1][1][-6:] == '</Img>'.
  if (!messages_.empty() && messages_.back().role == roles_[0] && messages_.back().text &&
      ends_with(*messages_.back().text, "</Img>")) {
    *messages_.back().text += " " + text;
  } else {
    append_message(roles_[0], text);
  }
}

void Conversation::start_answer() { append_message(roles_[1], std::nullopt); }

void Conversation::set_answer(const std::string& text) {
  if (messages_.empty()) fail("Conversation: set_answer() on an empty conversation");
  messages_.back().text = text;  // Python: conv.messages[-1][1] = output_text
}

Conversation conv_vision_v0() {
  return Conversation(kVisionSystem, {"Human", "Assistant"}, SeparatorStyle::Single, "###", std::nullopt,
                      RoleFormat::Colon);
}

Conversation conv_vision_vicuna0() {
  return Conversation(kVisionSystem, {"Human: ", "Assistant: "}, SeparatorStyle::Single, "###", std::nullopt,
                      RoleFormat::Verbatim);
}

Conversation conv_vision_llama2() {
  // The literal "<s>" in the role is turned into the bos id by the tokenizer.
  return Conversation(kVisionSystem, {"<s>[INST] ", " [/INST] "}, SeparatorStyle::Single, "", std::nullopt,
                      RoleFormat::Verbatim);
}

Conversation conv_vision_minigptv2() {
  return Conversation("", {"<s>[INST] ", " [/INST]"}, SeparatorStyle::Single, "", std::nullopt, RoleFormat::Verbatim);
}

Conversation conversation_template(const std::string& name) {
  if (name == "CONV_VISION" || name == "v0") return conv_vision_v0();
  if (name == "CONV_VISION_Vicuna0" || name == "vicuna0") return conv_vision_vicuna0();
  if (name == "CONV_VISION_LLama2" || name == "llama2") return conv_vision_llama2();
  if (name == "CONV_VISION_minigptv2" || name == "minigptv2") return conv_vision_minigptv2();
  fail(
      "unknown conversation template '{}' (expected CONV_VISION, CONV_VISION_Vicuna0, CONV_VISION_LLama2 or "
      "CONV_VISION_minigptv2)",
      name);
}

std::vector<std::string> split_image_placeholder(const std::string& prompt) { return split(prompt, kImagePlaceholder); }

}  // namespace minigpt4
