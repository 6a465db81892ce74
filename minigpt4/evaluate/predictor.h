#pragma once
// Answers benchmark items with a loaded model, as MiniGPT-4's chat asks: the image turn
// `<Img><ImageHere></Img>` followed by the task's instruction in the model's conversation
// template, the open assistant turn, then generation and clean-up.
#include "minigpt4/evaluate/items.h"
#include "minigpt4/evaluate/settings.h"
#include "minigpt4/generate/generate.h"

#include <memory>
#include <string>
#include <vector>

namespace minigpt4 {
struct ChatModel;
}

namespace minigpt4::evaluate {

class Predictor {
 public:
  Predictor(std::shared_ptr<const ChatModel> model, const EvalSettings& settings);

  // One prediction per item, in order. Greedy (num_beams 1) runs the whole batch through
  // generate_batch, each prompt left-padded to the longest; beam search goes item by item.
  // An image that cannot be decoded is an Error naming it.
  std::vector<std::string> predict(const std::vector<EvalItem>& batch) const;

  // The full prompt of one item (conversation template with the instruction).
  std::string prompt_for(const EvalItem& item) const;

 private:
  std::shared_ptr<const ChatModel> model_;
  EvalSettings settings_;
  GenerationConfig generation_;
};

// The answer as the benchmark is scored on: cut at the stop string '###', '<unk>' removed,
// white space stripped; short answers (VQA, GQA) also lowercased, as MiniGPT-4's VQA
// evaluation does.
std::string clean_prediction(const std::string& answer, bool short_answer);

}  // namespace minigpt4::evaluate
