#pragma once
// One training sample of MiniGPT-v2's multi-task datasets (TinyGPT-V stage 4), as the data
// loader hands it to the model: the turns of a conversation, each a question and the answer
// the model learns to give. Lives here because both the loaders (minigpt4/data) and the
// model's training forward (minigpt4/models) speak it, and neither may know the other.
#include <string>
#include <vector>

namespace minigpt4 {

// Where a prompt puts the image: the model splits the text there and the image embeddings go
// in between (MiniGPT-4's `<Img><ImageHere></Img>` in the conversation template).
inline constexpr const char* kImagePlaceholder = "<ImageHere>";
inline constexpr const char* kImageMessage = "<Img><ImageHere></Img>";

struct Instruction {
  // questions[i] is turn i's question, answers[i] its answer (the same count). For an
  // image sample the first question holds the image slot `<Img><ImageHere></Img>`.
  std::vector<std::string> questions;
  std::vector<std::string> answers;
  // A multi-turn dataset (MiniGPT-v2's `conv_q`/`conv_a` path): its questions always take
  // model.prompt_template; single-turn ones only with model.chat_template.
  bool conversation = false;
};

}  // namespace minigpt4
