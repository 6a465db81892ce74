#include "minigpt4/metrics/formats.h"

#include "minigpt4/common/error.h"
#include "minigpt4/common/untrusted.h"

#include <nlohmann/json.hpp>

#include <filesystem>
#include <set>

namespace minigpt4::metrics {

namespace {

using nlohmann::json;

// Size-capped (limits.max_text_file_bytes) and depth-limited (limits.max_json_depth); the
// errors name the file and the byte offset.
json read_json(const std::string& path, std::string_view what) {
  std::error_code ec;
  if (!std::filesystem::is_regular_file(path, ec)) fail("{} {}: cannot open the file", what, path);
  return parse_json(read_text_file(path, fmt::format("{} {}", what, path)),
                    fmt::format("{} {}: not valid JSON", what, path));
}

// Reads fields of one entry; every failure names the file, the entry and the field.
class Entry {
 public:
  Entry(const json& value, std::string what, std::string path, std::string where)
      : value_(value), what_(std::move(what)), path_(std::move(path)), where_(std::move(where)) {
    if (!value_.is_object()) fail("{} {}: {} is not a JSON object", what_, path_, where_);
  }

  bool has(const char* key) const { return value_.contains(key); }

  const json& field(const char* key) const {
    if (!value_.contains(key)) fail("{} {}: {} has no '{}'", what_, path_, where_, key);
    return value_.at(key);
  }

  std::string text(const char* key) const {
    const auto& v = field(key);
    if (!v.is_string()) fail("{} {}: {}: '{}' must be a string, not {}", what_, path_, where_, key, v.type_name());
    return v.get<std::string>();
  }

  std::string optional_text(const char* key) const { return has(key) ? text(key) : std::string(); }

  std::string id(const char* key) const {
    const auto& v = field(key);
    if (v.is_number_integer()) return std::to_string(v.get<long long>());
    if (v.is_string() && !v.get<std::string>().empty()) return v.get<std::string>();
    fail("{} {}: {}: '{}' must be an integer or a non-empty string, not {}", what_, path_, where_, key,
         describe_json(v));
  }

  const json& value() const { return value_; }

 private:
  const json& value_;
  std::string what_, path_, where_;
};

std::string entry_name(size_t index) { return fmt::format("entry {}", index); }

const json& list_field(const json& root, const char* key, std::string_view what, const std::string& path,
                       std::string_view hint) {
  if (!root.is_object() || !root.contains(key) || !root.at(key).is_array())
    fail("{} {}: expected an object with a list '{}'{}", what, path, key, hint);
  return root.at(key);
}

std::vector<CaptionImage> read_karpathy_list(const json& root, const std::string& path) {
  constexpr std::string_view kWhat = "caption annotations";
  std::vector<CaptionImage> images;
  std::map<std::string, size_t> index_of;
  for (size_t i = 0; i < root.size(); ++i) {
    const Entry entry(root[i], std::string(kWhat), path, entry_name(i));
    const auto image = entry.text("image");
    const auto id = karpathy_image_id(image);
    if (id.empty())
      fail(
          "{} {}: entry {}: cannot derive an image id from \"{}\" (LAVIS takes the number after the last '_' "
          "of the file name)",
          kWhat, path, i, excerpt(image, 200));
    auto [it, added] = index_of.emplace(id, images.size());
    if (added) images.push_back({id, {}, "", image});
    auto& references = images[it->second].references;
    const auto& captions = entry.field("caption");
    if (captions.is_string()) {
      references.push_back(captions.get<std::string>());
    } else if (captions.is_array()) {
      for (const auto& c : captions) {
        if (!c.is_string())
          fail("{} {}: entry {}: 'caption' must hold strings, found {}", kWhat, path, i, describe_json(c));
        references.push_back(c.get<std::string>());
      }
    } else {
      fail("{} {}: entry {}: 'caption' must be a string or a list of strings", kWhat, path, i);
    }
  }
  return images;
}

std::vector<CaptionImage> read_coco_captions(const json& root, const std::string& path) {
  constexpr std::string_view kWhat = "caption annotations";
  const auto& annotations = list_field(root, "annotations", kWhat, path, "");
  std::vector<CaptionImage> images;
  std::map<std::string, size_t> index_of;
  const bool listed = root.contains("images");
  if (listed) {
    const auto& list = list_field(root, "images", kWhat, path, "");
    for (size_t i = 0; i < list.size(); ++i) {
      const Entry entry(list[i], std::string(kWhat), path, fmt::format("images[{}]", i));
      const auto id = entry.id("id");
      if (!index_of.emplace(id, images.size()).second)
        fail("{} {}: image {} is listed twice", kWhat, path, excerpt(id, 100));
      images.push_back({id, {}, entry.optional_text("domain"), entry.optional_text("file_name")});
    }
  }
  for (size_t i = 0; i < annotations.size(); ++i) {
    const Entry entry(annotations[i], std::string(kWhat), path, fmt::format("annotations[{}]", i));
    const auto id = entry.id("image_id");
    auto it = index_of.find(id);
    if (it == index_of.end()) {
      if (listed)
        fail("{} {}: annotations[{}] names image {}, which 'images' does not list", kWhat, path, i, excerpt(id, 100));
      it = index_of.emplace(id, images.size()).first;
      images.push_back({id, {}, "", ""});
    }
    images[it->second].references.push_back(entry.text("caption"));
  }
  for (const auto& image : images)
    if (image.references.empty())
      fail("{} {}: image {} has no caption (a split without reference captions cannot be scored)", kWhat, path,
           excerpt(image.image_id, 100));
  return images;
}

}  // namespace

std::string karpathy_image_id(std::string_view image_path) {
  auto name = image_path.substr(image_path.find_last_of('/') + 1);  // npos + 1 == 0
  constexpr std::string_view kStripped = ".jpg";
  while (!name.empty() && kStripped.find(name.front()) != std::string_view::npos) name.remove_prefix(1);
  while (!name.empty() && kStripped.find(name.back()) != std::string_view::npos) name.remove_suffix(1);
  const auto digits = name.substr(name.find_last_of('_') + 1);
  if (digits.empty() || digits.find_first_not_of("0123456789") != std::string_view::npos) return "";
  const size_t first = digits.find_first_not_of('0');
  return first == std::string_view::npos ? "0" : std::string(digits.substr(first));
}

std::vector<CaptionImage> read_caption_annotations(const std::string& path) {
  const auto root = read_json(path, "caption annotations");
  std::vector<CaptionImage> images;
  if (root.is_array()) {
    images = read_karpathy_list(root, path);
  } else if (root.is_object() && root.contains("annotations")) {
    images = read_coco_captions(root, path);
  } else {
    fail(
        "caption annotations {}: expected a Karpathy split list [{{\"image\", \"caption\"}}] or a COCO captions "
        "object {{\"images\", \"annotations\": [{{\"image_id\", \"caption\"}}]}}",
        path);
  }
  if (images.empty()) fail("caption annotations {}: holds no images", path);
  return images;
}

namespace {

Predictions read_predictions(const std::string& path, std::string_view what,
                             const std::vector<std::pair<const char*, const char*>>& key_pairs) {
  const auto root = read_json(path, what);
  const auto expected = fmt::format("[{{\"{}\", \"{}\"}}, ...]", key_pairs[0].first, key_pairs[0].second);
  if (!root.is_array()) fail("{} {}: expected a list {}", what, path, expected);
  Predictions predictions;
  std::map<std::string, size_t> entry_of;
  for (size_t i = 0; i < root.size(); ++i) {
    const Entry entry(root[i], std::string(what), path, entry_name(i));
    auto keys = key_pairs.front();
    for (const auto& pair : key_pairs)
      if (entry.has(pair.first)) keys = pair;
    const auto id = entry.id(keys.first);
    if (const auto [it, added] = entry_of.emplace(id, i); !added)
      fail("{} {}: id {} is predicted twice (entries {} and {})", what, path, excerpt(id, 100), it->second, i);
    predictions[id] = entry.text(keys.second);
  }
  return predictions;
}

}  // namespace

Predictions read_caption_predictions(const std::string& path) {
  return read_predictions(path, "caption predictions", {{"image_id", "caption"}});
}

Predictions read_answer_predictions(const std::string& path) {
  return read_predictions(path, "answer predictions", {{"question_id", "answer"}, {"questionId", "prediction"}});
}

std::vector<VqaQuestion> read_vqa_annotations(const std::string& path) {
  constexpr std::string_view kWhat = "VQA annotations";
  const auto root = read_json(path, kWhat);
  const auto& list = list_field(root, "annotations", kWhat, path,
                                root.is_object() && root.contains("questions") ? " (this looks like a questions file: "
                                                                                 "pass it with --questions)"
                                                                               : "");
  std::vector<VqaQuestion> questions;
  std::set<std::string> seen;
  for (size_t i = 0; i < list.size(); ++i) {
    const Entry entry(list[i], std::string(kWhat), path, fmt::format("annotations[{}]", i));
    VqaQuestion q;
    q.question_id = entry.id("question_id");
    if (!seen.insert(q.question_id).second)
      fail("{} {}: question {} is annotated twice", kWhat, path, excerpt(q.question_id, 100));
    q.answer_type = entry.optional_text("answer_type");
    q.question_type = entry.optional_text("question_type");
    const auto& answers = entry.field("answers");
    if (!answers.is_array() || answers.empty())
      fail("{} {}: question {}: 'answers' must be a non-empty list", kWhat, path, excerpt(q.question_id, 100));
    for (size_t k = 0; k < answers.size(); ++k) {
      const Entry record(answers[k], std::string(kWhat), path,
                         fmt::format("question {} answers[{}]", excerpt(q.question_id, 100), k));
      auto rest = record.value();
      rest.erase("answer");
      q.answers.push_back({record.text("answer"), rest.dump()});
    }
    questions.push_back(std::move(q));
  }
  if (questions.empty()) fail("{} {}: holds no questions", kWhat, path);
  return questions;
}

std::vector<std::string> read_vqa_question_ids(const std::string& path) {
  constexpr std::string_view kWhat = "VQA questions";
  const auto root = read_json(path, kWhat);
  const auto& list = list_field(root, "questions", kWhat, path, "");
  std::vector<std::string> ids;
  for (size_t i = 0; i < list.size(); ++i)
    ids.push_back(Entry(list[i], std::string(kWhat), path, fmt::format("questions[{}]", i)).id("question_id"));
  return ids;
}

std::vector<VqaQuestionText> read_vqa_questions(const std::string& path) {
  constexpr std::string_view kWhat = "VQA questions";
  const auto root = read_json(path, kWhat);
  const auto& list = list_field(root, "questions", kWhat, path, "");
  std::vector<VqaQuestionText> questions;
  for (size_t i = 0; i < list.size(); ++i) {
    const Entry entry(list[i], std::string(kWhat), path, fmt::format("questions[{}]", i));
    questions.push_back({entry.id("question_id"), entry.id("image_id"), entry.text("question")});
  }
  if (questions.empty()) fail("{} {}: holds no questions", kWhat, path);
  return questions;
}

std::vector<GqaQuestion> read_gqa_questions(const std::string& path) {
  constexpr std::string_view kWhat = "GQA questions";
  const auto root = read_json(path, kWhat);
  if (!root.is_object() || root.empty())
    fail(
        "{} {}: expected an object {{\"<question id>\": {{\"question\", \"answer\", ...}}}} as in "
        "testdev_balanced_questions.json",
        kWhat, path);
  std::vector<GqaQuestion> questions;
  for (const auto& [id, value] : root.items()) {
    const Entry entry(value, std::string(kWhat), path, fmt::format("question {}", excerpt(id, 100)));
    if (!entry.has("answer"))
      fail(
          "{} {}: question {} has no 'answer' (test and challenge splits come without answers and cannot be "
          "scored)",
          kWhat, path, excerpt(id, 100));
    GqaQuestion q{id,
                  entry.text("answer"),
                  "",
                  "",
                  entry.has("imageId") ? entry.id("imageId") : "",
                  entry.optional_text("question")};
    if (entry.has("types")) {
      const Entry types(entry.field("types"), std::string(kWhat), path,
                        fmt::format("question {} types", excerpt(id, 100)));
      q.structural_type = types.optional_text("structural");
      q.semantic_type = types.optional_text("semantic");
    }
    questions.push_back(std::move(q));
  }
  return questions;
}

}  // namespace minigpt4::metrics
