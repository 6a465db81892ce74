#include "minigpt4/datasets/instruction_datasets.h"

#include "minigpt4/common/error.h"
#include "minigpt4/common/instruction.h"
#include "minigpt4/common/log.h"
#include "minigpt4/common/strings.h"
#include "minigpt4/common/untrusted.h"
#include "minigpt4/io/pickle.h"
#include "minigpt4/processors/caption_processor.h"

#include <nlohmann/json.hpp>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <sstream>
#include <unordered_map>

namespace minigpt4::datasets {

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

// ---- the original's instruction templates (MiniGPT-4's minigpt4/datasets/datasets/*.py)

const std::vector<std::string> kReferPool = {
    "[refer] {}",
    "[refer] give me the location of {}",
    "[refer] where is {} ?",
    "[refer] from this image, tell me the location of {}",
    "[refer] the location of {} is",
    "[refer] could you tell me the location for {} ?",
    "[refer] where can I locate the {} ?",
};
const std::vector<std::string> kIdentifyPool = {
    "[identify] {}",
    "[identify] what object is in this location {}",
    "[identify] identify the object present at this location {}",
    "[identify] what is it in {}",
    "[identify] describe this object in {}",
    "[identify] this {} is",
    "[identify] the object in {} is",
};
const std::vector<std::string> kGroundingPool = {
    "[grounding] please describe this image in details",
    "[grounding] describe this image as detailed as possible",
    "[grounding] summarize this image in details",
    "[grounding] give a thorough description of what you see in this image",
};
const std::vector<std::string> kCaptionPool = {
    "Briefly describe this image.",
    "Provide a concise depiction of this image.",
    "Present a short description of this image.",
    "Summarize this image in a few words.",
    "A short image caption:",
    "A short image description:",
    "A photo of ",
    "An image that shows ",
    "Write a short description for the image. ",
    "Write a description for the photo.",
    "Provide a description of what is presented in the photo.",
    "Briefly describe the content of the image.",
    "Can you briefly explain what you see in the image?",
    "Could you use a few words to describe what you perceive in the photo?",
    "Please provide a short depiction of the picture.",
    "Using language, provide a short account of the image.",
    "Use a few words to illustrate what is happening in the picture.",
};
const std::vector<std::string> kVqaPool = {
    "[vqa] {}",
    "[vqa] Based on the image, respond to this question with a short answer: {}",
};

// Python's str.format for templates whose only fields are "{}".
std::string format_slot(const std::string& tmpl, const std::string& value) {
  std::string out = tmpl;
  const size_t at = out.find("{}");
  if (at != std::string::npos) out.replace(at, 2, value);
  return out;
}

// "<Img><ImageHere></Img> {} ".format(instruction): the image slot every image task uses.
std::string with_image(const std::string& instruction) { return std::string(kImageMessage) + " " + instruction + " "; }

const std::string& choose(const std::vector<std::string>& pool, std::mt19937_64& rng) {
  return pool[static_cast<size_t>(uniform_index(rng, pool.size()))];
}

// Python's str.strip() for the whitespace annotations hold.
std::string remove_all(std::string s, const std::string& what) {
  for (size_t at; (at = s.find(what)) != std::string::npos;) s.erase(at, what.size());
  return s;
}

// ---- reading annotations; every error names the file and, for an entry, its index

// Size-capped (limits.max_text_file_bytes) and depth-limited (limits.max_json_depth): the
// errors name the dataset, the file and the byte offset.
json read_json(const std::string& path, const std::string& dataset) {
  return read_json_file(path, fmt::format("dataset '{}': annotation file", dataset));
}

struct Where {
  const std::string& dataset;
  const std::string& file;
  std::string entry;  // "entry 12" and the like
};

[[noreturn]] void bad_entry(const Where& w, const json& e, const std::string& what) {
  fail("dataset '{}': {}: {} {} (got {})", w.dataset, w.file, w.entry, what, describe_json(e, 200));
}

const json& field(const json& e, const char* key, const Where& w) {
  if (!e.is_object() || !e.contains(key)) bad_entry(w, e, fmt::format("has no \"{}\"", key));
  return e[key];
}

std::string text_field(const json& e, const char* key, const Where& w) {
  const json& v = field(e, key, w);
  if (!v.is_string()) bad_entry(w, e, fmt::format("needs \"{}\" to be text", key));
  return v.get<std::string>();
}

// An id that names a file: text, or an integer written as Python's str() would.
std::string id_field(const json& e, const char* key, const Where& w) {
  const json& v = field(e, key, w);
  if (v.is_string()) return v.get<std::string>();
  if (v.is_number_integer()) return v.dump();
  bad_entry(w, e, fmt::format("needs \"{}\" to be text or an integer", key));
}

std::vector<std::string> text_list(const json& e, const char* key, const Where& w) {
  const json& v = field(e, key, w);
  std::vector<std::string> out;
  if (v.is_array())
    for (const auto& item : v)
      if (item.is_string()) out.push_back(item.get<std::string>());
  if (!v.is_array() || out.size() != v.size() || out.empty())
    bad_entry(w, e, fmt::format("needs \"{}\" to be a non-empty list of text", key));
  return out;
}

const std::string& single_ann_path(const DatasetSpec& spec) {
  if (spec.ann_paths.size() != 1)
    fail("dataset '{}': expected one annotation file (build_info.ann_path), got {}", spec.name, spec.ann_paths.size());
  return spec.ann_paths[0];
}

// A list of entries, or LAVIS' {"annotations": [...]} / {"data": [...]} (BaseDataset).
json entry_list(const json& j, const std::string& file, const std::string& dataset, const char* expected) {
  if (j.is_array()) return j;
  for (const char* key : {"annotations", "data"})
    if (j.is_object() && j.contains(key) && j[key].is_array()) return j[key];
  fail("dataset '{}': {} is not a list of entries (expected {})", dataset, file, expected);
}

// A file name from an annotation, under its root: absolute names, '..' and NUL bytes are
// refused with an Error naming the dataset, the file and the entry (common/untrusted.h).
std::string join_path(const std::string& root, const std::string& relative, const std::string& what) {
  if (relative.size() > kMaxFileNameBytes)
    fail("{}: the file name is {} bytes ('{}'), more than the {} a path may have", what, relative.size(),
         excerpt(relative), kMaxFileNameBytes);
  return confined_path(root, relative, what).string();
}

std::string join_path(const std::string& root, const std::string& relative, const Where& w) {
  return join_path(root, relative, fmt::format("dataset '{}': {}: {} image", w.dataset, w.file, w.entry));
}

std::string base_name(const std::string& path) {
  const size_t slash = path.rfind('/');
  return slash == std::string::npos ? path : path.substr(slash + 1);
}

StreamRecord image_record(std::string path, std::vector<std::string> questions, std::vector<std::string> answers,
                          bool conversation = false) {
  StreamRecord rec;
  rec.image_path = std::move(path);
  rec.source = rec.image_path;
  rec.instruction.questions = std::move(questions);
  rec.instruction.answers = std::move(answers);
  rec.instruction.conversation = conversation;
  return rec;
}

// ---- a dataset whose entries are ready-made (image, question, answer) up to one random
// template: LLaVA detail/reason, Flickr, TextCaps, COCO captions, OCR-VQA, unnatural
// instructions. Each entry keeps what its format needs; `make` turns it into the turns.

struct Entry {
  std::string image;  // full path, "" without an image
  std::string a, b;   // the entry's texts, as the format's `make` reads them
};

class EntryListSource : public InstructionSource {
 public:
  using Make = std::function<void(const Entry&, std::mt19937_64&, std::string& question, std::string& answer)>;
  EntryListSource(std::vector<Entry> entries, Make make) : entries_(std::move(entries)), make_(std::move(make)) {}
  size_t size() const override { return entries_.size(); }
  StreamRecord record(size_t i, std::mt19937_64& rng) const override {
    const Entry& e = entries_[i];
    std::string q, a;
    make_(e, rng, q, a);
    StreamRecord rec = image_record(e.image, {std::move(q)}, {std::move(a)});
    if (e.image.empty()) {
      rec.has_image = false;
      rec.source = "entry " + std::to_string(i);
    }
    return rec;
  }

 private:
  std::vector<Entry> entries_;
  Make make_;
};

// LLaVA's conversation files: "conversations" alternate human / gpt, starting with the
// human turn that holds <image>.
struct Turns {
  std::vector<std::string> values;
};

Turns conversation_turns(const json& e, const Where& w) {
  const json& conv = field(e, "conversations", w);
  Turns t;
  if (conv.is_array())
    for (const auto& turn : conv)
      if (turn.is_object() && turn.contains("value") && turn["value"].is_string())
        t.values.push_back(turn["value"].get<std::string>());
  if (!conv.is_array() || t.values.size() != conv.size() || t.values.size() < 2)
    bad_entry(w, e, "needs \"conversations\": a list of at least two {\"from\", \"value\"} turns");
  return t;
}

// The first human turn without LLaVA's image mark: .replace('<image>', '').replace('\n', '').strip().
std::string first_question(const std::string& value) { return strip(remove_all(remove_all(value, "<image>"), "\n")); }

std::unique_ptr<InstructionSource> llava_single(const DatasetSpec& spec) {
  const std::string& file = single_ann_path(spec);
  const json list = entry_list(read_json(file, spec.name), file, spec.name, "[{\"id\", \"conversations\"}]");
  std::vector<Entry> entries;
  for (size_t i = 0; i < list.size(); ++i) {
    const Where w{spec.name, file, "entry " + std::to_string(i)};
    const Turns t = conversation_turns(list[i], w);
    entries.push_back({join_path(spec.image_root, "COCO_train2014_" + id_field(list[i], "id", w) + ".jpg", w),
                       blip_caption(first_question(t.values[0]), spec.max_words), t.values[1]});
  }
  return std::make_unique<EntryListSource>(std::move(entries), [](const Entry& e, std::mt19937_64&, std::string& q,
                                                                  std::string& a) { q = with_image(e.a), a = e.b; });
}

class ConversationSource : public InstructionSource {
 public:
  ConversationSource(std::vector<std::string> images, std::vector<Instruction> turns)
      : images_(std::move(images)), turns_(std::move(turns)) {}
  size_t size() const override { return images_.size(); }
  StreamRecord record(size_t i, std::mt19937_64&) const override {
    StreamRecord rec = image_record(images_[i], {}, {});
    rec.instruction = turns_[i];
    return rec;
  }

 private:
  std::vector<std::string> images_;
  std::vector<Instruction> turns_;
};

// multitask_conversation, llava_conversation: the first question gets the image slot, the
// later human turns a trailing space, the gpt turns are the answers (raw text).
std::unique_ptr<InstructionSource> llava_conversation(const DatasetSpec& spec) {
  const std::string& file = single_ann_path(spec);
  const json list = entry_list(read_json(file, spec.name), file, spec.name, "[{\"id\", \"conversations\"}]");
  std::vector<std::string> images;
  std::vector<Instruction> turns;
  for (size_t i = 0; i < list.size(); ++i) {
    const Where w{spec.name, file, "entry " + std::to_string(i)};
    const Turns t = conversation_turns(list[i], w);
    if (t.values.size() % 2 != 0)
      bad_entry(w, list[i], "has an odd number of turns: every human turn needs the answer after it");
    Instruction ins;
    ins.conversation = true;
    ins.questions.push_back(with_image(first_question(t.values[0])));
    for (size_t k = 1; k < t.values.size(); ++k) {
      if (k % 2 == 1)
        ins.answers.push_back(t.values[k]);
      else
        ins.questions.push_back(t.values[k] + " ");
    }
    images.push_back(join_path(spec.image_root, "COCO_train2014_" + id_field(list[i], "id", w) + ".jpg", w));
    turns.push_back(std::move(ins));
  }
  return std::make_unique<ConversationSource>(std::move(images), std::move(turns));
}

// unnatural_instruction: text only; instruction (+ " " + constraints) and output, both
// through the text processor.
std::unique_ptr<InstructionSource> unnatural(const DatasetSpec& spec) {
  const std::string& file = single_ann_path(spec);
  const json list = entry_list(read_json(file, spec.name), file, spec.name, "[{\"instances\": [...]}]");
  std::vector<Entry> entries;
  for (size_t i = 0; i < list.size(); ++i) {
    const Where w{spec.name, file, "entry " + std::to_string(i)};
    const json& instances = field(list[i], "instances", w);
    if (!instances.is_array() || instances.empty()) bad_entry(w, list[i], "needs a non-empty \"instances\" list");
    const json& info = instances[0];
    std::string instruction = text_field(info, "instruction_with_input", w);
    const json& constraints = field(info, "constraints", w);
    if (constraints.is_string())
      instruction += " " + constraints.get<std::string>();
    else if (!constraints.is_null())
      bad_entry(w, info, "needs \"constraints\" to be text or null");
    entries.push_back(
        {"", blip_caption(instruction, spec.max_words), blip_caption(text_field(info, "output", w), spec.max_words)});
  }
  return std::make_unique<EntryListSource>(
      std::move(entries), [](const Entry& e, std::mt19937_64&, std::string& q, std::string& a) { q = e.a, a = e.b; });
}

// Flickr30k Entities as MiniGPT-v2 prepared it: <image_id>.jpg, answers as stored.
std::unique_ptr<InstructionSource> flickr(const DatasetSpec& spec) {
  const std::string& file = single_ann_path(spec);
  const json list = entry_list(read_json(file, spec.name), file, spec.name, "[{\"image_id\", ...}]");
  std::vector<Entry> entries;
  for (size_t i = 0; i < list.size(); ++i) {
    const Where w{spec.name, file, "entry " + std::to_string(i)};
    const json& e = list[i];
    Entry entry{join_path(spec.image_root, id_field(e, "image_id", w) + ".jpg", w), "", ""};
    if (spec.name == "flickr_grounded_caption") {
      entry.b = text_field(e, "grounded_caption", w);
    } else if (spec.name == "flickr_CaptionToPhrase") {
      entry.a = text_field(e, "caption", w), entry.b = text_field(e, "output", w);
    } else {  // flickr_ObjectToPhrase
      const std::string phrase = text_field(e, "phrase", w);
      entry.a = phrase, entry.b = "<p>" + phrase + "</p> " + text_field(e, "bbox", w);
    }
    entries.push_back(std::move(entry));
  }
  if (spec.name == "flickr_grounded_caption")
    return std::make_unique<EntryListSource>(std::move(entries),
                                             [](const Entry& e, std::mt19937_64& rng, std::string& q, std::string& a) {
                                               q = with_image(choose(kGroundingPool, rng)), a = e.b;
                                             });
  return std::make_unique<EntryListSource>(std::move(entries),
                                           [](const Entry& e, std::mt19937_64&, std::string& q, std::string& a) {
                                             q = with_image("[detection] " + e.a), a = e.b;
                                           });
}

std::unique_ptr<InstructionSource> caption_source(std::vector<Entry> entries) {
  return std::make_unique<EntryListSource>(std::move(entries),
                                           [](const Entry& e, std::mt19937_64& rng, std::string& q, std::string& a) {
                                             q = with_image("[caption] " + choose(kCaptionPool, rng)), a = e.b;
                                           });
}

// TextCaps: {"data": [{"image_id", "caption_str"}]}, <image_id>.jpg.
std::unique_ptr<InstructionSource> textcaps(const DatasetSpec& spec) {
  const std::string& file = single_ann_path(spec);
  const json j = read_json(file, spec.name);
  if (!j.is_object() || !j.contains("data") || !j["data"].is_array())
    fail("dataset '{}': {} has no \"data\" list (TextCaps' TextCaps_0.1_train.json)", spec.name, file);
  std::vector<Entry> entries;
  for (size_t i = 0; i < j["data"].size(); ++i) {
    const Where w{spec.name, file, "data entry " + std::to_string(i)};
    const json& e = j["data"][i];
    entries.push_back({join_path(spec.image_root, id_field(e, "image_id", w) + ".jpg", w), "",
                       blip_caption(text_field(e, "caption_str", w), spec.max_words)});
  }
  return caption_source(std::move(entries));
}

// COCO captions (Karpathy's train list): the "train" images only, found by base name.
std::unique_ptr<InstructionSource> coco_caption(const DatasetSpec& spec) {
  std::vector<Entry> entries;
  for (const auto& file : spec.ann_paths) {
    const json list = entry_list(read_json(file, spec.name), file, spec.name, "[{\"image\", \"caption\"}]");
    for (size_t i = 0; i < list.size(); ++i) {
      const Where w{spec.name, file, "entry " + std::to_string(i)};
      const std::string image = text_field(list[i], "image", w);
      if (image.find("train") == std::string::npos) continue;
      entries.push_back({join_path(spec.image_root, base_name(image), w), "",
                         blip_caption(text_field(list[i], "caption", w), spec.max_words)});
    }
  }
  return caption_source(std::move(entries));
}

// ---- VQA: one answer drawn per sample, each listed answer as likely as its count (the
// original's random.choices over answer weights), question and answer text-processed.

struct VqaEntry {
  std::string image, question;
  std::vector<std::string> answers;
};

class VqaSource : public InstructionSource {
 public:
  explicit VqaSource(std::vector<VqaEntry> entries) : entries_(std::move(entries)) {}
  size_t size() const override { return entries_.size(); }
  StreamRecord record(size_t i, std::mt19937_64& rng) const override {
    const VqaEntry& e = entries_[i];
    const std::string& question = format_slot(choose(kVqaPool, rng), e.question);
    const std::string& answer = e.answers[static_cast<size_t>(uniform_index(rng, e.answers.size()))];
    return image_record(e.image, {with_image(question)}, {answer});
  }

 private:
  std::vector<VqaEntry> entries_;
};

// coco_vqa, ok_vqa, aok_vqa (and gqa): LAVIS' lists. The first three keep only entries
// whose image exists (as the original does when it loads them) and find the image by
// its base name; gqa reads "image" under the root.
std::unique_ptr<InstructionSource> vqa(const DatasetSpec& spec) {
  const bool gqa = spec.name == "gqa";
  const char* answer_key = spec.name == "aok_vqa" ? "direct_answers" : "answer";
  std::vector<VqaEntry> entries;
  size_t dropped = 0;
  std::string first_dropped;
  for (const auto& file : spec.ann_paths) {
    const json list = entry_list(read_json(file, spec.name), file, spec.name, "[{\"image\", \"question\", ...}]");
    for (size_t i = 0; i < list.size(); ++i) {
      const Where w{spec.name, file, "entry " + std::to_string(i)};
      const json& e = list[i];
      const std::string image = text_field(e, "image", w);
      VqaEntry entry;
      entry.image = join_path(spec.image_root, gqa ? image : base_name(image), w);
      // aok_vqa runs the text processor twice on its question; it changes nothing the second time.
      entry.question = blip_caption(text_field(e, "question", w), spec.max_words);
      if (gqa)
        entry.answers = {text_field(e, answer_key, w)};
      else
        entry.answers = text_list(e, answer_key, w);
      for (auto& a : entry.answers) a = blip_caption(a, spec.max_words);
      std::error_code ec;
      if (!gqa && !fs::is_regular_file(entry.image, ec)) {
        if (dropped++ == 0) first_dropped = entry.image;
        continue;
      }
      entries.push_back(std::move(entry));
    }
  }
  if (dropped > 0)
    log::warn(
        "dataset '{}': {} questions left out because their image does not exist (the original drops them too), "
        "e.g. {}",
        spec.name, dropped, first_dropped);
  if (entries.empty()) fail("dataset '{}': no question has its image under {}", spec.name, spec.image_root);
  return std::make_unique<VqaSource>(std::move(entries));
}

// OCR-VQA's dataset.json: {"<key>": {"imageURL", "questions", "answers", "split"}}; split 1
// is training; one entry per question; the image is <key> + the URL's extension.
std::unique_ptr<InstructionSource> ocrvqa(const DatasetSpec& spec) {
  const std::string& file = single_ann_path(spec);
  const json j = read_json(file, spec.name);
  if (!j.is_object()) fail("dataset '{}': {} is not OCR-VQA's dataset.json (an object of books)", spec.name, file);
  std::vector<VqaEntry> entries;
  for (const auto& [key, book] : j.items()) {
    const Where w{spec.name, file, "book \"" + excerpt(key, 100) + "\""};
    const json& split = field(book, "split", w);
    if (!split.is_number_integer()) bad_entry(w, book, "needs an integer \"split\"");
    if (split.get<int64_t>() != 1) continue;
    const std::string url = text_field(book, "imageURL", w);
    const std::string name = base_name(url);
    const size_t dot = name.rfind('.');
    const std::string ext = dot == std::string::npos || dot == 0 ? "" : name.substr(dot);
    const auto questions = text_list(book, "questions", w), answers = text_list(book, "answers", w);
    if (questions.size() != answers.size()) bad_entry(w, book, "has a different number of questions and answers");
    for (size_t k = 0; k < questions.size(); ++k)
      entries.push_back({join_path(spec.image_root, key + ext, w),
                         blip_caption(questions[k], spec.max_words),
                         {blip_caption(answers[k], spec.max_words)}});
  }
  if (entries.empty()) fail("dataset '{}': {} holds no training question (split 1)", spec.name, file);
  return std::make_unique<VqaSource>(std::move(entries));
}

// ---- referring expressions: RefCOCO/+/g (REFER's files) and Visual Genome regions. The
// box goes on the grid once the image is decoded (StreamRecord::box).

struct Referent {
  std::string image;
  std::vector<std::string> sentences;  // text-processed; one is drawn per sample
  std::array<double, 4> box;           // [x, y, w, h] pixels
};

class ReferSource : public InstructionSource {
 public:
  ReferSource(std::vector<Referent> refs, bool inverse) : refs_(std::move(refs)), inverse_(inverse) {}
  size_t size() const override { return refs_.size(); }
  StreamRecord record(size_t i, std::mt19937_64& rng) const override {
    const Referent& r = refs_[i];
    const std::string& sentence = choose(r.sentences, rng);
    StreamRecord rec =
        inverse_ ? image_record(r.image, {with_image(format_slot(choose(kIdentifyPool, rng), kBoxSlot))}, {sentence})
                 : image_record(r.image, {with_image(format_slot(choose(kReferPool, rng), sentence))}, {kBoxSlot});
    rec.box = r.box;
    return rec;
  }

 private:
  std::vector<Referent> refs_;
  bool inverse_;
};

// The pickle's dict entries by key (Python 2's str and unicode both read as text).
const io::pickle::Value* dict_get(const io::pickle::Value& d, const std::string& key) {
  for (const auto& [k, v] : d.entries)
    if ((k->is(io::pickle::Value::Kind::String) || k->is(io::pickle::Value::Kind::Bytes)) && k->text == key)
      return v.get();
  return nullptr;
}

std::optional<int64_t> pickle_int(const io::pickle::Value* v) {
  if (v && v->is(io::pickle::Value::Kind::Int)) return v->integer;
  return std::nullopt;
}

std::optional<std::string> pickle_text(const io::pickle::Value* v) {
  if (v && (v->is(io::pickle::Value::Kind::String) || v->is(io::pickle::Value::Kind::Bytes))) return v->text;
  return std::nullopt;
}

std::array<double, 4> json_box(const json& v, const Where& w, const json& e) {
  std::array<double, 4> box{};
  if (!v.is_array() || v.size() != 4) bad_entry(w, e, "needs \"bbox\": [x, y, width, height]");
  for (size_t k = 0; k < 4; ++k) {
    if (!v[k].is_number()) bad_entry(w, e, "needs \"bbox\": [x, y, width, height] of numbers");
    box[k] = v[k].get<double>();
  }
  return box;
}

// REFER: <ann_path>/<dataset>/refs(<splitBy>).p (a pickled list of refs: ref_id, ann_id,
// image_id, split, sentences [{raw, ...}]) and instances.json (COCO annotations: the box
// of each ann_id). The refs of split "train", in the file's order.
std::unique_ptr<InstructionSource> refcoco(const DatasetSpec& spec) {
  const bool inverse = spec.name.rfind("inv", 0) == 0;
  std::string dataset = spec.refer_dataset;
  if (dataset.rfind("inv", 0) == 0) dataset = dataset.substr(3);  // the inverse tasks read the same files
  if (dataset != "refcoco" && dataset != "refcoco+" && dataset != "refcocog")
    fail("dataset '{}': build_info.dataset is '{}'; expected refcoco, refcoco+ or refcocog", spec.name,
         spec.refer_dataset);
  const std::string& root = single_ann_path(spec);
  const std::string refs_file = (fs::path(root) / dataset / ("refs(" + spec.split_by + ").p")).string();
  const std::string instances_file = (fs::path(root) / dataset / "instances.json").string();

  const json instances = read_json(instances_file, spec.name);
  if (!instances.is_object() || !instances.contains("annotations") || !instances["annotations"].is_array())
    fail("dataset '{}': {} has no \"annotations\" list", spec.name, instances_file);
  std::unordered_map<int64_t, std::array<double, 4>> boxes;
  for (size_t i = 0; i < instances["annotations"].size(); ++i) {
    const json& a = instances["annotations"][i];
    const Where w{spec.name, instances_file, "annotation " + std::to_string(i)};
    const json& id = field(a, "id", w);
    if (!id.is_number_integer()) bad_entry(w, a, "needs an integer \"id\"");
    boxes[id.get<int64_t>()] = json_box(field(a, "bbox", w), w, a);
  }

  std::error_code ec;
  if (!fs::is_regular_file(refs_file, ec))
    fail("dataset '{}': cannot open {} (REFER's refs file: build_info.ann_path/<dataset>/refs(<splitBy>).p)", spec.name,
         refs_file);
  const std::string bytes = read_text_file(refs_file, fmt::format("dataset '{}': REFER's refs file", spec.name));
  const auto refs = io::pickle::unpickle(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size(), {}, refs_file);
  if (!refs->is(io::pickle::Value::Kind::List))
    fail("dataset '{}': {} does not hold a list of refs", spec.name, refs_file);

  std::vector<Referent> out;
  for (size_t i = 0; i < refs->items.size(); ++i) {
    const auto& ref = *refs->items[i];
    const auto bad = [&](const std::string& what) {
      fail("dataset '{}': {}: ref {} {}", spec.name, refs_file, i, what);
    };
    if (!ref.is(io::pickle::Value::Kind::Dict)) bad("is not a dict");
    const auto split = pickle_text(dict_get(ref, "split"));
    if (!split) bad("has no \"split\"");
    if (*split != "train") continue;
    const auto ann_id = pickle_int(dict_get(ref, "ann_id"));
    const auto image_id = pickle_int(dict_get(ref, "image_id"));
    if (!ann_id || !image_id) bad("needs integer \"ann_id\" and \"image_id\"");
    const auto box = boxes.find(*ann_id);
    if (box == boxes.end()) bad(fmt::format("names ann_id {}, which {} does not hold", *ann_id, instances_file));
    Referent r;
    r.image = join_path(spec.image_root, fmt::format("COCO_train2014_{:012d}.jpg", *image_id),
                        fmt::format("dataset '{}': {}: ref {} image", spec.name, refs_file, i));
    r.box = box->second;
    const auto* sentences = dict_get(ref, "sentences");
    if (sentences && sentences->is(io::pickle::Value::Kind::List))
      for (const auto& s : sentences->items)
        if (s->is(io::pickle::Value::Kind::Dict))
          if (const auto raw = pickle_text(dict_get(*s, "raw")))
            r.sentences.push_back(blip_caption(*raw, spec.max_words));
    if (!sentences || r.sentences.empty() || r.sentences.size() != sentences->items.size())
      bad("needs \"sentences\": a non-empty list of {\"raw\": ...}");
    out.push_back(std::move(r));
  }
  if (out.empty()) fail("dataset '{}': {} holds no ref of split \"train\"", spec.name, refs_file);
  return std::make_unique<ReferSource>(std::move(out), inverse);
}

// Visual Genome (the visual_genome package's local API): image_data.json gives each
// image's url (-> <data_dir>/<last two parts>), region_descriptions.json the regions per
// image; regions under 16384 px of area are kept (OFA's practice, as the original).
std::unique_ptr<InstructionSource> refvg(const DatasetSpec& spec) {
  const std::string& root = spec.image_root;
  const std::string image_file = (fs::path(root) / "image_data.json").string();
  const std::string region_file = (fs::path(root) / "region_descriptions.json").string();
  std::unordered_map<int64_t, std::string> images;
  {
    const json list = entry_list(read_json(image_file, spec.name), image_file, spec.name, "[{\"image_id\", \"url\"}]");
    for (size_t i = 0; i < list.size(); ++i) {
      const Where w{spec.name, image_file, "entry " + std::to_string(i)};
      const json& e = list[i];
      const json& id = field(e, e.contains("id") ? "id" : "image_id", w);
      if (!id.is_number_integer()) bad_entry(w, e, "needs an integer \"image_id\"");
      const std::string url = text_field(e, "url", w);
      const size_t last = url.rfind('/');
      const size_t before = last == std::string::npos || last == 0 ? std::string::npos : url.rfind('/', last - 1);
      images[id.get<int64_t>()] = join_path(root, before == std::string::npos ? url : url.substr(before + 1), w);
    }
  }
  const json list = entry_list(read_json(region_file, spec.name), region_file, spec.name, "[{\"id\", \"regions\"}]");
  std::vector<Referent> out;
  for (size_t i = 0; i < list.size(); ++i) {
    const Where w{spec.name, region_file, "entry " + std::to_string(i)};
    const json& e = list[i];
    const json& id = field(e, "id", w);
    if (!id.is_number_integer()) bad_entry(w, e, "needs an integer \"id\"");
    const auto image = images.find(id.get<int64_t>());
    if (image == images.end())
      bad_entry(w, e, fmt::format("names image {}, which {} does not hold", id.dump(), image_file));
    const json& regions = field(e, "regions", w);
    if (!regions.is_array()) bad_entry(w, e, "needs a \"regions\" list");
    for (size_t k = 0; k < regions.size(); ++k) {
      const json& r = regions[k];
      const Where rw{spec.name, region_file, fmt::format("entry {} region {}", i, k)};
      std::array<double, 4> box{};
      const char* keys[4] = {"x", "y", "width", "height"};
      for (int d = 0; d < 4; ++d) {
        const json& v = field(r, keys[d], rw);
        if (!v.is_number()) bad_entry(rw, r, fmt::format("needs a number \"{}\"", keys[d]));
        box[d] = v.get<double>();
      }
      if (!(box[2] * box[3] < 16384)) continue;
      out.push_back({image->second, {blip_caption(text_field(r, "phrase", rw), spec.max_words)}, box});
    }
  }
  if (out.empty()) fail("dataset '{}': {} holds no region under 16384 px", spec.name, region_file);
  return std::make_unique<ReferSource>(std::move(out), false);
}

using Loader = std::unique_ptr<InstructionSource> (*)(const DatasetSpec&);

const std::map<std::string, Loader>& loaders() {
  static const std::map<std::string, Loader> table = {
      {"llava_detail", llava_single},
      {"llava_reason", llava_single},
      {"llava_conversation", llava_conversation},
      {"multitask_conversation", llava_conversation},
      {"unnatural_instruction", unnatural},
      {"flickr_grounded_caption", flickr},
      {"flickr_CaptionToPhrase", flickr},
      {"flickr_ObjectToPhrase", flickr},
      {"textcaps_caption", textcaps},
      {"coco_caption", coco_caption},
      {"refcoco", refcoco},
      {"refcocop", refcoco},
      {"refcocog", refcoco},
      {"invrefcoco", refcoco},
      {"invrefcocop", refcoco},
      {"invrefcocog", refcoco},
      {"refvg", refvg},
      {"coco_vqa", vqa},
      {"ok_vqa", vqa},
      {"aok_vqa", vqa},
      {"gqa", vqa},
      {"ocrvqa", ocrvqa},
  };
  return table;
}

}  // namespace

bool is_instruction_dataset(const std::string& name) { return loaders().count(name) > 0; }

std::unique_ptr<InstructionSource> load_instruction_source(const DatasetSpec& spec) {
  const auto it = loaders().find(spec.name);
  if (it == loaders().end()) fail("dataset '{}' is not one of MiniGPT-v2's instruction datasets", spec.name);
  auto source = it->second(spec);
  if (source->size() == 0) fail("dataset '{}': its annotations hold no entry", spec.name);
  log::info("dataset '{}': {} entries", spec.name, source->size());
  return source;
}

std::string grid_box(const std::array<double, 4>& b, int width, int height) {
  const double w = width, h = height;
  const int x0 = static_cast<int>(b[0] / w * 100), y0 = static_cast<int>(b[1] / h * 100);
  const int x1 = static_cast<int>((b[0] + b[2]) / w * 100), y1 = static_cast<int>((b[1] + b[3]) / h * 100);
  return fmt::format("{{<{}><{}><{}><{}>}}", x0, y0, x1, y1);
}

std::string place_box(Instruction& instruction, const std::array<double, 4>& b, int width, int height) {
  constexpr double kSlack = 1.0;  // COCO's float boxes may overshoot an edge by a fraction of a pixel
  if (!(b[0] >= 0 && b[1] >= 0 && b[2] >= 0 && b[3] >= 0 && b[0] + b[2] <= width + kSlack &&
        b[1] + b[3] <= height + kSlack))
    return fmt::format("box [x {}, y {}, w {}, h {}] lies outside the {}x{} image", b[0], b[1], b[2], b[3], width,
                       height);
  const std::string text = grid_box(b, width, height);
  for (auto* list : {&instruction.questions, &instruction.answers})
    for (auto& s : *list)
      for (size_t at; (at = s.find(kBoxSlot)) != std::string::npos;) s.replace(at, std::string(kBoxSlot).size(), text);
  return "";
}

InstructionStream::InstructionStream(std::string name, std::unique_ptr<InstructionSource> source, uint64_t seed,
                                     int rank, int world_size)
    : name_(std::move(name)),
      source_(std::move(source)),
      seed_(seed),
      cursor_(source_->size(), mix_seed(seed_, name_seed(name_)), rank, world_size, "dataset '" + name_ + "' entries") {
}

StreamRecord InstructionStream::next() {
  const size_t i = cursor_.next();
  std::mt19937_64 rng(mix_seed(seed_, name_seed(name_), cursor_.pass(), i));
  StreamRecord rec = source_->record(i, rng);
  rec.pass = cursor_.pass();
  std::error_code ec;
  if (rec.has_image && !fs::is_regular_file(rec.image_path, ec)) {
    rec.skipped = true;
    rec.reason = SkipReason::MissingImage;
    rec.detail = ec && ec != std::errc::no_such_file_or_directory ? "cannot read it: " + ec.message() : "no such file";
  }
  return rec;
}

}  // namespace minigpt4::datasets
