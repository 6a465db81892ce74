#pragma once
// A synthetic image-caption world for smoke-scale training on a CPU: each picture holds
// 1 to 3 identical objects of one shape and one colour in one region of a plain light
// background, and its captions say exactly that in varied words. Everything is written
// in the formats the real readers take (webdataset shards as img2dataset writes them, the
// cc_sbu_align layout, a held-out set with its attributes), and the same seed gives the
// same bytes on every platform (portable draws from std::mt19937_64, no std distributions).
#include <opencv2/core.hpp>

#include <cstdint>
#include <random>
#include <string>
#include <vector>

namespace minigpt4::quickstart {

// The vocabularies, in a fixed order (indices into them are what the RNG draws).
const std::vector<std::string>& synth_shapes();         // circle, square, triangle
const std::vector<std::string>& synth_colours();        // red, green, blue, yellow, purple, orange
const std::vector<std::string>& synth_positions();      // left, right, top, bottom, centre
constexpr int kSynthMaxCount = 3;                       // objects per picture: 1..3
cv::Vec3b synth_colour_rgb(const std::string& colour);  // the fill colour (R, G, B); unknown -> Error

struct SceneAttributes {
  std::string shape;
  std::string colour;
  int count = 1;
  std::string position;
};

// Shape, colour, count and position, each uniform, drawn in that order.
SceneAttributes random_scene(std::mt19937_64& rng);

// One drawn object: centre (x, y) and half-size in pixels (circle radius, half the side of
// a square, the triangle's apex is (x, y - half) and its base runs from x - half to x + half
// at y + half).
struct SceneObject {
  int x = 0;
  int y = 0;
  int half = 0;
};

struct RenderedScene {
  cv::Mat rgb;                       // CV_8UC3, RGB order, size x size
  std::vector<SceneObject> objects;  // count of them, non-overlapping, inside the region
  cv::Rect region;                   // the position's region in pixels
};

// The pixel region a position names in a size x size picture (left / right are the outer
// 40 % columns, top / bottom the outer 40 % rows, both in the middle 60 % the other way;
// centre is the middle half). Unknown position -> Error.
cv::Rect synth_region(const std::string& position, int size);

// Draws the scene: light background with a little per-pixel noise, then the objects.
// Draws from rng (object size, places, background), so the same rng state gives the same
// picture. size must be 32..1024.
RenderedScene render_scene(const SceneAttributes& scene, int size, std::mt19937_64& rng);

// JPEG bytes (quality 95 by default) of an RGB CV_8UC3 image.
std::string encode_rgb_jpeg(const cv::Mat& rgb, int quality = 95);

// "two" / "2" style counts and "circle" / "circles".
std::string count_word(int count);
std::string shape_noun(const std::string& shape, int count);

// A short stage-1 style caption in one of several phrasings (rng picks the phrasing and
// whether the count is a word or a digit): "a picture of two red circles on the left."
std::string scene_caption(const SceneAttributes& scene, std::mt19937_64& rng);
// A longer, conversation-style stage-2 answer:
// "The image shows two red circles on the left side of the picture."
std::string scene_answer(const SceneAttributes& scene, std::mt19937_64& rng);
// The one fixed phrasing (held-out references, evaluation): "two red circles on the left."
std::string canonical_caption(const SceneAttributes& scene);

struct SynthOptions {
  std::string out_dir;
  uint64_t seed = 0;
  int stage1_samples = 4000;
  int align_samples = 600;
  int heldout_samples = 300;
  // The first N held-out pictures also form a captioning set and a VQA set in the COCO and
  // VQAv2 formats (`minigpt4 evaluate`); at most heldout_samples.
  int eval_samples = 100;
  int image_size = 64;
  int shard_size = 500;  // samples per stage-1 tar, 1..10000 (keys are shard * 10000 + index)
  bool force = false;    // reuse an existing non-empty out_dir (its generated parts are replaced)
};

struct SynthSummary {
  std::string out_dir;
  std::string stage1_spec;           // "<out_dir>/stage1/{00000..0000K}.tar", for datasets.*.build_info.storage
  std::string align_root;            // <out_dir>/cc_sbu_align
  std::string heldout_root;          // <out_dir>/heldout (annotations.json, image/)
  std::string eval_captions;         // <heldout_root>/captions.json; empty without held-out pictures
  std::string eval_vqa_questions;    // <heldout_root>/vqa_questions.json
  std::string eval_vqa_annotations;  // <heldout_root>/vqa_annotations.json
  std::string eval_image_root;       // <heldout_root>/image
  std::string corpus_path;           // <out_dir>/corpus.txt
  std::string world_path;            // <out_dir>/world.json
  int stage1_shards = 0;
  int stage1_samples = 0;
  int align_samples = 0;
  int heldout_samples = 0;
  int eval_samples = 0;
  size_t corpus_lines = 0;
  size_t files_written = 0;
};

// Writes the world under options.out_dir:
//   stage1/NNNNN.tar (+ NNNNN_stats.json)   webdataset shards: KEY.jpg, KEY.json, KEY.txt
//   cc_sbu_align/filter_cap.json, image/<id>.jpg
//   heldout/annotations.json (attributes, caption and each object's pixel box), image/<id>.jpg
//     (a separate RNG stream from training)
//   heldout/captions.json (COCO captions layout: 5 references per picture),
//   heldout/vqa_questions.json + vqa_annotations.json (VQAv2 layout: one question per picture
//   about its colour, count, shape or position in turn, 10 answers), both over the first
//   eval_samples held-out pictures
//   corpus.txt (every stage-1 caption and stage-2 answer, one a line), world.json
// Every file is written to a temporary name and renamed. An existing non-empty out_dir
// without force, bad sizes, or a failed write is an Error naming the option or path.
SynthSummary write_synthetic_world(const SynthOptions& options);

}  // namespace minigpt4::quickstart
