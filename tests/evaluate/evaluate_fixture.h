#pragma once
// A small benchmark in every format `minigpt4 evaluate` reads, with distinct pictures, and
// eval configs that run it on the tiny fixture model (tests/data/parity/tiny_vicuna0).
#include "tests/support/fixtures.h"

#include <fmt/format.h>
#include <nlohmann/json.hpp>
#include <opencv2/imgcodecs.hpp>
#include <opencv2/imgproc.hpp>

#include <filesystem>
#include <fstream>
#include <string>

namespace minigpt4::test {

struct BenchmarkFiles {
  fs::path root;
  fs::path images;    // COCO_val2014_<12 digits>.jpg, image ids 1..n
  fs::path captions;  // official COCO layout, images[].file_name
  fs::path karpathy;  // Karpathy list, "image": "images/COCO_val2014_....jpg" (relative to root)
  fs::path vqa_questions, vqa_annotations;
  fs::path gqa;  // testdev_balanced_questions.json layout
  int n = 0;
};

inline std::string coco_file_name(int image_id) { return fmt::format("COCO_val2014_{:012d}.jpg", image_id); }

// Question ids are 100 * image id + 7; every question is worded differently, so that even a
// random model answers each one differently.
inline BenchmarkFiles make_benchmark(const fs::path& root, int n) {
  BenchmarkFiles b;
  b.root = root;
  b.images = root / "images";
  b.n = n;
  fs::create_directories(b.images);
  nlohmann::json images = nlohmann::json::array(), captions = nlohmann::json::array(),
                 karpathy = nlohmann::json::array();
  nlohmann::json questions = nlohmann::json::array(), answers = nlohmann::json::array(), gqa = nlohmann::json::object();
  const char* colours[] = {"red", "green", "blue", "yellow"};
  for (int id = 1; id <= n; ++id) {
    cv::Mat picture(64, 64, CV_8UC3, cv::Scalar(40 * id % 255, 255 - 25 * id % 255, 90 * id % 255));
    cv::circle(picture, {8 + 5 * id % 48, 32}, 6 + id % 9, cv::Scalar(255, 255, 255), cv::FILLED);
    cv::imwrite((b.images / coco_file_name(id)).string(), picture);
    const std::string colour = colours[id % 4];
    const std::vector<std::string> references = {"a " + colour + " picture with a circle.", "a round shape.",
                                                 fmt::format("picture number {}.", id)};
    images.push_back({{"id", id}, {"file_name", coco_file_name(id)}});
    for (size_t k = 0; k < references.size(); ++k)
      captions.push_back({{"id", id * 10 + static_cast<int>(k)}, {"image_id", id}, {"caption", references[k]}});
    karpathy.push_back({{"image", "images/" + coco_file_name(id)}, {"caption", references}});
    const std::string question = fmt::format("Is the circle number {} {}?", id, colour);
    const int question_id = 100 * id + 7;
    questions.push_back({{"image_id", id}, {"question", question}, {"question_id", question_id}});
    nlohmann::json records = nlohmann::json::array();
    for (int k = 1; k <= 10; ++k) records.push_back({{"answer", k <= 7 ? "yes" : "no"}, {"answer_id", k}});
    answers.push_back(
        {{"question_id", question_id}, {"answer_type", "yes/no"}, {"question_type", "is the"}, {"answers", records}});
    gqa[std::to_string(question_id)] = {{"imageId", std::to_string(id)},
                                        {"question", question},
                                        {"answer", "yes"},
                                        {"types", {{"structural", "verify"}, {"semantic", "attr"}}}};
  }
  auto write = [](const fs::path& path, const nlohmann::json& value) { std::ofstream(path) << value.dump(1); };
  b.captions = root / "captions.json";
  write(b.captions, {{"images", images}, {"annotations", captions}});
  b.karpathy = root / "karpathy.json";
  write(b.karpathy, karpathy);
  b.vqa_questions = root / "vqa_questions.json";
  write(b.vqa_questions, {{"questions", questions}});
  b.vqa_annotations = root / "vqa_annotations.json";
  write(b.vqa_annotations, {{"annotations", answers}});
  b.gqa = root / "gqa.json";
  write(b.gqa, gqa);
  return b;
}

// The `evaluation:` section of a task over the benchmark.
inline std::string evaluation_yaml(const BenchmarkFiles& b, const std::string& task, int max_new_tokens = 8) {
  auto quoted = [](const fs::path& p) { return "'" + p.string() + "'"; };
  const auto tokens = "\n  max_new_tokens: " + std::to_string(max_new_tokens) + "\n";
  if (task == "coco_caption")
    return "evaluation:\n  task: coco_caption\n  annotations: " + quoted(b.captions) +
           "\n  image_root: " + quoted(b.images) + tokens;
  if (task == "vqav2")
    return "evaluation:\n  task: vqav2\n  annotations: " + quoted(b.vqa_annotations) +
           "\n  questions: " + quoted(b.vqa_questions) + "\n  image_root: " + quoted(b.images) +
           "\n  image_file: 'COCO_val2014_{image_id:012d}.jpg'" + tokens;
  return "evaluation:\n  task: gqa\n  annotations: " + quoted(b.gqa) + "\n  image_root: " + quoted(b.images) +
         "\n  image_file: 'COCO_val2014_{image_id:012d}.jpg'" + tokens;
}

// An eval config file for the tiny fixture model: its model section, `evaluation`, and run:
// on the CPU with the given batch size and output directory.
inline fs::path write_tiny_eval_config(const fs::path& path, const std::string& evaluation, int batch_size,
                                       const fs::path& output_dir) {
  const auto tiny = data_dir() / "parity/tiny_vicuna0";
  std::ofstream(path) << parity_case_yaml(tiny, read_json(tiny / "manifest.json")) << "\n"
                      << evaluation << "\nrun:\n  device: cpu\n  batch_size_eval: " << batch_size << "\n  output_dir: '"
                      << output_dir.string() << "'\n";
  return path;
}

inline std::string read_text(const fs::path& path) {
  std::ifstream in(path);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

}  // namespace minigpt4::test
