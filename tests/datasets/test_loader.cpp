// The loader: dataset mixing by sample_ratio, the same batches for a seed whatever the
// number of workers, disjoint per-rank reading, and resuming at a saved position.
#include <catch2/catch.hpp>
#include <torch/torch.h>

#include "minigpt4/common/run_settings.h"
#include "minigpt4/common/config.h"
#include "minigpt4/common/error.h"
#include "minigpt4/datasets/cc_sbu_align.h"
#include "minigpt4/datasets/loader.h"
#include "minigpt4/datasets/webdataset.h"
#include "tests/datasets/pipeline_fixtures.h"

#include <map>
#include <set>

namespace mt = minigpt4::test;
using namespace minigpt4::datasets;

namespace {

// cc_sbu_align root with `n` annotations "caption <i>"; ids in `missing` have no image
// and ids in `corrupt` a file that is not an image.
void make_align(const mt::ScratchDir& dir, int n, std::set<int> missing = {}, std::set<int> corrupt = {}) {
  std::string json = R"({"annotations": [)";
  for (int i = 0; i < n; ++i) {
    json += (i ? "," : "") + std::string(R"({"image_id": ")") + std::to_string(i) + R"(", "caption": "caption )" +
            std::to_string(i) + "\"}";
    if (corrupt.count(i)) {
      dir.write("image/" + std::to_string(i) + ".jpg", "garbage");
    } else if (!missing.count(i)) {
      dir.write("image/" + std::to_string(i) + ".jpg", mt::encoded_image(".jpg", 20 + i % 5, 24, i));
    }
  }
  dir.write("filter_cap.json", json + "]}");
}

// `shards` tars "<i>.tar" of `per_shard` samples each; sample 2 of shard 0 is corrupt.
void make_shards(const mt::ScratchDir& dir, int shards, int per_shard) {
  for (int s = 0; s < shards; ++s) {
    mt::TarEntries entries;
    for (int i = 0; i < per_shard; ++i) {
      const std::string key = std::to_string(s * 1000 + i);
      const bool corrupt = s == 0 && i == 2;
      entries.push_back({key + ".jpg", corrupt ? "broken" : mt::encoded_image(".jpg", 18, 26, s * 31 + i)});
      entries.push_back({key + ".txt", "Shard " + std::to_string(s) + " sample " + std::to_string(i)});
    }
    mt::write_tar(dir.path() / (std::to_string(s) + ".tar"), entries);
  }
}

DatasetSpec align_spec(const std::string& name, const mt::ScratchDir& dir, int batch_size, double ratio) {
  DatasetSpec s;
  s.name = name;
  s.kind = DatasetKind::CcSbuAlign;
  s.storage = dir.path().string();
  s.batch_size = batch_size;
  s.sample_ratio = ratio;
  s.image_size = 8;
  return s;
}

DatasetSpec wds_spec(const std::string& name, const mt::ScratchDir& dir, int shards, int batch_size, double ratio) {
  DatasetSpec s;
  s.name = name;
  s.storage = dir.path().string() + "/{0.." + std::to_string(shards - 1) + "}.tar";
  s.batch_size = batch_size;
  s.sample_ratio = ratio;
  s.image_size = 8;
  return s;
}

void check_same(const Batch& a, const Batch& b) {
  CHECK(a.dataset == b.dataset);
  CHECK(a.captions == b.captions);
  CHECK(a.sources == b.sources);
  CHECK(torch::equal(a.images, b.images));
}

}  // namespace

TEST_CASE("each batch comes whole from one dataset, chosen in proportion to sample_ratio", "[data]") {
  mt::ScratchDir dir;
  make_align(dir, 5);
  LoaderOptions opt;
  opt.datasets = {align_spec("cc_sbu", dir, 2, 3.0), align_spec("laion", dir, 3, 1.0)};
  opt.num_workers = 0;
  opt.seed = 11;
  auto count = [&opt] {
    DataLoader loader(opt);
    std::map<std::string, int> n;
    for (int i = 0; i < 2000; ++i) {
      const Batch b = loader.next();
      REQUIRE(b.images.size(0) == (b.dataset == "cc_sbu" ? 2 : 3));
      ++n[b.dataset];
    }
    return n;
  };
  const auto n = count();
  CHECK(n.at("cc_sbu") + n.at("laion") == 2000);
  CHECK(std::abs(n.at("cc_sbu") - 1500) < 100);  // binomial sd ~ 19
  CHECK(count() == n);                           // a seed fixes the exact counts
}

TEST_CASE("the same seed gives the same batches with 0, 1 and 4 workers", "[data]") {
  mt::ScratchDir wds_dir, align_dir;
  make_shards(wds_dir, 3, 5);
  make_align(align_dir, 7, {3}, {5});
  LoaderOptions opt;
  opt.datasets = {wds_spec("laion", wds_dir, 3, 3, 1.0), align_spec("cc_sbu_align", align_dir, 2, 1.0)};
  opt.shuffle_buffer = 4;
  opt.seed = 7;
  auto run = [&opt](int workers) {
    LoaderOptions o = opt;
    o.num_workers = workers;
    DataLoader loader(o);
    std::vector<Batch> out;
    for (int i = 0; i < 25; ++i) out.push_back(loader.next());
    return std::make_pair(out, loader.stats());
  };
  const auto [one, one_stats] = run(1);
  for (int workers : {0, 4}) {
    const auto [other, other_stats] = run(workers);
    for (size_t i = 0; i < one.size(); ++i) check_same(one[i], other[i]);
    CHECK(format_data_report(other_stats) == format_data_report(one_stats));
  }
  std::set<std::string> datasets;
  for (const auto& b : one) datasets.insert(b.dataset);
  CHECK(datasets.size() == 2);
  CHECK(one_stats.skipped(SkipReason::CorruptImage) >= 1);
}

TEST_CASE("two ranks together see every cc_sbu_align sample exactly once per pass", "[data]") {
  mt::ScratchDir dir;
  make_align(dir, 9, /*missing=*/{4});
  const CcSbuAlignDataset data(dir.path().string());
  std::multiset<std::string> seen;
  for (int rank = 0; rank < 2; ++rank) {
    size_t usable = 0;
    for (size_t i : rank_pass_order(data.size(), 3, 0, rank, 2, "cc_sbu_align")) usable += i != 4;
    LoaderOptions opt;
    opt.datasets = {align_spec("cc_sbu_align", dir, 1, 1.0)};
    opt.seed = 3;
    opt.rank = rank;
    opt.world_size = 2;
    opt.num_workers = 2;
    DataLoader loader(opt);
    for (size_t i = 0; i < usable; ++i) seen.insert(loader.next().sources.at(0));
    CHECK(loader.position().datasets.at("cc_sbu_align").pass == 0);
  }
  std::multiset<std::string> expected;
  for (int i = 0; i < 9; ++i)
    if (i != 4) expected.insert((dir.path() / "image" / (std::to_string(i) + ".jpg")).string());
  CHECK(seen == expected);
}

TEST_CASE("webdataset ranks read disjoint shards, or every other sample of too few shards", "[data]") {
  mt::ScratchDir dir;
  make_shards(dir, 4, 3);
  auto pass0 = [&](std::vector<std::string> shards, int rank) {
    WebDatasetOptions o;
    o.shards = std::move(shards);
    o.rank = rank;
    o.world_size = 2;
    o.shuffle_buffer = 0;
    WebDatasetStream stream(o);
    std::vector<std::string> sources;
    for (StreamRecord r = stream.next(); r.pass == 0; r = stream.next()) sources.push_back(r.source);
    return sources;
  };
  std::vector<std::string> all;
  for (int s = 0; s < 4; ++s) all.push_back((dir.path() / (std::to_string(s) + ".tar")).string());
  const auto r0 = pass0(all, 0), r1 = pass0(all, 1);
  CHECK(r0.size() == 6);
  CHECK(r1.size() == 6);
  std::set<std::string> union_set(r0.begin(), r0.end());
  union_set.insert(r1.begin(), r1.end());
  CHECK(union_set.size() == 12);

  const auto one0 = pass0({all[1]}, 0), one1 = pass0({all[1]}, 1);
  const std::string s = all[1] + ":";
  CHECK(one0 == std::vector<std::string>{s + "1000.jpg", s + "1002.jpg"});
  CHECK(one1 == std::vector<std::string>{s + "1001.jpg"});
}

TEST_CASE("a loader resumed at a saved position continues with the same batches", "[data]") {
  mt::ScratchDir wds_dir, align_dir;
  make_shards(wds_dir, 2, 6);
  make_align(align_dir, 6, {1}, {2});
  LoaderOptions opt;
  opt.datasets = {wds_spec("laion", wds_dir, 2, 4, 2.0), align_spec("cc_sbu_align", align_dir, 3, 1.0)};
  opt.shuffle_buffer = 3;
  opt.seed = 5;
  opt.num_workers = 2;

  DataLoader first(opt);
  for (int i = 0; i < 7; ++i) first.next();
  const LoaderPosition saved = first.position();
  CHECK(saved.batches == 7);
  std::vector<Batch> expected;
  for (int i = 0; i < 6; ++i) expected.push_back(first.next());

  const auto restored = LoaderPosition::from_json(nlohmann::json::parse(saved.to_json().dump()));
  CHECK(restored.to_json() == saved.to_json());
  opt.num_workers = 3;
  DataLoader resumed(opt, restored);
  CHECK(resumed.position().to_json() == saved.to_json());
  for (const auto& want : expected) check_same(resumed.next(), want);
  CHECK(resumed.position().to_json() == first.position().to_json());

  LoaderOptions other = opt;
  other.seed = 6;
  CHECK_THROWS_AS(DataLoader(other, restored), minigpt4::Error);
  CHECK_THROWS_AS(LoaderPosition::from_json(nlohmann::json::parse(R"({"batches": 1})")), minigpt4::Error);
}

TEST_CASE("loader options come from the run config", "[data]") {
  mt::ScratchDir dir;
  make_align(dir, 2);
  const auto cfg = minigpt4::Config::from_yaml(R"(
datasets:
  laion:
    batch_size: 64
    build_info:
      storage: "/data/laion/{00000..10488}.tar"
    vis_processor: {train: {name: blip2_image_train, image_size: 224}}
    text_processor: {train: {name: blip_caption, max_words: 30}}
    sample_ratio: 115
  cc_sbu_align:
    build_info: {storage: )" + dir.path().string() +
                                                   R"(}
    vis_processor: {train: {name: blip2_image_eval, image_size: 64}}
run:
  batch_size_train: 12
  num_workers: 3
  seed: 9
)",
                                               "stage.yaml");
  const LoaderOptions opt = loader_options_from_config(cfg, minigpt4::RunSettings::from_config(cfg).trainer, 1, 4);
  CHECK(opt.seed == 9);
  CHECK(opt.num_workers == 3);
  CHECK(opt.rank == 1);
  CHECK(opt.world_size == 4);
  REQUIRE(opt.datasets.size() == 2);
  std::map<std::string, DatasetSpec> by_name;
  for (const auto& d : opt.datasets) by_name[d.name] = d;
  const auto& laion = by_name.at("laion");
  CHECK(laion.kind == DatasetKind::WebDataset);
  CHECK(laion.batch_size == 64);
  CHECK(laion.sample_ratio == 115);
  CHECK(laion.max_words == 30);
  CHECK(laion.random_crop);
  const auto& align = by_name.at("cc_sbu_align");
  CHECK(align.kind == DatasetKind::CcSbuAlign);
  CHECK(align.batch_size == 12);
  CHECK_FALSE(align.random_crop);
  CHECK(align.image_size == 64);

  const auto no_storage = minigpt4::Config::from_yaml("datasets:\n  cc_sbu:\n    batch_size: 4\n", "s.yaml");
  CHECK_THROWS_WITH(
      loader_options_from_config(no_storage, minigpt4::RunSettings::from_config(no_storage).trainer, 0, 1),
      Catch::Contains("datasets.cc_sbu.build_info.storage"));
}
