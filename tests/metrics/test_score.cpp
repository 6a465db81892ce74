#include "minigpt4/common/error.h"
#include "minigpt4/metrics/score.h"
#include "tests/metrics/metrics_test_util.h"

#include <catch2/catch.hpp>

using namespace minigpt4;
using Catch::Contains;
using nlohmann::json;

namespace {

std::string data(const std::string& name) { return test::eval_data(name).string(); }

// Every number in `expected` (recursively) equals the one at the same key in `actual`.
void check_numbers(const json& actual, const json& expected, const std::string& where) {
  for (const auto& [key, value] : expected.items()) {
    INFO(where << key);
    REQUIRE(actual.contains(key));
    if (value.is_object())
      check_numbers(actual.at(key), value, where + key + ".");
    else
      CHECK(actual.at(key).get<double>() == Approx(value.get<double>()).margin(test::kGoldenTolerance));
  }
}

}  // namespace

TEST_CASE("score: each task end to end on the crafted files equals the golden values", "[eval]") {
  const auto& golden = test::eval_golden();
  const auto coco =
      metrics::score(metrics::Task::coco_caption, {data("coco_karpathy_test.json"), "", data("coco_predictions.json")});
  CHECK(coco.at("task") == "coco_caption");
  check_numbers(coco, golden.at("coco_caption"), "coco_caption.");

  const auto nocaps =
      metrics::score(metrics::Task::nocaps, {data("nocaps_val.json"), "", data("nocaps_predictions.json")});
  check_numbers(nocaps, golden.at("nocaps"), "nocaps.");
  CHECK(nocaps.at("per_domain").size() == 3);

  // golden.json's VQA numbers are the legacy evaluator's (the one LAVIS copies).
  const auto vqav2 =
      metrics::score(metrics::Task::vqav2, {data("vqav2_annotations.json"), data("vqav2_questions.json"),
                                            data("vqav2_predictions.json"), metrics::VqaEvaluator::legacy});
  CHECK(vqav2.at("vqa_evaluator") == "legacy");
  check_numbers(vqav2, golden.at("vqav2"), "vqav2.");
  const auto okvqa =
      metrics::score(metrics::Task::okvqa, {data("okvqa_annotations.json"), data("okvqa_questions.json"),
                                            data("okvqa_predictions.json"), metrics::VqaEvaluator::legacy});
  check_numbers(okvqa, golden.at("okvqa"), "okvqa.");
  // The default is the official evaluator of 2021.
  const auto official = test::read_json(test::eval_data("golden_vqa_official.json"));
  const auto vqav2_2021 =
      metrics::score(metrics::Task::vqav2,
                     {data("vqav2_annotations.json"), data("vqav2_questions.json"), data("vqav2_predictions.json")});
  CHECK(vqav2_2021.at("vqa_evaluator") == "2021");
  CHECK(vqav2_2021.at("overall").get<double>() ==
        Approx(official.at("vqav2").at("2021").at("overall").get<double>()).margin(0.005 + 1e-9));
  const auto gqa = metrics::score(metrics::Task::gqa,
                                  {data("gqa_testdev_balanced_questions.json"), "", data("gqa_predictions.json")});
  check_numbers(gqa, golden.at("gqa"), "gqa.");
}

TEST_CASE("score: a missing or unknown prediction is an error naming both files", "[eval]") {
  auto predictions = test::read_json(test::eval_data("vqav2_predictions.json"));
  const auto dropped = predictions.back().at("question_id").dump();
  predictions.erase(predictions.size() - 1);
  const auto short_file = test::scratch_file("short_predictions.json", predictions.dump());
  CHECK_THROWS_WITH(
      metrics::score(metrics::Task::vqav2, {data("vqav2_annotations.json"), "", short_file}),
      Contains(short_file) && Contains("vqav2_annotations.json") && Contains("1 of the 14") && Contains(dropped));

  auto captions = test::read_json(test::eval_data("coco_predictions.json"));
  captions.push_back({{"image_id", 999}, {"caption", "extra"}});
  const auto extra_file = test::scratch_file("extra_predictions.json", captions.dump());
  CHECK_THROWS_WITH(metrics::score(metrics::Task::coco_caption, {data("coco_karpathy_test.json"), "", extra_file}),
                    Contains(extra_file) && Contains("not in the annotations") && Contains("999"));
}

TEST_CASE("score: questions files and task names are checked", "[eval]") {
  const auto other_split = test::scratch_file("other_questions.json", R"({"questions": [{"question_id": 1}]})");
  CHECK_THROWS_WITH(metrics::score(metrics::Task::vqav2,
                                   {data("vqav2_annotations.json"), other_split, data("vqav2_predictions.json")}),
                    Contains(other_split) && Contains("14 question(s)"));
  CHECK_THROWS_WITH(metrics::score(metrics::Task::gqa, {data("gqa_testdev_balanced_questions.json"),
                                                        data("vqav2_questions.json"), data("gqa_predictions.json")}),
                    Contains("--questions"));
  CHECK(metrics::parse_task("okvqa") == metrics::Task::okvqa);
  CHECK(metrics::task_name(metrics::Task::nocaps) == "nocaps");
  CHECK_THROWS_WITH(metrics::parse_task("coco"), Contains("coco_caption") && Contains("gqa"));
}
