#pragma once
// The stage-2 dataset (cc_sbu_align): <root>/filter_cap.json =
// {"annotations": [{"image_id": "2", "caption": "..."}, ...]} and <root>/image/<id>.jpg.
// Captions are used raw: the original's stage-2 dataset does not run the caption processor.
#include "minigpt4/data/stream.h"

#include <cstdint>
#include <string>
#include <vector>

namespace minigpt4::data {

struct AlignAnnotation {
  std::string image_id;
  std::string caption;
};

class CcSbuAlignDataset {
 public:
  // Reads <root>/filter_cap.json; a missing or malformed file, or an entry without an
  // image_id / caption, is an Error naming the file (and the entry).
  explicit CcSbuAlignDataset(std::string root);

  size_t size() const { return annotations_.size(); }
  const AlignAnnotation& annotation(size_t i) const { return annotations_.at(i); }
  std::string image_path(size_t i) const;  // <root>/image/<image_id>.jpg
  const std::string& root() const { return root_; }

  // The indices rank `rank` reads in pass `pass`: all indices shuffled with seed + pass
  // (the same order on every rank), then every world_size-th from position `rank`, so
  // the ranks together cover each annotation exactly once per pass.
  std::vector<size_t> pass_order(uint64_t seed, uint64_t pass, int rank, int world_size) const;

 private:
  std::string root_;
  std::vector<AlignAnnotation> annotations_;
};

// The endless stream: pass after pass of pass_order. A missing image file becomes a skip
// note; whether the image decodes is for the loader's workers to find out.
class CcSbuAlignStream : public SampleStream {
 public:
  CcSbuAlignStream(CcSbuAlignDataset dataset, uint64_t seed, int rank, int world_size);
  StreamRecord next() override;
  const CcSbuAlignDataset& dataset() const { return dataset_; }

 private:
  CcSbuAlignDataset dataset_;
  uint64_t seed_;
  int rank_;
  int world_size_;
  uint64_t pass_ = 0;
  std::vector<size_t> order_;
  size_t position_ = 0;
};

}  // namespace minigpt4::data
