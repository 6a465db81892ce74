#include "minigpt4/common/error.h"
#include "minigpt4/metrics/formats.h"
#include "minigpt4/metrics/vqa_metrics.h"
#include "tests/metrics/metrics_test_util.h"

#include <catch2/catch.hpp>

using namespace minigpt4;
using metrics::AnnotatorAnswer;
using metrics::vqa_process_digit_article;
using metrics::vqa_process_punctuation;
using metrics::VqaEvaluator;
constexpr auto kLegacy = VqaEvaluator::legacy;
constexpr auto k2021 = VqaEvaluator::official_2021;

TEST_CASE("VQA normaliser: punctuation rules", "[eval]") {
  CHECK(vqa_process_punctuation("black/white") == "black white");     // not next to a space: a space
  CHECK(vqa_process_punctuation("black / white") == "black  white");  // next to a space: deleted
  CHECK(vqa_process_punctuation("t-shirt!") == "t shirt ");
  CHECK(vqa_process_punctuation("1,000") == "1000");  // digit,digit: every mark deleted
  CHECK(vqa_process_punctuation("t-shirt, 1,000") == "tshirt 1000");
  CHECK(vqa_process_punctuation("yes.") == "yes");
  CHECK(vqa_process_punctuation("3.14.") == "3.14");             // a period before a digit stays
  CHECK(vqa_process_punctuation("it's 10:30") == "it's 10:30");  // apostrophe and colon are kept
  CHECK(vqa_process_punctuation(std::string(40, '.') + "end") == std::string(8, '.') + "end");  // at most 32
}

TEST_CASE("VQA normaliser: number words, articles, contractions", "[eval]") {
  CHECK(vqa_process_digit_article("Two Dogs") == "2 dogs");
  CHECK(vqa_process_digit_article("none of the ten") == "0 of 10");
  CHECK(vqa_process_digit_article("eleven") == "eleven");
  CHECK(vqa_process_digit_article("the dog and an apple a day") == "dog and apple day");
  CHECK(vqa_process_digit_article("dont know  whats") == "don't know what's");
  CHECK(vqa_process_digit_article("Im") == "im");                 // the table's "Im" never matches lowercased words
  CHECK(vqa_process_digit_article("somebody'd") == "somebodyd");  // the table's own entry
  CHECK(metrics::vqa_normalize_answer("\tThe Two  Cats.\n") == "2 cats");
}

TEST_CASE("VQA normaliser equals the reference re-implementation on every probe", "[eval]") {
  for (const auto& probe : test::eval_golden().at("normalizer")) {
    const auto input = probe.at("input").get<std::string>();
    INFO("answer: " << input);
    CHECK(vqa_process_punctuation(input) == probe.at("punctuation").get<std::string>());
    CHECK(vqa_process_digit_article(input) == probe.at("digit_article").get<std::string>());
    CHECK(metrics::vqa_normalize_answer(input) == probe.at("normalized").get<std::string>());
  }
}

namespace {

// Ten annotator records with distinct answer ids.
std::vector<AnnotatorAnswer> records(const std::vector<std::string>& answers) {
  std::vector<AnnotatorAnswer> out;
  for (size_t i = 0; i < answers.size(); ++i)
    out.push_back({answers[i], "{\"answer_id\":" + std::to_string(i + 1) + "}"});
  return out;
}

std::vector<std::string> repeat(const std::string& answer, size_t n, const std::string& rest, size_t m) {
  std::vector<std::string> out(n, answer);
  out.insert(out.end(), m, rest);
  return out;
}

}  // namespace

TEST_CASE("VQA accuracy: mean over the ten leave-one-out subsets of min(1, matches / 3)", "[eval]") {
  CHECK(metrics::vqa_accuracy("red", records(repeat("red", 4, "blue", 6)), kLegacy) == Approx(1.0));
  CHECK(metrics::vqa_accuracy("red", records(repeat("red", 3, "blue", 7)), kLegacy) == Approx((3 * 2.0 / 3 + 7) / 10));
  CHECK(metrics::vqa_accuracy("red", records(repeat("red", 2, "blue", 8)), kLegacy) ==
        Approx((2 * 1.0 / 3 + 8 * 2.0 / 3) / 10));
  CHECK(metrics::vqa_accuracy("red", records(repeat("red", 1, "blue", 9)), kLegacy) == Approx(0.3));
  CHECK(metrics::vqa_accuracy("green", records(repeat("red", 1, "blue", 9)), kLegacy) == 0.0);
  CHECK(metrics::vqa_accuracy("Two.", records(repeat("2", 3, "3", 7)), kLegacy) ==
        Approx(0.9));  // the prediction is normalised
  CHECK_THROWS_AS(metrics::vqa_accuracy("x", {}, kLegacy), Error);
}

TEST_CASE("VQA accuracy, legacy evaluator: its rules for annotator answers", "[eval]") {
  // Different answers: the annotators' get the punctuation step ("t-shirt" -> "t shirt").
  CHECK(metrics::vqa_accuracy("T-Shirt", records(repeat("t-shirt", 3, "shirt", 7)), kLegacy) == Approx(0.9));
  // All ten the same: left as they are, so a normalised prediction can miss them.
  CHECK(metrics::vqa_accuracy("t-shirt", records(repeat("t-shirt", 10, "", 0)), kLegacy) == 0.0);
  // Records equal in every field are left out together with the held-out one.
  std::vector<AnnotatorAnswer> same;
  for (const auto& a : repeat("red", 4, "blue", 6)) same.push_back({a, "{}"});
  CHECK(metrics::vqa_accuracy("red", same, kLegacy) == Approx(0.6));
}

TEST_CASE("VQA and OK-VQA accuracy per question equals the reference re-implementation (legacy)", "[eval]") {
  for (const std::string set : {"vqav2", "okvqa"}) {
    const auto questions = metrics::read_vqa_annotations(test::eval_data(set + "_annotations.json").string());
    const auto predictions = metrics::read_answer_predictions(test::eval_data(set + "_predictions.json").string());
    const auto& golden = test::eval_golden().at(set + "_per_question");
    REQUIRE(questions.size() == golden.size());
    for (const auto& q : questions) {
      INFO(set << " question " << q.question_id << ", prediction " << predictions.at(q.question_id));
      CHECK(metrics::vqa_accuracy(predictions.at(q.question_id), q.answers, kLegacy) ==
            Approx(golden.at(q.question_id).get<double>()).margin(test::kGoldenTolerance));
    }
  }
}

TEST_CASE("VQA accuracy, 2021 evaluator: normalised only where the answers disagree", "[eval]") {
  // Ten agreeing answers: the prediction must equal them after the trim alone.
  CHECK(metrics::vqa_accuracy("yes", records(repeat("yes", 10, "", 0)), k2021) == Approx(1.0));
  CHECK(metrics::vqa_accuracy(" yes\n", records(repeat("yes", 10, "", 0)), k2021) == Approx(1.0));
  CHECK(metrics::vqa_accuracy("Yes", records(repeat("yes", 10, "", 0)), k2021) == 0.0);
  CHECK(metrics::vqa_accuracy("Yes", records(repeat("yes", 10, "", 0)), kLegacy) == Approx(1.0));
  CHECK(metrics::vqa_accuracy("two", records(repeat("2", 10, "", 0)), k2021) == 0.0);
  // Answers that agree once trimmed count as agreeing (2021 trims them first; legacy never).
  auto padded = repeat("dog", 9, " dog", 1);
  CHECK(metrics::vqa_accuracy("dog", records(padded), k2021) == Approx(1.0));
  // Disagreeing answers: both sides get punctuation, number words, articles, contractions.
  CHECK(metrics::vqa_accuracy("Two.", records(repeat("2", 3, "3", 7)), k2021) == Approx(0.9));
  CHECK(metrics::vqa_accuracy("2", records(repeat("two", 3, "3", 7)), k2021) == Approx(0.9));
  CHECK(metrics::vqa_accuracy("2", records(repeat("two", 3, "3", 7)), kLegacy) == 0.0);  // legacy: answers keep "two"
  CHECK(metrics::vqa_accuracy("dont know", records(repeat("don't know", 4, "no", 6)), k2021) == Approx(1.0));
  CHECK_THROWS_AS(metrics::vqa_accuracy("x", {}, k2021), Error);
}

TEST_CASE("VQA evaluator names", "[eval]") {
  CHECK(metrics::parse_vqa_evaluator("2021") == k2021);
  CHECK(metrics::parse_vqa_evaluator("legacy") == kLegacy);
  CHECK(metrics::vqa_evaluator_name(k2021) == "2021");
  CHECK_THROWS_WITH(metrics::parse_vqa_evaluator("2017"), Catch::Contains("'2017'") && Catch::Contains("legacy"));
}

TEST_CASE("VQA accuracy equals both versions of the official evaluator on crafted sets", "[eval]") {
  // golden_vqa_official.json: GT-Vision-Lab/VQA's own vqaEval.py at a013f00 ("2021") and at
  // its parent ("legacy"), run by make_vqa_official_golden.py. The official code rounds each
  // question's accuracy and every reported mean to two decimals (the means from unrounded
  // values), hence the margin.
  const auto golden = test::read_json(test::eval_data("golden_vqa_official.json"));
  for (const std::string set : {"vqa_versions", "vqav2", "okvqa"}) {
    const auto questions = metrics::read_vqa_annotations(test::eval_data(set + "_annotations.json").string());
    const auto predictions = metrics::read_answer_predictions(test::eval_data(set + "_predictions.json").string());
    for (const auto evaluator : {k2021, kLegacy}) {
      const auto& expected = golden.at(set).at(metrics::vqa_evaluator_name(evaluator));
      INFO(set << ", evaluator " << metrics::vqa_evaluator_name(evaluator));
      REQUIRE(questions.size() == expected.at("per_question").size());
      for (const auto& q : questions) {
        INFO("question " << q.question_id << ", prediction '" << predictions.at(q.question_id) << "'");
        CHECK(100 * metrics::vqa_accuracy(predictions.at(q.question_id), q.answers, evaluator) ==
              Approx(expected.at("per_question").at(q.question_id).get<double>()).margin(0.005 + 1e-9));
      }
      const auto scores = metrics::vqa_scores(questions, predictions, evaluator);
      CHECK(scores.overall == Approx(expected.at("overall").get<double>()).margin(0.005 + 1e-9));
      for (const auto& [type, value] : expected.at("perAnswerType").items())
        CHECK(scores.per_answer_type.at(type) == Approx(value.get<double>()).margin(0.005 + 1e-9));
      for (const auto& [type, value] : expected.at("perQuestionType").items())
        CHECK(scores.per_question_type.at(type) == Approx(value.get<double>()).margin(0.005 + 1e-9));
      CHECK(scores.per_question_type.size() == expected.at("perQuestionType").size());
    }
  }
  // The crafted set separates the two versions by more than ten points.
  CHECK(golden.at("vqa_versions").at("legacy").at("overall").get<double>() -
            golden.at("vqa_versions").at("2021").at("overall").get<double>() >
        10.0);
}

TEST_CASE("VQA scores: overall and per type are means over questions, x100", "[eval]") {
  std::vector<metrics::VqaQuestion> questions{{"1", "yes/no", "is the", records(repeat("yes", 10, "", 0))},
                                              {"2", "number", "how many", records(repeat("2", 1, "3", 9))},
                                              {"3", "number", "how many", records(repeat("4", 10, "", 0))}};
  const auto scores = metrics::vqa_scores(questions, {{"1", "Yes"}, {"2", "five"}, {"3", "4"}}, kLegacy);
  CHECK(scores.overall == Approx(100 * (1 + 0 + 1) / 3.0));
  CHECK(scores.per_answer_type.at("yes/no") == Approx(100.0));
  CHECK(scores.per_answer_type.at("number") == Approx(50.0));
  CHECK(scores.per_question_type.at("how many") == Approx(50.0));
  CHECK_THROWS_WITH(metrics::vqa_scores(questions, {{"1", "yes"}}, k2021),
                    Catch::Contains("no prediction for question 2"));
}

TEST_CASE("GQA: exact match after normalising both sides", "[eval]") {
  CHECK(metrics::gqa_match("The left.", "left"));
  CHECK(metrics::gqa_match("T-Shirt", "t-shirt"));
  CHECK(metrics::gqa_match("two", "2"));
  CHECK_FALSE(metrics::gqa_match("Yes, it is.", "yes"));
  const auto scores = metrics::gqa_scores({{"a", "left", "query", "rel"}, {"b", "no", "verify", "attr"}},
                                          {{"a", "Left"}, {"b", "yes"}});
  CHECK(scores.accuracy == Approx(50.0));
  CHECK(scores.per_structural_type.at("query") == Approx(100.0));
  CHECK(scores.per_semantic_type.at("attr") == 0.0);
}
