#include "minigpt4/evaluate/items.h"

#include "minigpt4/common/error.h"
#include "minigpt4/common/untrusted.h"
#include "minigpt4/metrics/formats.h"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <filesystem>
#include <map>

namespace minigpt4::evaluate {

namespace fs = std::filesystem;

namespace {

bool is_number(const std::string& s) {
  return !s.empty() && s.size() <= 18 && s.find_first_not_of("0123456789") == std::string::npos;
}

// An image file name from an annotation file (or evaluation.image_file filled with an id
// from one), under evaluation.image_root: absolute names, '..' and NUL are refused, naming
// the annotation file and the item.
std::string under_root(const EvalSettings& settings, const std::string& file_name, const std::string& item) {
  constexpr size_t kMaxFileNameBytes = 4096;
  const std::string what = fmt::format("{}: image file of {}", settings.annotations, item);
  if (file_name.size() > kMaxFileNameBytes)
    fail("{}: the file name is {} bytes ('{}'), more than the {} a path may have", what, file_name.size(),
         excerpt(file_name), kMaxFileNameBytes);
  return confined_path(settings.image_root, file_name, what).string();
}

std::string item_name(const char* kind, const std::string& id) { return fmt::format("{} {}", kind, excerpt(id, 100)); }

std::vector<EvalItem> caption_items(const EvalSettings& s) {
  std::vector<EvalItem> items;
  for (const auto& image : metrics::read_caption_annotations(s.annotations)) {
    std::string file = image.file_name;
    if (file.empty() && !s.image_file.empty()) file = image_file_name(s.image_file, image.image_id);
    if (file.empty())
      fail(
          "caption annotations {}: image {} has no file name (the official layout names it in images[].file_name); "
          "set evaluation.image_file to derive it from the image id",
          s.annotations, excerpt(image.image_id, 100));
    items.push_back({image.image_id, under_root(s, file, item_name("image", image.image_id)), ""});
  }
  return items;
}

// VQAv2 / OK-VQA: the annotated questions, their text and image from the questions file.
std::vector<EvalItem> vqa_items(const EvalSettings& s) {
  std::map<std::string, metrics::VqaQuestionText> asked;
  for (auto& q : metrics::read_vqa_questions(s.questions)) asked.emplace(q.question_id, std::move(q));
  std::vector<EvalItem> items;
  for (const auto& annotated : metrics::read_vqa_annotations(s.annotations)) {
    const auto it = asked.find(annotated.question_id);
    if (it == asked.end())
      fail("VQA questions {}: question {} of the annotations {} is not in it; are the two files of the same split?",
           s.questions, excerpt(annotated.question_id, 100), s.annotations);
    items.push_back({annotated.question_id,
                     under_root(s, image_file_name(s.image_file, it->second.image_id),
                                item_name("question", annotated.question_id)),
                     it->second.question});
  }
  return items;
}

std::vector<EvalItem> gqa_items(const EvalSettings& s) {
  std::vector<EvalItem> items;
  for (const auto& q : metrics::read_gqa_questions(s.annotations)) {
    if (q.image_id.empty() || q.question.empty())
      fail("GQA questions {}: question {} needs 'imageId' and 'question' to be asked", s.annotations,
           excerpt(q.question_id, 100));
    items.push_back({q.question_id,
                     under_root(s, image_file_name(s.image_file, q.image_id), item_name("question", q.question_id)),
                     q.question});
  }
  return items;
}

void check_images_exist(const std::vector<EvalItem>& items, const EvalSettings& s) {
  constexpr size_t kShown = 3;
  std::vector<std::string> first_missing;
  size_t missing = 0;
  for (const auto& item : items) {
    std::error_code ec;  // "File name too long" and the like: missing, named below
    if (fs::is_regular_file(item.image_path, ec)) continue;
    if (++missing <= kShown)
      first_missing.push_back(excerpt(item.image_path, 300) +
                              (ec && ec != std::errc::no_such_file_or_directory ? " (" + ec.message() + ")" : ""));
  }
  if (missing == 0) return;
  fail("{} of the {} images of {} are missing (first: {}); check evaluation.image_root ({}){}", missing, items.size(),
       s.annotations, fmt::join(first_missing, ", "), s.image_root,
       s.image_file.empty() ? "" : fmt::format(" and evaluation.image_file ({})", s.image_file));
}

}  // namespace

std::string image_file_name(std::string_view pattern, const std::string& image_id) {
  try {
    int64_t number = 0;
    if (is_number(image_id) && parse_int64(image_id, number))
      return fmt::format(fmt::runtime(pattern), fmt::arg("image_id", number));
    return fmt::format(fmt::runtime(pattern), fmt::arg("image_id", image_id));
  } catch (const fmt::format_error& e) {
    fail(
        "evaluation.image_file '{}' cannot name image {}: {} (write it as a format with {{image_id}}, e.g. "
        "COCO_val2014_{{image_id:012d}}.jpg)",
        pattern, excerpt(image_id, 100), e.what());
  }
}

std::vector<EvalItem> load_items(const EvalSettings& settings) {
  std::vector<EvalItem> items;
  switch (settings.task) {
    case metrics::Task::coco_caption:
    case metrics::Task::nocaps: items = caption_items(settings); break;
    case metrics::Task::vqav2:
    case metrics::Task::okvqa: items = vqa_items(settings); break;
    case metrics::Task::gqa: items = gqa_items(settings); break;
  }
  check_images_exist(items, settings);
  return items;
}

}  // namespace minigpt4::evaluate
