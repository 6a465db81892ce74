#pragma once
// Does an explanation point at the right place? The synthetic world knows where every
// object is, so for each held-out picture: answer the chat question, explain the answer
// (chat/explain.h), and for each colour or shape word in it measure the share of the
// word's map inside the objects' boxes, against the boxes' share of the picture (what a
// uniform map gets). The same on a copy of the model whose projector weights are shuffled
// is the control: it cannot know where anything is. docs/explain.md reports the figures.
#include <nlohmann/json_fwd.hpp>

#include <cstdint>
#include <memory>
#include <string>

namespace minigpt4 {
struct ChatModel;
}

namespace minigpt4::quickstart {

struct ExplainCheckOptions {
  std::string heldout_root;  // <world>/heldout, with boxes in annotations.json
  std::string question = "Describe this image in detail.";
  int64_t max_new_tokens = 40;
  int64_t limit = 100;       // first N pictures
  std::string pictures_dir;  // optional: overlays of the first `pictures` items
  int64_t pictures = 4;
  uint64_t shuffle_seed = 0;  // the control's permutation
};

struct ExplainScore {
  int64_t pictures = 0;      // with at least one colour or shape word in the answer
  int64_t words = 0;         // colour and shape words scored
  double mass_in_boxes = 0;  // mean over words of the map's mass inside the boxes
  double area_share = 0;     // mean over those words' pictures of the boxes' area share
  double mean_ratio = 0;     // mean over words of mass / area share (uniform map: 1)
  nlohmann::json to_json() const;
};

struct ExplainCheckResult {
  ExplainScore trained, shuffled;
  // Cost, summed over pictures: ChatSession::explain with per-word maps, against one plain
  // forward of the answer span from the prompt's cache and against generating the answer.
  double explain_answer_map_seconds = 0, explain_seconds = 0, answer_forward_seconds = 0, answer_seconds = 0;
  nlohmann::json to_json() const;
};

// `model` is scored as is; the control loads nothing new: it shuffles a copy of the
// projector's weights in `control` (a second ChatModel of the same config), then runs the same.
ExplainCheckResult check_explanations(const ChatModel& model, ChatModel& control, const ExplainCheckOptions& options);

}  // namespace minigpt4::quickstart
