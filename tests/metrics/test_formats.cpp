#include "minigpt4/common/error.h"
#include "minigpt4/metrics/formats.h"
#include "tests/metrics/metrics_test_util.h"

#include <catch2/catch.hpp>

using namespace minigpt4;
using Catch::Contains;
using test::scratch_file;

TEST_CASE("Karpathy image ids as LAVIS derives them", "[eval]") {
  CHECK(metrics::karpathy_image_id("val2014/COCO_val2014_000000391895.jpg") == "391895");
  CHECK(metrics::karpathy_image_id("COCO_val2014_000000000042.jpg") == "42");
  CHECK(metrics::karpathy_image_id("images/7.jpg") == "7");
  CHECK(metrics::karpathy_image_id("COCO_val2014_000000000000.jpg") == "0");
  // str.strip(".jpg") strips characters, so other extensions leave a non-number behind.
  CHECK(metrics::karpathy_image_id("COCO_val2014_000000391895.png").empty());
  CHECK(metrics::karpathy_image_id("photo.jpg").empty());
}

TEST_CASE("caption annotations: Karpathy list and official COCO layout", "[eval]") {
  const auto coco = metrics::read_caption_annotations(test::eval_data("coco_karpathy_test.json").string());
  REQUIRE(coco.size() == 12);
  CHECK(coco[0].image_id == "391895");
  CHECK(coco[0].references.size() == 5);
  CHECK(coco[0].domain.empty());

  const auto nocaps = metrics::read_caption_annotations(test::eval_data("nocaps_val.json").string());
  REQUIRE(nocaps.size() == 6);
  CHECK(nocaps[2].image_id == "2");
  CHECK(nocaps[2].domain == "near-domain");
  CHECK(nocaps[2].references.size() == 4);

  // Train-style entries, one caption string each, merge per image; without "images" the
  // annotations name the images.
  const auto merged = metrics::read_caption_annotations(scratch_file(
      "train_style.json",
      R"([{"image": "a/COCO_x_5.jpg", "caption": "one"}, {"image": "b/COCO_x_5.jpg", "caption": "two"}])"));
  REQUIRE(merged.size() == 1);
  CHECK(merged[0].references == std::vector<std::string>{"one", "two"});
  const auto bare = metrics::read_caption_annotations(scratch_file(
      "bare.json", R"({"annotations": [{"image_id": 3, "caption": "x"}, {"image_id": "3", "caption": "y"}]})"));
  REQUIRE(bare.size() == 1);
  CHECK(bare[0].references.size() == 2);
}

TEST_CASE("malformed caption annotations are errors naming the file and the entry", "[eval]") {
  const auto missing = (test::eval_data("") / "no_such_file.json").string();
  CHECK_THROWS_WITH(metrics::read_caption_annotations(missing), Contains(missing) && Contains("cannot open"));
  const auto broken = scratch_file("broken.json", "[{\"image\": ");
  CHECK_THROWS_WITH(metrics::read_caption_annotations(broken), Contains(broken) && Contains("not valid JSON"));
  const auto no_caption = scratch_file("no_caption.json", R"([{"image": "COCO_x_1.jpg", "caption": ["a"]},
                                                               {"image": "COCO_x_2.jpg"}])");
  CHECK_THROWS_WITH(metrics::read_caption_annotations(no_caption),
                    Contains(no_caption) && Contains("entry 1") && Contains("'caption'"));
  const auto bad_name = scratch_file("bad_name.json", R"([{"image": "dog.png", "caption": ["a"]}])");
  CHECK_THROWS_WITH(metrics::read_caption_annotations(bad_name), Contains(bad_name) && Contains("dog.png"));
  const auto unlisted =
      scratch_file("unlisted.json", R"({"images": [{"id": 1}], "annotations": [{"image_id": 2, "caption": "a"}]})");
  CHECK_THROWS_WITH(metrics::read_caption_annotations(unlisted), Contains(unlisted) && Contains("does not list"));
  const auto uncaptioned = scratch_file(
      "uncaptioned.json", R"({"images": [{"id": 1}, {"id": 2}], "annotations": [{"image_id": 2, "caption": "a"}]})");
  CHECK_THROWS_WITH(metrics::read_caption_annotations(uncaptioned),
                    Contains(uncaptioned) && Contains("image 1 has no caption"));
  const auto neither = scratch_file("neither.json", R"({"questions": []})");
  CHECK_THROWS_WITH(metrics::read_caption_annotations(neither), Contains(neither) && Contains("Karpathy"));
  const auto float_id = scratch_file("float_id.json", R"({"annotations": [{"image_id": 1.5, "caption": "a"}]})");
  CHECK_THROWS_WITH(metrics::read_caption_annotations(float_id), Contains(float_id) && Contains("'image_id'"));
}

TEST_CASE("prediction files: submission format, clear errors", "[eval]") {
  const auto captions = metrics::read_caption_predictions(test::eval_data("coco_predictions.json").string());
  CHECK(captions.at("391895") == "a man riding a motorcycle on a dirt road");
  const auto answers = metrics::read_answer_predictions(test::eval_data("gqa_predictions.json").string());
  CHECK(answers.at("05451384") == "no");  // string ids stay as written
  const auto gqa_style =
      metrics::read_answer_predictions(scratch_file("gqa_style.json", R"([{"questionId": "7", "prediction": "yes"}])"));
  CHECK(gqa_style.at("7") == "yes");

  const auto twice =
      scratch_file("twice.json", R"([{"image_id": 1, "caption": "a"}, {"image_id": "1", "caption": "b"}])");
  CHECK_THROWS_WITH(metrics::read_caption_predictions(twice), Contains(twice) && Contains("predicted twice"));
  const auto object = scratch_file("object.json", R"({"image_id": 1, "caption": "a"})");
  CHECK_THROWS_WITH(metrics::read_caption_predictions(object), Contains(object) && Contains("expected a list"));
  const auto no_answer = scratch_file("no_answer.json", R"([{"question_id": 1, "pred": "a"}])");
  CHECK_THROWS_WITH(metrics::read_answer_predictions(no_answer), Contains(no_answer) && Contains("'answer'"));
  const auto number = scratch_file("number.json", R"([{"question_id": 1, "answer": 2}])");
  CHECK_THROWS_WITH(metrics::read_answer_predictions(number), Contains(number) && Contains("must be a string"));
}

TEST_CASE("VQA and GQA annotation files: layout and clear errors", "[eval]") {
  const auto vqa = metrics::read_vqa_annotations(test::eval_data("vqav2_annotations.json").string());
  REQUIRE(vqa.size() == 14);
  CHECK(vqa[0].question_id == "458752000");
  CHECK(vqa[0].answer_type == "yes/no");
  CHECK(vqa[0].answers.size() == 10);
  CHECK(vqa[0].answers[0].other_fields != vqa[0].answers[1].other_fields);  // answer ids differ
  CHECK(metrics::read_vqa_question_ids(test::eval_data("vqav2_questions.json").string()).size() == 14);
  const auto gqa = metrics::read_gqa_questions(test::eval_data("gqa_testdev_balanced_questions.json").string());
  CHECK(gqa.size() == 7);

  const auto questions = test::eval_data("vqav2_questions.json").string();
  CHECK_THROWS_WITH(metrics::read_vqa_annotations(questions), Contains(questions) && Contains("--questions"));
  const auto no_answers = scratch_file("no_answers.json", R"({"annotations": [{"question_id": 4, "answers": []}]})");
  CHECK_THROWS_WITH(metrics::read_vqa_annotations(no_answers), Contains(no_answers) && Contains("question 4"));
  const auto twice = scratch_file("vqa_twice.json", R"({"annotations": [
      {"question_id": 4, "answers": [{"answer": "a"}]}, {"question_id": 4, "answers": [{"answer": "b"}]}]})");
  CHECK_THROWS_WITH(metrics::read_vqa_annotations(twice), Contains(twice) && Contains("annotated twice"));
  const auto unanswered = scratch_file("gqa_test.json", R"({"123": {"question": "Is it red?", "imageId": "n1"}})");
  CHECK_THROWS_WITH(metrics::read_gqa_questions(unanswered),
                    Contains(unanswered) && Contains("question 123 has no 'answer'"));
}
