#pragma once
// MiniGPT-v2's multi-task training datasets (TinyGPT-V stage 4), read in the on-disk layouts
// the original reads (MiniGPT-4's minigpt4/datasets/datasets/*.py) and turned into the same
// instruction + answer: the image slot `<Img><ImageHere></Img> `, a task tag ([refer],
// [identify], [grounding], [detection], [caption], [vqa]) with one of the original's
// instruction templates, and boxes written as `{<x0><y0><x1><y1>}` on its 0..100 grid.
//
//   name                               build_info            file(s)
//   llava_detail, llava_reason         ann_path, image_path  [{"id", "conversations": [human, gpt]}],
//   COCO_train2014_<id>.jpg llava_conversation, multitask_conversation             ann_path, image_path  the same,
//   several turns (every answer trained) unnatural_instruction              ann_path              [{"instances":
//   [{"instruction_with_input", "constraints", "output"}]}], no image flickr_grounded_caption            ann_path,
//   image_path  [{"image_id", "grounded_caption"}], <image_id>.jpg flickr_CaptionToPhrase             ann_path,
//   image_path  [{"image_id", "caption", "output"}] flickr_ObjectToPhrase              ann_path, image_path
//   [{"image_id", "phrase", "bbox"}] textcaps_caption                   ann_path, image_path  {"data": [{"image_id",
//   "caption_str"}]}, <image_id>.jpg refcoco(p,g), invrefcoco(p,g)      ann_path, image_path
//   <ann_path>/<dataset>/refs(<splitBy>).p + instances.json (REFER),
//                                      (dataset, splitBy)    COCO_train2014_<image_id:012>.jpg; the refs of split
//                                      "train"
//   refvg                              data_dir              image_data.json + region_descriptions.json,
//   <data_dir>/VG_100K(_2)/<id>.jpg;
//                                                            regions smaller than 16384 px
//   coco_caption                       annotations.train.storage, images.storage   Karpathy list, "train" images only
//   coco_vqa, ok_vqa, aok_vqa          annotations.train.storage, images.storage   LAVIS VQA lists; image = basename of
//   "image" gqa                                annotations.train.storage, images.storage   LAVIS GQA list; image =
//   "image" under the root ocrvqa                             ann_path, image_path  OCR-VQA's dataset.json (split 1),
//   <key><ext of imageURL>
//
// Random choices (template, RefCOCO sentence, VQA answer) come from a generator seeded by
// the run seed, the dataset, the pass and the entry, so a seed fixes every sample whatever
// the rank count, workers or thread timing.
#include "minigpt4/datasets/loader.h"
#include "minigpt4/datasets/stream.h"

#include <array>
#include <memory>
#include <random>
#include <string>

namespace minigpt4::datasets {

// True for the names above: the loader reads them with load_instruction_source.
bool is_instruction_dataset(const std::string& name);

// One dataset's annotations, read and checked when built (a missing file, malformed JSON, an
// entry without the fields its format needs: an Error naming the file and the entry).
class InstructionSource {
 public:
  virtual ~InstructionSource() = default;
  virtual size_t size() const = 0;
  // Entry i as a record: its image path (has_image false for text-only data), its turns,
  // and the box still to place (StreamRecord::box), drawing its random choices from rng.
  virtual StreamRecord record(size_t i, std::mt19937_64& rng) const = 0;
};

std::unique_ptr<InstructionSource> load_instruction_source(const DatasetSpec& spec);

// MiniGPT-v2's box text for [x, y, w, h] pixels in a width x height image:
// int(x / width * 100) and so on, Python's order of operations, as "{<x0><y0><x1><y1>}".
std::string grid_box(const std::array<double, 4>& xywh, int width, int height);

// Writes the box into `instruction` (replacing kBoxSlot). Returns "" or, for a box outside
// the image (more than a pixel over an edge, or negative), why.
std::string place_box(Instruction& instruction, const std::array<double, 4>& xywh, int width, int height);

// The endless stream: pass after pass over the entries (shuffled per pass, split over
// ranks as cc_sbu_align); an image file that does not exist becomes a skip note.
class InstructionStream : public SampleStream {
 public:
  InstructionStream(std::string name, std::unique_ptr<InstructionSource> source, uint64_t seed, int rank,
                    int world_size);
  StreamRecord next() override;

 private:
  std::string name_;
  std::unique_ptr<InstructionSource> source_;
  uint64_t seed_;  // with the name, pass and index: each entry's template choices
  PassCursor cursor_;
};

}  // namespace minigpt4::datasets
