// The stage-2 layout: filter_cap.json + image/<id>.jpg, raw captions, missing or corrupt
// images skipped and counted, broken annotation files refused with the file's name.
#include <catch2/catch.hpp>
#include <torch/torch.h>

#include "minigpt4/common/error.h"
#include "minigpt4/datasets/cc_sbu_align.h"
#include "minigpt4/datasets/loader.h"
#include "tests/datasets/pipeline_fixtures.h"

#include <set>

namespace mt = minigpt4::test;
using namespace minigpt4::datasets;

namespace {

std::string error_of(const std::string& root) {
  try {
    CcSbuAlignDataset d(root);
  } catch (const minigpt4::Error& e) {
    return e.what();
  }
  FAIL("expected a minigpt4::Error");
  return "";
}

}  // namespace

TEST_CASE("cc_sbu_align: raw captions, a missing and a corrupt image skipped and counted", "[data]") {
  mt::ScratchDir dir;
  dir.write("filter_cap.json", R"({"annotations": [
      {"image_id": "2", "caption": "The image shows A DOG. It is brown!"},
      {"image_id": "5", "caption": "Missing picture."},
      {"image_id": 7, "caption": "Numeric id."},
      {"image_id": "9", "caption": "Corrupt picture."}]})");
  dir.write("image/2.jpg", mt::encoded_image(".jpg", 30, 40, 2));
  dir.write("image/7.jpg", mt::encoded_image(".jpg", 40, 30, 7));
  dir.write("image/9.jpg", "not a jpeg at all");

  const CcSbuAlignDataset data(dir.path().string());
  REQUIRE(data.size() == 4);
  CHECK(data.annotation(2).image_id == "7");
  CHECK(data.image_path(0) == (dir.path() / "image" / "2.jpg").string());

  LoaderOptions opt;
  DatasetSpec spec;
  spec.name = "cc_sbu_align";
  spec.kind = DatasetKind::CcSbuAlign;
  spec.storage = dir.path().string();
  spec.batch_size = 2;
  spec.image_size = 16;
  opt.datasets = {spec};
  opt.num_workers = 1;
  DataLoader loader(opt);
  const Batch b = loader.next();
  CHECK(b.images.sizes() == at::IntArrayRef({2, 3, 16, 16}));
  CHECK(std::set<std::string>(b.captions.begin(), b.captions.end()) ==
        std::set<std::string>{"The image shows A DOG. It is brown!", "Numeric id."});  // not blip_caption'd
  // Both bad annotations are consumed before the second good one only in some orders;
  // after one more batch (the next pass) the first pass is surely done.
  loader.next();
  const DataStats stats = loader.stats();
  CHECK(stats.skipped(SkipReason::MissingImage) >= 1);
  CHECK(stats.skipped(SkipReason::CorruptImage) >= 1);
  const auto& ex = stats.datasets.at("cc_sbu_align").examples;
  CHECK_THAT(ex[int(SkipReason::MissingImage)].at(0), Catch::Contains("5.jpg"));
  CHECK_THAT(ex[int(SkipReason::CorruptImage)].at(0), Catch::Contains("9.jpg"));
}

TEST_CASE("cc_sbu_align: broken annotation files are errors naming the file", "[data]") {
  mt::ScratchDir dir;
  const std::string root = dir.path().string();
  CHECK_THAT(error_of(root), Catch::Contains("filter_cap.json"));
  dir.write("filter_cap.json", "{\"annotations\": [");
  CHECK_THAT(error_of(root), Catch::Contains("filter_cap.json") && Catch::Contains("invalid JSON"));
  dir.write("filter_cap.json", R"({"images": []})");
  CHECK_THAT(error_of(root), Catch::Contains("\"annotations\""));
  dir.write("filter_cap.json", R"({"annotations": [{"image_id": "1"}]})");
  CHECK_THAT(error_of(root), Catch::Contains("annotation 0"));
  dir.write("filter_cap.json", R"({"annotations": []})");
  CHECK_THAT(error_of(root), Catch::Contains("no annotations"));
}

TEST_CASE("cc_sbu_align: ranks split each pass into disjoint parts, reshuffled per pass", "[data]") {
  mt::ScratchDir dir;
  std::string json = R"({"annotations": [)";
  for (int i = 0; i < 11; ++i)
    json += (i ? "," : "") + std::string(R"({"image_id": ")") + std::to_string(i) + R"(", "caption": "c"})";
  dir.write("filter_cap.json", json + "]}");
  const CcSbuAlignDataset data(dir.path().string());
  for (uint64_t pass = 0; pass < 3; ++pass) {
    const auto r0 = rank_pass_order(data.size(), 42, pass, 0, 2, "cc_sbu_align");
    const auto r1 = rank_pass_order(data.size(), 42, pass, 1, 2, "cc_sbu_align");
    CHECK(r0.size() == 6);
    CHECK(r1.size() == 5);
    std::multiset<size_t> all(r0.begin(), r0.end());
    all.insert(r1.begin(), r1.end());
    CHECK(all == std::multiset<size_t>{0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10});
  }
  CHECK(rank_pass_order(data.size(), 42, 0, 0, 1, "cc_sbu_align") !=
        rank_pass_order(data.size(), 42, 1, 0, 1, "cc_sbu_align"));
  CHECK(rank_pass_order(data.size(), 42, 0, 0, 1, "cc_sbu_align") ==
        rank_pass_order(data.size(), 42, 0, 0, 1, "cc_sbu_align"));
  CHECK_THROWS_AS(rank_pass_order(data.size(), 42, 0, 2, 2, "cc_sbu_align"), minigpt4::Error);

  // The streams' cursor: rank 0's part of pass 0, then of pass 1, and so on.
  PassCursor cursor(data.size(), 42, 0, 2, "cc_sbu_align");
  for (uint64_t pass = 0; pass < 2; ++pass)
    for (const size_t i : rank_pass_order(data.size(), 42, pass, 0, 2, "cc_sbu_align")) {
      CHECK(cursor.next() == i);
      CHECK(cursor.pass() == pass);
    }
  CHECK_THROWS_WITH(PassCursor(data.size(), 42, 0, 12, "cc_sbu_align"), Catch::Contains("11 items cannot be split"));
}
