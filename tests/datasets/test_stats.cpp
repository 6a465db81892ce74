// The end-of-run data report: a bad sample met in every epoch is listed once, with a count.
#include "minigpt4/datasets/stats.h"

#include <catch2/catch.hpp>

using namespace minigpt4::datasets;

TEST_CASE("the data report lists a sample skipped every epoch once, with how often") {
  DataStats stats;
  for (int epoch = 0; epoch < 3; ++epoch) {
    stats.record_skip("laion", SkipReason::CorruptImage, "00001.tar:000000007.jpg", "not an image");
    stats.record_skip("laion", SkipReason::CorruptImage, "00002.tar:000000001.jpg", "truncated JPEG");
  }
  CHECK(stats.total_skipped() == 6);
  const auto& laion = stats.datasets.at("laion");
  const auto reason = static_cast<size_t>(SkipReason::CorruptImage);
  REQUIRE(laion.examples[reason].size() == 2);
  CHECK(laion.example_counts[reason] == std::vector<uint64_t>{3, 3});
  const auto report = format_data_report(stats);
  CHECK_THAT(report, Catch::Contains("00001.tar:000000007.jpg: not an image (3 times)"));
  CHECK_THAT(report, Catch::Contains(": 6\n"));
}

TEST_CASE("the data report says when it lists only the first distinct samples") {
  DataStats stats;
  for (size_t i = 0; i < DataStats::kMaxRemembered + 5; ++i)
    stats.record_skip("cc", SkipReason::NoCaption, "shard.tar:" + std::to_string(i), "");
  const auto report = format_data_report(stats);
  CHECK_THAT(report, Catch::Contains("(the first 20 distinct listed)"));
  CHECK_THAT(report, !Catch::Contains("shard.tar:24"));
}
