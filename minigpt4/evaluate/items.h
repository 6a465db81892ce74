#pragma once
// The items of a benchmark, read from its files in their published formats with the readers
// of minigpt4/eval (the ones `minigpt4 score` uses): one item per image for captioning, one
// per question for VQAv2, OK-VQA and GQA, in the order of the annotation file.
#include "minigpt4/evaluate/settings.h"

#include <string>
#include <string_view>
#include <vector>

namespace minigpt4::evaluate {

struct EvalItem {
  std::string id;          // image id (captions) or question id, as the scorer compares them
  std::string image_path;  // image_root / file name
  std::string question;    // empty for captions
};

// Every item of the benchmark. Stops with an Error naming the file when an annotation file
// is malformed, and naming the first missing pictures (and how many there are) when images
// are not where image_root and the file names say: a run is not started on a partial set.
std::vector<EvalItem> load_items(const EvalSettings& settings);

// evaluation.image_file for one image id: {image_id} in Python/fmt format syntax, numeric
// ids as integers (so {image_id:012d} pads them), others as text. Errors name the pattern.
std::string image_file_name(std::string_view pattern, const std::string& image_id);

}  // namespace minigpt4::evaluate
