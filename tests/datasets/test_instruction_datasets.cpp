// MiniGPT-v2's multi-task datasets (TinyGPT-V stage 4): each format read from small files in
// the original's layout, the exact instruction and answer the original builds (templates,
// text processing, boxes on the 0..100 grid), determinism for a seed, and the errors.
#include <catch2/catch.hpp>
#include <torch/torch.h>

#include "minigpt4/common/config_schema.h"
#include "minigpt4/common/error.h"
#include "minigpt4/datasets/instruction_datasets.h"
#include "minigpt4/datasets/loader.h"
#include "tests/datasets/pipeline_fixtures.h"

#include <set>

namespace mt = minigpt4::test;
using namespace minigpt4::datasets;
using minigpt4::Instruction;

namespace {

const std::vector<std::string> kRefer = {"[refer] {}",
                                         "[refer] give me the location of {}",
                                         "[refer] where is {} ?",
                                         "[refer] from this image, tell me the location of {}",
                                         "[refer] the location of {} is",
                                         "[refer] could you tell me the location for {} ?",
                                         "[refer] where can I locate the {} ?"};
const std::vector<std::string> kIdentify = {"[identify] {}",
                                            "[identify] what object is in this location {}",
                                            "[identify] identify the object present at this location {}",
                                            "[identify] what is it in {}",
                                            "[identify] describe this object in {}",
                                            "[identify] this {} is",
                                            "[identify] the object in {} is"};
const std::vector<std::string> kVqa = {"[vqa] {}",
                                       "[vqa] Based on the image, respond to this question with a short answer: {}"};

std::string fill(std::string tmpl, const std::string& value) { return tmpl.replace(tmpl.find("{}"), 2, value); }
std::string img(const std::string& s) { return "<Img><ImageHere></Img> " + s + " "; }

std::set<std::string> all_of(const std::vector<std::string>& pool, const std::string& value) {
  std::set<std::string> out;
  for (const auto& t : pool) out.insert(img(fill(t, value)));
  return out;
}

DatasetSpec spec_for(const std::string& name, const mt::ScratchDir& dir, std::vector<std::string> ann = {"ann.json"}) {
  DatasetSpec spec;
  spec.name = name;
  spec.kind = DatasetKind::Instruction;
  for (const auto& a : ann) spec.ann_paths.push_back((dir.path() / a).string());
  spec.image_root = (dir.path() / "images").string();
  spec.batch_size = 1;
  spec.image_size = 16;
  spec.random_crop = false;
  return spec;
}

// Entry i's record for every seed in [0, n): what the random choices can give.
std::vector<StreamRecord> draws(const InstructionSource& source, size_t i, int n = 200) {
  std::vector<StreamRecord> out;
  for (int s = 0; s < n; ++s) {
    std::mt19937_64 rng(static_cast<uint64_t>(s));
    out.push_back(source.record(i, rng));
  }
  return out;
}

std::set<std::string> questions(const std::vector<StreamRecord>& records) {
  std::set<std::string> out;
  for (const auto& r : records) out.insert(r.instruction.questions.at(0));
  return out;
}

std::string load_error(const DatasetSpec& spec) {
  try {
    load_instruction_source(spec);
  } catch (const minigpt4::Error& e) {
    return e.what();
  }
  FAIL("expected a minigpt4::Error");
  return "";
}

// A pickle (protocol 2) of REFER's refs list: [{ref_id, ann_id, image_id, split,
// sentences: [{raw}]}], as the refs(unc).p files hold it.
struct PickleWriter {
  std::string out = "\x80\x02";
  void str(const std::string& s) {
    out += 'X';
    const uint32_t n = static_cast<uint32_t>(s.size());
    out.append(reinterpret_cast<const char*>(&n), 4);
    out += s;
  }
  void integer(int32_t v) {
    out += 'J';
    out.append(reinterpret_cast<const char*>(&v), 4);
  }
};

struct Ref {
  int ref_id, ann_id, image_id;
  std::string split;
  std::vector<std::string> sentences;
};

std::string refs_pickle(const std::vector<Ref>& refs) {
  PickleWriter w;
  w.out += "](";  // EMPTY_LIST, MARK
  for (const auto& r : refs) {
    w.out += "}(";  // EMPTY_DICT, MARK
    w.str("ref_id"), w.integer(r.ref_id);
    w.str("ann_id"), w.integer(r.ann_id);
    w.str("image_id"), w.integer(r.image_id);
    w.str("split"), w.str(r.split);
    w.str("sentences");
    w.out += "](";
    for (const auto& s : r.sentences) {
      w.out += "}(";
      w.str("raw"), w.str(s);
      w.str("sent"), w.str(s);
      w.out += "u";  // SETITEMS
    }
    w.out += "e";  // APPENDS
    w.out += "u";
  }
  w.out += "e.";  // APPENDS, STOP
  return w.out;
}

// A RefCOCO folder: <root>/refcoco/refs(unc).p + instances.json, a 100 x 200 (w x h) image.
void write_refcoco(const mt::ScratchDir& dir) {
  dir.write("refer/refcoco/refs(unc).p",
            refs_pickle({{1, 10, 42, "train", {"The LEFT dog.", "dog on the left"}}, {2, 11, 42, "val", {"other"}}}));
  dir.write("refer/refcoco/instances.json", R"({"images": [{"id": 42, "width": 100, "height": 200}],
      "annotations": [{"id": 10, "image_id": 42, "bbox": [29, 57, 10, 20]},
                      {"id": 11, "image_id": 42, "bbox": [0, 0, 5, 5]}], "categories": []})");
  dir.write("images/COCO_train2014_000000000042.jpg", mt::encoded_image(".png", 200, 100, 1));
}

// Every sample of a one-dataset loader's first n batches (batch size 1).
std::vector<Batch> batches(const DatasetSpec& spec, int n, uint64_t seed = 5, int workers = 1) {
  LoaderOptions opt;
  opt.datasets = {spec};
  opt.seed = seed;
  opt.num_workers = workers;
  DataLoader loader(opt);
  std::vector<Batch> out;
  for (int i = 0; i < n; ++i) out.push_back(loader.next());
  return out;
}

}  // namespace

TEST_CASE("instruction datasets: every trainable name of the catalog has a loader", "[data]") {
  const std::set<std::string> captions = {"laion", "cc_sbu", "cc_sbu_align", "text_corpus"};
  for (const auto& d : minigpt4::dataset_catalog()) {
    INFO(d.name);
    if (d.trainable)
      CHECK((captions.count(d.name) == 1 || is_instruction_dataset(d.name)));
    else
      CHECK_FALSE(d.why_not.empty());
  }
  CHECK_FALSE(is_instruction_dataset("laion"));
}

TEST_CASE("instruction datasets: LLaVA detail/reason and the conversations", "[data]") {
  mt::ScratchDir dir;
  dir.write("ann.json", R"J([{"id": "000000000123", "conversations": [
      {"from": "human", "value": "<image>\nWhat is THE dog doing? (Be brief)"},
      {"from": "gpt", "value": "It runs. Fast!"},
      {"from": "human", "value": "Why?"},
      {"from": "gpt", "value": "It plays."}]}])J");
  for (const char* name : {"llava_detail", "llava_reason"}) {
    const auto source = load_instruction_source(spec_for(name, dir));
    const auto r = draws(*source, 0, 1).at(0);
    CHECK(r.image_path == (dir.path() / "images/COCO_train2014_000000000123.jpg").string());
    // The question goes through blip_caption, the answer stays raw; one turn only.
    CHECK(r.instruction.questions ==
          std::vector<std::string>{"<Img><ImageHere></Img> what is the dog doing? be brief "});
    CHECK(r.instruction.answers == std::vector<std::string>{"It runs. Fast!"});
    CHECK_FALSE(r.instruction.conversation);
  }
  for (const char* name : {"llava_conversation", "multitask_conversation"}) {
    const auto r = draws(*load_instruction_source(spec_for(name, dir)), 0, 1).at(0);
    CHECK(r.instruction.questions ==
          std::vector<std::string>{"<Img><ImageHere></Img> What is THE dog doing? (Be brief) ", "Why? "});
    CHECK(r.instruction.answers == std::vector<std::string>{"It runs. Fast!", "It plays."});
    CHECK(r.instruction.conversation);
  }
  dir.write("odd.json", R"([{"id": 1, "conversations": [{"from": "human", "value": "a"}, {"from": "gpt", "value": "b"},
      {"from": "human", "value": "c"}]}])");
  CHECK_THAT(load_error(spec_for("llava_conversation", dir, {"odd.json"})),
             Catch::Contains("odd.json") && Catch::Contains("entry 0") && Catch::Contains("odd number of turns"));
}

TEST_CASE("instruction datasets: unnatural instructions are text only, both sides text-processed", "[data]") {
  mt::ScratchDir dir;
  dir.write("ann.json", R"([
      {"instances": [{"instruction_with_input": "Sort These: b, a.", "constraints": "Use commas.", "output": "A, B."}]},
      {"instances": [{"instruction_with_input": "Say HI", "constraints": null, "output": "Hi!"}]}])");
  const auto source = load_instruction_source(spec_for("unnatural_instruction", dir));
  const auto a = draws(*source, 0, 1).at(0), b = draws(*source, 1, 1).at(0);
  CHECK_FALSE(a.has_image);
  CHECK(a.instruction.questions == std::vector<std::string>{"sort these b, a use commas"});
  CHECK(a.instruction.answers == std::vector<std::string>{"a, b"});
  CHECK(b.instruction.questions == std::vector<std::string>{"say hi"});
  CHECK(b.instruction.answers == std::vector<std::string>{"hi"});
}

TEST_CASE("instruction datasets: Flickr grounding, TextCaps and COCO captions", "[data]") {
  mt::ScratchDir dir;
  dir.write("grounded.json", R"([{"image_id": 1000, "grounded_caption": "<p>a man</p> {<1><2><30><40>} walks"}])");
  dir.write("c2p.json", R"([{"image_id": "77", "caption": "a man walks", "output": "<p>a man</p> {<1><2><3><4>}"}])");
  dir.write("o2p.json", R"([{"image_id": "77", "phrase": "a man", "bbox": "{<1><2><3><4>}"}])");
  auto r = draws(*load_instruction_source(spec_for("flickr_grounded_caption", dir, {"grounded.json"})), 0);
  CHECK(r[0].image_path == (dir.path() / "images/1000.jpg").string());
  CHECK(r[0].instruction.answers.at(0) == "<p>a man</p> {<1><2><30><40>} walks");
  CHECK(questions(r) ==
        std::set<std::string>{img("[grounding] please describe this image in details"),
                              img("[grounding] describe this image as detailed as possible"),
                              img("[grounding] summarize this image in details"),
                              img("[grounding] give a thorough description of what you see in this image")});
  r = draws(*load_instruction_source(spec_for("flickr_CaptionToPhrase", dir, {"c2p.json"})), 0, 1);
  CHECK(r[0].instruction.questions.at(0) == img("[detection] a man walks"));
  CHECK(r[0].instruction.answers.at(0) == "<p>a man</p> {<1><2><3><4>}");
  r = draws(*load_instruction_source(spec_for("flickr_ObjectToPhrase", dir, {"o2p.json"})), 0, 1);
  CHECK(r[0].instruction.questions.at(0) == img("[detection] a man"));
  CHECK(r[0].instruction.answers.at(0) == "<p>a man</p> {<1><2><3><4>}");

  dir.write("textcaps.json", R"({"data": [{"image_id": "abc", "caption_str": "A sign says STOP."}]})");
  r = draws(*load_instruction_source(spec_for("textcaps_caption", dir, {"textcaps.json"})), 0, 400);
  CHECK(r[0].image_path == (dir.path() / "images/abc.jpg").string());
  CHECK(r[0].instruction.answers.at(0) == "a sign says stop");
  const auto q = questions(r);
  CHECK(q.size() == 17);  // the original's 17 caption prompts, e.g.
  CHECK(q.count(img("[caption] A photo of ")) == 1);
  CHECK(q.count(img("[caption] Write a short description for the image. ")) == 1);

  dir.write("karpathy.json", R"([{"image": "val2014/COCO_val2014_1.jpg", "caption": "skipped", "image_id": "1"},
      {"image": "train2014/COCO_train2014_2.jpg", "caption": "Two cats!", "image_id": "2"}])");
  const auto coco = load_instruction_source(spec_for("coco_caption", dir, {"karpathy.json"}));
  REQUIRE(coco->size() == 1);  // "train" images only
  r = draws(*coco, 0, 1);
  CHECK(r[0].image_path == (dir.path() / "images/COCO_train2014_2.jpg").string());
  CHECK(r[0].instruction.answers.at(0) == "two cats");
}

TEST_CASE("instruction datasets: VQA answers drawn by their counts, missing images left out", "[data]") {
  mt::ScratchDir dir;
  dir.write("vqa.json", R"([
      {"question_id": 1, "question": "Is it RED?", "answer": ["yes", "yes", "yes", "no"], "image": "train2014/a.jpg"},
      {"question_id": 2, "question": "Lost?", "answer": ["x"], "image": "train2014/missing.jpg"}])");
  dir.write("images/a.jpg", mt::encoded_image(".png", 8, 8, 1));
  for (const char* name : {"coco_vqa", "ok_vqa"}) {
    const auto source = load_instruction_source(spec_for(name, dir, {"vqa.json"}));
    REQUIRE(source->size() == 1);  // the question whose image is missing is dropped, as the original does
    const auto r = draws(*source, 0, 400);
    CHECK(r[0].image_path == (dir.path() / "images/a.jpg").string());  // base name under the root
    CHECK(questions(r) == all_of(kVqa, "is it red?"));
    int yes = 0;
    for (const auto& x : r) yes += x.instruction.answers.at(0) == "yes";
    CHECK(yes > 250);  // 3 in 4
    CHECK(yes < 350);
  }
  dir.write("aok.json", R"([{"question": "Which One?", "choices": ["cat", "dog"], "correct_choice_idx": 0,
      "direct_answers": ["Cat", "cat"], "image": "train2017/a.jpg"}])");
  auto r = draws(*load_instruction_source(spec_for("aok_vqa", dir, {"aok.json"})), 0, 50);
  CHECK(questions(r) == all_of(kVqa, "which one?"));
  CHECK(r[0].instruction.answers.at(0) == "cat");
  dir.write("gqa.json", R"([{"image": "n1.jpg", "question": "What color is it?", "answer": "Blue."}])");
  r = draws(*load_instruction_source(spec_for("gqa", dir, {"gqa.json"})), 0, 1);
  CHECK(r[0].image_path == (dir.path() / "images/n1.jpg").string());
  CHECK(r[0].instruction.answers.at(0) == "blue");
  dir.write("ocr.json", R"({"b1": {"imageURL": "http://x/y/b1.gif", "questions": ["Who wrote THIS book?"],
      "answers": ["Jane Doe"], "split": 1, "title": "t", "genre": "g"},
      "b2": {"imageURL": "http://x/b2.jpg", "questions": ["q"], "answers": ["a"], "split": 2}})");
  const auto ocr = load_instruction_source(spec_for("ocrvqa", dir, {"ocr.json"}));
  REQUIRE(ocr->size() == 1);  // split 1 only
  r = draws(*ocr, 0, 50);
  CHECK(r[0].image_path == (dir.path() / "images/b1.gif").string());
  CHECK(questions(r) == all_of(kVqa, "who wrote this book?"));
  CHECK(r[0].instruction.answers.at(0) == "jane doe");
}

TEST_CASE("instruction datasets: RefCOCO and its inverse from REFER's files, boxes on the 0..100 grid", "[data]") {
  mt::ScratchDir dir;
  write_refcoco(dir);
  auto spec = spec_for("refcoco", dir, {"refer"});
  spec.refer_dataset = "refcoco";
  spec.split_by = "unc";
  const auto source = load_instruction_source(spec);
  REQUIRE(source->size() == 1);  // split "train" only
  const auto r = draws(*source, 0, 400);
  CHECK(r[0].image_path == (dir.path() / "images/COCO_train2014_000000000042.jpg").string());
  REQUIRE(r[0].box);
  CHECK(*r[0].box == std::array<double, 4>{29, 57, 10, 20});
  auto expected = all_of(kRefer, "the left dog");  // sentences drawn at random, text-processed
  for (const auto& q : all_of(kRefer, "dog on the left")) expected.insert(q);
  CHECK(questions(r) == expected);

  // Through the loader: the worker writes the box with the decoded 100 x 200 image's size,
  // int(29 / 100 * 100) = 28 as in Python (not 29).
  CHECK(grid_box({29, 57, 10, 20}, 100, 200) == "{<28><28><39><38>}");
  for (const auto& b : batches(spec, 3)) {
    REQUIRE(b.instructions.size() == 1);
    CHECK(b.instructions[0].answers == std::vector<std::string>{"{<28><28><39><38>}"});
    CHECK(b.images.sizes() == at::IntArrayRef({1, 3, 16, 16}));
    CHECK(b.captions.empty());
  }
  auto inv = spec;
  inv.name = "invrefcoco";
  inv.refer_dataset = "invrefcoco";  // the original's config value: the same files
  std::set<std::string> seen;
  for (const auto& b : batches(inv, 40)) {
    CHECK(expected.size() > 0);
    const auto& a = b.instructions.at(0).answers.at(0);
    CHECK((a == "the left dog" || a == "dog on the left"));
    seen.insert(b.instructions.at(0).questions.at(0));
  }
  for (const auto& q : seen) CHECK(all_of(kIdentify, "{<28><28><39><38>}").count(q) == 1);
  CHECK(seen.size() > 3);
}

TEST_CASE("instruction datasets: Visual Genome regions (refvg)", "[data]") {
  mt::ScratchDir dir;
  dir.write(
      "images/image_data.json",
      R"([{"image_id": 1, "url": "https://cs.stanford.edu/people/rak248/VG_100K_2/1.jpg", "width": 200, "height": 100}])");
  dir.write("images/region_descriptions.json", R"([{"id": 1, "regions": [
      {"region_id": 5, "image_id": 1, "x": 10, "y": 20, "width": 50, "height": 30, "phrase": "A Red ball."},
      {"region_id": 6, "image_id": 1, "x": 0, "y": 0, "width": 200, "height": 100, "phrase": "too big"}]}])");
  dir.write("images/VG_100K_2/1.jpg", mt::encoded_image(".png", 100, 200, 3));
  auto spec = spec_for("refvg", dir, {});
  const auto source = load_instruction_source(spec);
  REQUIRE(source->size() == 1);  // regions of 16384 px or more are left out
  const auto r = draws(*source, 0, 200);
  CHECK(r[0].image_path == (dir.path() / "images/VG_100K_2/1.jpg").string());
  CHECK(questions(r) == all_of(kRefer, "a red ball"));
  const auto b = batches(spec, 1).at(0);
  CHECK(b.instructions.at(0).answers.at(0) == "{<5><20><30><50>}");
}

TEST_CASE("instruction datasets: a seed fixes the samples, whatever the workers", "[data]") {
  mt::ScratchDir dir;
  write_refcoco(dir);
  auto spec = spec_for("refcoco", dir, {"refer"});
  spec.refer_dataset = "refcoco", spec.split_by = "unc";
  auto text = [](const std::vector<Batch>& bs) {
    std::vector<std::string> out;
    for (const auto& b : bs) out.push_back(b.instructions.at(0).questions.at(0));
    return out;
  };
  const auto a = text(batches(spec, 12, 5, 0)), b = text(batches(spec, 12, 5, 3)), c = text(batches(spec, 12, 6, 1));
  CHECK(a == b);
  CHECK(a != c);
}

TEST_CASE("instruction datasets: bad input is named; missing images and outside boxes are skipped", "[data]") {
  mt::ScratchDir dir;
  auto spec = spec_for("llava_detail", dir);
  CHECK_THAT(load_error(spec), Catch::Contains("cannot open") && Catch::Contains("ann.json"));
  dir.write("ann.json", "[{\"id\": 1,");
  CHECK_THAT(load_error(spec), Catch::Contains("ann.json") && Catch::Contains("invalid JSON"));
  dir.write("ann.json",
            R"([{"id": 1, "conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]},
      {"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]}])");
  CHECK_THAT(load_error(spec), Catch::Contains("ann.json: entry 1 has no \"id\""));
  dir.write("vqa.json", R"([{"question": "q", "answer": "not a list", "image": "a.jpg"}])");
  CHECK_THAT(load_error(spec_for("coco_vqa", dir, {"vqa.json"})),
             Catch::Contains("vqa.json: entry 0") && Catch::Contains("\"answer\""));

  // A ref naming an annotation instances.json does not hold.
  dir.write("refer/refcoco/refs(unc).p", refs_pickle({{1, 99, 42, "train", {"x"}}}));
  dir.write("refer/refcoco/instances.json", R"({"images": [], "annotations": [{"id": 10, "bbox": [0, 0, 1, 1]}]})");
  auto ref = spec_for("refcoco", dir, {"refer"});
  ref.refer_dataset = "refcoco", ref.split_by = "unc";
  CHECK_THAT(load_error(ref), Catch::Contains("refs(unc).p: ref 0 names ann_id 99"));
  ref.split_by = "google";
  CHECK_THAT(load_error(ref), Catch::Contains("refs(google).p"));

  // One image missing, one box beyond its (100 x 200) image: skipped, counted and named.
  dir.write("refer/refcoco/refs(unc).p",
            refs_pickle(
                {{1, 10, 42, "train", {"inside"}}, {2, 11, 42, "train", {"outside"}}, {3, 10, 7, "train", {"gone"}}}));
  dir.write("refer/refcoco/instances.json", R"({"images": [], "annotations": [
      {"id": 10, "bbox": [1, 1, 10, 10]}, {"id": 11, "bbox": [95, 0, 20, 10]}]})");
  dir.write("images/COCO_train2014_000000000042.jpg", mt::encoded_image(".png", 200, 100, 1));
  ref.split_by = "unc";
  LoaderOptions opt;
  opt.datasets = {ref};
  opt.num_workers = 1;
  DataLoader loader(opt);
  for (int i = 0; i < 4; ++i)
    CHECK(loader.next().instructions.at(0).questions.at(0).find("inside") != std::string::npos);
  const auto stats = loader.stats().datasets.at("refcoco");
  CHECK(stats.skipped[int(SkipReason::MissingImage)] >= 1);
  CHECK(stats.skipped[int(SkipReason::BadBox)] >= 1);
  CHECK_THAT(stats.examples[int(SkipReason::MissingImage)].at(0), Catch::Contains("COCO_train2014_000000000007.jpg"));
  CHECK_THAT(stats.examples[int(SkipReason::BadBox)].at(0), Catch::Contains("outside the 100x200 image"));
}
