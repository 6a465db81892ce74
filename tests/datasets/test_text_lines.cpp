// The text-only dataset (data_type: text) that feeds a language warm-up.
#include <catch2/catch.hpp>
#include <torch/torch.h>

#include "minigpt4/common/run_settings.h"
#include "minigpt4/common/config.h"
#include "minigpt4/common/error.h"
#include "minigpt4/datasets/loader.h"
#include "minigpt4/datasets/text_lines.h"
#include "tests/datasets/pipeline_fixtures.h"

#include <set>

namespace mt = minigpt4::test;
using namespace minigpt4::datasets;

TEST_CASE("text lines: every non-empty line once per pass, ranks disjoint", "[data]") {
  mt::ScratchDir dir;
  const auto file = dir.write("corpus.txt", "alpha\n\nbeta\r\n  \ngamma\ndelta\nepsilon\n");
  TextLinesStream whole(file.string(), 7, 0, 1);
  CHECK(whole.size() == 5);
  std::multiset<std::string> seen;
  for (int i = 0; i < 5; ++i) {
    const auto r = whole.next();
    CHECK_FALSE(r.has_image);
    CHECK_FALSE(r.skipped);
    CHECK(r.pass == 0);
    seen.insert(r.caption);
  }
  CHECK(seen == std::multiset<std::string>{"alpha", "beta", "gamma", "delta", "epsilon"});
  CHECK(whole.next().pass == 1);

  TextLinesStream r0(file.string(), 7, 0, 2), r1(file.string(), 7, 1, 2);
  std::set<std::string> a, b;
  for (int i = 0; i < 3; ++i) a.insert(r0.next().caption);  // 5 lines: rank 0 reads 3, rank 1 reads 2
  for (int i = 0; i < 2; ++i) b.insert(r1.next().caption);
  for (const auto& s : a) CHECK(b.count(s) == 0);
  CHECK(a.size() + b.size() == 5);
}

TEST_CASE("text lines: a missing or empty file is an error naming it", "[data]") {
  mt::ScratchDir dir;
  CHECK_THROWS_WITH(TextLinesStream((dir.path() / "nope.txt").string(), 0, 0, 1), Catch::Contains("nope.txt"));
  const auto empty = dir.write("empty.txt", "\n \n");
  CHECK_THROWS_WITH(TextLinesStream(empty.string(), 0, 0, 1), Catch::Contains("no non-empty line"));
}

TEST_CASE("a data_type: text dataset gives batches of texts without images", "[data]") {
  mt::ScratchDir dir;
  const auto file = dir.write("corpus.txt", "one\ntwo\nthree\nfour\n");
  const std::string yaml =
      "model:\n  arch: minigpt4\ndatasets:\n  text_corpus:\n    data_type: text\n    batch_size: 3\n"
      "    build_info:\n      storage: \"" +
      file.string() + "\"\nrun:\n  num_workers: 2\n";
  const auto config = minigpt4::Config::from_yaml(yaml, "warmup.yaml");
  const auto options = loader_options_from_config(config, minigpt4::RunSettings::from_config(config).trainer, 0, 1);
  REQUIRE(options.datasets.size() == 1);
  CHECK(options.datasets[0].kind == DatasetKind::TextLines);
  DataLoader loader(options);
  const auto batch = loader.next();
  CHECK_FALSE(batch.images.defined());
  CHECK(batch.captions.size() == 3);
  CHECK(batch.dataset == "text_corpus");

  const auto bad = minigpt4::Config::from_yaml(
      "model:\n  arch: minigpt4\ndatasets:\n  text_corpus:\n    data_type: audio\n    batch_size: 3\n    build_info:\n"
      "      storage: x\n",
      "bad.yaml");
  CHECK_THROWS_WITH(loader_options_from_config(bad, minigpt4::RunSettings::from_config(bad).trainer, 0, 1),
                    Catch::Contains("data_type"));
}
