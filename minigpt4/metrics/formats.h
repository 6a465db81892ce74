#pragma once
// Readers for benchmark annotation files and prediction files. Every problem is an Error
// naming the file, the entry and what was expected. Ids are kept as strings: a JSON integer
// becomes its decimal form, so 391895 and "391895" are the same id.
#include "minigpt4/metrics/vqa_metrics.h"

#include <map>
#include <string>
#include <string_view>
#include <vector>

namespace minigpt4::metrics {

// One annotated image of a caption set, in file order.
struct CaptionImage {
  std::string image_id;
  std::vector<std::string> references;
  std::string domain;  // NoCaps: in-domain / near-domain / out-domain; empty when absent
  // The picture, for `minigpt4 evaluate`: a Karpathy entry's "image" path, the official
  // layout's images[].file_name; empty when the file does not say.
  std::string file_name;
};

// Caption annotations in either layout:
//   - a Karpathy split list (LAVIS's coco_karpathy_test.json):
//     [{"image": "val2014/COCO_val2014_000000391895.jpg", "caption": ["...", ...] or "..."}],
//     entries of the same image merged, the image id derived from the file name as LAVIS
//     does (karpathy_image_id);
//   - the official COCO captions_*.json / NoCaps layout:
//     {"images": [{"id", "domain"?}], "annotations": [{"image_id", "caption"}]}; without
//     "images" the images are those the annotations name. Every image needs a caption.
std::vector<CaptionImage> read_caption_annotations(const std::string& path);

// LAVIS's image id for a Karpathy entry: the file name, stripped at both ends of the
// characters '.', 'j', 'p', 'g' (Python's str.strip(".jpg")), the part after its last '_',
// as an integer: "val2014/COCO_val2014_000000391895.jpg" -> "391895". Empty when that part
// is not a number.
std::string karpathy_image_id(std::string_view image_path);

// Prediction files: id -> predicted text. An id predicted twice is an error.
using Predictions = std::map<std::string, std::string>;

// Submission format [{"image_id", "caption"}].
Predictions read_caption_predictions(const std::string& path);
// Submission format [{"question_id", "answer"}]; GQA's own {"questionId", "prediction"} too.
Predictions read_answer_predictions(const std::string& path);

// VQAv2 / OK-VQA annotations {"annotations": [{"question_id", "answers": [{"answer", ...}],
// "answer_type"?, "question_type"?}]}, in file order.
std::vector<VqaQuestion> read_vqa_annotations(const std::string& path);
// The question ids of a VQAv2 / OK-VQA questions file {"questions": [{"question_id", ...}]}.
std::vector<std::string> read_vqa_question_ids(const std::string& path);

// What `minigpt4 evaluate` asks: the questions of that file with their text and image id.
struct VqaQuestionText {
  std::string question_id;
  std::string image_id;
  std::string question;
};
std::vector<VqaQuestionText> read_vqa_questions(const std::string& path);

// GQA questions with answers (testdev_balanced_questions.json): {"<id>": {"answer",
// "types": {"structural", "semantic"}?, "imageId"?, "question"?, ...}}.
std::vector<GqaQuestion> read_gqa_questions(const std::string& path);

}  // namespace minigpt4::metrics
