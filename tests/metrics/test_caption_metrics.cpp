#include "minigpt4/common/error.h"
#include "minigpt4/metrics/caption_metrics.h"
#include "minigpt4/metrics/formats.h"
#include "tests/metrics/metrics_test_util.h"

#include <catch2/catch.hpp>

#include <cmath>
#include <map>

using namespace minigpt4;
using metrics::TokenizedCaptions;

TEST_CASE("BLEU: exact match, brevity penalty, the zero-count guard, the closest reference", "[eval]") {
  const auto exact = metrics::bleu({{"a b c d e", {"a b c d e"}}});
  for (const double b : exact) CHECK(b == Approx(1.0).margin(1e-9));

  // 2 words against 4: every n-gram the candidate has matches, the penalty is exp(1 - 4/2),
  // and orders with no candidate n-gram give (0 + 1e-15) / (0 + 1e-9) = 1e-6.
  const auto shortc = metrics::bleu({{"a b", {"a b c d"}}});
  const double penalty = std::exp(-1.0);
  CHECK(shortc[0] == Approx(penalty).epsilon(1e-8));
  CHECK(shortc[1] == Approx(penalty).epsilon(1e-8));
  CHECK(shortc[2] == Approx(std::cbrt(1e-6) * penalty).epsilon(1e-6));
  CHECK(shortc[3] == Approx(std::pow(1e-12, 0.25) * penalty).epsilon(1e-6));

  // Reference lengths 2 and 4 are equally close to 3: the shorter counts, so no penalty.
  CHECK(metrics::bleu({{"a b c", {"a b c d", "a b"}}})[0] == Approx(1.0).margin(1e-9));
}

TEST_CASE("ROUGE-L: precision and recall maximised separately over the references", "[eval]") {
  // LCS("a b c d", "a x c d e") = 3: P = 3/4, R = 3/5.
  CHECK(metrics::rouge_l({{"a b c d", {"a x c d e"}}}) == Approx(2.44 * 0.75 * 0.6 / (0.6 + 1.44 * 0.75)));
  // The short reference gives R = 1, the long one P = 3/4.
  CHECK(metrics::rouge_l({{"a b c d", {"a b", "a x c d e"}}}) == Approx(2.44 * 0.75 / (1 + 1.44 * 0.75)));
  CHECK(metrics::rouge_l({{"p q", {"a b"}}}) == 0.0);
  // str.split(" ") makes "" one empty token: an empty candidate matches an empty reference.
  CHECK(metrics::rouge_l({{"", {""}}}) == Approx(1.0));
  CHECK(metrics::rouge_l({{"", {"a b"}}}) == 0.0);
}

TEST_CASE("CIDEr-D: idf from the evaluated set, x10, clipping and length penalty", "[eval]") {
  // One image: every n-gram is in all (one) images' references, so every weight is 0.
  CHECK(metrics::cider_d({{"a man on a horse", {"a man on a horse"}}}) == 0.0);
  // Two images, each candidate equal to its only reference, no shared words: cosine 1 for
  // n = 1..4, no length difference -> 10.
  CHECK(metrics::cider_d({{"a man on a horse", {"a man on a horse"}}, {"two dogs in snow", {"two dogs in snow"}}}) ==
        Approx(10.0));
  // Repeating a matching word does not raise the score (candidate weights clipped by the
  // reference's) and the longer candidate is penalised.
  const double once = metrics::cider_d({{"red car", {"red car"}}, {"blue sky", {"blue sky"}}});
  const double twice = metrics::cider_d({{"red red car", {"red car"}}, {"blue sky", {"blue sky"}}});
  CHECK(twice < once);
}

TEST_CASE("caption metrics: a mixed fraction is one ROUGE token but two BLEU words", "[eval]") {
  const std::vector<TokenizedCaptions> images{
      {"x 3\xC2\xA0"
       "1/2",
       {"x 3 1/2"}}};
  CHECK(metrics::bleu(images)[0] == Approx(1.0).margin(1e-9));
  CHECK(metrics::rouge_l(images) == Approx(2.44 * 0.5 / 3 / (1.0 / 3 + 1.44 * 0.5)));
}

TEST_CASE("caption metrics: nothing to score is an error", "[eval]") {
  CHECK_THROWS_AS(metrics::caption_scores({}), Error);
  CHECK_THROWS_WITH(metrics::cider_d({{"a b", {}}}), Catch::Contains("no reference caption"));
}

namespace {

// The crafted set with pycocoevalcap's own tokenisation (recorded in golden.json), so the
// metrics are checked apart from the C++ tokenizer.
std::vector<TokenizedCaptions> python_tokenized(const std::vector<metrics::CaptionImage>& images,
                                                const metrics::Predictions& predictions) {
  std::map<std::string, std::string> tokenized;
  for (const auto& pair : test::eval_golden().at("tokenizer")) tokenized[pair[0]] = pair[1];
  std::vector<TokenizedCaptions> out;
  for (const auto& image : images) {
    TokenizedCaptions t{tokenized.at(predictions.at(image.image_id)), {}};
    for (const auto& ref : image.references) t.references.push_back(tokenized.at(ref));
    out.push_back(t);
  }
  return out;
}

void check_against_golden(const metrics::CaptionScores& scores, const nlohmann::json& golden) {
  for (int n = 0; n < 4; ++n) {
    const double expected = golden.at("Bleu_" + std::to_string(n + 1)).get<double>();
    CHECK(scores.bleu[n] == Approx(expected).margin(test::kGoldenTolerance));
  }
  CHECK(scores.rouge_l == Approx(golden.at("ROUGE_L").get<double>()).margin(test::kGoldenTolerance));
  CHECK(scores.cider == Approx(golden.at("CIDEr").get<double>()).margin(test::kGoldenTolerance));
}

}  // namespace

TEST_CASE("caption metrics equal pycocoevalcap's on the crafted sets", "[eval]") {
  const auto& golden = test::eval_golden();
  const auto coco = metrics::read_caption_annotations(test::eval_data("coco_karpathy_test.json").string());
  const auto coco_predictions = metrics::read_caption_predictions(test::eval_data("coco_predictions.json").string());
  check_against_golden(metrics::caption_scores(python_tokenized(coco, coco_predictions)), golden.at("coco_caption"));

  const auto nocaps = metrics::read_caption_annotations(test::eval_data("nocaps_val.json").string());
  const auto nocaps_predictions =
      metrics::read_caption_predictions(test::eval_data("nocaps_predictions.json").string());
  check_against_golden(metrics::caption_scores(python_tokenized(nocaps, nocaps_predictions)), golden.at("nocaps"));
}
