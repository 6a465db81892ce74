// The synthetic world: deterministic bytes, read back by the project's own readers, held-out
// annotations that match their pictures and captions, colours that are what they claim.
#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>
#include <torch/torch.h>

#include "minigpt4/common/error.h"
#include "minigpt4/datasets/cc_sbu_align.h"
#include "minigpt4/datasets/loader.h"
#include "minigpt4/datasets/shards.h"
#include "minigpt4/quickstart/synth.h"
#include "minigpt4/datasets/webdataset.h"
#include "minigpt4/processors/caption_processor.h"
#include "tests/datasets/pipeline_fixtures.h"

#include <opencv2/imgcodecs.hpp>
#include <opencv2/imgproc.hpp>

#include <map>
#include <set>

namespace mt = minigpt4::test;
namespace fs = std::filesystem;
using namespace minigpt4::datasets;
using namespace minigpt4::quickstart;

namespace {

SynthOptions small_world(const fs::path& out, uint64_t seed) {
  SynthOptions o;
  o.out_dir = out.string();
  o.seed = seed;
  o.stage1_samples = 60;
  o.align_samples = 20;
  o.heldout_samples = 20;
  o.image_size = 48;
  o.shard_size = 30;
  return o;
}

// relative path -> bytes, for every file under root.
std::map<std::string, std::string> snapshot(const fs::path& root) {
  std::map<std::string, std::string> files;
  for (const auto& e : fs::recursive_directory_iterator(root))
    if (e.is_regular_file()) files[fs::relative(e.path(), root).generic_string()] = mt::read_bytes(e.path());
  return files;
}

cv::Mat decode_rgb(const std::string& bytes) {
  cv::Mat bgr = cv::imdecode(std::vector<uchar>(bytes.begin(), bytes.end()), cv::IMREAD_COLOR);
  cv::Mat rgb;
  if (!bgr.empty()) cv::cvtColor(bgr, rgb, cv::COLOR_BGR2RGB);
  return rgb;
}

std::string nearest_colour(const cv::Scalar& mean) {
  std::string best;
  double best_d = 1e18;
  for (const auto& name : synth_colours()) {
    const cv::Vec3b c = synth_colour_rgb(name);
    double d = 0;
    for (int k = 0; k < 3; ++k) d += (mean[k] - c[k]) * (mean[k] - c[k]);
    if (d < best_d) best_d = d, best = name;
  }
  return best;
}

}  // namespace

TEST_CASE("synth: the same seed gives the same bytes, another seed other bytes", "[data]") {
  mt::ScratchDir dir;
  const auto a = write_synthetic_world(small_world(dir.path() / "a", 7));
  write_synthetic_world(small_world(dir.path() / "b", 7));
  write_synthetic_world(small_world(dir.path() / "c", 8));
  const auto fa = snapshot(dir.path() / "a"), fb = snapshot(dir.path() / "b"), fc = snapshot(dir.path() / "c");
  CHECK(a.stage1_shards == 2);
  CHECK(fa.size() == a.files_written);
  CHECK(fa.size() == 2 * 2 + 20 + 1 + 20 + 1 + 3 + 2);  // tars + stats, align, heldout, eval sets, corpus, world
  CHECK(fa.count("stage1/00000.tar") == 1);
  CHECK(fa.count("stage1/00001_stats.json") == 1);
  CHECK(fa.count("cc_sbu_align/image/19.jpg") == 1);
  CHECK(fa.count("heldout/image/00019.jpg") == 1);
  CHECK(fa == fb);
  REQUIRE(fa.size() == fc.size());
  CHECK(fa.at("stage1/00000.tar") != fc.at("stage1/00000.tar"));
  CHECK(fa.at("cc_sbu_align/filter_cap.json") != fc.at("cc_sbu_align/filter_cap.json"));
  CHECK(fa.at("heldout/annotations.json") != fc.at("heldout/annotations.json"));

  const auto world = nlohmann::json::parse(fa.at("world.json"));
  CHECK(world.at("seed") == 7);
  CHECK(world.at("image_size") == 48);
  CHECK(world.at("stage1").at("spec") == "stage1/{00000..00001}.tar");
  CHECK(world.at("colours").size() == 6);
  CHECK(world.at("files") == fa.size());
  const auto stats = nlohmann::json::parse(fa.at("stage1/00001_stats.json"));
  CHECK(stats.at("successes") == 30);
}

TEST_CASE("synth: webdataset readers and the loader take stage 1; cc_sbu_align reads stage 2", "[data]") {
  mt::ScratchDir dir;
  const auto sum = write_synthetic_world(small_world(dir.path() / "w", 3));
  const auto shards = expand_shard_spec(sum.stage1_spec);
  REQUIRE(shards.size() == 2);

  // The tars as written: keys shard * 10000 + index, jpg + json + txt, json caption == txt.
  std::multiset<std::string> processed;
  std::vector<std::string> keys;
  for (const auto& shard : shards) {
    TarShardReader reader(shard);
    while (auto s = reader.next()) {
      keys.push_back(s->key);
      REQUIRE(s->find("jpg"));
      REQUIRE(s->find("txt"));
      REQUIRE(s->find("json"));
      const auto meta = nlohmann::json::parse(*s->find("json"));
      CHECK(meta.at("caption") == *s->find("txt"));
      CHECK(meta.at("key") == s->key);
      CHECK(meta.at("status") == "success");
      CHECK(meta.at("width") == 48);
      const auto pick = pick_image_and_caption(*s);
      CHECK_FALSE(pick.skip.has_value());
      processed.insert(minigpt4::blip_caption(pick.caption, 50));
    }
  }
  REQUIRE(keys.size() == 60);
  CHECK(keys.front() == "000000000");
  CHECK(keys[29] == "000000029");
  CHECK(keys[30] == "000010000");

  WebDatasetOptions wo;
  wo.shards = shards;
  wo.shuffle_buffer = 1;
  WebDatasetStream stream(wo);
  std::multiset<std::string> streamed;
  for (int i = 0; i < 60; ++i) {
    const auto r = stream.next();
    REQUIRE_FALSE(r.skipped);
    streamed.insert(r.caption);
  }
  CHECK(streamed == processed);

  LoaderOptions lo;
  DatasetSpec wds;
  wds.name = "synth_stage1";
  wds.storage = sum.stage1_spec;
  wds.batch_size = 8;
  wds.image_size = 32;
  DatasetSpec align;
  align.name = "cc_sbu_align";
  align.kind = DatasetKind::CcSbuAlign;
  align.storage = sum.align_root;
  align.batch_size = 4;
  align.image_size = 32;
  align.random_crop = false;
  lo.datasets = {wds, align};
  lo.num_workers = 1;
  lo.shuffle_buffer = 10;
  DataLoader loader(lo);
  std::set<std::string> seen;
  for (int i = 0; i < 6; ++i) {
    const Batch b = loader.next();
    seen.insert(b.dataset);
    CHECK(b.images.size(1) == 3);
    CHECK(b.images.size(2) == 32);
    for (const auto& c : b.captions) {
      REQUIRE_FALSE(c.empty());
      if (b.dataset == "synth_stage1")
        CHECK(processed.count(c) >= 1);  // blip_caption'd
      else
        CHECK(std::isupper(static_cast<unsigned char>(c[0])));  // stage-2 answers used raw
    }
  }
  CHECK(seen.size() >= 1);

  const CcSbuAlignDataset data(sum.align_root);
  REQUIRE(data.size() == 20);
  for (size_t i = 0; i < data.size(); ++i) {
    CHECK(fs::is_regular_file(data.image_path(i)));
    CHECK(data.annotation(i).caption.size() > 30);  // conversation-style answers are longer
    CHECK(std::isupper(static_cast<unsigned char>(data.annotation(i).caption[0])));
  }
}

TEST_CASE("synth: held-out pictures decode and their annotations agree with the captions", "[data]") {
  mt::ScratchDir dir;
  const auto sum = write_synthetic_world(small_world(dir.path() / "w", 11));
  const auto anns = nlohmann::json::parse(mt::read_bytes(fs::path(sum.heldout_root) / "annotations.json"));
  REQUIRE(anns.size() == 20);
  std::set<std::string> train_images;
  for (const auto& e : fs::recursive_directory_iterator(sum.align_root))
    if (e.is_regular_file() && e.path().extension() == ".jpg") train_images.insert(mt::read_bytes(e.path()));
  for (const auto& a : anns) {
    const std::string bytes = mt::read_bytes(fs::path(sum.heldout_root) / a.at("image").get<std::string>());
    const cv::Mat rgb = decode_rgb(bytes);
    REQUIRE_FALSE(rgb.empty());
    CHECK(rgb.rows == 48);
    CHECK(rgb.cols == 48);
    CHECK(train_images.count(bytes) == 0);
    SceneAttributes s;
    s.shape = a.at("shape");
    s.colour = a.at("colour");
    s.count = a.at("count");
    s.position = a.at("position");
    CHECK(a.at("caption") == canonical_caption(s));
    const std::string cap = a.at("caption");
    CHECK(cap.find(count_word(s.count) + " " + s.colour + " " + shape_noun(s.shape, s.count)) == 0);
  }
}

TEST_CASE("synth: a rendered object has its annotated colour, inside its region", "[data]") {
  std::mt19937_64 rng(5);
  for (const auto& shape : synth_shapes())
    for (const auto& colour : synth_colours()) {
      SceneAttributes s{shape, colour, 1, synth_positions()[rng() % 5]};
      const RenderedScene r = render_scene(s, 64, rng);
      REQUIRE(r.objects.size() == 1);
      const SceneObject& o = r.objects[0];
      CHECK(r.region.contains(cv::Point(o.x - o.half, o.y - o.half)));
      CHECK(r.region.contains(cv::Point(o.x + o.half, o.y + o.half)));
      // The core of the object, through a JPEG round trip: for a triangle, around its centroid.
      const int cy = shape == "triangle" ? o.y + o.half / 3 : o.y;
      const int k = std::max(1, o.half / 3);
      const cv::Mat decoded = decode_rgb(encode_rgb_jpeg(r.rgb));
      const cv::Scalar mean = cv::mean(decoded(cv::Rect(o.x - k, cy - k, 2 * k + 1, 2 * k + 1)));
      INFO(shape << " " << colour << " mean " << mean[0] << "," << mean[1] << "," << mean[2]);
      CHECK(nearest_colour(mean) == colour);
    }
  // Several objects never overlap.
  for (int i = 0; i < 50; ++i) {
    SceneAttributes s = random_scene(rng);
    s.count = 3;
    const RenderedScene r = render_scene(s, 48, rng);
    REQUIRE(r.objects.size() == 3);
    for (size_t a = 0; a < 3; ++a)
      for (size_t b = a + 1; b < 3; ++b) {
        const auto &p = r.objects[a], &q = r.objects[b];
        CHECK((std::abs(p.x - q.x) > 2 * p.half || std::abs(p.y - q.y) > 2 * p.half));
      }
  }
}

TEST_CASE("synth: captions vary, agree in number, and name the attributes", "[data]") {
  std::mt19937_64 rng(9);
  std::set<std::string> phrasings;
  for (int i = 0; i < 200; ++i) {
    const SceneAttributes s = random_scene(rng);
    const std::string c = scene_caption(s, rng);
    const std::string a = scene_answer(s, rng);
    phrasings.insert(c.substr(0, c.find(' ')));
    for (const auto& text : {c, a}) {
      CHECK(text.find(s.colour) != std::string::npos);
      CHECK(text.find(shape_noun(s.shape, s.count)) != std::string::npos);
      if (s.count == 1) CHECK(text.find(s.shape + "s") == std::string::npos);
    }
  }
  CHECK(phrasings.size() >= 5);
  const SceneAttributes two{"circle", "red", 2, "left"};
  CHECK(canonical_caption(two) == "two red circles on the left.");
  CHECK(canonical_caption({"triangle", "orange", 1, "centre"}) == "one orange triangle in the centre.");
  CHECK_THROWS_AS(canonical_caption({"hexagon", "red", 1, "left"}), minigpt4::Error);
}

TEST_CASE("synth: an existing non-empty directory needs force", "[data]") {
  mt::ScratchDir dir;
  dir.write("w/keep.txt", "something");
  auto o = small_world(dir.path() / "w", 1);
  o.stage1_samples = 5;
  o.align_samples = 2;
  o.heldout_samples = 1;
  try {
    write_synthetic_world(o);
    FAIL("expected a minigpt4::Error");
  } catch (const minigpt4::Error& e) {
    CHECK(std::string(e.what()).find((dir.path() / "w").string()) != std::string::npos);
    CHECK(std::string(e.what()).find("--force") != std::string::npos);
  }
  o.force = true;
  const auto s = write_synthetic_world(o);
  CHECK(s.stage1_shards == 1);
  CHECK(s.stage1_spec == (dir.path() / "w" / "stage1" / "{00000..00000}.tar").string());
  CHECK(expand_shard_spec(s.stage1_spec).size() == 1);
  CHECK(fs::exists(dir.path() / "w" / "keep.txt"));
  o.image_size = 8;
  CHECK_THROWS_AS(write_synthetic_world(o), minigpt4::Error);
}
