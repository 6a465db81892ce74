#pragma once
// MiniGPT-4's conversation templates (minigpt4/conversation/conversation.py) and the parts
// of its `Chat` class that only edit the conversation: upload_img, ask, and answer's
// open/close of the assistant turn. get_prompt() reproduces the Python strings byte for byte.
#include "minigpt4/common/instruction.h"

#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace minigpt4 {

enum class SeparatorStyle {
  Single,  // every message ends with `sep`
  Two,     // messages alternate between ending with `sep` and `sep2`
};

// How a role is joined to its message. The two code generations differ here, and it is
// what makes CONV_VISION end with "Assistant:" but CONV_VISION_Vicuna0 with "Assistant: ".
enum class RoleFormat {
  Colon,     // April 2023: "Human" -> "Human: msg", an open turn is "Human:"
  Verbatim,  // Sep 2023: roles carry their own punctuation: "Human: " -> "Human: msg"
};

// upload_img() puts kImageMessage (common/instruction.h) in the human turn; get_context_emb
// splits the prompt on kImagePlaceholder and puts the image embeddings in between.

struct Message {
  std::string role;
  std::optional<std::string> text;  // nullopt: the assistant turn still being generated
};

class Conversation {
 public:
  Conversation(std::string system, std::vector<std::string> roles, SeparatorStyle sep_style, std::string sep,
               std::optional<std::string> sep2, RoleFormat role_format);

  std::string get_prompt() const;
  void append_message(const std::string& role, std::optional<std::string> text);

  // Chat.upload_img: a human turn holding only the image.
  void upload_image();
  // Chat.ask: a question right after an image goes into the image's turn (joined with a
  // space); otherwise it opens a new human turn.
  void ask(const std::string& text);
  // Chat.answer: first the open assistant turn (for the prompt), then its text.
  void start_answer();
  void set_answer(const std::string& text);

  const std::string& system() const { return system_; }
  const std::vector<std::string>& roles() const { return roles_; }
  const std::vector<Message>& messages() const { return messages_; }
  SeparatorStyle sep_style() const { return sep_style_; }
  const std::string& sep() const { return sep_; }
  const std::optional<std::string>& sep2() const { return sep2_; }
  RoleFormat role_format() const { return role_format_; }

 private:
  std::string system_;
  std::vector<std::string> roles_;
  std::vector<Message> messages_;
  SeparatorStyle sep_style_;
  std::string sep_;
  std::optional<std::string> sep2_;
  RoleFormat role_format_;
};

// CONV_VISION of the original (April 2023) code, the Vicuna v0 '###' template.
Conversation conv_vision_v0();
// CONV_VISION_Vicuna0 of the Sep 2023 code (same text, roles "Human: " / "Assistant: ").
Conversation conv_vision_vicuna0();
// CONV_VISION_LLama2 of the Sep 2023 code ("<s>[INST] " / " [/INST] ", empty separator).
Conversation conv_vision_llama2();
// MiniGPT-v2's CONV_VISION_minigptv2, which TinyGPT-V's stage-4 demo (demo_v2.py) uses: no
// system text, roles "<s>[INST] " / " [/INST]", empty separator. (TinyGPT-V's own
// conversation.py reuses the name for a '###' template; its stages 1-3 chat with vicuna0.)
Conversation conv_vision_minigptv2();
// By the Python name ("CONV_VISION", "CONV_VISION_Vicuna0", "CONV_VISION_LLama2",
// "CONV_VISION_minigptv2") or a short one ("v0", "vicuna0", "llama2", "minigptv2");
// anything else throws minigpt4::Error.
Conversation conversation_template(const std::string& name);

// Python's prompt.split('<ImageHere>'): n placeholders give n + 1 segments, empty ones kept.
std::vector<std::string> split_image_placeholder(const std::string& prompt);

}  // namespace minigpt4
