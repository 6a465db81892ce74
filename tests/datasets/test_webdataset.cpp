// Webdataset shards read in place: grouping by key, the image/caption choice, skips
// counted by reason and name, a truncated shard reported while the next one is still read.
#include <catch2/catch.hpp>
#include <torch/torch.h>

#include "minigpt4/common/error.h"
#include "minigpt4/datasets/loader.h"
#include "minigpt4/datasets/webdataset.h"
#include "minigpt4/processors/caption_processor.h"
#include "tests/datasets/pipeline_fixtures.h"

#include <map>

namespace mt = minigpt4::test;
using namespace minigpt4::datasets;

namespace {

// 00000.tar: good and bad samples; 00001.tar: cut short; 00002.tar: gzip-compressed.
struct WdsShards {
  mt::ScratchDir dir;
  std::string a, b, c;
  size_t b_whole_samples = 0;  // samples of 00001.tar that survive the cut

  WdsShards() {
    a = (dir.path() / "00000.tar").string();
    mt::write_tar(
        a, {
               {"000000001.jpg", mt::encoded_image(".jpg", 20, 24, 1)},
               {"000000001.txt", "A Photo of a DOG!!  on   the beach."},
               {"000000002.png", mt::encoded_image(".png", 18, 22, 2)},
               {"000000002.json", R"j({"caption": "Red Square (Moscow)", "url": "http://x", "key": "000000002"})j"},
               {"000000003.jpg", "definitely not a jpeg"},
               {"000000003.txt", "broken image"},
               {"000000004.jpg", mt::encoded_image(".jpg", 16, 16, 4)},
               {"000000005.txt", "a caption without an image"},
               {"000000006.seg.png", mt::encoded_image(".png", 16, 16, 6)},
               {"000000006.txt", "a segmentation mask is not the image"},
               {"000000007.JPG", mt::encoded_image(".jpg", 16, 20, 7)},
               {"000000007.json", R"({"caption": "From JSON"})"},
               {"000000007.txt", "from txt"},
               {"README", "not a sample"},
               {"dir/000000008.jpg", mt::encoded_image(".jpg", 16, 16, 8)},
               {"dir/000000008.txt", "In a folder"},
           });
    b = (dir.path() / "00001.tar").string();
    mt::TarEntries entries;
    for (int i = 0; i < 4; ++i) {
      const std::string key = "00001000" + std::to_string(i);
      entries.push_back({key + ".png", mt::encoded_image(".png", 48, 48, 10 + i)});
      entries.push_back({key + ".txt", "shard b sample " + std::to_string(i)});
    }
    mt::write_tar(b, entries);
    const std::string whole = mt::read_bytes(b);
    dir.write("00001.tar", whole.substr(0, whole.size() * 6 / 10));
    TarShardReader reader(b);
    try {
      while (reader.next()) ++b_whole_samples;
    } catch (const minigpt4::Error&) {}
    c = (dir.path() / "00002.tar").string();
    mt::write_tar(c, {{"000020001.png", mt::encoded_image(".png", 16, 16, 20)}, {"000020001.txt", "Gzipped shard"}},
                  /*gzip=*/true);
  }
};

}  // namespace

TEST_CASE("sample names split at the first dot of the base name", "[data]") {
  using P = std::pair<std::string, std::string>;
  CHECK(split_sample_name("x.seg.png") == P{"x", "seg.png"});
  CHECK(split_sample_name("a.b/000001.JPG") == P{"a.b/000001", "jpg"});
  CHECK_FALSE(split_sample_name("README").has_value());
  CHECK_FALSE(split_sample_name(".hidden").has_value());
  CHECK_FALSE(split_sample_name("dir/.DS_Store").has_value());
}

TEST_CASE("a tar is read as consecutive groups of one key", "[data]") {
  WdsShards s;
  TarShardReader reader(s.a);
  std::vector<std::string> keys;
  std::map<std::string, std::vector<std::string>> extensions;
  while (auto sample = reader.next()) {
    keys.push_back(sample->key);
    for (const auto& f : sample->files) extensions[sample->key].push_back(f.first);
  }
  CHECK(keys == std::vector<std::string>{"000000001", "000000002", "000000003", "000000004", "000000005", "000000006",
                                         "000000007", "dir/000000008"});
  CHECK(extensions["000000006"] == std::vector<std::string>{"seg.png", "txt"});
  CHECK(extensions["000000007"] == std::vector<std::string>{"jpg", "json", "txt"});
}

TEST_CASE("a truncated tar gives its whole samples, then an error naming the shard", "[data]") {
  WdsShards s;
  REQUIRE(s.b_whole_samples >= 1);
  REQUIRE(s.b_whole_samples < 4);
  TarShardReader reader(s.b);
  for (size_t i = 0; i < s.b_whole_samples; ++i) CHECK(reader.next().has_value());
  try {
    reader.next();
    FAIL("expected an error");
  } catch (const minigpt4::Error& e) {
    CHECK_THAT(e.what(), Catch::Contains("00001.tar"));
  }
  // Not a tar at all.
  const auto junk = s.dir.write("junk.tar", std::string(2000, 'j'));
  CHECK_THROWS_AS(
      [&] {
        TarShardReader r(junk.string());
        r.next();
      }(),
      minigpt4::Error);
}

TEST_CASE("the stream picks image and caption, notes skips, and goes on past a bad shard", "[data]") {
  WdsShards s;
  WebDatasetOptions opt;
  opt.name = "laion";
  opt.shards = {s.a, s.b, s.c};
  opt.shuffle_buffer = 0;
  WebDatasetStream stream(opt);
  std::map<std::string, StreamRecord> by_source;
  std::vector<StreamRecord> skips;
  bool after_bad_shard_seen = false, bad_shard_seen = false;
  while (true) {
    StreamRecord r = stream.next();
    if (bad_shard_seen) after_bad_shard_seen = true;
    if (r.pass == 1) break;
    if (r.skipped) {
      if (r.reason == SkipReason::BadShard) bad_shard_seen = true;
      skips.push_back(r);
    } else {
      by_source[r.source] = r;
    }
  }
  CHECK(after_bad_shard_seen);
  auto caption_of = [&](const std::string& source) {
    const auto it = by_source.find(source);
    return it == by_source.end() ? std::string("<missing>") : it->second.caption;
  };
  CHECK(caption_of(s.a + ":000000001.jpg") == "a photo of a dog on the beach");
  CHECK(caption_of(s.a + ":000000002.png") == "red square moscow");
  CHECK(caption_of(s.a + ":000000003.jpg") == "broken image");  // the workers find it corrupt
  CHECK(caption_of(s.a + ":000000007.jpg") == "from json");     // json is what the original reads
  CHECK(caption_of(s.a + ":dir/000000008.jpg") == "in a folder");
  CHECK(caption_of(s.c + ":000020001.png") == "gzipped shard");
  CHECK(by_source.size() == 6 + s.b_whole_samples);
  CHECK(by_source.at(s.a + ":000000002.png").image_bytes.substr(1, 3) == "PNG");

  std::map<std::string, std::string> reasons;
  for (const auto& r : skips) reasons[r.source] = skip_reason_name(r.reason);
  CHECK(reasons == std::map<std::string, std::string>{{s.a + ":000000004", "no caption"},
                                                      {s.a + ":000000005", "no image"},
                                                      {s.a + ":000000006", "no image"},
                                                      {s.b, "unreadable shard"}});
  for (const auto& r : skips)
    if (r.reason == SkipReason::NoImage && r.source == s.a + ":000000006")
      CHECK_THAT(r.detail, Catch::Contains("seg.png"));
}

TEST_CASE("the loader skips and counts bad samples by name and reports them", "[data]") {
  WdsShards s;
  LoaderOptions opt;
  DatasetSpec spec;
  spec.name = "laion";
  spec.storage = s.dir.path().string() + "/{00000..00002}.tar";
  spec.batch_size = 1;
  spec.image_size = 8;
  opt.datasets = {spec};
  opt.num_workers = 0;
  opt.shuffle_buffer = 0;
  DataLoader loader(opt);
  // One pass holds 5 + b_whole_samples usable samples, and every shard starts with a good
  // one, so one batch more consumes exactly the skips of the first pass.
  std::vector<std::string> captions;
  for (size_t i = 0; i < 5 + s.b_whole_samples + 1; ++i) {
    const Batch b = loader.next();
    CHECK(b.dataset == "laion");
    CHECK(b.images.sizes() == at::IntArrayRef({1, 3, 8, 8}));
    captions.push_back(b.captions.at(0));
  }
  CHECK(std::count(captions.begin(), captions.end(), "broken image") == 0);
  const DataStats stats = loader.stats();
  CHECK(stats.skipped(SkipReason::CorruptImage) == 1);
  CHECK(stats.skipped(SkipReason::NoCaption) == 1);
  CHECK(stats.skipped(SkipReason::NoImage) == 2);
  CHECK(stats.skipped(SkipReason::BadShard) == 1);
  CHECK(stats.total_samples() == 6 + s.b_whole_samples);
  const auto& laion = stats.datasets.at("laion");
  CHECK_THAT(laion.examples[int(SkipReason::CorruptImage)].at(0), Catch::Contains(s.a + ":000000003.jpg"));
  CHECK_THAT(laion.examples[int(SkipReason::BadShard)].at(0), Catch::Contains(s.b));
  const std::string report = format_data_report(stats);
  CHECK_THAT(report, Catch::Contains("corrupt image: 1") && Catch::Contains("no image: 2") &&
                         Catch::Contains(s.a + ":000000004") && Catch::Contains("00001.tar"));
}

TEST_CASE("shards without any sample are an error, not an endless loop", "[data]") {
  mt::ScratchDir dir;
  const auto empty = (dir.path() / "00000.tar").string();
  mt::write_tar(empty, {{"README", "nothing here"}});
  WebDatasetOptions opt;
  opt.name = "laion";
  opt.shards = {empty};
  WebDatasetStream stream(opt);
  try {
    stream.next();
    FAIL("expected an error");
  } catch (const minigpt4::Error& e) {
    CHECK_THAT(e.what(), Catch::Contains("laion") && Catch::Contains("no samples"));
  }
}

TEST_CASE("a dataset whose images never decode stops with the report", "[data]") {
  mt::ScratchDir dir;
  const auto shard = (dir.path() / "00000.tar").string();
  mt::write_tar(shard, {{"1.jpg", "bad"}, {"1.txt", "a"}, {"2.jpg", "bad"}, {"2.txt", "b"}});
  LoaderOptions opt;
  DatasetSpec spec;
  spec.name = "laion";
  spec.storage = shard;
  spec.batch_size = 2;
  opt.datasets = {spec};
  opt.num_workers = 2;
  opt.shuffle_buffer = 0;
  DataLoader loader(opt);
  try {
    loader.next();
    FAIL("expected an error");
  } catch (const minigpt4::Error& e) {
    CHECK_THAT(e.what(), Catch::Contains("in a row") && Catch::Contains("corrupt image"));
  }
}
