#include "minigpt4/quickstart/synth.h"

#include "minigpt4/common/error.h"
#include "minigpt4/datasets/stream.h"
#include "minigpt4/io/file_util.h"
#include "minigpt4/processors/train_processor.h"

#include <archive.h>
#include <archive_entry.h>
#include <nlohmann/json.hpp>
#include <opencv2/imgcodecs.hpp>
#include <opencv2/imgproc.hpp>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>

namespace minigpt4::quickstart {

namespace fs = std::filesystem;

namespace {

struct ColourDef {
  const char* name;
  unsigned char r, g, b;
};
// Well apart in RGB (the closest pair, yellow / orange, differs by 80 in green).
constexpr ColourDef kColours[] = {
    {"red", 220, 30, 30},     {"green", 30, 170, 40},   {"blue", 30, 60, 220},
    {"yellow", 240, 210, 20}, {"purple", 140, 40, 170}, {"orange", 250, 130, 10},
};

const std::string& pick(const std::vector<std::string>& v, std::mt19937_64& rng) {
  return v[uniform_index(rng, v.size())];
}

size_t index_of(const std::vector<std::string>& vocab, const std::string& word, const char* what) {
  const auto it = std::find(vocab.begin(), vocab.end(), word);
  if (it == vocab.end()) fail("unknown synthetic {} '{}' (known: {})", what, word, fmt::join(vocab, ", "));
  return static_cast<size_t>(it - vocab.begin());
}

void check_scene(const SceneAttributes& s) {
  index_of(synth_shapes(), s.shape, "shape");
  index_of(synth_colours(), s.colour, "colour");
  index_of(synth_positions(), s.position, "position");
  if (s.count < 1 || s.count > kSynthMaxCount)
    fail("synthetic scene count {} is outside 1..{}", s.count, kSynthMaxCount);
}

bool is_vowel(char c) { return c == 'a' || c == 'e' || c == 'i' || c == 'o' || c == 'u'; }

// "two" / "2" / (count 1, when allowed) "a" / "an".
std::string number_for(const SceneAttributes& s, std::mt19937_64& rng, bool allow_article) {
  const uint64_t r = uniform_index(rng, 8);
  if (r < 2) return std::to_string(s.count);  // a quarter of the time a digit
  if (allow_article && s.count == 1 && r < 4) return is_vowel(s.colour[0]) ? "an" : "a";
  return count_word(s.count);
}

// Short position phrases for stage 1.
std::string short_place(const std::string& pos, std::mt19937_64& rng) {
  const bool alt = uniform_index(rng, 2) == 1;
  if (pos == "left") return alt ? "on the left side" : "on the left";
  if (pos == "right") return alt ? "on the right side" : "on the right";
  if (pos == "top") return alt ? "near the top" : "at the top";
  if (pos == "bottom") return alt ? "near the bottom" : "at the bottom";
  return alt ? "in the middle" : "in the centre";
}

std::string long_place(const std::string& pos) {
  if (pos == "left") return "on the left side of the picture";
  if (pos == "right") return "on the right side of the picture";
  if (pos == "top") return "at the top of the picture";
  if (pos == "bottom") return "at the bottom of the picture";
  return "in the centre of the picture";
}

std::string capitalised(std::string s) {
  if (!s.empty() && s[0] >= 'a' && s[0] <= 'z') s[0] = static_cast<char>(s[0] - 'a' + 'A');
  return s;
}

// ---- files ----

void write_atomic(const fs::path& path, const std::string& bytes, size_t& counter) {
  io::AtomicWriter out(path.string());
  out.write(bytes.data(), bytes.size());
  out.commit();
  ++counter;
}

// A pax tar as webdataset's TarWriter / `tar` make, with fixed metadata so that the same
// entries give the same bytes. Shards are small: built in memory, then written atomically.
void write_tar_atomic(const fs::path& path, const std::vector<std::pair<std::string, std::string>>& entries,
                      size_t& counter) {
  std::string tar;
  archive* a = archive_write_new();
  archive_write_set_format_pax_restricted(a);
  archive_write_set_bytes_in_last_block(a, 1);
  auto append = [](archive*, void* out, const void* buf, size_t n) -> la_ssize_t {
    static_cast<std::string*>(out)->append(static_cast<const char*>(buf), n);
    return static_cast<la_ssize_t>(n);
  };
  auto failure = [&](const std::string& what) {
    const std::string why = what + ": " + (archive_error_string(a) ? archive_error_string(a) : "unknown error");
    archive_write_free(a);
    fail("synth: cannot write {}: {}", path.string(), why);
  };
  if (archive_write_open(a, &tar, nullptr, append, nullptr) != ARCHIVE_OK) failure("cannot start the archive");
  for (const auto& [name, bytes] : entries) {
    archive_entry* e = archive_entry_new();
    archive_entry_set_pathname(e, name.c_str());
    archive_entry_set_size(e, static_cast<la_int64_t>(bytes.size()));
    archive_entry_set_filetype(e, AE_IFREG);
    archive_entry_set_perm(e, 0644);
    archive_entry_set_mtime(e, 1700000000, 0);
    archive_entry_set_uid(e, 0);
    archive_entry_set_gid(e, 0);
    const bool ok = archive_write_header(a, e) == ARCHIVE_OK &&
                    archive_write_data(a, bytes.data(), bytes.size()) == static_cast<la_ssize_t>(bytes.size());
    archive_entry_free(e);
    if (!ok) failure("entry " + name);
  }
  if (archive_write_close(a) != ARCHIVE_OK) failure("closing the archive");
  archive_write_free(a);
  write_atomic(path, tar, counter);
}

// One VQA question about a held-out picture: which attribute is asked turns with the index;
// ten annotator answers, mostly the plain word and a few longer ways of saying it.
struct SynthQuestion {
  std::string question, question_type, answer_type;
  std::vector<std::string> answers;
};

SynthQuestion synth_question(const SceneAttributes& scene, int index) {
  auto ten = [](const std::string& main, std::vector<std::string> others) {
    std::vector<std::string> answers(10 - others.size(), main);
    answers.insert(answers.end(), others.begin(), others.end());
    return answers;
  };
  switch (index % 4) {
    case 0:
      return {"What colour are the objects in the picture?", "what color are the", "other", ten(scene.colour, {})};
    case 1:
      return {"How many objects are in the picture?", "how many", "number",
              ten(std::to_string(scene.count), {count_word(scene.count), count_word(scene.count)})};
    case 2:
      return {"What shape are the objects in the picture?", "what shape", "other",
              ten(scene.shape, {shape_noun(scene.shape, scene.count), scene.shape + "s"})};
    default: {
      const std::string& p = scene.position;
      const std::string question = "Where in the picture are the objects?";
      if (p == "centre") return {question, "where are the", "other", ten(p, {"in the middle", "middle", "center"})};
      const std::string phrase = (p == "top" || p == "bottom" ? "at the " : "on the ") + p;
      return {question, "where are the", "other", ten(p, {phrase, phrase, p + " side"})};
    }
  }
}

// The captioning and VQA sets over the first `n` held-out pictures (heldout/image/NNNNN.jpg).
void write_eval_sets(const fs::path& heldout, const std::vector<SceneAttributes>& scenes, int n, uint64_t seed,
                     SynthSummary& sum) {
  std::mt19937_64 rng(datasets::mix_seed(seed, 0x5EED5u, 4));  // references: a stream of their own
  nlohmann::json images = nlohmann::json::array(), captions = nlohmann::json::array();
  nlohmann::json questions = nlohmann::json::array(), answers = nlohmann::json::array();
  for (int i = 0; i < n; ++i) {
    const auto& scene = scenes[static_cast<size_t>(i)];
    images.push_back({{"id", i}, {"file_name", fmt::format("{:05d}.jpg", i)}});
    std::vector<std::string> references = {canonical_caption(scene)};
    while (references.size() < 5) references.push_back(scene_caption(scene, rng));
    for (size_t k = 0; k < references.size(); ++k)
      captions.push_back({{"id", i * 10 + static_cast<int>(k)}, {"image_id", i}, {"caption", references[k]}});
    const auto q = synth_question(scene, i);
    const int question_id = i * 10;
    questions.push_back({{"image_id", i}, {"question", q.question}, {"question_id", question_id}});
    nlohmann::json records = nlohmann::json::array();
    for (size_t k = 0; k < q.answers.size(); ++k)
      records.push_back({{"answer", q.answers[k]}, {"answer_confidence", "yes"}, {"answer_id", k + 1}});
    answers.push_back({{"question_id", question_id},
                       {"image_id", i},
                       {"question_type", q.question_type},
                       {"answer_type", q.answer_type},
                       {"multiple_choice_answer", q.answers[0]},
                       {"answers", records}});
  }
  const nlohmann::json info{{"description", "minigpt4 synth: held-out pictures"}, {"seed", seed}};
  sum.eval_captions = (heldout / "captions.json").string();
  sum.eval_vqa_questions = (heldout / "vqa_questions.json").string();
  sum.eval_vqa_annotations = (heldout / "vqa_annotations.json").string();
  sum.eval_image_root = (heldout / "image").string();
  write_atomic(sum.eval_captions,
               nlohmann::json{{"info", info}, {"images", images}, {"annotations", captions}}.dump(1) + "\n",
               sum.files_written);
  write_atomic(sum.eval_vqa_questions,
               nlohmann::json{{"info", info}, {"data_subtype", "heldout"}, {"questions", questions}}.dump(1) + "\n",
               sum.files_written);
  write_atomic(sum.eval_vqa_annotations,
               nlohmann::json{{"info", info}, {"data_subtype", "heldout"}, {"annotations", answers}}.dump(1) + "\n",
               sum.files_written);
  sum.eval_samples = n;
}

void make_dir(const fs::path& p) {
  std::error_code ec;
  fs::create_directories(p, ec);
  if (ec || !fs::is_directory(p)) fail("synth: cannot create directory {}: {}", p.string(), ec.message());
}

}  // namespace

const std::vector<std::string>& synth_shapes() {
  static const std::vector<std::string> v{"circle", "square", "triangle"};
  return v;
}

const std::vector<std::string>& synth_colours() {
  static const std::vector<std::string> v = [] {
    std::vector<std::string> names;
    for (const auto& c : kColours) names.emplace_back(c.name);
    return names;
  }();
  return v;
}

const std::vector<std::string>& synth_positions() {
  static const std::vector<std::string> v{"left", "right", "top", "bottom", "centre"};
  return v;
}

cv::Vec3b synth_colour_rgb(const std::string& colour) {
  const auto& c = kColours[index_of(synth_colours(), colour, "colour")];
  return cv::Vec3b(c.r, c.g, c.b);
}

SceneAttributes random_scene(std::mt19937_64& rng) {
  SceneAttributes s;
  s.shape = pick(synth_shapes(), rng);
  s.colour = pick(synth_colours(), rng);
  s.count = 1 + static_cast<int>(uniform_index(rng, kSynthMaxCount));
  s.position = pick(synth_positions(), rng);
  return s;
}

cv::Rect synth_region(const std::string& position, int size) {
  const int lo40 = size * 2 / 5, hi40 = size - lo40;  // outer 40 % bands
  const int lo20 = size / 5, hi20 = size - lo20;      // middle 60 %
  const int q1 = size / 4, q3 = size - q1;            // middle half
  switch (index_of(synth_positions(), position, "position")) {
    case 0: return cv::Rect(0, lo20, lo40, hi20 - lo20);
    case 1: return cv::Rect(hi40, lo20, size - hi40, hi20 - lo20);
    case 2: return cv::Rect(lo20, 0, hi20 - lo20, lo40);
    case 3: return cv::Rect(lo20, hi40, hi20 - lo20, size - hi40);
    default: return cv::Rect(q1, q1, q3 - q1, q3 - q1);
  }
}

RenderedScene render_scene(const SceneAttributes& scene, int size, std::mt19937_64& rng) {
  check_scene(scene);
  if (size < 32 || size > 1024) fail("synthetic image size {} is outside 32..1024", size);
  RenderedScene out;
  out.region = synth_region(scene.position, size);

  // Background: a light grey with a slight tint, plus a little per-pixel noise.
  const int base = 225 + static_cast<int>(uniform_index(rng, 21));
  int tint[3];
  for (int& t : tint) t = static_cast<int>(uniform_index(rng, 11)) - 5;
  out.rgb.create(size, size, CV_8UC3);
  for (int y = 0; y < size; ++y) {
    auto* row = out.rgb.ptr<cv::Vec3b>(y);
    for (int x = 0; x < size; ++x)
      for (int c = 0; c < 3; ++c)
        row[x][c] = cv::saturate_cast<uchar>(base + tint[c] + static_cast<int>(uniform_index(rng, 9)) - 4);
  }

  // Object size, then places by rejection: inside the region with a margin, bounding
  // squares apart by a gap. A crowded draw shrinks the objects and tries again.
  const int margin = std::max(1, size / 32);
  int half = static_cast<int>(std::lround(uniform_real(rng, 0.075, 0.105) * size));
  const cv::Rect& reg = out.region;
  for (;;) {
    const int x_lo = reg.x + half + margin, x_hi = reg.x + reg.width - 1 - half - margin;
    const int y_lo = reg.y + half + margin, y_hi = reg.y + reg.height - 1 - half - margin;
    bool placed = false;
    if (x_hi >= x_lo && y_hi >= y_lo) {
      for (int attempt = 0; attempt < 200 && !placed; ++attempt) {
        out.objects.clear();
        placed = true;
        for (int i = 0; i < scene.count && placed; ++i) {
          SceneObject o;
          o.x = x_lo + static_cast<int>(uniform_index(rng, static_cast<uint64_t>(x_hi - x_lo + 1)));
          o.y = y_lo + static_cast<int>(uniform_index(rng, static_cast<uint64_t>(y_hi - y_lo + 1)));
          o.half = half;
          for (const auto& p : out.objects)
            if (std::abs(p.x - o.x) < 2 * half + 1 + margin && std::abs(p.y - o.y) < 2 * half + 1 + margin)
              placed = false;
          out.objects.push_back(o);
        }
      }
    }
    if (placed) break;
    if (half <= 2) fail("synthetic scene: cannot place {} objects in a {}px picture", scene.count, size);
    --half;
  }

  const cv::Vec3b c = synth_colour_rgb(scene.colour);
  const cv::Scalar fill(c[0], c[1], c[2]);
  for (const auto& o : out.objects) {
    if (scene.shape == "circle") {
      cv::circle(out.rgb, cv::Point(o.x, o.y), o.half, fill, cv::FILLED, cv::LINE_8);
    } else if (scene.shape == "square") {
      cv::rectangle(out.rgb, cv::Point(o.x - o.half, o.y - o.half), cv::Point(o.x + o.half, o.y + o.half), fill,
                    cv::FILLED, cv::LINE_8);
    } else {
      const cv::Point pts[3] = {{o.x, o.y - o.half}, {o.x - o.half, o.y + o.half}, {o.x + o.half, o.y + o.half}};
      cv::fillConvexPoly(out.rgb, pts, 3, fill, cv::LINE_8);
    }
  }
  return out;
}

std::string encode_rgb_jpeg(const cv::Mat& rgb, int quality) {
  cv::Mat bgr;
  cv::cvtColor(rgb, bgr, cv::COLOR_RGB2BGR);
  std::vector<uchar> buf;
  if (!cv::imencode(".jpg", bgr, buf, {cv::IMWRITE_JPEG_QUALITY, quality})) fail("cv::imencode failed to write a JPEG");
  return std::string(buf.begin(), buf.end());
}

std::string count_word(int count) {
  static const char* words[] = {"zero", "one", "two", "three", "four", "five"};
  if (count < 0 || count > 5) return std::to_string(count);
  return words[count];
}

std::string shape_noun(const std::string& shape, int count) { return count == 1 ? shape : shape + "s"; }

std::string scene_caption(const SceneAttributes& s, std::mt19937_64& rng) {
  check_scene(s);
  const uint64_t t = uniform_index(rng, 6);
  const std::string n = number_for(s, rng, /*allow_article=*/t != 4);
  const std::string what = n + " " + s.colour + " " + shape_noun(s.shape, s.count);
  const std::string where = short_place(s.position, rng);
  switch (t) {
    case 0: return what + " " + where + ".";
    case 1: return "a picture of " + what + " " + where + ".";
    case 2: return "an image with " + what + " " + where + ".";
    case 3: return what + " " + where + " of the image.";
    case 4: return std::string("there ") + (s.count == 1 ? "is " : "are ") + what + " " + where + ".";
    default: return "a drawing of " + what + " " + where + " on a light background.";
  }
}

std::string scene_answer(const SceneAttributes& s, std::mt19937_64& rng) {
  check_scene(s);
  const uint64_t t = uniform_index(rng, 5);
  std::string n = number_for(s, rng, /*allow_article=*/true);
  if (t == 4 && n[0] >= '0' && n[0] <= '9') n = count_word(s.count);  // no sentence starts with a digit
  const std::string what = n + " " + s.colour + " " + shape_noun(s.shape, s.count);
  const std::string where = long_place(s.position);
  const bool one = s.count == 1;
  switch (t) {
    case 0: return "The image shows " + what + " " + where + ".";
    case 1:
      return std::string("In this picture there ") + (one ? "is " : "are ") + what + ". " +
             (one ? "It is" : "They are") + " placed " + where + ".";
    case 2: return "This image contains " + what + ", located " + where + ". The background is plain and light.";
    case 3:
      return "I can see " + what + " " + where + ". Apart from " + (one ? "it" : "them") +
             ", the picture is an empty light background.";
    default: return capitalised(what) + " " + (one ? "is" : "are") + " drawn " + where + " on a light background.";
  }
}

std::string canonical_caption(const SceneAttributes& s) {
  check_scene(s);
  static const char* places[] = {"on the left", "on the right", "at the top", "at the bottom", "in the centre"};
  return count_word(s.count) + " " + s.colour + " " + shape_noun(s.shape, s.count) + " " +
         places[index_of(synth_positions(), s.position, "position")] + ".";
}

SynthSummary write_synthetic_world(const SynthOptions& opt) {
  if (opt.out_dir.empty()) fail("synth: --out is required");
  if (opt.stage1_samples < 1) fail("synth: --stage1-samples must be at least 1 (got {})", opt.stage1_samples);
  if (opt.align_samples < 1) fail("synth: --align-samples must be at least 1 (got {})", opt.align_samples);
  if (opt.heldout_samples < 0) fail("synth: --heldout-samples must not be negative (got {})", opt.heldout_samples);
  if (opt.eval_samples < 0) fail("synth: --eval-samples must not be negative (got {})", opt.eval_samples);
  if (opt.image_size < 32 || opt.image_size > 1024)
    fail("synth: --image-size must be in 32..1024 (got {})", opt.image_size);
  if (opt.shard_size < 1 || opt.shard_size > 10000)
    fail("synth: --shard-size must be in 1..10000 (got {})", opt.shard_size);
  const int shards = (opt.stage1_samples + opt.shard_size - 1) / opt.shard_size;
  if (shards > 99999) fail("synth: {} shards would not fit 5-digit shard names", shards);

  const fs::path root = fs::absolute(opt.out_dir).lexically_normal();
  std::error_code ec;
  if (fs::exists(root, ec)) {
    if (!fs::is_directory(root, ec)) fail("synth: output path {} exists and is not a directory", root.string());
    if (!fs::is_empty(root, ec) && !opt.force)
      fail("synth: output directory {} exists and is not empty; pass --force to reuse it", root.string());
  }
  // With --force the generated parts are replaced whole, so no stale shard of a larger
  // earlier run is left next to the new ones.
  for (const char* part : {"stage1", "cc_sbu_align", "heldout"}) {
    fs::remove_all(root / part, ec);
    if (ec) fail("synth: cannot remove the old {}: {}", (root / part).string(), ec.message());
  }
  make_dir(root / "stage1");
  make_dir(root / "cc_sbu_align" / "image");
  make_dir(root / "heldout" / "image");

  SynthSummary sum;
  sum.out_dir = root.string();
  std::string corpus;
  const int S = opt.image_size;

  // Stage 1: webdataset shards.
  std::mt19937_64 rng1(datasets::mix_seed(opt.seed, 0x5EED5u, 1));
  for (int shard = 0; shard < shards; ++shard) {
    const int first = shard * opt.shard_size;
    const int n = std::min(opt.shard_size, opt.stage1_samples - first);
    std::vector<std::pair<std::string, std::string>> entries;
    for (int i = 0; i < n; ++i) {
      const SceneAttributes scene = random_scene(rng1);
      const RenderedScene img = render_scene(scene, S, rng1);
      const std::string caption = scene_caption(scene, rng1);
      const std::string key = fmt::format("{:09d}", static_cast<long long>(shard) * 10000 + i);
      nlohmann::json meta{
          {"caption", caption},  {"key", key},           {"width", S},          {"height", S},
          {"original_width", S}, {"original_height", S}, {"status", "success"}, {"error_message", nullptr}};
      entries.emplace_back(key + ".jpg", encode_rgb_jpeg(img.rgb));
      entries.emplace_back(key + ".json", meta.dump());
      entries.emplace_back(key + ".txt", caption);
      corpus += caption + "\n";
      ++sum.corpus_lines;
    }
    write_tar_atomic(root / "stage1" / fmt::format("{:05d}.tar", shard), entries, sum.files_written);
    nlohmann::json stats{{"count", n},
                         {"successes", n},
                         {"failed_to_download", 0},
                         {"failed_to_resize", 0},
                         {"status_dict", {{"success", n}}},
                         {"start_key", fmt::format("{:09d}", static_cast<long long>(shard) * 10000)}};
    write_atomic(root / "stage1" / fmt::format("{:05d}_stats.json", shard), stats.dump(4) + "\n", sum.files_written);
  }
  sum.stage1_shards = shards;
  sum.stage1_samples = opt.stage1_samples;
  const std::string spec_rel = fmt::format("stage1/{{00000..{:05d}}}.tar", shards - 1);
  sum.stage1_spec = (root / spec_rel).string();

  // Stage 2: cc_sbu_align.
  std::mt19937_64 rng2(datasets::mix_seed(opt.seed, 0x5EED5u, 2));
  nlohmann::json anns = nlohmann::json::array();
  for (int i = 0; i < opt.align_samples; ++i) {
    const SceneAttributes scene = random_scene(rng2);
    const RenderedScene img = render_scene(scene, S, rng2);
    const std::string answer = scene_answer(scene, rng2);
    const std::string id = std::to_string(i);
    write_atomic(root / "cc_sbu_align" / "image" / (id + ".jpg"), encode_rgb_jpeg(img.rgb), sum.files_written);
    anns.push_back({{"image_id", id}, {"caption", answer}});
    corpus += answer + "\n";
    ++sum.corpus_lines;
  }
  write_atomic(root / "cc_sbu_align" / "filter_cap.json", nlohmann::json{{"annotations", anns}}.dump(2) + "\n",
               sum.files_written);
  sum.align_samples = opt.align_samples;
  sum.align_root = (root / "cc_sbu_align").string();

  // Held out: its own RNG stream, never read by training.
  std::mt19937_64 rng3(datasets::mix_seed(opt.seed, 0x5EED5u, 3));
  nlohmann::json held = nlohmann::json::array();
  std::vector<SceneAttributes> held_scenes;
  for (int i = 0; i < opt.heldout_samples; ++i) {
    const SceneAttributes scene = random_scene(rng3);
    held_scenes.push_back(scene);
    const RenderedScene img = render_scene(scene, S, rng3);
    const std::string name = fmt::format("image/{:05d}.jpg", i);
    write_atomic(root / "heldout" / name, encode_rgb_jpeg(img.rgb), sum.files_written);
    // Each object's box [x0, y0, x1, y1) in pixels: where an answer about it should look
    // (explanations are checked against them).
    nlohmann::json boxes = nlohmann::json::array();
    for (const auto& o : img.objects)
      boxes.push_back({std::max(o.x - o.half, 0), std::max(o.y - o.half, 0), std::min(o.x + o.half + 1, S),
                       std::min(o.y + o.half + 1, S)});
    held.push_back({{"image", name},
                    {"boxes", std::move(boxes)},
                    {"shape", scene.shape},
                    {"colour", scene.colour},
                    {"count", scene.count},
                    {"position", scene.position},
                    {"caption", canonical_caption(scene)}});
  }
  write_atomic(root / "heldout" / "annotations.json", held.dump(2) + "\n", sum.files_written);
  sum.heldout_samples = opt.heldout_samples;
  sum.heldout_root = (root / "heldout").string();
  if (const int n = std::min(opt.eval_samples, opt.heldout_samples); n > 0)
    write_eval_sets(root / "heldout", held_scenes, n, opt.seed, sum);

  sum.corpus_path = (root / "corpus.txt").string();
  write_atomic(root / "corpus.txt", corpus, sum.files_written);

  nlohmann::json colours = nlohmann::json::object();
  for (const auto& c : kColours) colours[c.name] = {c.r, c.g, c.b};
  nlohmann::json world{
      {"generator", "minigpt4 synth"},
      {"seed", opt.seed},
      {"image_size", S},
      {"shapes", synth_shapes()},
      {"colours", synth_colours()},
      {"colour_rgb", colours},
      {"positions", synth_positions()},
      {"counts", {1, 2, 3}},
      {"stage1",
       {{"spec", spec_rel}, {"shards", shards}, {"shard_size", opt.shard_size}, {"samples", opt.stage1_samples}}},
      {"cc_sbu_align", {{"root", "cc_sbu_align"}, {"samples", opt.align_samples}}},
      {"heldout", {{"annotations", "heldout/annotations.json"}, {"samples", opt.heldout_samples}}},
      {"eval",
       {{"captions", "heldout/captions.json"},
        {"vqa_questions", "heldout/vqa_questions.json"},
        {"vqa_annotations", "heldout/vqa_annotations.json"},
        {"samples", sum.eval_samples}}},
      {"corpus", {{"path", "corpus.txt"}, {"lines", sum.corpus_lines}}},
  };
  ++sum.files_written;  // world.json itself
  world["files"] = sum.files_written;
  sum.world_path = (root / "world.json").string();
  --sum.files_written;
  write_atomic(root / "world.json", world.dump(2) + "\n", sum.files_written);
  return sum;
}

}  // namespace minigpt4::quickstart
