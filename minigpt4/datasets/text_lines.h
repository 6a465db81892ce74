#pragma once
// A text-only dataset: one training text per non-empty line of a UTF-8 file. It feeds a
// language warm-up of the LLM (`data_type: text`): there are no images, so the model's
// training forward sees [bos] + text + end_sym alone.
#include "minigpt4/datasets/stream.h"

#include <string>
#include <vector>

namespace minigpt4::datasets {

class TextLinesStream : public SampleStream {
 public:
  // Reads every non-empty line of `path` (a trailing '\r' is dropped); a missing or empty
  // file is an Error naming it. Passes are shuffled with seed + pass and split over ranks
  // like cc_sbu_align, so the ranks together read each line once per pass.
  TextLinesStream(const std::string& path, uint64_t seed, int rank, int world_size);
  StreamRecord next() override;
  size_t size() const { return lines_.size(); }

 private:
  std::string path_;
  std::vector<std::string> lines_;
  PassCursor cursor_;
};

}  // namespace minigpt4::datasets
