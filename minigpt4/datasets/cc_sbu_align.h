#pragma once
// The stage-2 dataset (cc_sbu_align): <root>/filter_cap.json =
// {"annotations": [{"image_id": "2", "caption": "..."}, ...]} and <root>/image/<id>.jpg.
// Captions are used raw: the original's stage-2 dataset does not run the caption processor.
#include "minigpt4/datasets/stream.h"

#include <cstdint>
#include <string>
#include <vector>

namespace minigpt4::datasets {

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

 private:
  std::string root_;
  std::vector<AlignAnnotation> annotations_;
};

// The endless stream: pass after pass (PassCursor). A missing image file becomes a skip
// note; whether the image decodes is for the loader's workers to find out.
class CcSbuAlignStream : public SampleStream {
 public:
  CcSbuAlignStream(CcSbuAlignDataset dataset, uint64_t seed, int rank, int world_size);
  StreamRecord next() override;
  const CcSbuAlignDataset& dataset() const { return dataset_; }

 private:
  CcSbuAlignDataset dataset_;
  PassCursor cursor_;
};

}  // namespace minigpt4::datasets
