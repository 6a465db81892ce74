#pragma once
// Does the model see? The quickstart's measure: ask the chat question about each held-out
// synthetic picture, read the four attributes (shape, colour, count, position) out of the
// free-text answer, and count the ones that are right. The blind baseline asks the same
// model the same question with the image left out, so whatever it gets right comes from
// the language prior alone.
#include "minigpt4/quickstart/synth.h"

#include <nlohmann/json_fwd.hpp>

#include <array>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace minigpt4 {
struct MiniGPT4;
class Tokenizer;
}  // namespace minigpt4

namespace minigpt4::quickstart {

struct HeldoutItem {
  std::string image_path;
  SceneAttributes truth;
  std::vector<std::array<int, 4>>
      boxes;  // each object's [x0, y0, x1, y1) in pixels (worlds written before 2026-12 have none)
};

// <root>/annotations.json as `minigpt4 synth` writes it; errors name the file and entry.
std::vector<HeldoutItem> read_heldout(const std::string& root);

// The attributes an answer states (the first mention of each); a count is a number word,
// a digit, or "a"/"an" in front of a colour or shape; "center" and "middle" mean centre.
struct StatedAttributes {
  std::optional<std::string> shape, colour, position;
  std::optional<int> count;
};
StatedAttributes parse_scene_answer(const std::string& answer);

struct AttributeTally {
  int64_t items = 0;
  int64_t shape = 0, colour = 0, count = 0, position = 0;  // right answers per attribute
  void add(const StatedAttributes& stated, const SceneAttributes& truth);
  double accuracy() const;  // right attributes / (4 * items)
  nlohmann::json to_json() const;
};

struct HeldoutOptions {
  std::string question = "Describe this image in detail.";
  std::string conversation = "vicuna0";  // the chat template `minigpt4 chat` uses
  int64_t max_new_tokens = 40;
  int64_t limit = -1;        // first N items only; -1: all
  bool blind = true;         // also answer without the image (false: `blind` stays empty)
  std::string answers_path;  // optional JSONL of every answer
};

struct HeldoutResult {
  AttributeTally seeing, blind;
  double seconds = 0;
};

// Greedy answers with (and, with options.blind, without) the image for every item.
HeldoutResult evaluate_heldout(const MiniGPT4& model, const Tokenizer& tokenizer, const std::vector<HeldoutItem>& items,
                               const HeldoutOptions& options);

}  // namespace minigpt4::quickstart
